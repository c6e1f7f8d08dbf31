"""Test models: generated with Keras / tf.function and TFLiteConverter, cached on disk.

The cache key is the model's name, recipe and the source of its builder, so editing a builder
regenerates its models. Nothing is downloaded: Keras applications use ``weights=None`` and
data comes from ``sklearn.datasets.load_digits``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path

import numpy as np

# Outside the checkout so fresh clones on the same machine (CI) reuse generated models.
CACHE_DIR = Path(os.environ.get("TFLITE_TEST_MODEL_CACHE",
                                Path.home() / ".cache" / "mlflow-tflite-keras" / "test-models"))


def fingerprint(obj) -> str:
    """A stable description of what a builder depends on: its source, and recursively the
    values it closes over and its defaults (so parametrized lambdas get distinct keys)."""
    if callable(obj) and hasattr(obj, "__code__"):
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            source = obj.__code__.co_code.hex()
        cells = [c.cell_contents for c in (obj.__closure__ or ()) if _filled(c)]
        return source + fingerprint(cells) + fingerprint(obj.__defaults__)
    if isinstance(obj, np.ndarray):
        return f"nd{obj.dtype}{obj.shape}{hashlib.sha256(obj.tobytes()).hexdigest()}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(fingerprint(o) for o in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{k!r}:{fingerprint(v)}" for k, v in sorted(obj.items(),
                                                                          key=lambda i: repr(i[0]))) + "}"
    if isinstance(obj, type(np)):  # modules: their name is enough
        return obj.__name__
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))  # addresses change every run


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def cached(name: str, build, *key_parts) -> bytes:
    """Return ``build()`` (tflite bytes), cached under ``name`` + the builder's fingerprint."""
    digest = hashlib.sha256("|".join([fingerprint(build), *map(str, key_parts)]).encode()
                            ).hexdigest()[:16]
    path = CACHE_DIR / f"{name}-{digest}.tflite"
    if path.exists():
        return path.read_bytes()
    data = build()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def digits():
    """(x, y): sklearn digits as 8x8x1 float32 images in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return x, d.target.astype(np.int64)


def calibrate_batch_norm(model, x):
    """Set every BatchNormalization's moving statistics to those of ``x`` (one training-mode
    pass with momentum 0). Freshly initialized statistics make the signal vanish through deep
    networks, so their outputs would not depend on the input and parity would prove nothing."""
    import keras

    bns = [layer for layer in model._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model


def keras_model_tflite(name: str, make_model, recipe: str = "float32", representative=None,
                       **convert_kwargs) -> bytes:
    """Build a Keras model with ``make_model()`` and convert it with a recipe, cached."""

    def build():
        from mlflow_tflite_keras.export import keras_to_tflite

        model = make_model()
        rep = representative() if callable(representative) else representative
        return keras_to_tflite(model, recipe, representative_data=rep, **convert_kwargs)

    return cached(f"{name}-{recipe}", build, inspect.getsource(make_model) if callable(make_model)
                  else "", recipe, sorted(convert_kwargs.items()))


def concrete_functions_tflite(name: str, make_functions, **converter_attrs) -> bytes:
    """Convert ``make_functions() -> (functions, trackable)`` (tf.function concrete functions,
    several give a multi-signature model), cached."""

    def build():
        import tensorflow as tf

        functions, trackable = make_functions()
        converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, trackable)
        for k, v in converter_attrs.items():
            setattr(converter, k, v)
        return converter.convert()

    return cached(name, build, inspect.getsource(make_functions), sorted(converter_attrs))


def saved_model_tflite(name: str, make_module, signature_keys=None, **converter_attrs) -> bytes:
    """Save ``make_module()`` (a tf.Module with signatures) and convert it, cached."""

    def build():
        import tempfile

        import tensorflow as tf

        module, signatures = make_module()
        with tempfile.TemporaryDirectory() as d:
            tf.saved_model.save(module, d, signatures=signatures)
            converter = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=signature_keys)
            for k, v in converter_attrs.items():
                setattr(converter, k, v)
            return converter.convert()

    return cached(name, build, inspect.getsource(make_module), signature_keys,
                  sorted(converter_attrs))


def digits_trained_tflite(name: str, make_model, epochs: int = 3) -> bytes:
    """``make_model()`` (an 8x8x1 -> 10 softmax classifier) trained ``epochs`` on the digits,
    as a float32 ``.tflite``, cached: its outputs depend on its input."""

    def make():
        model = make_model()
        model.compile("adam", "sparse_categorical_crossentropy")
        x, y = digits()
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=False)
        return model

    return keras_model_tflite(f"{name}-digits{epochs}", make)


#: ai-edge-quantizer recipe per quantization kind it makes (TFLiteModel.quantization_kind).
QUANTIZER_KINDS = ("weight-only-int8", "dynamic-range-int8", "weight-only-int4",
                   "dynamic-range-int4", "dynamic-range-int4-blockwise-32", "dynamic-range-int2",
                   "mixed")


def _quantizer_recipe(kind: str):
    from ai_edge_quantizer import qtyping, recipe, recipe_manager

    if kind == "mixed":  # int4 fully-connected weights, int8 elsewhere (LLM-style)
        manager = recipe_manager.RecipeManager()
        manager.add_dynamic_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8)
        manager.add_dynamic_config(".*", qtyping.TFLOperationName.FULLY_CONNECTED, num_bits=4)
        return manager.get_quantization_recipe()
    return {
        "weight-only-int8": recipe.weight_only_wi8_afp32,
        "dynamic-range-int8": recipe.dynamic_wi8_afp32,
        "weight-only-int4": recipe.weight_only_wi4_afp32,
        "dynamic-range-int4": recipe.dynamic_wi4_afp32,
        "dynamic-range-int4-blockwise-32": recipe.dynamic_wi4b32_afp32,
        "dynamic-range-int2": recipe.dynamic_wi2c_afp32,
    }[kind]()


_FLOAT_MODELS: dict[str, bytes] = {}


def quantized_tflite(name: str, float_tflite: bytes, kind: str) -> bytes:
    """``float_tflite`` quantized by ai-edge-quantizer (the pinned test dependency) with the
    recipe of :data:`QUANTIZER_KINDS` named ``kind``; cached by the float model's content."""
    from importlib.metadata import version

    digest = hashlib.sha256(float_tflite).hexdigest()
    _FLOAT_MODELS[digest] = float_tflite  # held outside the builder: the digest is its key

    def build():
        from ai_edge_quantizer import quantizer

        result = quantizer.Quantizer(bytearray(_FLOAT_MODELS[digest]), _quantizer_recipe(kind)
                                     ).quantize(enable_progress_report=False)
        return bytes(result.quantized_model)

    return cached(f"{name}-{kind}", build, digest, kind, version("ai-edge-quantizer"))


