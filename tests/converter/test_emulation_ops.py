"""Emulated full-int8 reconstructions replay the integer kernels LiteRT runs for ops whose float
layer plus rounding lands a step away: TFLite's int8 HARD_SWISH (16-bit fixed point), SQRT
(float32, truncated), AVERAGE_POOL_2D (integer sum, rounded division) and SQUARED_DIFFERENCE
(q31 multipliers), XNNPACK's qs8 LEAKY_RELU (8-bit multipliers), RESIZE_BILINEAR (11-bit
weights) and MUL (float32 scale of the integer product). Each op follows a convolution in a
single-op model: every output element at 0 steps, eagerly and under ``predict``; a 5% change
on the convolution's kernel is rejected; the layers save and load with ``safe_mode=True`` and
pass gradients to the kernel."""

from __future__ import annotations

import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails, op_tflite
from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_model import TFLiteModel

X = ([1, 8, 8, 4], "float")
_W = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype(np.float32) * 0.4


def _conv(x, gain=1.0):
    import tensorflow as tf

    return tf.nn.conv2d(x, tf.constant(_W * gain), 1, "SAME")


def _image(size):
    import tensorflow as tf

    return lambda x: tf.image.resize(_conv(x), size, "bilinear")


def _legacy(size, align_corners=False):
    import tensorflow as tf

    return lambda x: tf.compat.v1.image.resize_bilinear(_conv(x), size,
                                                        align_corners=align_corners)


def _ops():
    import tensorflow as tf

    return {
        "hard_swish": (lambda x: (lambda y: y * tf.nn.relu6(y + 3.0) / 6.0)(_conv(x)), [X]),
        # small scales: the fixed-point "relu-ish" multiplier shifts right, not left
        "hard_swish_small": (lambda x: (lambda y: y * tf.nn.relu6(y + 3.0) / 6.0)(
            _conv(x, 0.05)), [X]),
        "leaky_relu": (lambda x: tf.nn.leaky_relu(_conv(x), 0.1), [X]),
        "leaky_relu_03": (lambda x: tf.nn.leaky_relu(_conv(x), 0.3), [X]),
        "sqrt": (lambda x: tf.sqrt(tf.abs(_conv(x))), [X]),
        "avg_pool": (lambda x: tf.nn.avg_pool2d(_conv(x), 2, 2, "VALID"), [X]),
        "avg_pool_same": (lambda x: tf.nn.avg_pool2d(_conv(x), 3, 2, "SAME"), [X]),
        "resize_half_pixel": (_image([16, 16]), [X]),
        "resize_down": (_image([5, 7]), [X]),
        "resize_legacy": (_legacy([13, 16]), [X]),
        "resize_align_corners": (_legacy([16, 11], align_corners=True), [X]),
        "squared_difference": (lambda a, b: tf.math.squared_difference(_conv(a), b),
                               [X, ([1, 8, 8, 8], "float")]),
        # squeeze-excite's broadcast MUL (EfficientNet): many products, so some fall on the
        # float32 scale's rounding boundary
        "mul_broadcast": (lambda a, b: _conv(a) * tf.sigmoid(b),
                          [([1, 32, 32, 4], "float"), ([1, 1, 1, 8], "float")]),
    }


OPS = ["hard_swish", "hard_swish_small", "leaky_relu", "leaky_relu_03", "sqrt", "avg_pool",
       "avg_pool_same", "resize_half_pixel", "resize_down", "resize_legacy", "resize_align_corners",
       "squared_difference", "mul_broadcast"]
KERNEL_OP = {"mul": "MUL", "hard_swish": "HARD_SWISH", "leaky_relu": "LEAKY_RELU",
             "sqrt": "SQRT", "avg_pool": "AVERAGE_POOL_2D", "resize": "RESIZE_BILINEAR",
             "squared_difference": "SQUARED_DIFFERENCE"}


