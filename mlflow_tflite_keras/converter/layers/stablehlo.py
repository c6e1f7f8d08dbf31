"""``KerasOp`` functions and layers for StableHLO operators (converter/ops/stablehlo.py)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.discrete import dilate
from mlflow_tflite_keras.converter.layers.keras_op import (
    PACKAGE,
    broadcast_to_keep,
    dynamic_update_slice,
    extra_op,
    shape_of,
)


# ---- StableHLO (converter/ops/stablehlo.py) ----------------------------------------------------

@extra_op
def einsum_eq(*operands, equation=""):
    """``keras.ops.einsum`` with the equation as data (a keyword, so a KerasOp config holds it)."""
    return ops.einsum(equation, *operands)


@extra_op
def broadcast_in_dim(x, dims=(), shape=()):
    """StableHLO BROADCAST_IN_DIM: operand dimension ``i`` becomes result dimension
    ``dims[i]``; ``-1`` in ``shape`` keeps the operand's (run-time) size there."""
    rank = len(shape)
    inter = [1] * rank
    for i, d in enumerate(dims):
        inter[int(d)] = -1 if x.shape[i] is None else int(x.shape[i])
    y = ops.reshape(x, inter)
    if -1 in shape:
        return broadcast_to_keep(y, tuple(int(d) for d in shape))
    return ops.broadcast_to(y, tuple(int(d) for d in shape))


@extra_op
def stablehlo_pad(x, low=(), high=(), interior=(), value=0.0):
    """StableHLO PAD: ``interior`` values between neighbours, then edge padding; a negative
    edge padding removes elements."""
    if any(int(i) for i in interior):
        x = dilate(x, [int(i) + 1 for i in interior], value)
    pads = [[max(int(lo), 0), max(int(hi), 0)] for lo, hi in zip(low, high)]
    if any(p for pair in pads for p in pair):
        x = ops.pad(x, pads, constant_values=value)
    if any(int(lo) < 0 or int(hi) < 0 for lo, hi in zip(low, high)):
        x = x[tuple(slice(-min(int(lo), 0), (int(hi) if int(hi) < 0 else None))
                    for lo, hi in zip(low, high))]
    return x


@extra_op
def stablehlo_dynamic_slice(x, *starts, sizes=()):
    """StableHLO DYNAMIC_SLICE: each start clamped to ``[0, dim - size]``."""
    sizes = np.asarray(sizes, np.int32)
    limit = ops.maximum(shape_of(x, "int32") - sizes, 0)
    begin = ops.stack([ops.cast(ops.reshape(s, ()), "int32") for s in starts])
    begin = ops.minimum(ops.maximum(begin, 0), limit)
    return ops.reshape(ops.slice(x, begin, sizes), tuple(int(s) for s in sizes))


@extra_op
def stablehlo_dynamic_update_slice(x, update, *starts):
    """StableHLO DYNAMIC_UPDATE_SLICE (starts clamped so the update fits)."""
    start = ops.stack([ops.cast(ops.reshape(s, ()), "int32") for s in starts])
    return dynamic_update_slice(x, update, start)


@extra_op
def stablehlo_gather(operand, indices, offset_dims=(), collapsed_slice_dims=(),
                     start_index_map=(), index_vector_dim=0, slice_sizes=()):
    """StableHLO GATHER (static operand shape): one slice of ``slice_sizes`` per index vector,
    its start clamped to fit, as one ``take`` of linear positions on the flattened operand."""
    dims = [int(d) for d in operand.shape]
    sizes = [int(s) for s in slice_sizes]
    batch_shape = [-1 if d is None else int(d) for i, d in enumerate(indices.shape)
                   if i != int(index_vector_dim)]
    idx = _index_vectors(indices, index_vector_dim)
    strides = [int(np.prod(dims[d + 1:])) for d in range(len(dims))]
    linear = ops.zeros((1,) + (1,) * len(dims), "int32")
    for k, d in enumerate(int(m) for m in start_index_map):
        start = ops.clip(idx[:, k], 0, dims[d] - sizes[d])
        linear = linear + ops.reshape(start * strides[d], (-1,) + (1,) * len(dims))
    grid = sum(np.arange(s, dtype=np.int32).reshape([-1 if i == d else 1
                                                     for i in range(len(dims))]) * strides[d]
               for d, s in enumerate(sizes))
    rows = ops.take(ops.reshape(operand, (-1,)), linear + grid[None])
    kept = [d for d in range(len(dims)) if d not in [int(c) for c in collapsed_slice_dims]]
    rows = ops.reshape(rows, (-1, *[sizes[d] for d in kept]))
    rows = ops.reshape(rows, (*batch_shape, *[sizes[d] for d in kept]))
    # Result dimensions: the offset dimensions where offset_dims says, batch ones elsewhere.
    n_batch, out_rank = len(batch_shape), len(batch_shape) + len(kept)
    offset = [int(o) for o in offset_dims]
    batch_positions = [p for p in range(out_rank) if p not in offset]
    perm = [0] * out_rank
    for i, p in enumerate(batch_positions):
        perm[p] = i
    for i, p in enumerate(offset):
        perm[p] = n_batch + i
    return ops.transpose(rows, perm) if perm != list(range(out_rank)) else rows


@extra_op
def sort_by_key(*operands, axis=-1, descending=False):
    """StableHLO SORT with a comparator on the first operand (less / greater): every operand
    reordered by the first one's order along ``axis``."""
    key = operands[0]
    order = ops.argsort(ops.negative(key) if descending else key, axis=axis)
    out = [ops.take_along_axis(x, order, axis=axis) for x in operands]
    return out[0] if len(out) == 1 else tuple(out)