# ---- models for the quantization-emulation tests (tests/converter/test_emulation*.py) ---------

TONE_CLASSES, TONE_SAMPLES = 4, 256


def tones(n: int = 512, seed: int = 0):
    """(x, y): ``n`` synthetic audio clips of ``TONE_SAMPLES`` samples ``[n, TONE_SAMPLES, 1]``
    float32 in about [-1, 1], with labels: a low tone, a high tone, a rising and a falling
    chirp, each at a random phase, amplitude and frequency jitter, plus white noise. Made
    deterministically (nothing downloaded); a small CNN learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    t = np.arange(TONE_SAMPLES, dtype=np.float64)
    y = np.arange(n) % TONE_CLASSES
    x = np.empty((n, TONE_SAMPLES), np.float64)
    for i, label in enumerate(y):
        jitter = rng.uniform(0.9, 1.1)
        f0, f1 = {0: (0.03, 0.03), 1: (0.15, 0.15), 2: (0.02, 0.2), 3: (0.2, 0.02)}[int(label)]
        # instantaneous frequency f0 -> f1 (cycles per sample), linearly over the clip
        phase = 2 * np.pi * jitter * (f0 * t + (f1 - f0) * t ** 2 / (2 * TONE_SAMPLES))
        x[i] = rng.uniform(0.3, 0.9) * np.sin(phase + rng.uniform(0, 2 * np.pi)) \
            + rng.normal(0, 0.1, TONE_SAMPLES)
    return x.astype(np.float32)[..., None], y.astype(np.int64)


def make_audio_cnn():
    """A keyword-spotter-shaped 1-D CNN on the :func:`tones` waveforms: a strided Conv1D front
    end (a learned filter bank), two Conv1D blocks, pooling, a softmax head; trained 10
    epochs (its outputs depend on its input). Every weight but the front end's has >= 1024
    elements, so the dynamic-range recipe quantizes it (hybrid kernels)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((TONE_SAMPLES, 1)),
        keras.layers.Conv1D(16, 16, strides=4, padding="same", activation="relu"),
        keras.layers.Conv1D(32, 5, strides=2, padding="same", activation="relu"),
        keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(TONE_CLASSES, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = tones()
    model.fit(x, y, epochs=10, batch_size=32, verbose=0, shuffle=False)
    return model


def make_digits_lstm():
    """A small sequence classifier: each 8x8 digit read as 8 time steps of 8 features by a
    ``keras.layers.LSTM(32)`` and a softmax head, trained 8 epochs, then rebuilt with a fixed
    batch of 1 (TFLiteConverter lowers a Keras 3 LSTM, a WHILE loop, only with a static
    batch). The recurrent kernel (32x128) and kernel (8x128) have >= 1024 values: the
    dynamic-range recipe quantizes both (hybrid FULLY_CONNECTED in the loop body)."""
    import keras

    def build(batch_size=None):
        keras.utils.set_random_seed(0)
        rows = keras.Input((8, 8), batch_size=batch_size)
        h = keras.layers.LSTM(32)(rows)
        return keras.Model(rows, keras.layers.Dense(10, activation="softmax")(h))

    model = build()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = digits()
    model.fit(x[..., 0], y, epochs=8, batch_size=32, verbose=0, shuffle=False)
    fixed = build(batch_size=1)
    fixed.set_weights(model.get_weights())
    return fixed


def fusable_lstm():
    """TensorFlow's fusable LSTM function (Keras 2's ``api_implements="lstm_..."`` contract):
    TFLiteConverter turns each call into one UNIDIRECTIONAL_SEQUENCE_LSTM.
    ``(inputs, init_h, init_c, kernel, recurrent_kernel, bias) -> (last output, sequence, h, c,
    1.0)``, Keras' gate order (i, f, g, o)."""
    import uuid

    import tensorflow as tf

    def standard_lstm(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
        h, c, outs = init_h, init_c, []
        for x in tf.unstack(inputs, axis=1):
            z = tf.matmul(x, kernel) + tf.matmul(h, recurrent_kernel) + bias
            z0, z1, z2, z3 = tf.split(z, 4, axis=1)
            c = tf.sigmoid(z1) * c + tf.sigmoid(z0) * tf.tanh(z2)
            h = tf.sigmoid(z3) * tf.tanh(c)
            outs.append(h)
        outputs = tf.stack(outs, axis=1)
        return outputs[:, -1], outputs, h, c, tf.constant(1.0)

    return tf.function(standard_lstm, autograph=False, experimental_attributes={
        "api_implements": f"lstm_{uuid.uuid4()}", "time_major": False, "go_backwards": False})


def digits_fused_lstm_tflite(recipe: str, **io_types) -> bytes:
    """:func:`make_digits_lstm`'s trained weights in TensorFlow's fusable LSTM function (the
    ``api_implements="lstm_..."`` contract of Keras 2's LSTM), so TFLiteConverter emits one
    UNIDIRECTIONAL_SEQUENCE_LSTM (a Keras 3 LSTM becomes a WHILE loop, whose full-integer
    calibration crashes TF 2.21's converter); under full-int8 that is TFLite's integer LSTM
    kernel (int8 weights and activations, int32 gate biases, INT16 cell state). Fixed batch
    of 1; cached. ``io_types``: ``inference_input_type`` / ``inference_output_type``."""

    def build():
        import keras
        import tensorflow as tf

        from mlflow_tflite_keras.keras_export import convert_with_recipe

        trained = make_digits_lstm()
        lstm = next(layer for layer in trained.layers if isinstance(layer, keras.layers.LSTM))
        kernel, recurrent, bias = (tf.constant(w) for w in lstm.get_weights())
        dense_kernel, dense_bias = (tf.constant(w) for w in trained.layers[-1].get_weights())

        fused = fusable_lstm()
        module = tf.Module()

        @tf.function(input_signature=[tf.TensorSpec((1, 8, 8), tf.float32)])
        def model(rows):
            zeros = tf.zeros((1, 32))
            h = fused(rows, zeros, zeros, kernel, recurrent, bias)[0]
            return tf.nn.softmax(tf.matmul(h, dense_kernel) + dense_bias)

        module.model = model
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [model.get_concrete_function()], module)
        return convert_with_recipe(converter, recipe, digits()[0][:64, ..., 0], **io_types)

    return cached(f"digits-fused-lstm-{recipe}", build, recipe, sorted(io_types.items()),
                  inspect.getsource(make_digits_lstm), inspect.getsource(fusable_lstm))
