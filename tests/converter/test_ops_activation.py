"""Activation ops: RELU family, LEAKY_RELU, PRELU, ELU, GELU, HARD_SWISH, LOGISTIC, TANH,
SOFTMAX, LOG_SOFTMAX, L2_NORMALIZATION (float, and full-int8 for several)."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import _feeds, check_op, op_tflite

F = "float"
WIDE = np.linspace(-8, 8, 24, dtype=np.float32).reshape(3, 8)  # crosses 0, +-1, +-3, 6
A13 = np.array([[0.1, 0.2, 0.3]], np.float32)
A43 = np.linspace(0.05, 0.5, 12, dtype=np.float32).reshape(4, 3)
A113 = np.array([[[0.25, 0.5, 0.75]]], np.float32)


def patched(data: bytes, edit) -> bytes:
    """``data`` with its flatbuffer edited by ``edit(model: ModelT)``: reaches op variants
    the TF converter never emits (RELU_0_TO_1, ONES_LIKE, SOFTMAX with beta != 1)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(model, schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def retype(old: str, new: str):
    """An ``edit`` for :func:`patched` that turns every ``old`` op into option-less ``new``."""

    def edit(model, schema):
        old_code, new_code = (getattr(schema.BuiltinOperator, n) for n in (old, new))
        hits = []
        for i, oc in enumerate(model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == old_code:
                oc.builtinCode, oc.deprecatedBuiltinCode = new_code, min(new_code, 127)
                hits.append(i)
        assert hits, f"no {old} op to retype"
        for sg in model.subgraphs:
            for op in sg.operators:
                if op.opcodeIndex in hits:
                    op.builtinOptionsType, op.builtinOptions = 0, None

    return edit


def check_model(data: bytes, inputs, op_type: str, seed: int = 0, **tolerances):
    """check_op for an already built (patched) model: op present, parity, .keras reload."""
    import os
    import tempfile

    import keras

    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    model = TFLiteModel(data)
    assert op_type in model.operator_names, model.operator_names
    keras_model = to_keras(data)
    feeds = _feeds(model, inputs, np.random.default_rng(seed))
    report = check_parity(data, keras_model, feeds, **tolerances)
    assert report.passed, str(report)
    with tempfile.TemporaryDirectory() as d:
        keras_model.save(os.path.join(d, "m.keras"))
        reloaded = keras.saving.load_model(os.path.join(d, "m.keras"), safe_mode=True)
    again = check_parity(data, reloaded, feeds, **tolerances)
    assert again.passed, "after .keras reload: " + str(again)
    return keras_model


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


# ---- RELU family -----------------------------------------------------------------------------

@pytest.mark.parametrize("op_type, fn, inputs", [
    ("RELU", lambda x: tf.nn.relu(x), [((None, 5), F)]),
    ("RELU", lambda x: tf.nn.relu(x), [((None, 2, 3, 4), F)]),
    ("RELU6", lambda x: tf.nn.relu6(x), [((3, 8), WIDE)]),
    ("RELU_N1_TO_1", lambda x: tf.clip_by_value(x, -1.0, 1.0), [((3, 8), WIDE)]),
    ("LEAKY_RELU", lambda x: tf.nn.leaky_relu(x, 0.1), [((None, 5), F)]),
    ("LEAKY_RELU", lambda x: tf.nn.leaky_relu(x, alpha=0.3), [((None, 2, 6), F)]),
    ("ELU", lambda x: tf.nn.elu(x), [((3, 8), WIDE)]),
    ("LOGISTIC", lambda x: tf.sigmoid(x), [((3, 8), WIDE)]),
    ("TANH", lambda x: tf.tanh(x), [((None, 2, 5), F)]),
    ("HARD_SWISH", lambda x: x * tf.nn.relu6(x + 3.0) / 6.0, [((3, 8), WIDE)]),
    ("LOG_SOFTMAX", lambda x: tf.nn.log_softmax(x), [((None, 6), F)]),
    ("LOG_SOFTMAX", lambda x: tf.nn.log_softmax(x), [((None, 2, 6), F)]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_activation(op_type, fn, inputs):
    check_op(op_type, fn, inputs)


def test_builtin_keras_layers():
    model, _ = check_op("RELU6", lambda x: tf.nn.relu6(x), [((3, 8), WIDE)])
    assert "ReLU" in layer_types(model)
    model, _ = check_op("LEAKY_RELU", lambda x: tf.nn.leaky_relu(x, 0.1), [((None, 5), F)])
    assert "LeakyReLU" in layer_types(model)
    leaky = next(layer for layer in model.layers if type(layer).__name__ == "LeakyReLU")
    assert leaky.negative_slope == pytest.approx(0.1)


def test_relu_0_to_1_patched():
    """TF's converter leaves clip(x, 0, 1) as RELU + MINIMUM; the op comes from retyping a
    RELU_N1_TO_1 model (same signature, no options), and LiteRT runs it."""
    inputs = [((3, 8), WIDE)]
    data = op_tflite("relu_n1_to_1", lambda x: tf.clip_by_value(x, -1.0, 1.0), inputs)
    model = check_model(patched(data, retype("RELU_N1_TO_1", "RELU_0_TO_1")), inputs,
                        "RELU_0_TO_1")
    out = np.asarray(model(WIDE))
    assert out.min() == 0.0 and out.max() == 1.0


def test_leaky_relu_slopes():
    """alpha > 1 from TF; a negative alpha (valid in TFLite, rejected by keras LeakyReLU)
    by editing LeakyReluOptions, which LiteRT honours."""
    check_op("LEAKY_RELU", lambda x: tf.nn.leaky_relu(x, alpha=1.5), [((3, 8), WIDE)])
    inputs = [((3, 8), WIDE)]
    data = op_tflite("leaky_relu", lambda x: tf.nn.leaky_relu(x, 0.1), [((3, 8), WIDE)])

    def negative_alpha(model, schema):
        for op in model.subgraphs[0].operators:
            if isinstance(op.builtinOptions, schema.LeakyReluOptionsT):
                op.builtinOptions.alpha = -0.5

    model = check_model(patched(data, negative_alpha), inputs, "LEAKY_RELU")
    assert "LeakyReLU" not in layer_types(model)
    assert np.asarray(model(WIDE)).min() >= 0.0

# ---- PRELU -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs, shared", [
    (lambda x: tf.nn.relu(x) + tf.constant(-A13) * tf.nn.relu(-x), [((None, 4, 3), F)], [1]),
    (lambda x: tf.nn.relu(x) + tf.constant(-A43) * tf.nn.relu(-x), [((None, 4, 3), F)], None),
    (lambda x: tf.nn.relu(x) + tf.constant(-A113) * tf.nn.relu(-x), [((None, 2, 4, 3), F)],
     [1, 2]),
], ids=["shared-axis", "full-alpha", "conv-channels"])
def test_prelu(fn, inputs, shared):
    model, _ = check_op("PRELU", fn, inputs)
    layer = next(layer for layer in model.layers if type(layer).__name__ == "PReLU")
    assert layer.shared_axes == shared
    assert len(layer.trainable_weights) == 1


# ---- GELU ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, approximate", [
    (lambda x: tf.nn.gelu(x), False),
    (lambda x: tf.nn.gelu(x, approximate=True), True),
], ids=["exact", "approximate"])
def test_gelu(fn, approximate):
    # Inputs over [-8, 8], where the two forms differ by ~1e-3 of the range (> the 1e-4
    # float tolerance), so parity tells them apart.
    model, _ = check_op("GELU", fn, [((3, 8), WIDE)])
    kerasops = [layer for layer in model.layers if type(layer).__name__ == "KerasOp"]
    if approximate:
        assert kerasops and kerasops[0].fn_kwargs == {"approximate": True}
    else:
        assert not kerasops and "Activation" in layer_types(model)


# ---- SOFTMAX / L2_NORMALIZATION ----------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.nn.softmax(x), [((None, 6), F)]),
    (lambda x: tf.nn.softmax(x), [((None, 2, 3, 5), F)]),
], ids=["2d", "4d"])
def test_softmax(fn, inputs):
    check_op("SOFTMAX", fn, inputs)


