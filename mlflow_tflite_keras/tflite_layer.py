"""``TFLiteLayer``: a frozen Keras 3 layer that runs a ``.tflite`` model on LiteRT.

Use a ``.tflite`` file (a vendor backbone, a quantized feature extractor, ...) as one layer of
a Keras model and train the rest::

    from mlflow_tflite_keras import TFLiteLayer

    inputs = keras.Input((64, 64, 3))
    features = TFLiteLayer("backbone.tflite")(inputs)          # LiteRT, frozen
    outputs = keras.layers.Dense(10, activation="softmax")(features)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y)                                             # trains the Dense head only
    model.save("model.keras")                                   # the .tflite travels inside

Semantics are those of the pyfunc (the layer runs :class:`~mlflow_tflite_keras.runtime.
TFLiteRunner`, the same code):

* **Inputs**: one tensor for a single-input model; for several inputs a list/tuple in the
  signature's input order, or a dict keyed by the signature's input names.
* **Outputs**: one tensor for a single-output model; for several outputs a **dict** keyed by
  the signature's output names (in signature order).
* **Batching**: any batch size. A dynamic batch dimension is resized (one invoke); a model
  fixed at batch 1 runs row by row. The batch dimension of every output is declared ``None``.
* **Quantized I/O**: float inputs to int8/uint8/int16 inputs are quantized with the tensor's
  scale and zero point (integer tensors of the input's own dtype pass through unchanged);
  quantized outputs are dequantized to float32 unless ``dequantize=False``.
* **Frozen**: the layer has no weights at all and ``trainable=False``; the model runs in a
  ``tf.numpy_function`` (no gradient is registered for it) wrapped in ``stop_gradient``, so
  no gradient flows into the layer *or through it* to layers before it.
* **Backends**: TensorFlow (a ``tf.numpy_function``), JAX (``jax.pure_callback``;
  ``io_callback`` for stateful models) and PyTorch (a host call under ``torch.no_grad``), frozen
  the same way on each; any other Keras backend gets a clear error naming it.
* **Graphs**: works eagerly, in ``predict`` and inside compiled ``fit`` / ``tf.function``
  graphs (TensorFlow backend; jitted functions on JAX). It cannot be XLA-compiled (``supports_jit = False``, so
  ``jit_compile="auto"`` stays off) and a model using it cannot be exported to a TF
  SavedModel / converted back to TFLite (the numpy function is Python).
* **Threads**: concurrent calls are safe; each borrows an interpreter from the runner's pool.
* **Stateful models** (resource variables): every call of the layer (every batch of
  ``predict`` / ``fit``) starts from the model's initial state and feeds its rows in order.
* **Serialization**: ``get_config`` holds the signature key, ``dequantize``, ``num_threads``,
  the model's sha256 and its declared interface (names, shapes, dtypes) but never a path; the
  ``.tflite`` bytes are saved as a layer asset inside the ``.keras`` file (``save_assets`` /
  ``load_assets``) and checked against the sha256 on load. ``keras.saving.load_model(...,
  safe_mode=True)`` works once the class is registered (``import mlflow``, ``import
  mlflow_tflite_keras`` or ``import mlflow_tflite_keras.converter`` registers it).
  ``from_config`` alone (e.g. ``keras.models.clone_model``) finds the bytes of any model with
  that sha256 still alive in the process.

Importing this module is cheap (Keras and NumPy only); TensorFlow, MLflow and LiteRT are
imported when a layer is created or called.
"""

from __future__ import annotations

import os
import threading
import weakref

import keras
import numpy as np

PACKAGE = "mlflow_tflite_keras"
ASSET_FILE = "model.tflite"

# sha256 -> TFLiteModel of every layer alive in this process (lets from_config find bytes).
_MODELS: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_MODELS_LOCK = threading.Lock()


