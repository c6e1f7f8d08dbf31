"""Reduction family: MEAN, SUM, REDUCE_MAX, REDUCE_MIN, REDUCE_PROD, REDUCE_ANY, REDUCE_ALL,
ARG_MAX, ARG_MIN.

Axes are normalized (negative axes, duplicates); an empty axis list is the identity, as in
TFLite. A float MEAN / REDUCE_MAX over every spatial axis of a batched NWC / NHWC / NDHWC tensor
is Keras' GlobalAveragePooling / GlobalMaxPooling layer; everything else is one ``KerasOp``.
"""

from __future__ import annotations

import keras

from mlflow_tflite_keras.converter.ops._common import axis_arg, batched
from mlflow_tflite_keras.converter.registry import register

REDUCERS = {"MEAN": "mean", "SUM": "sum", "REDUCE_MAX": "max", "REDUCE_MIN": "min",
            "REDUCE_PROD": "prod", "REDUCE_ANY": "any", "REDUCE_ALL": "all"}

_GLOBAL_POOLING = {
    "MEAN": {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D,
             5: keras.layers.GlobalAveragePooling3D},
    "REDUCE_MAX": {3: keras.layers.GlobalMaxPooling1D, 4: keras.layers.GlobalMaxPooling2D,
                   5: keras.layers.GlobalMaxPooling3D},
}


@register(*REDUCERS, layer="keras.layers.GlobalAveragePooling/GlobalMaxPooling / "
                           "KerasOp(mean, sum, max, min, prod, any, all)")
def reduce(op, ctx):
    x = ctx.value(op.inputs[0])
    rank = op.inputs[0].rank
    axes = sorted({a % rank for a in axis_arg(ctx, op.input(1), "the axes")}) if rank else []
    keep = bool(op.opt("keepDims", False))
    if not axes:
        return [x]
    out_dtype = op.outputs[0].float_dtype
    pooling = _GLOBAL_POOLING.get(op.type, {}).get(rank)
    if (pooling is not None and batched(ctx, x) and axes == list(range(1, rank - 1))
            and "float" in str(x.dtype)):
        return [ctx.apply(pooling(keepdims=keep, name=ctx.name(op)), x)]
    y = ctx.op(op, REDUCERS[op.type], x, axis=tuple(axes), keepdims=keep)
    if op.type == "MEAN" and out_dtype.startswith(("int", "uint")):
        y = ctx.op(op, "cast", ctx.op(op, "trunc", y, suffix="_trunc"), dtype=out_dtype,
                   suffix="_cast")
    return [y]


@register("ARG_MAX", "ARG_MIN", layer="KerasOp(arg_reduce)")
def arg_reduce(op, ctx):
    x = ctx.value(op.inputs[0])
    axis = axis_arg(ctx, op.input(1))[0]
    mode = "max" if op.type == "ARG_MAX" else "min"
    return [ctx.op(op, "arg_reduce", x, axis=axis, mode=mode, dtype=op.outputs[0].float_dtype)]
