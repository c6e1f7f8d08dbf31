"""Quantization family: QUANTIZE / DEQUANTIZE become identities in the float Keras model;
quantized and float16 weights arrive dequantized from the IR."""

import numpy as np
import tensorflow as tf

from converter.op_harness import check_op, op_tflite
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.tflite_model import TFLiteModel

KERNEL = np.random.default_rng(0).normal(0, 0.3, (3, 3, 8, 32)).astype(np.float32)


def conv(x):
    return tf.nn.relu(tf.nn.conv2d(x, KERNEL, 1, "SAME"))


def test_quantize_dequantize_full_int8_float_interface():
    """Float I/O around an int8 graph: QUANTIZE at the input, DEQUANTIZE at the output."""
    check_op("QUANTIZE", conv, [((1, 6, 6, 8), "float")], recipe="full-int8",
             expect_ops=["QUANTIZE", "DEQUANTIZE", "CONV_2D"])


def test_dequantize_float16_weights():
    """float16 weights behind DEQUANTIZE become the float32 kernel of a Conv2D."""
    model, _ = check_op("DEQUANTIZE", conv, [((None, 6, 6, 8), "float")], recipe="float16",
                        expect_ops=["DEQUANTIZE", "CONV_2D"])
    conv_layer = next(layer for layer in model.layers if layer.__class__.__name__ == "Conv2D")
    np.testing.assert_allclose(conv_layer.get_weights()[0], KERNEL, atol=1e-3)


def test_requantize_int16x8():
    check_op("QUANTIZE", conv, [((1, 6, 6, 8), "float")], recipe="int16x8",
             expect_ops=["QUANTIZE", "DEQUANTIZE"])


def test_per_channel_int8_weights_dequantized_exactly():
    """Per-channel (quantized_dimension) scales: every output channel's kernel equals its
    int8 values times its own scale."""
    data = op_tflite("quantize-per-channel", conv, [((1, 6, 6, 8), "float")], "full-int8")
    model = TFLiteModel(data)
    filters = [t for t in model.main.tensors if t.quantization is not None
               and t.quantization.per_channel and len(t.shape) == 4]
    assert filters, "no per-channel quantized filter in the model"
    raw = model.constant(filters[0])
    q = filters[0].quantization
    expected = (raw.astype(np.float32) - q.zero_point.reshape(-1, 1, 1, 1)) * \
        q.scale.reshape(-1, 1, 1, 1)
    keras_model = to_keras(data)
    conv_layer = next(layer for layer in keras_model.layers
                      if layer.__class__.__name__ == "Conv2D")
    np.testing.assert_allclose(conv_layer.get_weights()[0], np.transpose(expected, (1, 2, 3, 0)),
                               rtol=1e-6)