class _Tensor:
    """One input or output as the layer declares it (plain data, JSON-able)."""

    __slots__ = ("name", "shape", "dtype")

    def __init__(self, name: str, shape, dtype: str):
        self.name = str(name)
        self.shape = tuple(None if d is None or int(d) < 0 else int(d) for d in shape)
        self.dtype = str(np.dtype(dtype).name)

    def to_config(self) -> dict:
        return {"name": self.name, "shape": [d for d in self.shape], "dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict) -> "_Tensor":
        return cls(config["name"], config["shape"], config["dtype"])

    def __eq__(self, other):
        return isinstance(other, _Tensor) and self.to_config() == other.to_config()


class _Interface:
    """The declared inputs and outputs of one signature, and whether dim 0 is a batch."""

    __slots__ = ("inputs", "outputs", "batched")

    def __init__(self, inputs, outputs, batched: bool):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.batched = bool(batched)

    @classmethod
    def from_spec(cls, spec, dequantize: bool) -> "_Interface":
        def shape(s):
            dims = list(s.shape_signature)
            if spec.batched and dims:
                dims[0] = -1
            return dims

        inputs = [_Tensor(s.name, shape(s), s.logical_dtype) for s in spec.inputs]
        outputs = [_Tensor(s.name, shape(s), s.logical_dtype if dequantize else s.dtype)
                   for s in spec.outputs]
        return cls(inputs, outputs, spec.batched)

    def to_config(self) -> dict:
        return {"inputs": [t.to_config() for t in self.inputs],
                "outputs": [t.to_config() for t in self.outputs],
                "batched": self.batched}

    @classmethod
    def from_config(cls, config: dict) -> "_Interface":
        return cls([_Tensor.from_config(t) for t in config["inputs"]],
                   [_Tensor.from_config(t) for t in config["outputs"]],
                   config.get("batched", False))

    def __eq__(self, other):
        return isinstance(other, _Interface) and self.to_config() == other.to_config()


class _State:
    """Everything that is not config: the parsed model and its runner (not tracked by Keras)."""

    def __init__(self):
        self.model = None  # TFLiteModel
        self.runner = None  # TFLiteRunner, created on first call
        self.lock = threading.Lock()


@keras.saving.register_keras_serializable(package=PACKAGE)
class TFLiteLayer(keras.layers.Layer):
    """A frozen layer running a ``.tflite`` model (path or bytes) on the LiteRT interpreter.

    Args:
        model: path to a ``.tflite`` file, its bytes, or a ``TFLiteModel``.
        signature_key: the SignatureDef to run (default: the model's first).
        dequantize: dequantize quantized outputs to float32 (default) or return them raw.
        num_threads: LiteRT interpreter threads (default: LiteRT's).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...). ``trainable`` defaults to
            False; the layer has no weights either way.

    See the module docstring for input/output structure, batching and serialization.
    """

    def __init__(self, model=None, signature_key: str | None = None, dequantize: bool = True,
                 num_threads: int | None = None, *, model_sha256: str | None = None,
                 interface: dict | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.supports_jit = False  # a numpy_function cannot be XLA-compiled
        self.signature_key = signature_key
        self.dequantize = bool(dequantize)
        self.num_threads = None if num_threads is None else int(num_threads)
        self._state = _State()
        if model is not None:
            self._set_model(model, expected_sha256=model_sha256)
            declared = self._interface_from_model(self._state.model)
            if interface is not None and _Interface.from_config(interface) != declared:
                raise ValueError(f"TFLiteLayer '{self.name}': the model's interface differs "
                                 "from the one in the config.")
            self._interface = declared
        else:
            if model_sha256 is None or interface is None:
                raise ValueError("TFLiteLayer needs a model: a path to a .tflite file or its "
                                 "bytes.")
            self._sha256 = str(model_sha256)
            self._interface = _Interface.from_config(interface)
            alive = _MODELS.get(self._sha256)
            if alive is not None:  # e.g. clone_model / from_config in the same process
                self._state.model = alive
        self.built = True  # nothing to build: no weights

    # ---- model bytes ----------------------------------------------------------------------

    def _set_model(self, model, expected_sha256: str | None = None):
        from mlflow_tflite_keras.tflite_model import TFLiteModel

        parsed = TFLiteModel.load(model)
        sha = parsed.sha256
        if expected_sha256 is not None and sha != expected_sha256:
            raise ValueError(f"TFLiteLayer '{self.name}': the .tflite model has sha256 {sha}, "
                             f"the layer expects {expected_sha256}.")
        with _MODELS_LOCK:
            parsed = _MODELS.setdefault(sha, parsed)
        self._sha256 = sha
        with self._state.lock:
            self._state.model = parsed
            self._state.runner = None

    def _interface_from_model(self, model) -> _Interface:
        from mlflow_tflite_keras.runtime import SignatureSpec

        spec = SignatureSpec(model, self.signature_key)
        if self.signature_key is None and model.signatures:
            self.signature_key = spec.key  # pin the default key: it is what the config saves
        return _Interface.from_spec(spec, self.dequantize)

    @property
    def model_bytes(self) -> bytes:
        return self._model().model_bytes

    @property
    def model_sha256(self) -> str:
        return self._sha256

    @property
    def tflite_model(self):
        """The parsed :class:`~mlflow_tflite_keras.tflite_model.TFLiteModel`."""
        return self._model()

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self._interface.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self._interface.outputs]

    def _model(self):
        model = self._state.model
        if model is None:
            raise ValueError(
                f"TFLiteLayer '{self.name}' has no .tflite model: it was created from a config "
                f"(sha256 {self._sha256}) and its assets were not loaded. Load the model with "
                "keras.saving.load_model(...) from its .keras file."
            )
        return model

    def runner(self):
        """The layer's :class:`~mlflow_tflite_keras.runtime.TFLiteRunner` (created once)."""
        state = self._state
        if state.runner is None:
            model = self._model()
            from mlflow_tflite_keras.runtime import TFLiteRunner

            with state.lock:
                if state.runner is None:
                    state.runner = TFLiteRunner(model, num_threads=self.num_threads)
        return state.runner

    # ---- Keras assets and config ----------------------------------------------------------

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, ASSET_FILE), "wb") as f:
            f.write(self.model_bytes)

    def load_assets(self, dir_path):
        path = os.path.join(dir_path, ASSET_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"TFLiteLayer '{self.name}': the saved model has no {ASSET_FILE} "
                             "asset for this layer.")
        with open(path, "rb") as f:
            data = f.read()
        expected = self._interface
        self._set_model(data, expected_sha256=self._sha256)
        if self._interface_from_model(self._state.model) != expected:
            raise ValueError(f"TFLiteLayer '{self.name}': the .tflite asset's interface differs "
                             "from the saved config.")

    def get_config(self):
        config = super().get_config()
        config.update({
            "signature_key": self.signature_key,
            "dequantize": self.dequantize,
            "num_threads": self.num_threads,
            "model_sha256": self._sha256,
            "interface": self._interface.to_config(),
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(model=None, **config)

    # ---- shapes ---------------------------------------------------------------------------

    def build(self, input_shape=None):
        self.built = True

    def _input_list(self, inputs) -> list:
        """``inputs`` (tensor, list/tuple in signature order, or dict by name) as a list in
        signature input order."""
        names = self.input_names
        if isinstance(inputs, dict):
            missing = [n for n in names if n not in inputs]
            extra = [k for k in inputs if k not in names]
            if missing or extra:
                raise ValueError(f"TFLiteLayer '{self.name}': inputs {sorted(inputs)} do not "
                                 f"match the model's {names}.")
            return [inputs[n] for n in names]
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(names):
                raise ValueError(f"TFLiteLayer '{self.name}': got {len(inputs)} inputs, the "
                                 f"model has {len(names)}: {names}.")
            return list(inputs)
        if len(names) != 1:
            raise ValueError(f"TFLiteLayer '{self.name}': the model has {len(names)} inputs "
                             f"{names}; pass a list (in this order) or a dict.")
        return [inputs]

    def _check_shapes(self, shapes) -> int | None:
        """Check input shapes against the model; return the static batch size (or None)."""
        batch = None
        for t, shape in zip(self._interface.inputs, shapes):
            shape = tuple(shape) if shape is not None else None
            if shape is None:
                continue
            if len(shape) != len(t.shape) or any(
                e is not None and a is not None and e != a for e, a in zip(t.shape, shape)
            ):
                raise ValueError(f"TFLiteLayer '{self.name}': input '{t.name}' has shape "
                                 f"{shape}, the model expects {t.shape}.")
            if self._interface.batched and shape and shape[0] is not None:
                batch = shape[0]
        return batch

    def _output_shapes(self, batch):
        shapes = []
        for t in self._interface.outputs:
            shape = list(t.shape)
            if self._interface.batched and shape:
                shape[0] = batch
            shapes.append(tuple(shape))
        return shapes

    def _structure(self, values):
        if len(values) == 1:
            return values[0]
        return {t.name: v for t, v in zip(self._interface.outputs, values)}

    def compute_output_shape(self, input_shape):
        shapes = self._input_list(input_shape) if len(self.input_names) > 1 else [input_shape]
        batch = self._check_shapes(shapes)
        return self._structure(self._output_shapes(batch))

    def compute_output_spec(self, inputs):
        batch = self._check_shapes([x.shape for x in self._input_list(inputs)])
        return self._structure([
            keras.KerasTensor(shape, dtype=t.dtype)
            for t, shape in zip(self._interface.outputs, self._output_shapes(batch))
        ])

    # ---- call -----------------------------------------------------------------------------

    def _predict_numpy(self, *arrays):
        """What runs inside the numpy_function: the runner, on numpy arrays."""
        runner = self.runner()
        feeds = {t.name: np.asarray(a) for t, a in zip(self._interface.inputs, arrays)}
        outputs = runner.predict(feeds, signature_key=self.signature_key,
                                 dequantize=self.dequantize)
        return [np.asarray(outputs[t.name], dtype=t.dtype) for t in self._interface.outputs]

    def call(self, inputs):
        self._model()  # fail at trace time, not inside the graph, when the bytes are missing
        backend = keras.backend.backend()
        if backend == "jax":
            return self._call_jax(self._input_list(inputs))
        if backend == "torch":
            return self._call_torch(self._input_list(inputs))
        if backend != "tensorflow":
            raise ValueError(f"TFLiteLayer '{self.name}' cannot run on the Keras backend "
                             f"'{backend}': it runs LiteRT on the host from TensorFlow, JAX or "
                             "PyTorch only.")
        import tensorflow as tf

        flat = self._input_list(inputs)
        flat = [tf.convert_to_tensor(x) for x in flat]
        batch = self._check_shapes([tuple(x.shape) for x in flat])
        outputs = tf.numpy_function(
            self._predict_numpy, flat,
            Tout=[tf.as_dtype(t.dtype) for t in self._interface.outputs],
            # Stateful models are not pure: keep every call (never deduplicated or folded).
            stateful=bool(self._model().is_stateful),
            name="tflite_layer",
        )
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        results = []
        for y, shape in zip(outputs, self._output_shapes(batch)):
            y.set_shape(shape)
            results.append(tf.stop_gradient(y))
        return self._structure(results)

    def _concrete_output_shapes(self, flat):
        batch = self._check_shapes([tuple(x.shape) for x in flat])
        shapes = self._output_shapes(batch)
        if any(d is None for shape in shapes for d in shape):
            raise ValueError(f"TFLiteLayer '{self.name}': output shapes {shapes} are not all "
                             "known from the input shapes; JAX needs them before the call.")
        return shapes

    def _call_jax(self, flat):
        """LiteRT on the host through ``jax.pure_callback`` (``io_callback`` for stateful
        models, so no call is dropped or merged). Frozen: inputs and outputs pass through
        ``stop_gradient``, so no gradient reaches the callback, which has none."""
        import jax
        from jax.experimental import io_callback

        flat = [jax.lax.stop_gradient(jax.numpy.asarray(x)) for x in flat]
        specs = [jax.ShapeDtypeStruct(tuple(shape), t.dtype) for t, shape in
                 zip(self._interface.outputs, self._concrete_output_shapes(flat))]

        def host(*arrays):
            return tuple(self._predict_numpy(*[np.asarray(a) for a in arrays]))

        if self._model().is_stateful:
            outputs = io_callback(host, tuple(specs), *flat, ordered=True)
        else:
            outputs = jax.pure_callback(host, tuple(specs), *flat, vmap_method="sequential")
        return self._structure([jax.lax.stop_gradient(y) for y in outputs])

    def _call_torch(self, flat):
        """LiteRT on the host, outside autograd (``torch.no_grad``): frozen, and no gradient
        flows through it to earlier layers."""
        import torch

        device = next((x.device for x in flat if isinstance(x, torch.Tensor)), None)
        with torch.no_grad():
            arrays = [np.asarray(x.detach().cpu().numpy()) if isinstance(x, torch.Tensor)
                      else np.asarray(x) for x in flat]
            outputs = [torch.from_numpy(np.ascontiguousarray(y)) for y in
                       self._predict_numpy(*arrays)]
        if device is not None:
            outputs = [y.to(device) for y in outputs]
        return self._structure(outputs)


__all__ = ["TFLiteLayer"]