def _index_vectors(indices, index_vector_dim):
    """Scatter/gather indices as ``[n, k]`` int32 (the index vector last), and the batch
    shape."""
    if int(index_vector_dim) == len(indices.shape):
        indices = ops.expand_dims(indices, -1)
    else:
        indices = ops.moveaxis(indices, int(index_vector_dim), -1)
    return ops.cast(ops.reshape(indices, (-1, indices.shape[-1])), "int32")


@extra_op
def stablehlo_scatter(operand, indices, updates, update_window_dims=(),
                      inserted_window_dims=(), scatter_dims_to_operand_dims=(),
                      index_vector_dim=0, combine="replace"):
    """StableHLO SCATTER (static shapes) with a replacing or adding update computation:
    each update window written (or added) at its start; windows that do not fit are skipped,
    as the specification says (sent to a spare slot past the end)."""
    dims = [int(d) for d in operand.shape]
    size = int(np.prod(dims))
    strides = [int(np.prod(dims[d + 1:])) for d in range(len(dims))]
    window_axes = [int(a) for a in update_window_dims]
    inserted = [int(a) for a in inserted_window_dims]
    window_dims = [d for d in range(len(dims)) if d not in inserted]  # operand dims of windows
    window_sizes = [int(updates.shape[a]) for a in window_axes]
    extent = {d: s for d, s in zip(window_dims, window_sizes)}
    batch_axes = [a for a in range(len(updates.shape)) if a not in window_axes]
    values = ops.transpose(updates, batch_axes + window_axes)
    values = ops.reshape(values, (-1, *window_sizes))
    idx = _index_vectors(indices, index_vector_dim)
    start = ops.zeros((ops.shape(idx)[0],), "int32")
    valid = ops.ones((ops.shape(idx)[0],), "bool")
    for k, d in enumerate(int(m) for m in scatter_dims_to_operand_dims):
        i = idx[:, k]
        start = start + i * strides[d]
        valid = ops.logical_and(valid, ops.logical_and(
            ops.greater_equal(i, 0), ops.less_equal(i, dims[d] - extent.get(d, 1))))
    grid = sum(np.arange(s, dtype=np.int32).reshape(
        [-1 if j == i else 1 for j in range(len(window_sizes))]) * strides[d]
        for i, (d, s) in enumerate(zip(window_dims, window_sizes))) \
        if window_sizes else np.zeros((), np.int32)
    shape_n = (-1,) + (1,) * len(window_sizes)
    positions = ops.reshape(start, shape_n) + grid[None]
    positions = ops.where(ops.reshape(valid, shape_n), positions, size)
    positions = ops.reshape(positions, (-1, 1))
    values = ops.reshape(values, (-1,))
    flat = ops.concatenate([ops.reshape(operand, (-1,)), ops.zeros((1,), operand.dtype)])
    if combine == "add":
        flat = flat + ops.scatter(positions, values, (size + 1,))
    else:
        flat = ops.scatter_update(flat, positions, values)
    return ops.reshape(flat[:size], dims)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TreeReduce(keras.layers.Layer):
    """StableHLO REDUCE with any body (a Keras model of ``2 * n`` inputs, the accumulators
    then the elements, each of rank ``rank`` with every dimension open): each reduced axis is
    halved by the body ``log2(size)`` times, padded with the initial values where odd (the
    specification leaves the order of an associative body's applications open), then
    combined with the initial values. Called as ``layer(*operands, *init_values)``."""

    def __init__(self, body, axes, n_operands: int, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.axes = [int(a) for a in axes]
        self.n_operands = int(n_operands)

    def build(self, *args, **kwargs):
        self.built = True

    def _apply(self, accumulators, elements):
        out = self.body([*accumulators, *elements])
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def call(self, *inputs):
        flat = list(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) \
            else list(inputs)
        xs, inits = flat[:self.n_operands], flat[self.n_operands:]
        inits = [ops.reshape(v, ()) for v in inits]
        for axis in self.axes:
            n = int(xs[0].shape[axis])
            while n > 1:
                if n % 2:
                    edge = [ops.take(x, [0], axis=axis) for x in xs]
                    xs = [ops.concatenate([x, ops.full_like(e, i)], axis=axis)
                          for x, e, i in zip(xs, edge, inits)]
                    n += 1
                half = n // 2
                first = [ops.take(x, np.arange(half), axis=axis) for x in xs]
                second = [ops.take(x, np.arange(half, n), axis=axis) for x in xs]
                xs = self._apply(first, second)
                n = half
        xs = self._apply([ops.full_like(x, i) for x, i in zip(xs, inits)], xs)
        out = [ops.squeeze(x, axis=tuple(self.axes)) if self.axes else x for x in xs]
        return out if len(out) > 1 else out[0]

    def compute_output_spec(self, *inputs):
        flat = list(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) \
            else list(inputs)
        specs = [keras.KerasTensor(tuple(d for i, d in enumerate(x.shape) if i not in self.axes),
                                   dtype=x.dtype) for x in flat[:self.n_operands]]
        return specs if len(specs) > 1 else specs[0]

    def get_config(self):
        return {**super().get_config(), "axes": self.axes, "n_operands": self.n_operands,
                "body": keras.saving.serialize_keras_object(self.body)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["body"] = keras.saving.deserialize_keras_object(config["body"])
        return cls(**config)