def _model(name):
    fn, inputs = _ops()[name]
    return op_tflite(f"emulation-op-{name}", fn, inputs, "full-int8")


def _kernel_layers(model):
    from mlflow_tflite_keras.converter.layers.integer_kernels import IntegerKernel
    from mlflow_tflite_keras.converter.layers.quantization import IntegerArithmetic

    return [layer for layer in model._flatten_layers()
            if isinstance(layer, IntegerKernel) or
            (isinstance(layer, IntegerArithmetic) and layer.kind == "mul")]


@pytest.mark.parametrize("name", OPS)
def test_full_int8_op_is_bit_exact(name):
    data = _model(name)
    op_type = next(v for k, v in KERNEL_OP.items() if name.startswith(k))
    assert op_type in TFLiteModel(data).operator_names
    model = convert(data, emulate_quantization=True).model
    assert _kernel_layers(model), "the op's integer kernel is not replayed"
    for compiled in (False, True):
        report = check_parity(data, model, compiled=compiled, seed=3)
        assert report.passed, str(report)
        for out in report.outputs:
            assert out.max_steps == 0 and out.share_exact == 1.0, f"{name}: {report}"
    assert_kernel_change_fails(data, model, None, seed=3)


def test_kernel_layers_save_load_and_train(tmp_path):
    """Every kind of kernel layer reloads with ``safe_mode=True`` to the same outputs, and
    the convolution's kernel before it gets a gradient (straight-through)."""
    import keras
    import tensorflow as tf

    kinds = set()
    for name in ("hard_swish", "avg_pool_same", "resize_legacy", "squared_difference",
                 "mul_broadcast"):
        model = convert(_model(name), emulate_quantization=True).model
        kinds |= {layer.kind for layer in _kernel_layers(model)}
        rng = np.random.default_rng(4)
        feeds = [rng.uniform(-1, 1, (1, *i.shape[1:])).astype(np.float32)
                 for i in model.inputs]
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_array_equal(np.asarray(model(feeds)), np.asarray(loaded(feeds)))
        kernel = next(w for w in model.trainable_weights if w.path.endswith("kernel"))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(feeds, training=True)))
        gradient = tape.gradient(loss, kernel.value)
        assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0, name
    assert kinds == {"lookup", "average_pool", "resize_bilinear", "squared_difference", "mul"}


def _with_dyadic_mul_scale(data: bytes) -> bytes:
    """The model with its MUL's output scale set to ``8 * a_scale * b_scale`` (float32): the
    kernel's float32 scale is then exactly 1/8, so an eighth of the integer products land
    exactly on a half step, where XNNPACK rounds half to even and a float product lands
    wherever its own rounding puts it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    sg = model.subgraphs[0]
    mul = next(op for op in sg.operators
               if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.MUL)
    a, b = (sg.tensors[i].quantization.scale[0] for i in mul.inputs)
    sg.tensors[mul.outputs[0]].quantization.scale = \
        np.array([np.float32(a) * np.float32(b) * np.float32(8)], np.float32)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_mul_rounds_its_float32_scaled_product_half_to_even():
    """XNNPACK's qs8 MUL (EfficientNet's swish and squeeze-excite): the integer product times
    the float32 ``a_scale * b_scale / output_scale``, rounded half to even. A float product
    plus rounding is a step off on ties (rare at calibrated scales: 1 element in ~10^5 in
    EfficientNetB0; an eighth of them here)."""
    data = _with_dyadic_mul_scale(_model("mul_broadcast"))
    model = convert(data, emulate_quantization=True).model
    assert _kernel_layers(model), "the MUL's integer kernel is not replayed"
    for compiled in (False, True):
        report = check_parity(data, model, compiled=compiled, seed=3)
        for out in report.outputs:
            assert out.max_steps == 0 and out.share_exact == 1.0, str(report)
    assert_kernel_change_fails(data, model, None, seed=3)
