"""``KerasOp`` functions for bitwise, discrete/sparse, window and fake-quant builtins
(BITCAST, BUCKETIZE, UNIQUE, SPARSE_TO_DENSE, EMBEDDING_LOOKUP_SPARSE, DILATE, REDUCE_WINDOW,
FAKE_QUANT)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import extra_op


def _backend() -> str:
    return keras.backend.backend()


# ---- bitwise -----------------------------------------------------------------------------------

@extra_op
def bitcast(x, dtype="int32"):
    """TFLite BITCAST (``tf.bitcast``): the bytes of ``x`` read as ``dtype``; a narrower type
    adds a last dimension, a wider one consumes it."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(x, dtype)
    if _backend() == "jax":
        import jax

        return jax.lax.bitcast_convert_type(x, dtype)
    src = np.dtype(keras.backend.standardize_dtype(x.dtype)).itemsize
    dst = np.dtype(dtype).itemsize
    import torch

    y = x.contiguous().view(getattr(torch, dtype))
    if src > dst:
        return ops.reshape(y, (*x.shape, src // dst))
    if src < dst:
        return ops.reshape(y, x.shape[:-1])
    return y


# ---- discrete / sparse -------------------------------------------------------------------------

@extra_op
def bucketize(x, boundaries=()):
    """TFLite BUCKETIZE: index ``i`` with ``boundaries[i-1] <= x < boundaries[i]``."""
    return ops.cast(ops.digitize(x, [float(b) for b in boundaries]), "int32")


@extra_op
def unique_tflite(x, idx_dtype="int32"):
    """TFLite UNIQUE on a 1-D tensor: the distinct values in order of first occurrence, and
    for each element the index of its value there. The output length is known at run time
    only (eager, or TensorFlow graphs)."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        y, idx = tf.unique(x, out_idx=idx_dtype)
        return y, idx
    n = x.shape[0]
    first = ops.argmax(ops.cast(ops.equal(x[:, None], x[None, :]), "int32"), axis=1)
    is_first = ops.equal(first, ops.arange(n))
    position = ops.cumsum(ops.cast(is_first, "int32")) - 1
    y = ops.take(x, ops.nonzero(is_first)[0])
    return y, ops.cast(ops.take(position, first), idx_dtype)


@extra_op
def sparse_to_dense(indices, values, default_value, shape=()):
    """TFLite SPARSE_TO_DENSE: ``values`` (or one scalar) written at ``indices`` (0-D, 1-D or
    ``[n, rank]``) into a tensor of ``shape`` filled with ``default_value``."""
    rank = len(shape)
    indices = ops.reshape(ops.cast(indices, "int32"), (-1, rank))
    values = ops.broadcast_to(ops.reshape(values, (-1,)), ops.shape(indices)[:1])
    dense = ops.broadcast_to(ops.cast(ops.reshape(default_value, ()), values.dtype),
                             tuple(int(d) for d in shape))
    return ops.scatter_update(dense, indices, values)


@extra_op
def embedding_lookup_sparse(ids, indices, weights, params, out_rows=(), combiner="sum"):
    """TFLite EMBEDDING_LOOKUP_SPARSE: for each output position (``indices[:, :-1]`` in a grid
    of ``out_rows``), the weighted sum of ``params[ids]`` over its entries; ``mean`` divides
    by the sum of the weights, ``sqrtn`` by the root of the sum of their squares. Positions
    without entries are zeros."""
    out_rows = tuple(int(d) for d in out_rows)
    n_rows = int(np.prod(out_rows))
    strides = np.array([int(np.prod(out_rows[j + 1:])) for j in range(len(out_rows))],
                       np.int32)
    segment = ops.sum(ops.cast(indices[:, :-1], "int32") * strides, axis=-1)
    rows = ops.take(params, ops.cast(ids, "int32"), axis=0)
    w = ops.reshape(weights, (-1,) + (1,) * (len(params.shape) - 1))
    total = ops.segment_sum(rows * w, segment, num_segments=n_rows)
    if combiner != "sum":
        norm = weights if combiner == "mean" else ops.square(weights)
        norm = ops.segment_sum(norm, segment, num_segments=n_rows)
        norm = norm if combiner == "mean" else ops.sqrt(norm)
        norm = ops.reshape(norm, (n_rows,) + (1,) * (len(params.shape) - 1))
        total = ops.where(ops.greater(norm, 0), total / ops.where(ops.greater(norm, 0), norm, 1),
                          0)
    return ops.reshape(total, out_rows + tuple(params.shape[1:]))


# ---- windows -----------------------------------------------------------------------------------

@extra_op
def dilate(x, dilations=(), padding_value=0.0):
    """TFLite DILATE: ``dilations[d] - 1`` copies of ``padding_value`` between neighbours
    along each axis (static shapes)."""
    for axis, k in enumerate(int(d) for d in dilations):
        n = x.shape[axis]
        if k == 1 or n is None or n <= 1:
            continue
        moved = ops.expand_dims(ops.moveaxis(x, axis, -1), -1)
        fill = ops.repeat(ops.zeros_like(moved), k - 1, axis=-1) + \
            ops.cast(padding_value, x.dtype)
        spread = ops.concatenate([moved, fill], axis=-1)
        lead = [-1 if d is None else d for d in moved.shape[:-2]]
        spread = ops.reshape(spread, (*lead, n * k))[..., :(n - 1) * k + 1]
        x = ops.moveaxis(spread, -1, axis)
    return x


# ---- quantization ------------------------------------------------------------------------------

@extra_op
def fake_quant(x, min=-6.0, max=6.0, num_bits=8, narrow_range=False):
    """TFLite FAKE_QUANT (``tf.quantization.fake_quant_with_min_max_args``): the range nudged
    so zero is exact, values clamped to it and rounded to its ``2**num_bits`` steps; the
    gradient passes straight through inside the range."""
    f32 = np.float32  # the nudge in float32, as the kernel computes it (127.49999 != 127.5)
    qmin, qmax = f32(1 if narrow_range else 0), f32((1 << int(num_bits)) - 1)
    scale = (f32(max) - f32(min)) / (qmax - qmin)
    zero = qmin - f32(min) / scale
    zero = f32(np.clip(np.sign(zero) * np.floor(np.abs(zero) + f32(0.5)), qmin, qmax))
    lo, hi = float((qmin - zero) * scale), float((qmax - zero) * scale)
    clamped = ops.clip(x, lo, hi)
    # clamped - lo >= 0: floor(v + 0.5) is std::round there.
    q = ops.floor((clamped - lo) * float(f32(1) / scale) + 0.5) * float(scale) + lo
    return clamped + ops.stop_gradient(q - clamped)


_WINDOW_REDUCERS = {"add": ops.add, "mul": ops.multiply, "min": ops.minimum,
                    "max": ops.maximum, "all": ops.logical_and, "any": ops.logical_or}


@extra_op
def reduce_window(x, init_value, window=(), strides=(), dilations=(), function="add"):
    """TFLite REDUCE_WINDOW (no padding, no base dilation: PAD and DILATE express those):
    ``function`` folded over each (dilated) window, starting from ``init_value``. Written as
    one strided slice per window element, so every backend and the export take it."""
    reduce = _WINDOW_REDUCERS[function]
    result = ops.cast(ops.reshape(init_value, ()), x.dtype)
    for offset in np.ndindex(*(int(w) for w in window)):
        key = []
        for n, k, w, s, d in zip(x.shape, offset, window, strides, dilations):
            if n is None:  # a dynamic (batch) axis: windows of 1, stride 1
                if (int(w), int(s)) != (1, 1):
                    raise ValueError("reduce_window: a window over a dynamic axis")
                key.append(slice(None))
                continue
            o = (int(n) - (int(w) - 1) * int(d) - 1) // int(s) + 1
            key.append(slice(k * int(d), k * int(d) + (o - 1) * int(s) + 1, int(s)))
        result = reduce(result, x[tuple(key)])
    return result