def test_softmax_beta_patched():
    """TF emits MUL + SOFTMAX for softmax(beta * x); beta != 1 comes from editing the op's
    SoftmaxOptions, which LiteRT honours."""
    inputs = [((3, 8), WIDE)]
    data = op_tflite("softmax", lambda x: tf.nn.softmax(x), inputs)

    def set_beta(model, schema):
        for op in model.subgraphs[0].operators:
            if isinstance(op.builtinOptions, schema.SoftmaxOptionsT):
                op.builtinOptions.beta = 0.4

    model = check_model(patched(data, set_beta), inputs, "SOFTMAX")
    assert any(getattr(layer, "fn", None) == "multiply" for layer in model.layers)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.nn.l2_normalize(x, axis=-1), [((None, 6), F)]),
    (lambda x: tf.nn.l2_normalize(x, axis=-1), [((None, 3, 4), F)]),
], ids=["2d", "3d"])
def test_l2_normalization(fn, inputs):
    model, _ = check_op("L2_NORMALIZATION", fn, inputs)
    assert "UnitNormalization" in layer_types(model)


# ---- full-int8 -------------------------------------------------------------------------------

@pytest.mark.parametrize("op_type, fn, inputs", [
    ("RELU", lambda x: tf.nn.relu(x), [((None, 8), F)]),
    ("LEAKY_RELU", lambda x: tf.nn.leaky_relu(x, 0.2), [((None, 8), F)]),
    ("PRELU", lambda x: tf.nn.relu(x) + tf.constant(-A13) * tf.nn.relu(-x), [((None, 4, 3), F)]),
    ("LOGISTIC", lambda x: tf.sigmoid(4.0 * x), [((None, 8), F)]),
    ("TANH", lambda x: tf.tanh(2.0 * x), [((None, 8), F)]),
    ("HARD_SWISH", lambda x: x * tf.nn.relu6(x + 3.0) / 6.0, [((3, 8), WIDE)]),
    ("SOFTMAX", lambda x: tf.nn.softmax(x), [((None, 8), F)]),
    ("L2_NORMALIZATION", lambda x: tf.nn.l2_normalize(x, axis=-1), [((None, 8), F)]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_activation_full_int8(op_type, fn, inputs):
    check_op(op_type, fn, inputs, recipe="full-int8")
