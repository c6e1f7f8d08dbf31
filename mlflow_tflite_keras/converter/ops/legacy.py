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
from keras import ops

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers import PACKAGE, extra_op
from mlflow_tflite_keras.converter.registry import register

# ---- LOCAL_RESPONSE_NORMALIZATION ----------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
    """TFLite/TF local response normalization over the last axis:
    ``x / (bias + alpha * window_sum(x ** 2)) ** beta`` with a window of ``2 * radius + 1``
    channels, clipped at the edges."""

    def __init__(self, radius: int = 5, bias: float = 1.0, alpha: float = 1.0,
                 beta: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.radius, self.bias = int(radius), float(bias)
        self.alpha, self.beta = float(alpha), float(beta)

    def call(self, x):
        depth = x.shape[-1]
        if depth is None:
            raise ValueError("LocalResponseNormalization needs a known last dimension.")
        squared = ops.square(x)
        pad = [(0, 0)] * (len(x.shape) - 1) + [(self.radius, self.radius)]
        padded = ops.pad(squared, pad)
        total = padded[..., 0:depth]
        for k in range(1, 2 * self.radius + 1):
            total = total + padded[..., k:k + depth]
        return x * ops.power(self.bias + self.alpha * total, -self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "radius": self.radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


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


@extra_op
def reverse_sequence(x, lengths, seq_axis=1, batch_axis=0):
    """``tf.reverse_sequence``: in each slice ``b`` along ``batch_axis`` reverse the first
    ``lengths[b]`` entries along ``seq_axis``."""
    rank = len(x.shape)
    seq_axis, batch_axis = seq_axis % rank, batch_axis % rank
    steps = ops.shape(x)[seq_axis]
    t = ops.expand_dims(ops.arange(steps, dtype="int32"), 0)  # [1, T]
    n = ops.expand_dims(ops.cast(ops.reshape(lengths, (-1,)), "int32"), 1)  # [B, 1]
    src = ops.where(t < n, n - 1 - t, t)  # [B, T]
    if batch_axis > seq_axis:
        src = ops.transpose(src)
    index = src
    for axis in range(rank):  # src's two axes are in increasing order: add the others
        if axis not in (seq_axis, batch_axis):
            index = ops.expand_dims(index, axis)
    index = ops.broadcast_to(index, ops.shape(x))
    return ops.take_along_axis(x, index, axis=seq_axis)


@register("REVERSE_SEQUENCE", layer="KerasOp(reverse_sequence)")
def reverse_sequence_op(op, ctx):
    x, lengths = ctx.inputs(op)[:2]
    return [ctx.op(op, "reverse_sequence", x, lengths, seq_axis=int(op.opt("seqDim", 0)),
                   batch_axis=int(op.opt("batchDim", 0)))]


# ---- segment reductions ----------------------------------------------------------------------


def _segment_mask(ids, num_segments, data):
    """``[N, S, 1, ...]`` booleans: row n belongs to segment s (negative / out of range
    ids belong to none), broadcastable against ``data[:, None]``."""
    ids = ops.cast(ops.reshape(ids, (-1, 1)), "int32")
    mask = ids == ops.expand_dims(ops.arange(num_segments, dtype="int32"), 0)
    for _ in range(len(data.shape) - 1):
        mask = ops.expand_dims(mask, -1)
    return mask


@extra_op
def unsorted_segment_reduce(data, ids, num_segments=1, reduction="sum"):
    """TFLite's UNSORTED_SEGMENT_* (and SEGMENT_SUM): reduce the rows of ``data`` per
    segment id; empty segments get the reduction's identity (lowest/highest for max/min)."""
    mask = _segment_mask(ids, num_segments, data)
    rows = ops.expand_dims(data, 1)  # [N, 1, ...]
    dtype = keras.backend.standardize_dtype(data.dtype)
    if reduction == "sum":
        return ops.sum(ops.where(mask, rows, ops.zeros((), dtype)), axis=0)
    if reduction == "prod":
        return ops.prod(ops.where(mask, rows, ops.ones((), dtype)), axis=0)
    info = np.finfo(dtype) if "float" in str(dtype) else np.iinfo(dtype)
    if reduction == "max":
        return ops.max(ops.where(mask, rows, ops.full((), info.min, dtype)), axis=0)
    if reduction == "min":
        return ops.min(ops.where(mask, rows, ops.full((), info.max, dtype)), axis=0)
    raise ValueError(f"unknown reduction {reduction!r}")


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


@extra_op
def matrix_diag(x):
    """``[..., n] -> [..., n, n]`` with ``x`` on the diagonal, zeros elsewhere."""
    n = x.shape[-1]
    eye = ops.cast(ops.eye(n), "bool")
    return ops.where(eye, ops.expand_dims(x, -1), ops.zeros((), x.dtype))


@extra_op
def matrix_set_diag(x, diagonal):
    """``x [..., m, n]`` with its main diagonal replaced by ``diagonal [..., min(m, n)]``."""
    m, n = x.shape[-2], x.shape[-1]
    eye = ops.cast(ops.eye(m, n), "bool")
    values = ops.expand_dims(diagonal, -1 if m <= n else -2)
    return ops.where(eye, ops.cast(values, x.dtype), x)


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
