"""Bitwise family: BITCAST, BITWISE_XOR, RIGHT_SHIFT (integer tensors, via ``keras.ops``).

RIGHT_SHIFT is arithmetic on signed types and logical on unsigned ones, in TFLite as in
``keras.ops.right_shift``."""

from __future__ import annotations

from mlflow_tflite_keras.converter.registry import register


@register("BITWISE_XOR", layer="KerasOp(bitwise_xor)")
def bitwise_xor(op, ctx):
    return [ctx.op(op, "bitwise_xor", *ctx.inputs(op)[:2])]


@register("RIGHT_SHIFT", layer="KerasOp(right_shift)")
def right_shift(op, ctx):
    return [ctx.op(op, "right_shift", *ctx.inputs(op)[:2])]


@register("BITCAST", layer="KerasOp(bitcast)")
def bitcast(op, ctx):
    return [ctx.op(op, "bitcast", ctx.value(op.inputs[0]), dtype=op.outputs[0].float_dtype)]
