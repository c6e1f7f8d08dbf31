"""Emulated reconstructions replay the integer kernels LiteRT runs by default (its XNNPACK
delegate) bit for bit: qs8 convolutions / depthwise / fully connected (fp32 requantization),
ADD (20-bit multipliers, a shift), MEAN (float32 conversion of the int32 sum, ties to even),
and the qd8 input quantization of hybrid CONV_2D. A float layer followed by rounding is one
step off on a few elements per op, which deep models compound (MobileNetV2: 16 steps at the
output); here every element of every output is at 0 steps, and a 5% change on a kernel is
rejected."""

from __future__ import annotations

import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails
from model_factory import digits, keras_model_tflite
from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.parity import check_parity


def _images(n, shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def _conv():  # 3x3 convolution: 576-term sums, where float32 rounding flips a step
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 64)),
                             keras.layers.Conv2D(64, 3, padding="same", activation="relu")])


def _depthwise():  # a depthwise convolution with a fused RELU6
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 64)),
                             keras.layers.DepthwiseConv2D(3, padding="same",
                                                          activation="relu6")])


def _residual_add():  # an inverted-residual ADD: its inputs on different scales
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((16, 16, 32))
    y = keras.layers.Conv2D(32, 1)(x)
    return keras.Model(x, keras.layers.Add()([x, y]))


def _mean():  # global average pooling (MEAN)
    import keras

    return keras.Sequential([keras.Input((4, 4, 64)), keras.layers.GlobalAveragePooling2D()])


def _flat_images(n, shape, seed):
    """Images constant over space: calibrated on these, MEAN's output takes its input's
    scale, so means of 16 integers land on half steps (ties) 1 time in 16."""
    return np.broadcast_to(_images(n, (1, 1, shape[-1]), seed), (n, *shape)).copy()


# name -> (builder, input shape, representative images, has a kernel)
SINGLE_OPS = {
    "conv": (_conv, (16, 16, 64), _images, True),
    "depthwise": (_depthwise, (16, 16, 64), _images, True),
    "residual-add": (_residual_add, (16, 16, 32), _images, True),
    "mean": (_mean, (4, 4, 64), _flat_images, False),
}


def _on_input_grid(data, x):
    """``x`` on the int8 input's grid: the interpreter and the Keras model see the same
    integers (the runtime's own rounding of float feeds is not what is judged)."""
    from mlflow_tflite_keras.runtime import TFLiteRunner
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    s = TFLiteRunner(TFLiteModel.load(data)).signature().inputs[0]
    return s.dequantize(s.quantize(x)).astype(np.float32) if s.quantized else x


def _assert_exact(report):
    assert report.passed, str(report)
    for out in report.outputs:
        assert out.max_steps == 0 and out.share_exact == 1.0, str(report)


@pytest.mark.parametrize("name", list(SINGLE_OPS))
def test_full_int8_op_is_bit_exact(name):
    make, shape, representative, has_kernel = SINGLE_OPS[name]
    data = keras_model_tflite(f"emulation-kernel-{name}", make, "full-int8",
                              representative=lambda: representative(32, shape, seed=1))
    model = convert(data, emulate_quantization=True).model
    x = _on_input_grid(data, _images(64, shape, seed=2))
    report = check_parity(data, model, x)
    print(f"\n{name}: {report}")
    _assert_exact(report)
    if has_kernel:
        assert_kernel_change_fails(data, model, x)


def _inverted_residual_digits():
    """MobileNetV2's op mix on the digits: RELU6 convolutions, depthwise convolutions (one
    strided after a ZeroPadding2D: a PAD op), residual ADDs, MEAN, a softmax head; trained."""
    import keras

    keras.utils.set_random_seed(0)

    def block(x, channels, strides=1):
        y = keras.layers.Conv2D(48, 1, activation="relu6")(x)
        if strides == 2:
            y = keras.layers.ZeroPadding2D(1)(y)
        y = keras.layers.DepthwiseConv2D(3, strides=strides, activation="relu6",
                                         padding="same" if strides == 1 else "valid")(y)
        return keras.layers.Conv2D(channels, 1)(y)

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu6")(inputs)
    x = keras.layers.Add()([x, block(x, 16)])
    x = block(x, 24, strides=2)
    x = keras.layers.Add()([x, block(x, 24)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = digits()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    return model


def test_inverted_residual_model_is_bit_exact():
    """A deeper model of MobileNetV2's op mix: every output element at 0 steps."""
    data = keras_model_tflite("emulation-inverted-residual", _inverted_residual_digits,
                              "full-int8", representative=lambda: digits()[0][:64])
    model = convert(data, emulate_quantization=True).model
    x = _on_input_grid(data, digits()[0][-64:])
    report = check_parity(data, model, x)
    print(f"\n{report}")
    _assert_exact(report)
    assert_kernel_change_fails(data, model, x)


def _pointwise():  # a 1x1 convolution: XNNPACK runs it as a fully connected op
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 128)),
                             keras.layers.Conv2D(64, 1, activation="relu6")])


