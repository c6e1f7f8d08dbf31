"""Single-op conversion tests: tf.function -> .tflite (cached) -> to_keras -> parity -> .keras.

Usage in a family's test module::

    from converter.op_harness import check_op

    def test_sqrt():
        check_op("SQRT", lambda x: tf.sqrt(x), [((2, 5), "positive")])

``inputs`` lists one ``(shape, kind)`` per input; kinds: "float" (uniform -1..1), "positive"
(0.1..2), "int" (0..9), "bool", or a numpy array used as is (the shape is then ignored).
A leading ``None`` in the shape makes the batch dimension dynamic.
"""

from __future__ import annotations

import inspect
import os
import tempfile

import numpy as np

from model_factory import cached

_DTYPES = {"float": "float32", "positive": "float32", "int": "int32", "bool": "bool"}


class case_fn:
    """A test function with parameters bound, for parametrized tests that share one lambda:
    its ``repr`` (part of the model cache key) includes the parameters."""

    def __init__(self, fn, **params):
        self.fn, self.params = fn, params
        self.key = f"{inspect.getsource(fn).strip()} {sorted(params.items())}"

    def __call__(self, *args):
        return self.fn(*args, **self.params)

    def __repr__(self):
        return self.key


def sample(shape, kind, rng, batch=3):
    if isinstance(kind, np.ndarray):
        return kind
    shape = [batch if d is None else d for d in shape]
    if kind == "float":
        return rng.uniform(-1, 1, shape).astype(np.float32)
    if kind == "positive":
        return rng.uniform(0.1, 2, shape).astype(np.float32)
    if kind == "int":
        return rng.integers(0, 10, shape).astype(np.int32)
    if kind == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    raise ValueError(kind)


def op_tflite(name: str, fn, inputs, recipe: str = "float32", rep_seed: int = 0,
              custom_ops: bool = False) -> bytes:
    """Convert ``fn`` (a function of tf tensors) to .tflite with the given recipe, cached;
    ``custom_ops``: TF ops TFLite ships as custom operators (AudioSpectrogram, Mfcc) allowed."""

    def build():
        import tensorflow as tf

        specs = [tf.TensorSpec(shape, _DTYPES.get(kind, None) if not isinstance(kind, np.ndarray)
                               else kind.dtype) for shape, kind in inputs]
        func = tf.function(fn, input_signature=specs, autograph=False)
        concrete = func.get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], func)
        converter.allow_custom_ops = custom_ops
        if recipe != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if recipe == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if recipe in ("full-int8", "int16x8"):
            rng = np.random.default_rng(rep_seed)

            def representative():
                for _ in range(20):
                    yield [sample(shape, kind, rng, batch=1) for shape, kind in inputs]

            converter.representative_dataset = representative
            if recipe == "full-int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            else:
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return converter.convert()

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = repr(fn)
    key = [source, recipe, [(s, k if not isinstance(k, np.ndarray) else k.tobytes().hex())
                            for s, k in inputs]]
    return cached(f"op-{name}-{recipe}", build, *key, *(["custom"] if custom_ops else []))


def check_op(op_type: str, fn, inputs, *, recipe: str = "float32", seed: int = 0,
             expect_ops=None, roundtrip: bool = True, custom_ops: bool = False, **tolerances):
    """Build a single-op model, check it contains ``op_type``, convert it and check parity
    (and, by default, the ``.keras`` round trip with ``safe_mode=True``).

    Returns ``(keras_model, report)``.
    """
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data = op_tflite(op_type.lower(), fn, inputs, recipe, custom_ops=custom_ops)
    runner_inputs = _feeds(TFLiteModel(data), inputs, np.random.default_rng(seed))
    return _check(data, expect_ops or [op_type], [runner_inputs], roundtrip, tolerances)


def _feeds(model, inputs, rng):
    from mlflow_tflite_keras.runtime import TFLiteRunner

    from mlflow_tflite_keras.converter.parity import snap_to_input_grid

    spec = TFLiteRunner(model).signature()
    feeds = {}
    for s, (shape, kind) in zip(spec.inputs, inputs):
        feeds[s.name] = sample(shape, kind, rng)
        if s.quantized:
            feeds[s.name] = feeds[s.name].astype(np.float32)
    return snap_to_input_grid(model, feeds)

