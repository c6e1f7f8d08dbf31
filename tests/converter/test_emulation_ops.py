"""Emulated full-int8 reconstructions replay the integer kernels LiteRT runs for ops whose float
layer plus rounding lands a step away: TFLite's int8 HARD_SWISH (16-bit fixed point), SQRT
(float32, truncated), AVERAGE_POOL_2D (integer sum, rounded division) and SQUARED_DIFFERENCE
(q31 multipliers), XNNPACK's qs8 LEAKY_RELU (8-bit multipliers) and RESIZE_BILINEAR (11-bit
weights). Each op follows a convolution in a single-op model: every output element at 0
steps, eagerly and under ``predict``; a 5% change on the convolution's kernel is rejected;
the layers save and load with ``safe_mode=True`` and pass gradients to the kernel."""

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
    }


OPS = ["hard_swish", "hard_swish_small", "leaky_relu", "leaky_relu_03", "sqrt", "avg_pool",
       "avg_pool_same", "resize_half_pixel", "resize_down", "resize_legacy", "resize_align_corners",
       "squared_difference"]
KERNEL_OP = {"hard_swish": "HARD_SWISH", "leaky_relu": "LEAKY_RELU", "sqrt": "SQRT",
             "avg_pool": "AVERAGE_POOL_2D", "resize": "RESIZE_BILINEAR",
             "squared_difference": "SQUARED_DIFFERENCE"}


def _model(name):
    fn, inputs = _ops()[name]
    return op_tflite(f"emulation-op-{name}", fn, inputs, "full-int8")


def _kernel_layers(model):
    from mlflow_tflite_keras.converter.layers.integer_kernels import IntegerKernel

    return [layer for layer in model._flatten_layers() if isinstance(layer, IntegerKernel)]


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
    for name in ("hard_swish", "avg_pool_same", "resize_legacy", "squared_difference"):
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
    assert kinds == {"lookup", "average_pool", "resize_bilinear", "squared_difference"}
