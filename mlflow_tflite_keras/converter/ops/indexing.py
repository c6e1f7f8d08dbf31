"""Indexing family: GATHER, GATHER_ND, SCATTER_ND, TOPK_V2, WHERE, ONE_HOT, CUMSUM.

A GATHER of a constant float matrix by run-time integer ids along axis 0 is an embedding
lookup and becomes a trainable ``keras.layers.Embedding``; other gathers are ``KerasOp(take)``
(``gather_batched`` with ``batch_dims``). The single-argument WHERE has a data-dependent output
size: it is rebuilt (``[n, rank]`` coordinates, dimension 0 dynamic), but its rows mix the
samples of a batch exactly as the TFLite op does.
"""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.ops._common import axis_arg, target_shape
from mlflow_tflite_keras.converter.registry import register


def _scalar(ctx, t, what):
    return np.asarray(ctx.const(t, what)).reshape(-1)[0].item()


@register("GATHER", layer="keras.layers.Embedding / KerasOp(take / gather_batched)")
def gather(op, ctx):
    params, indices = ctx.inputs(op)[:2]
    rank = op.inputs[0].rank
    axis = int(op.opt("axis", 0))
    axis = axis + rank if axis < 0 else axis
    batch_dims = int(op.opt("batchDims", 0))
    batch_dims = batch_dims + op.inputs[1].rank if batch_dims < 0 else batch_dims
    if batch_dims:
        if axis != batch_dims:
            raise ConversionError(f"GATHER: axis {axis} with batch_dims {batch_dims} is not "
                                  "supported (only axis == batch_dims).")
        return [ctx.op(op, "gather_batched", params, indices, batch_dims=batch_dims)]
    if (ctx.is_const(params) and not ctx.is_const(indices) and axis == 0 and params.ndim == 2
            and np.issubdtype(params.dtype, np.floating)):
        layer = keras.layers.Embedding(params.shape[0], params.shape[1], name=ctx.name(op))
        layer.build((None,))
        layer.set_weights([params.astype(np.float32)])
        return [ctx.apply(layer, indices)]
    return [ctx.op(op, "take", params, indices, axis=axis)]


@register("GATHER_ND", layer="KerasOp(gather_nd)")
def gather_nd(op, ctx):
    params, indices = ctx.inputs(op)[:2]
    return [ctx.op(op, "gather_nd", params, indices)]


@register("SCATTER_ND", layer="KerasOp(scatter)")
def scatter_nd(op, ctx):
    indices, updates = ctx.inputs(op)[:2]
    shape, mask = target_shape(op, ctx, 2)
    if shape is None or mask.any():
        raise ConversionError("SCATTER_ND: the output shape must be static.")
    return [ctx.op(op, "scatter", indices, updates, shape=tuple(shape))]


@register("TOPK_V2", layer="KerasOp(top_k)")
def topk_v2(op, ctx):
    x = ctx.value(op.inputs[0])
    k = int(_scalar(ctx, op.input(1), "k"))
    values, indices = ctx.op(op, "top_k", x, k=k)
    if op.outputs[1].float_dtype != "int32":
        indices = ctx.op(op, "cast", indices, dtype=op.outputs[1].float_dtype, suffix="_cast")
    return [values, indices]


@register("WHERE", layer="KerasOp(where_indices)")
def where(op, ctx):
    if len([t for t in op.inputs if t is not None]) != 1:
        raise ConversionError("WHERE with more than one input (use SELECT_V2).")
    ctx.note("WHERE: the output size depends on the data (rows of true coordinates).")
    return [ctx.op(op, "where_indices", ctx.value(op.inputs[0]))]


@register("ONE_HOT", layer="KerasOp(one_hot_tflite)")
def one_hot(op, ctx):
    indices = ctx.value(op.inputs[0])
    depth = int(_scalar(ctx, op.input(1), "depth"))
    on = _scalar(ctx, op.input(2), "on_value")
    off = _scalar(ctx, op.input(3), "off_value")
    return [ctx.op(op, "one_hot_tflite", indices, depth=depth, on=on, off=off,
                   axis=int(op.opt("axis", -1)), dtype=op.outputs[0].float_dtype)]


@register("CUMSUM", layer="KerasOp(cumsum_tflite)")
def cumsum(op, ctx):
    x = ctx.value(op.inputs[0])
    axis = axis_arg(ctx, op.input(1))[0]
    return [ctx.op(op, "cumsum_tflite", x, axis=axis, exclusive=bool(op.opt("exclusive", False)),
                   reverse=bool(op.opt("reverse", False)))]
