"""Quantization family. The Keras model computes in float32, so QUANTIZE / DEQUANTIZE of
activations are identities there (a requantize too); constants arrive already dequantized
from the IR (int8 / int4 / int2 / uint4, per-channel or blockwise; float16 / bfloat16), so
DEQUANTIZE of a weight just passes the float value on."""

from __future__ import annotations

from mlflow_tflite_keras.converter.registry import register


@register("QUANTIZE", "DEQUANTIZE", layer="(identity: the model computes in float32)")
def quantize_dequantize(op, ctx):
    return [ctx.value(op.inputs[0])]


@register("FAKE_QUANT", layer="KerasOp(fake_quant)")
def fake_quant(op, ctx):
    return [ctx.op(op, "fake_quant", ctx.value(op.inputs[0]), min=float(op.opt("min", 0.0)),
                   max=float(op.opt("max", 0.0)), num_bits=int(op.opt("numBits", 8)),
                   narrow_range=bool(op.opt("narrowRange", False)))]