def check_model(data, op_types, inputs_list, roundtrip=True, **tolerances):
    """to_keras + parity on each input set (each run on a fresh interpreter) + .keras reload,
    for models made elsewhere (hand-written flatbuffers, Keras models)."""
    return _check(data, op_types, inputs_list, roundtrip, tolerances)[0]


# One op is judged tighter than a whole model: with inputs on the model's quantization grid,
# every builtin's integer kernel is within 0.8 steps of the float op (measured), and the
# hybrid kernels within 0.004 of the output range.
SINGLE_OP_TOLERANCES = {
    "full-int8": {"max_steps": 1.0},
    "full-uint8": {"max_steps": 1.0},
    "int16x8": {"max_steps": 1.0},
    "dynamic-range": {"max_rel_error": 1e-2},
}


def _check(data, op_types, inputs_list, roundtrip, tolerances):
    """The ops are present; parity holds on every input set (eager and compiled), and again
    after a ``.keras`` round trip with ``safe_mode=True``; for full-integer models, a 5%
    error is rejected. Returns the Keras model and the first report."""
    import keras

    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    source = TFLiteModel(data)
    present = set(source.operator_names)
    for op_type in op_types:
        assert op_type in present, f"{op_type} not in the converted model's ops {present}"
    tolerances = {**SINGLE_OP_TOLERANCES.get(source.quantization_kind, {}), **tolerances}
    model = to_keras(data)
    reports = [check_parity(data, model, inputs, **tolerances) for inputs in inputs_list]
    for report in reports:
        assert report.passed, str(report)
        assert report.compiled is not None and report.compiled.passed, str(report)
    if roundtrip:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.keras")
            model.save(path)
            reloaded = keras.saving.load_model(path, safe_mode=True)
        for inputs in inputs_list:
            report = check_parity(data, reloaded, inputs, **tolerances)
            assert report.passed, "after .keras reload: " + str(report)
    if source.quantization_kind in ("full-int8", "full-uint8", "int16x8"):
        # Last: wrapping the model for the check adds a node to it.
        wrong = five_percent_off(model)
        if wrong is not None:
            report = check_parity(data, wrong, inputs_list[0], compiled=False, **tolerances)
            _restore(model)
            assert not report.passed, "a 5% error passed the check:\n" + str(report)
    return model, reports[0]


def perturbed(model, factor=1.05, weight=None):
    """Scale one middle kernel of ``model`` in place (or ``weight``); returns an undo."""
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    weight = kernels[len(kernels) // 2] if weight is None else weight
    original = np.array(weight.numpy())
    weight.assign(original * factor)
    return lambda: weight.assign(original)


def assert_kernel_change_fails(data, model, inputs, weight=None, **parity_args):
    """``check_parity`` of ``model`` against ``data`` fails once one middle kernel (or
    ``weight``) is scaled by 1.05; the model is restored after. Returns the failing report."""
    from mlflow_tflite_keras.converter.parity import check_parity

    undo = perturbed(model, weight=weight)
    try:
        wrong = check_parity(data, model, inputs, **{"compiled": False, **parity_args})
    finally:
        undo()
    assert not wrong.passed, f"a 5% kernel change passed\n{wrong}"
    return wrong


_UNDO = {}


def five_percent_off(model):
    """``model`` with a kernel scaled by 1.05 (undo with ``_restore``), or for weightless ops
    a model whose float outputs are scaled by 1.05; None when no output can show it."""
    import keras

    if any(w.path.endswith("kernel") for w in model.trainable_weights):
        _UNDO[id(model)] = perturbed(model)
        return model
    if not any("float" in str(o.dtype) for o in model.outputs):
        return None
    fresh = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), model.input)
    outputs = keras.tree.flatten(model(fresh))
    return keras.Model(fresh, [o * 1.05 if "float" in str(o.dtype) else o for o in outputs])


def _restore(model):
    undo = _UNDO.pop(id(model), None)
    if undo is not None:
        undo()


def check_export(source, model, feeds, representative_data=None, **tolerances):
    """``export_tflite(model, like=source)``: TFLite builtins only (no Flex or custom op), the
    source's interface, and answers like the Keras model on ``feeds``. Returns the export."""
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.export import export_tflite
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    new = export_tflite(model, like=source, representative_data=representative_data)
    exported = TFLiteModel(new)
    assert not exported.custom_ops, exported.custom_ops
    assert not [op for op in exported.operator_names if op.startswith("Flex")]
    report = check_parity(new, model, feeds, **tolerances)
    assert report.passed, str(report)
    return exported
