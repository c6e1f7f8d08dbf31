"""Layers of the legacy family: :class:`LocalResponseNormalization` (TFLite's kernel) and the
``KerasOp`` functions of REVERSE_SEQUENCE, the segment reductions, MATRIX_DIAG and
MATRIX_SET_DIAG (``converter/ops/legacy.py``)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE, extra_op


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