def _depthwise_wide():  # 3x3x128 weights: quantized by the dynamic-range recipe
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 128)),
                             keras.layers.DepthwiseConv2D(3, padding="same",
                                                          activation="relu6")])


# hybrid convolutions (weights of >= 1024 values: the dynamic-range recipe quantizes them)
# -> (builder, input shape, run by XNNPACK)
HYBRID_CONVS = {"conv": (_conv, (16, 16, 64), True),
                "pointwise": (_pointwise, (16, 16, 128), True),
                "depthwise-wide": (_depthwise_wide, (16, 16, 128), False)}


@pytest.mark.parametrize("name", list(HYBRID_CONVS))
def test_dynamic_range_conv_replays_its_kernel(name):
    """A hybrid CONV_2D runs in XNNPACK as a qd8 convolution: its input quantized per batch
    element (per pixel for a 1x1 convolution, which XNNPACK runs as a fully connected op),
    asymmetric, rounded to even; integer accumulation; a fused multiply-add epilogue. A
    hybrid DEPTHWISE_CONV_2D runs in TFLite's kernel (float32 scale, half away from zero,
    its own epilogue order). Replayed, the emulated model is within float32 rounding (1e-6
    of the range); for CONV_2D the builtin kernel's scheme is not; a 5% kernel change is
    rejected; fit moves the kernel."""
    from mlflow_tflite_keras.converter import hybrid

    make, shape, xnnpack = HYBRID_CONVS[name]
    data = keras_model_tflite(f"emulation-kernel-{name}", make, "dynamic-range")
    x = _images(64, shape, seed=2)
    model = convert(data, emulate_quantization=True).model
    report = check_parity(data, model, x, max_rel_error=1e-6)
    print(f"\n{report}")
    assert report.passed, str(report)
    assert_kernel_change_fails(data, model, x)
    if xnnpack:
        saved = hybrid.XNNPACK_HYBRID_OPS
        hybrid.XNNPACK_HYBRID_OPS = saved - {"CONV_2D"}
        try:
            builtin = check_parity(data, convert(data, emulate_quantization=True).model, x,
                                   compiled=False, max_rel_error=1e-6)
        finally:
            hybrid.XNNPACK_HYBRID_OPS = saved
        assert not builtin.passed, f"the builtin kernel's scheme passed\n{builtin}"

    kernel = next(w for w in model.trainable_weights if w.path.endswith("kernel"))
    before = np.array(kernel.numpy())
    model.compile("sgd", "mse")
    target = model.predict(x[:32], verbose=0) * 1.1
    model.fit(x[:32], target, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(before, kernel.numpy())
    assert np.all(np.isfinite(model.predict(x[:8], verbose=0)))


def test_mobilenet_v2_full_int8_is_bit_exact():
    """The real-world shape (MobileNetV2, batch norm calibrated: its outputs depend on the
    input), fed float images the runtime quantizes: a step off anywhere compounds (the float
    layers' rounding left it 16 steps off), the replayed kernels leave it at 0."""
    from converter.app_models import app_tflite, image_batch

    data = app_tflite("MobileNetV2", "full-int8")
    model = convert(data, emulate_quantization=True).model
    x = image_batch(8)
    report = check_parity(data, model, x)
    print(f"\n{report}")
    _assert_exact(report)
    assert_kernel_change_fails(data, model, x)


def test_efficientnet_b0_full_int8_is_bit_exact():
    """EfficientNetB0 (swish and squeeze-excite MULs, MEAN, LOGISTIC, SOFTMAX), on inputs
    spread over the whole int8 input grid: its MULs round the float32-scaled integer product
    half to even (a float product left one element of 80 a step off)."""
    from converter.app_models import app_tflite

    data = app_tflite("EfficientNetB0", "full-int8")
    model = convert(data, emulate_quantization=True).model
    report = check_parity(data, model, seed=0)
    print(f"\n{report}")
    _assert_exact(report)
    assert_kernel_change_fails(data, model, None, seed=0)
