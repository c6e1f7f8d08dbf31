"""Pooling family: AVERAGE_POOL_2D, MAX_POOL_2D, L2_POOL_2D.

Keras' pooling layers use TF's padding definitions: "same" average pooling divides by the
number of in-bounds elements, as TFLite does, so the layers match exactly.
"""

from __future__ import annotations

import keras

from mlflow_tflite_keras.converter.ops._common import padding
from mlflow_tflite_keras.converter.registry import register


def _pool(op, ctx, cls, x, suffix=""):
    layer = cls(pool_size=(op.opt("filterHeight", 1), op.opt("filterWidth", 1)),
                strides=(op.opt("strideH", 1), op.opt("strideW", 1)),
                padding=padding(op), name=ctx.name(op, suffix))
    return ctx.apply(layer, x)


@register("AVERAGE_POOL_2D", layer="keras.layers.AveragePooling2D")
def average_pool_2d(op, ctx):
    x = ctx.value(op.inputs[0])
    return [ctx.activation(op, _pool(op, ctx, keras.layers.AveragePooling2D, x))]


@register("MAX_POOL_2D", layer="keras.layers.MaxPooling2D")
def max_pool_2d(op, ctx):
    x = ctx.value(op.inputs[0])
    return [ctx.activation(op, _pool(op, ctx, keras.layers.MaxPooling2D, x))]


@register("L2_POOL_2D", layer="KerasOp(square) + keras.layers.AveragePooling2D + KerasOp(sqrt)")
def l2_pool_2d(op, ctx):
    x = ctx.value(op.inputs[0])
    squares = ctx.op(op, "square", x, suffix="_square")
    mean = _pool(op, ctx, keras.layers.AveragePooling2D, squares, "_mean")
    return [ctx.activation(op, ctx.op(op, "sqrt", mean, suffix="_sqrt"))]
