"""Elementwise arithmetic family: binary ops (ADD, SUB, MUL, DIV, POW, ...), unary math ops
(SQRT, EXP, ROUND, ...) and ADD_N.

Binary ops broadcast like numpy, as TFLite does. Two runtime operands of the same shape become
Keras merge layers (Add, Subtract, Multiply, Maximum, Minimum); everything else is one
``KerasOp`` with any constant operand stored as a weight. Constant-only ops fold.
"""

from __future__ import annotations

import keras

from mlflow_tflite_keras.converter.ops._common import keras_op_handler
from mlflow_tflite_keras.converter.registry import register


def _mergeable(ctx, *values) -> bool:
    """True when every value is a runtime float tensor of one fully known (but for the batch)
    shape, so a Keras merge layer can take them."""
    if any(ctx.is_const(v) for v in values):
        return False
    first = values[0]
    return all(
        tuple(v.shape) == tuple(first.shape) and v.dtype == first.dtype
        and "float" in str(v.dtype) and all(d is not None for d in v.shape[1:])
        for v in values)


def _binary(op, ctx, fn: str, merge_layer=None):
    x, y = ctx.inputs(op)[:2]
    if merge_layer is not None and _mergeable(ctx, x, y):
        out = merge_layer(name=ctx.name(op))([x, y])
    else:
        out = ctx.op(op, fn, x, y)
    return out


def _is_int(t) -> bool:
    return t.float_dtype.startswith(("int", "uint"))


@register("ADD", layer="keras.layers.Add / KerasOp(add)")
def add(op, ctx):
    return [ctx.activation(op, _binary(op, ctx, "add_exact", keras.layers.Add))]


@register("SUB", layer="keras.layers.Subtract / KerasOp(subtract)")
def sub(op, ctx):
    return [ctx.activation(op, _binary(op, ctx, "subtract", keras.layers.Subtract))]


@register("MUL", layer="keras.layers.Multiply / KerasOp(multiply)")
def mul(op, ctx):
    return [ctx.activation(op, _binary(op, ctx, "multiply", keras.layers.Multiply))]


@register("DIV", layer="KerasOp(divide / truncate_divide)")
def div(op, ctx):
    # TFLite's integer DIV truncates toward zero (C++ division); float DIV is true division.
    fn = "truncate_divide" if _is_int(op.outputs[0]) else "divide"
    return [ctx.activation(op, _binary(op, ctx, fn))]


@register("MAXIMUM", layer="keras.layers.Maximum / KerasOp(maximum)")
def maximum(op, ctx):
    return [_binary(op, ctx, "maximum", keras.layers.Maximum)]


@register("MINIMUM", layer="keras.layers.Minimum / KerasOp(minimum)")
def minimum(op, ctx):
    return [_binary(op, ctx, "minimum", keras.layers.Minimum)]


# Binary ops with no Keras layer: TFLite name -> keras.ops (or EXTRA_OPS) function. FLOOR_MOD
# is TF's floormod (result has the divisor's sign) = keras.ops.mod; FLOOR_DIV is floor(x / y).
BINARY = {
    "POW": "power",
    "SQUARED_DIFFERENCE": "squared_difference",
    "FLOOR_DIV": "floor_divide",
    "FLOOR_MOD": "mod",
    "ATAN2": "arctan2",
}

# Unary math ops: TFLite name -> keras.ops function. ROUND is round-half-to-even in TFLite,
# like keras.ops.round (tf.round / np.round).
UNARY = {
    "RSQRT": "rsqrt",
    "SQRT": "sqrt",
    "SQUARE": "square",
    "EXP": "exp",
    "LOG": "log",
    "ABS": "abs",
    "NEG": "negative",
    "SIN": "sin",
    "COS": "cos",
    "FLOOR": "floor",
    "CEIL": "ceil",
    "ROUND": "round",
    "SIGN": "sign",
}


def _binary_handler(fn):
    def handler(op, ctx):
        return [_binary(op, ctx, fn)]

    handler.__name__ = f"binary_{fn}"
    return handler


for _type, _fn in BINARY.items():
    register(_type, layer=f"KerasOp({_fn})")(_binary_handler(_fn))
for _type, _fn in UNARY.items():
    register(_type, layer=f"KerasOp({_fn})")(keras_op_handler(_fn, 1, __name__))


@register("ADD_N", layer="keras.layers.Add / KerasOp(add)")
def add_n(op, ctx):
    values = ctx.inputs(op)
    if len(values) == 1:
        return [values[0]]
    if len(values) >= 2 and _mergeable(ctx, *values):
        return [keras.layers.Add(name=ctx.name(op))(list(values))]
    # Constants first, so they fold into one before the runtime chain.
    values = sorted(values, key=lambda v: not ctx.is_const(v))
    total = values[0]
    for v in values[1:]:
        total = ctx.op(op, "add_exact", total, v)
    return [total]
