"""Keras layers and ``KerasOp`` functions for the operators added to reach the edge of the
schema (bitwise ops, random sampling, non-max suppression, sparse/discrete ops, DILATE,
FAKE_QUANT). Registered serializable under the same package name as
:mod:`~mlflow_tflite_keras.converter.layers`, so ``.keras`` files load with
``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers import (
    PACKAGE,
    broadcast_to_keep,
    dynamic_update_slice,
    extra_op,
    shape_of,
)


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


# ---- random sampling ---------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomSample(keras.layers.Layer):
    """TFLite RANDOM_STANDARD_NORMAL / RANDOM_UNIFORM / MULTINOMIAL as a seeded Keras random
    draw (``keras.random`` with a ``SeedGenerator``, saved with the model). The samples
    follow the same distribution as LiteRT's, not the same values: LiteRT uses Philox with
    its own stream. ``shape`` is the sample shape (normal/uniform): static, the layer's input
    is then only an anchor (a model input) so the draw is a node of the graph; with ``None``
    entries, the input is the run-time shape tensor. For ``categorical`` the input is the
    logits and ``num_samples`` the draws per row."""

    def __init__(self, distribution: str, shape=None, seed=None, num_samples: int = 1,
                 output_dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if distribution not in ("normal", "uniform", "categorical"):
            raise ValueError(f"RandomSample: unknown distribution {distribution!r}.")
        self.distribution = distribution
        self.shape = None if shape is None else \
            tuple(None if d is None or int(d) < 0 else int(d) for d in shape)
        self.seed = None if seed is None else int(seed)
        self.num_samples = int(num_samples)
        self.output_dtype = output_dtype
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, x):
        if self.distribution == "categorical":
            return keras.random.categorical(ops.cast(x, "float32"), self.num_samples,
                                            dtype=self.output_dtype, seed=self.seed_generator)
        draw = keras.random.normal if self.distribution == "normal" else keras.random.uniform
        # A static shape (None in it: the run-time shape tensor ``x`` gives the sample shape).
        shape = self.shape if None not in self.shape else ops.cast(x, "int32")
        return draw(shape, dtype=self.output_dtype, seed=self.seed_generator)

    def compute_output_spec(self, x):
        if self.distribution == "categorical":
            return keras.KerasTensor((x.shape[0], self.num_samples), dtype=self.output_dtype)
        return keras.KerasTensor(self.shape, dtype=self.output_dtype)

    def get_config(self):
        return {**super().get_config(), "distribution": self.distribution,
                "shape": None if self.shape is None else [-1 if d is None else d
                                                          for d in self.shape],
                "seed": self.seed,
                "num_samples": self.num_samples, "output_dtype": self.output_dtype}


# ---- non-max suppression -----------------------------------------------------------------------

def _pairwise_iou(boxes):
    """IoU of every pair of ``[y1, x1, y2, x2]`` boxes (corners in any order), 0 where a box
    has no area, as TFLite's NMS kernel computes it."""
    y1, x1, y2, x2 = (boxes[:, k] for k in range(4))
    ymin, ymax = ops.minimum(y1, y2), ops.maximum(y1, y2)
    xmin, xmax = ops.minimum(x1, x2), ops.maximum(x1, x2)
    area = (ymax - ymin) * (xmax - xmin)
    ih = ops.maximum(ops.minimum(ymax[:, None], ymax[None]) -
                     ops.maximum(ymin[:, None], ymin[None]), 0.0)
    iw = ops.maximum(ops.minimum(xmax[:, None], xmax[None]) -
                     ops.maximum(xmin[:, None], xmin[None]), 0.0)
    inter = ih * iw
    union = area[:, None] + area[None] - inter
    valid = ops.logical_and(ops.greater(area[:, None], 0), ops.greater(area[None], 0))
    valid = ops.logical_and(valid, ops.not_equal(union, 0))
    return ops.where(valid, inter / ops.where(valid, union, 1.0), 0.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NonMaxSuppression(keras.layers.Layer):
    """TFLite NON_MAX_SUPPRESSION_V4 / V5 (single class, float boxes ``[n, 4]`` and scores
    ``[n]``), non-trainable, with LiteRT's padded outputs: ``max_output_size`` selected
    indices (zeros after the valid ones), with V5 their (soft-NMS decayed) scores, and the
    number of valid selections.

    Greedy selection in score order: a box is dropped once its IoU with a selected box
    reaches ``iou_threshold``; with ``soft_nms_sigma > 0`` the others' scores decay by
    ``exp(-0.5 * iou**2 / sigma)`` and drop out at ``score_threshold``. Selecting eagerly
    (each step decays every remaining score) is the same selection as LiteRT's lazy queue.
    """

    def __init__(self, max_output_size: int, iou_threshold: float, score_threshold: float,
                 soft_nms_sigma: float = 0.0, with_scores: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.max_output_size = int(max_output_size)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.with_scores = bool(with_scores)

    def call(self, boxes, scores):
        boxes = ops.cast(boxes, "float32")
        scores = ops.cast(scores, "float32")
        iou = _pairwise_iou(boxes)
        n = ops.shape(scores)[0]
        positions = ops.arange(n, dtype="int32")
        live = ops.greater(scores, self.score_threshold)
        current = scores
        scale = -0.5 / self.soft_nms_sigma if self.soft_nms_sigma > 0 else 0.0
        picked, picked_scores, valid = [], [], ops.zeros((), "int32")
        for _ in range(self.max_output_size):
            best = ops.cast(ops.argmax(ops.where(live, current, -np.inf)), "int32")
            ok = ops.take(live, best)
            picked.append(ops.where(ok, best, 0))
            picked_scores.append(ops.where(ok, ops.take(current, best), 0.0))
            valid = valid + ops.cast(ok, "int32")
            row = ops.take(iou, best, axis=0)
            if scale:
                current = current * ops.exp(scale * row * row)
            keep = ops.logical_and(ops.less(row, self.iou_threshold),
                                   ops.not_equal(positions, best))
            keep = ops.logical_and(keep, ops.greater(current, self.score_threshold))
            live = ops.logical_and(live, keep)
        indices = ops.stack(picked) if picked else ops.zeros((0,), "int32")
        if not self.with_scores:
            return indices, valid
        selected = ops.stack(picked_scores) if picked_scores else ops.zeros((0,), "float32")
        return indices, selected, valid

    def compute_output_spec(self, boxes, scores):
        m = self.max_output_size
        out = [keras.KerasTensor((m,), dtype="int32")]
        if self.with_scores:
            out.append(keras.KerasTensor((m,), dtype="float32"))
        return (*out, keras.KerasTensor((), dtype="int32"))

    def get_config(self):
        return {**super().get_config(), "max_output_size": self.max_output_size,
                "iou_threshold": self.iou_threshold, "score_threshold": self.score_threshold,
                "soft_nms_sigma": self.soft_nms_sigma, "with_scores": self.with_scores}


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
