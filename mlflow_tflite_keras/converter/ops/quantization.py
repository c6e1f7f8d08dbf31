"""Quantization family. The Keras model computes in float32, so QUANTIZE / DEQUANTIZE of
activations are identities there (a requantize too); constants arrive already dequantized
from the IR (int8 / int4 / int2 / uint4, per-channel or blockwise; float16 / bfloat16), so
DEQUANTIZE of a weight just passes the float value on."""

from __future__ import annotations

from mlflow_tflite_keras.converter.registry import register


@register("QUANTIZE", "DEQUANTIZE", layer="(identity: the model computes in float32)")
def quantize_dequantize(op, ctx):
    return [ctx.value(op.inputs[0])]
