"""Legacy / less common family: LOCAL_RESPONSE_NORMALIZATION, SVDF, REVERSE_SEQUENCE, the
segment reductions (SEGMENT_SUM, UNSORTED_SEGMENT_SUM / MAX / MIN / PROD), MATRIX_DIAG and
MATRIX_SET_DIAG.

* ``LOCAL_RESPONSE_NORMALIZATION`` -> :class:`LocalResponseNormalization`, TFLite's kernel:
  ``y = x / (bias + alpha * sum(x[c-r .. c+r]^2)) ** beta`` over the last axis (the window is
  clipped at the edges; ``alpha`` is *not* divided by the window size).
* ``SVDF`` (keyword-spotting models): TFLite keeps the activation memory in a variable tensor
  ``state [batch, memory_size * num_filters]``. A Keras functional model has no state kept
  between calls, and the runtime resets variable tensors before every invoke of a
  non-stateful model, so every invoke is one step from a zero state: the state is shifted
  left (all zeros), its newest column becomes ``x @ weights_feature.T``, and
  ``out[u] = sum_r weights_time[u*rank + r, -1] * (x @ weights_feature.T)[u*rank + r] + bias``.
  That is exactly a ``keras.layers.Dense`` with ``kernel = weights_feature.T * weights_time[:,
  -1]`` summed over the rank groups, and the fused activation. The older memory columns of
  ``weights_time`` multiply zeros and do not appear in the Keras model.
* ``REVERSE_SEQUENCE``: ``KerasOp(reverse_sequence)``, lengths constant (stored) or computed.
* Segment ops need constant ``segment_ids`` (SEGMENT_SUM: the output has ``max(ids) + 1``
  rows) or a constant ``num_segments`` (UNSORTED_*), so output shapes are static. Empty
  segments give 0 (sum), the lowest / highest float (max / min) and 1 (prod), as in TFLite.
"""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers.legacy import LocalResponseNormalization
from mlflow_tflite_keras.converter.registry import register

# ---- LOCAL_RESPONSE_NORMALIZATION ----------------------------------------------------------


@register("LOCAL_RESPONSE_NORMALIZATION", layer="LocalResponseNormalization")
def local_response_normalization(op, ctx):
    x = ctx.value(op.inputs[0])
    layer = LocalResponseNormalization(
        radius=op.opt("radius", 5), bias=op.opt("bias", 1.0), alpha=op.opt("alpha", 1.0),
        beta=op.opt("beta", 0.5), name=ctx.name(op))
    return [ctx.apply(layer, x)]


# ---- SVDF ---------------------------------------------------------------------------------


@register("SVDF", layer="keras.layers.Dense (one step from the zero state)")
def svdf(op, ctx):
    x = ctx.value(op.inputs[0])
    feature = ctx.const(op.input(1), "weights_feature")  # [num_filters, input_size]
    time = ctx.const(op.input(2), "weights_time")  # [num_filters, memory_size]
    bias = ctx.const(op.input(3), "the bias") if len(op.inputs) > 3 else None
    state = op.input(4) if len(op.inputs) > 4 else None
    if state is not None and not state.is_variable:
        initial = ctx.values.get(state.index)
        if not ctx.is_const(initial) or np.any(initial):
            raise ConversionError("SVDF: the state input is not a zero-initialized variable "
                                  "tensor; only that state can be rebuilt.")
    rank = int(op.opt("rank", 1))
    filters, size = feature.shape
    if filters % rank:
        raise ConversionError(f"SVDF: {filters} filters are not a multiple of rank {rank}.")
    if len(x.shape) != 2:
        raise ConversionError(f"SVDF: input of rank {len(x.shape)}, expected [batch, input].")
    units = filters // rank
    per_filter = feature.T.astype(np.float32) * time[:, -1].astype(np.float32)  # [size, filters]
    kernel = per_filter.reshape(size, units, rank).sum(axis=-1)
    act = ctx.activation_name(op)
    layer = keras.layers.Dense(units, activation=act or None, use_bias=True, name=ctx.name(op))
    layer.build((None, size))
    layer.set_weights([kernel, np.zeros(units, np.float32) if bias is None
                       else np.asarray(bias, np.float32).reshape(units)])
    ctx.note("SVDF: rebuilt as one step from its zero state (a Dense layer), as the runtime "
             "invokes it; the memory of earlier invokes is not kept.")
    y = ctx.apply(layer, x)
    return [y if act is not False else ctx.activation(op, y)]


# ---- REVERSE_SEQUENCE ------------------------------------------------------------------------


@register("REVERSE_SEQUENCE", layer="KerasOp(reverse_sequence)")
def reverse_sequence_op(op, ctx):
    x, lengths = ctx.inputs(op)[:2]
    return [ctx.op(op, "reverse_sequence", x, lengths, seq_axis=int(op.opt("seqDim", 0)),
                   batch_axis=int(op.opt("batchDim", 0)))]


# ---- segment reductions ----------------------------------------------------------------------


@register("SEGMENT_SUM", layer="KerasOp(unsorted_segment_reduce)")
def segment_sum(op, ctx):
    data = ctx.value(op.inputs[0])
    ids = np.asarray(ctx.const(op.input(1), "segment_ids (the output shape depends on them)"))
    count = int(ids.max()) + 1 if ids.size else 0
    return [ctx.op(op, "unsorted_segment_reduce", data, ids.astype(np.int32),
                   num_segments=count, reduction="sum")]


@register("UNSORTED_SEGMENT_SUM", "UNSORTED_SEGMENT_MAX", "UNSORTED_SEGMENT_MIN",
          "UNSORTED_SEGMENT_PROD", layer="KerasOp(unsorted_segment_reduce)")
def unsorted_segment(op, ctx):
    data, ids = ctx.inputs(op)[:2]
    count = int(np.asarray(ctx.const(op.input(2), "num_segments")).reshape(-1)[0])
    if ctx.is_const(ids):
        ids = np.asarray(ids).astype(np.int32)
    reduction = op.type.rsplit("_", 1)[-1].lower()
    return [ctx.op(op, "unsorted_segment_reduce", data, ids, num_segments=count,
                   reduction=reduction)]


# ---- MATRIX_DIAG / MATRIX_SET_DIAG ------------------------------------------------------------


def _static_matrix(op, t, what, dims):
    if t.rank < dims or any(d < 0 for d in t.shape_signature[-dims:]):
        raise ConversionError(f"{op.type}: {what} needs static matrix dimensions.")


@register("MATRIX_DIAG", layer="KerasOp(matrix_diag)")
def matrix_diag_op(op, ctx):
    _static_matrix(op, op.inputs[0], "the diagonal", 1)
    return [ctx.op(op, "matrix_diag", ctx.value(op.inputs[0]))]


@register("MATRIX_SET_DIAG", layer="KerasOp(matrix_set_diag)")
def matrix_set_diag_op(op, ctx):
    _static_matrix(op, op.inputs[0], "the input", 2)
    x, diagonal = ctx.inputs(op)[:2]
    return [ctx.op(op, "matrix_set_diag", x, diagonal)]
