"""Comparison, logical and selection family: EQUAL, LESS, ..., LOGICAL_AND/OR/NOT, SELECT,
SELECT_V2, CAST, ZEROS_LIKE.

TFLite has no ONES_LIKE operator (TF's converter folds ones_like or lowers it to SHAPE +
BROADCAST_TO / FILL), so there is no handler for it.

Comparisons and logical ops produce bool tensors, like TFLite. Quantized operands are compared
in the float domain (same order, since quantization is monotonic).
"""

from __future__ import annotations

from mlflow_tflite_keras.converter.registry import register

COMPARISONS = {
    "EQUAL": "equal",
    "NOT_EQUAL": "not_equal",
    "LESS": "less",
    "LESS_EQUAL": "less_equal",
    "GREATER": "greater",
    "GREATER_EQUAL": "greater_equal",
    "LOGICAL_AND": "logical_and",
    "LOGICAL_OR": "logical_or",
}


def _binary_handler(fn):
    def handler(op, ctx):
        x, y = ctx.inputs(op)[:2]
        return [ctx.op(op, fn, x, y)]

    handler.__name__ = fn
    return handler


for _type, _fn in COMPARISONS.items():
    register(_type, layer=f"KerasOp({_fn})")(_binary_handler(_fn))


@register("LOGICAL_NOT", layer="KerasOp(logical_not)")
def logical_not(op, ctx):
    return [ctx.op(op, "logical_not", ctx.value(op.inputs[0]))]


@register("SELECT_V2", layer="KerasOp(where)")
def select_v2(op, ctx):
    cond, x, y = ctx.inputs(op)[:3]
    return [ctx.op(op, "where", cond, x, y)]


@register("SELECT", layer="KerasOp(where)")
def select(op, ctx):
    """TF1 Select: same shapes, or a 1-D condition choosing whole rows along dimension 0."""
    cond, x, y = ctx.inputs(op)[:3]
    rank = max(op.inputs[1].rank, op.inputs[2].rank)
    if op.inputs[0].rank == 1 and rank > 1:
        cond = ctx.op(op, "reshape", cond, newshape=(-1,) + (1,) * (rank - 1), suffix="_rows")
    return [ctx.op(op, "where", cond, x, y)]


@register("CAST", layer="KerasOp(cast)")
def cast(op, ctx):
    # float -> int truncates toward zero and x -> bool is x != 0, in TFLite and tf.cast alike.
    # Quantized tensors are float in the Keras model, so their casts stay float.
    x = ctx.value(op.inputs[0])
    return [ctx.op(op, "cast", x, dtype=op.outputs[0].float_dtype)]


@register("ZEROS_LIKE", layer="KerasOp(zeros_like)")
def zeros_like(op, ctx):
    return [ctx.op(op, "zeros_like", ctx.value(op.inputs[0]), dtype=op.outputs[0].float_dtype)]
