"""Shape family: RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE, CONCATENATION, PACK, UNPACK, SPLIT,
SPLIT_V, SLICE, STRIDED_SLICE, DYNAMIC_UPDATE_SLICE, PAD, PADV2, MIRROR_PAD, TILE, BROADCAST_TO,
BROADCAST_ARGS, SHAPE, RANGE, FILL, REVERSE_V2.

The Keras batch dimension is dynamic (None) where TFLite's static shapes say 1. Handlers keep
it dynamic: shapes given to Keras layers drop dimension 0 (``Reshape(target[1:])``), slices
over a batch-1 dimension become full slices. Shape tensors computed at run time (``SHAPE`` ->
``STRIDED_SLICE`` -> ``PACK`` chains, as Keras ``Flatten`` produces) are evaluated here with the
batch size as an unknown (:func:`shape_value`), so RESHAPE / FILL / BROADCAST_TO still get static
targets with only the batch dimension dynamic.

Slice bounds computed at run time (TensorFlow's lowering of ``TensorListSetItem`` in RNN loop
bodies slices the accumulator at the loop counter) become ``slice_dynamic`` /
``strided_slice_dynamic``; the output dimensions known at build time (:func:`partial_ints`,
the TFLite shape signature) stay static, and a CONCATENATION of such pieces gets its static
TFLite shape back.
"""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.ops._common import (
    INT_TYPES,
    axis_arg,
    batched,
    shape_value,
    target_shape,
)
from mlflow_tflite_keras.converter.registry import register


def _int_list(value) -> list[int]:
    return [] if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def static_rest(x) -> bool:
    return all(d is not None for d in x.shape[1:])


def batch_source(ctx, t, depth=0):
    """The graph tensor whose dynamic batch size an integer tensor computed from SHAPE ops
    carries (the input of that SHAPE), or None."""
    op = ctx.graph.producers.get(t.index) if t is not None else None
    if op is None or depth > 24 or ctx.is_const(ctx.value(t)):
        return None
    if op.type == "SHAPE":
        x = ctx.value(op.inputs[0])
        return x if batched(ctx, x) else None
    for u in op.inputs:
        ref = batch_source(ctx, u, depth + 1) if u is not None else None
        if ref is not None:
            return ref
    return None


def _fill_batch(op, ctx, shape_tensor, value, target, mask):
    """FILL / BROADCAST_TO to ``target`` whose masked entries are the batch size itself:
    ``broadcast_to_batch_of`` the tensor that size comes from; None when it does not apply
    (an entry depends on the batch otherwise, or the source is not found)."""
    ref = batch_source(ctx, shape_tensor)
    if ref is None or np.any(np.asarray(mask) > 1):
        return None
    return ctx.op(op, "broadcast_to_batch_of", ref, value,
                  shape=[-1 if m else int(d) for d, m in zip(target, mask)])



# ---- reshape-like ----------------------------------------------------------------------------

@register("RESHAPE", layer="keras.layers.Reshape")
def reshape(op, ctx):
    x = ctx.value(op.inputs[0])
    target, mask = target_shape(op, ctx)
    if target is None and op.input(1) is not None:
        sig = op.outputs[0].shape_signature
        if batched(ctx, x) and sig[0] == -1 and -1 not in sig[1:]:
            return [ctx.apply(keras.layers.Reshape(sig[1:], name=ctx.name(op)), x)]
        return [ctx.op(op, "reshape", x, ctx.value(op.input(1)))]  # run-time shape
    if target is None:
        target = _int_list(op.opt("newShape")) or list(op.outputs[0].shape)
        mask = np.zeros(len(target), np.int8)
    return [_reshape(op, ctx, x, target, mask)]


def _reshape(op, ctx, x, target, mask=None, suffix=""):
    mask = np.zeros(len(target), np.int8) if mask is None else np.asarray(mask)
    if batched(ctx, x) and target:
        rest = list(target[1:])
        in_rest = x.shape[1:]
        same_size = static_rest(x) and -1 not in rest and \
            int(np.prod(rest)) == int(np.prod(in_rest))
        # A merged leading dimension (e.g. batch x time flattened for FULLY_CONNECTED) is
        # not the batch: a Reshape layer only fits when each row keeps its element count.
        rows_fit = same_size or not static_rest(x) or -1 in rest
        keep = (mask[0] == 1 and not mask[1:].any() and rest.count(-1) <= 1 and rows_fit) or (
            not mask.any() and (target[0] == -1 or target[0] == op.inputs[0].shape[0] == 1)
            and (same_size or (rest.count(-1) == 1 and target[0] != -1)))
        if keep:
            return ctx.apply(keras.layers.Reshape(tuple(rest), name=ctx.name(op, suffix)), x)
    if mask.any():
        if np.count_nonzero(mask) != 1 or -1 in target:  # only the run-time shape says it
            return ctx.op(op, "reshape", x, ctx.value(op.input(1)), suffix=suffix)
        target = [-1 if m else d for d, m in zip(target, mask)]
    return ctx.op(op, "reshape", x, newshape=tuple(int(d) for d in target), suffix=suffix)


@register("SQUEEZE", layer="keras.layers.Reshape / KerasOp(squeeze)")
def squeeze(op, ctx):
    x = ctx.value(op.inputs[0])
    rank = op.inputs[0].rank
    dims = [int(d) % rank for d in _int_list(op.opt("squeezeDims"))]
    if not dims:
        dims = [i for i, d in enumerate(op.inputs[0].shape_signature) if d == 1]
    if batched(ctx, x):
        dims = [d for d in dims if d != 0]  # the Keras batch is never squeezed away
    if not dims:
        return [x]
    if batched(ctx, x) and static_rest(x):
        shape = [d for i, d in enumerate(x.shape) if i not in dims]
        return [ctx.apply(keras.layers.Reshape(tuple(shape[1:]), name=ctx.name(op)), x)]
    return [ctx.op(op, "squeeze", x, axis=tuple(dims))]


@register("EXPAND_DIMS", layer="keras.layers.Reshape / KerasOp(expand_dims)")
def expand_dims(op, ctx):
    x = ctx.value(op.inputs[0])
    axis = axis_arg(ctx, op.input(1))[0]
    rank = op.inputs[0].rank
    axis = axis + rank + 1 if axis < 0 else axis
    if batched(ctx, x) and axis > 0 and static_rest(x):
        shape = list(x.shape[1:])
        shape.insert(axis - 1, 1)
        return [ctx.apply(keras.layers.Reshape(tuple(shape), name=ctx.name(op)), x)]
    return [ctx.op(op, "expand_dims", x, axis=axis)]


@register("TRANSPOSE", layer="keras.layers.Permute / KerasOp(transpose)")
def transpose(op, ctx):
    x = ctx.value(op.inputs[0])
    perm = axis_arg(ctx, op.input(1), "the permutation")
    if batched(ctx, x) and perm and perm[0] == 0 and len(perm) > 1:
        return [ctx.apply(keras.layers.Permute(tuple(perm[1:]), name=ctx.name(op)), x)]
    return [ctx.op(op, "transpose", x, axes=tuple(perm))]


# ---- joining and splitting -------------------------------------------------------------------

@register("CONCATENATION", layer="keras.layers.Concatenate / KerasOp(concat_n)")
def concatenation(op, ctx):
    xs = ctx.inputs(op)
    axis = int(op.opt("axis", 0))
    rank = op.outputs[0].rank
    axis = axis + rank if axis < 0 else axis
    update = _list_set_item(op, ctx, axis)
    if len(xs) == 1:
        y = xs[0]
    elif update is not None:
        y = update
    elif not any(ctx.is_const(v) for v in xs) and len({len(v.shape) for v in xs}) == 1 \
            and axis != 0 and len({str(v.dtype) for v in xs}) == 1:
        y = keras.layers.Concatenate(axis=axis, name=ctx.name(op))(list(xs))
    else:
        y = ctx.op(op, "concat_n", *xs, axis=axis)
    if not ctx.is_const(y):
        # Parts of run-time sizes (slices at a loop counter) joined back to a static size.
        dims = list(y.shape)
        static = _known_output_shape(op, ctx, next((v for v in xs if not ctx.is_const(v)), y),
                                     dims)
        if static != dims:
            y = ctx.op(op, "with_static_shape", y, static_shape=static, suffix="_shape")
    return [ctx.activation(op, y)]


def _list_set_item(op, ctx, axis):
    """TensorFlow's lowering of ``TensorListSetItem`` (an RNN loop writing step ``i`` into
    its accumulator): ``concat(acc[:i], item, acc[i + n:])`` along ``axis``, the two slices
    of run-time size. Written as ``dynamic_update_slice(acc, item, start)``, which has static
    shapes (JAX and PyTorch cannot slice to a run-time size); None for any other
    concatenation."""
    if len(op.inputs) != 3 or op.outputs[0].rank < 1:
        return None
    head, item, tail = (ctx.graph.producers.get(t.index) for t in op.inputs)
    if head is None or tail is None or head.type != "SLICE" or tail.type != "SLICE" or \
            head.inputs[0].index != tail.inputs[0].index or \
            _bounds_known(ctx, tail.input(1), tail.input(2)) or not \
            _bounds_known(ctx, head.input(1)):
        return None
    acc, value = ctx.value(head.inputs[0]), ctx.value(op.inputs[1])
    n = op.inputs[1].shape[axis]
    if ctx.is_const(acc) or ctx.is_const(value) or any(d is None for d in acc.shape) or \
            tuple(value.shape) != tuple(acc.shape[:axis]) + (n,) + tuple(acc.shape[axis + 1:]) \
            or any(axis_arg(ctx, head.input(1), "begin")) or \
            partial_ints(ctx, tail.input(2)) != [-1] * len(acc.shape):
        return None
    shift = np.zeros(len(acc.shape), np.int32)
    shift[axis] = n
    start = ctx.op(op, "subtract", ctx.value(tail.input(1)), shift, suffix="_start")
    return ctx.op(op, "dynamic_update_slice", acc, value, start)


@register("PACK", layer="KerasOp(stack_n)")
def pack(op, ctx):
    xs = ctx.inputs(op)
    axis = int(op.opt("axis", 0))
    return [ctx.op(op, "stack_n", *xs, axis=axis)]


@register("UNPACK", layer="KerasOp(unstack)")
def unpack(op, ctx):
    x = ctx.value(op.inputs[0])
    axis = int(op.opt("axis", 0))
    num = int(op.opt("num", 0)) or op.inputs[0].shape[axis]
    if len(op.outputs) == 1:
        return [ctx.op(op, "squeeze", x, axis=axis)]
    return list(ctx.op(op, "unstack", x, num=num, axis=axis))


@register("SPLIT", layer="KerasOp(split)")
def split(op, ctx):
    axis = axis_arg(ctx, op.input(0))[0]
    x = ctx.value(op.inputs[1])
    n = int(op.opt("numSplits", len(op.outputs)))
    if n == 1:
        return [x]
    return list(ctx.op(op, "split", x, indices_or_sections=n, axis=axis))


@register("SPLIT_V", layer="KerasOp(split)")
def split_v(op, ctx):
    x = ctx.value(op.inputs[0])
    sizes = axis_arg(ctx, op.input(1), "the split sizes")
    axis = axis_arg(ctx, op.input(2))[0]
    if -1 in sizes:
        total = op.inputs[0].shape[axis]
        sizes[sizes.index(-1)] = total - (sum(sizes) + 1)
    if len(sizes) == 1:
        return [x]
    return list(ctx.op(op, "split", x, indices_or_sections=[int(v) for v in np.cumsum(sizes)[:-1]],
                       axis=axis))


# ---- slicing ---------------------------------------------------------------------------------

def _full_batch_slice(op, ctx, x, start, stop, step) -> bool:
    """Dimension 0 of a batched tensor of a static-batch-1 model, sliced over that whole
    batch of 1: the Keras model takes the whole (dynamic) batch."""
    t = op.inputs[0]
    return (batched(ctx, x) and t.shape_signature[0] == 1 and step in (None, 1)
            and start in (None, 0) and (stop is None or stop >= 1))


def _apply_index(op, ctx, x, index):
    if all(k == [None, None, None] for k in index) and len(index) <= len(getattr(x, "shape", ())):
        return x
    return ctx.op(op, "getitem", x, index=index)


def partial_ints(ctx, t, depth=0) -> list | None:
    """The entries of a small integer vector (or scalar) known at build time, ``None`` for
    the entries computed at run time: constants, shape arithmetic (:func:`shape_value`), and
    vectors assembled from pieces (``CONCATENATION``, ``PACK``, ``RESHAPE`` of a scalar), as
    TensorFlow's lowering builds slice bounds from a loop counter. ``None`` when the length
    itself is unknown."""
    if t is None or t.rank > 1:
        return None
    v = ctx.value(t)
    if ctx.is_const(v):
        return [int(a) for a in np.asarray(v).reshape(-1)]
    n = 1 if t.rank == 0 else (t.shape_signature[0] if t.shape_signature[0] != -1 else None)
    op = ctx.graph.producers.get(t.index)
    if op is not None and depth < 8 and t.type_name in INT_TYPES:
        parts = None
        if op.type == "CONCATENATION" and t.rank == 1:
            parts = [partial_ints(ctx, u, depth + 1) for u in op.inputs]
        elif op.type == "PACK" and int(op.opt("axis", 0)) == 0 and \
                all(u.rank == 0 for u in op.inputs):
            parts = [partial_ints(ctx, u, depth + 1) for u in op.inputs]
        elif op.type in ("RESHAPE", "EXPAND_DIMS", "SQUEEZE") and op.inputs[0].rank <= 1:
            parts = [partial_ints(ctx, op.inputs[0], depth + 1)]
        if parts is not None and all(p is not None for p in parts):
            flat = [a for p in parts for a in p]
            if n is None or len(flat) == n:
                return flat
    value, mask = shape_value(ctx, t)
    if value is not None:
        return [int(a) if m == 0 else None
                for a, m in zip(np.asarray(value).reshape(-1), np.asarray(mask).reshape(-1))]
    return None if n is None else [None] * n


def _known_output_shape(op, ctx, x, dims):
    """The Keras output shape of a run-time-bounds slice: ``dims`` (computed at build time,
    ``None`` unknown) completed from the TFLite shape signature. A dimension 0 of size 1 on
    a tensor with a dynamic dimension 0 may stand for the Keras batch: it stays dynamic."""
    sig = op.outputs[0].shape_signature
    batch = batched(ctx, x) and op.inputs[0].shape[0] == 1
    out = list(dims)
    if len(sig) == len(out):
        for i, d in enumerate(sig):
            if out[i] is None and d != -1 and not (i == 0 and batch and d == 1):
                out[i] = int(d)
    if batch and out and op.outputs[0].shape[0] == 1:
        out[0] = None
    return out


def _slice_runtime(op, ctx, x):
    """SLICE whose begin or size is computed at run time (e.g. writes into a loop's
    accumulator at the loop counter): ``KerasOp(slice_dynamic)``."""
    rank = op.inputs[0].rank
    begin = partial_ints(ctx, op.input(1)) or [None] * rank
    size = partial_ints(ctx, op.input(2)) or [None] * rank
    in_shape = list(np.shape(x)) if ctx.is_const(x) else list(x.shape)
    dims, full = [], []
    for i in range(rank):
        b, s, d = begin[i], size[i], in_shape[i]
        if i == 0 and not ctx.is_const(x) and b is not None and s is not None and \
                _full_batch_slice(op, ctx, x, b, None if s == -1 else b + s, 1):
            full.append(0)
            dims.append(None)
        elif s is not None and s >= 0:
            dims.append(s)
        elif s == -1 and b is not None and d is not None:
            dims.append(max(d - b, 0))
        else:
            dims.append(None)
    static = _known_output_shape(op, ctx, x, dims)
    return ctx.op(op, "slice_dynamic", x, ctx.value(op.input(1)), ctx.value(op.input(2)),
                  static_shape=static, full_dims=full)


def _bounds_known(ctx, *tensors) -> bool:
    return all(t is None or ctx.is_const(ctx.value(t)) for t in tensors)


@register("SLICE", layer="KerasOp(getitem / slice_dynamic)")
def slice_(op, ctx):
    x = ctx.value(op.inputs[0])
    if not _bounds_known(ctx, op.input(1), op.input(2)):
        return [_slice_runtime(op, ctx, x)]
    begin = axis_arg(ctx, op.input(1), "begin")
    size = axis_arg(ctx, op.input(2), "size")
    index = []
    for i, (b, s) in enumerate(zip(begin, size)):
        stop = None if s == -1 else b + s
        if i == 0 and _full_batch_slice(op, ctx, x, b, stop, 1):
            stop = None
        index.append([b or None, stop, None])
    return [_apply_index(op, ctx, x, index)]


def _strided_slice_options(op):
    """``(begin_mask, end_mask, ellipsis_mask, new_axis_mask, shrink_axis_mask, offset)``."""
    masks = (int(op.opt(k, 0)) for k in ("beginMask", "endMask", "ellipsisMask",
                                         "newAxisMask", "shrinkAxisMask"))
    return (*masks, bool(op.opt("offset", False)))


@register("STRIDED_SLICE", layer="KerasOp(getitem / strided_slice_dynamic)")
def strided_slice(op, ctx):
    x = ctx.value(op.inputs[0])
    if not _bounds_known(ctx, op.input(1), op.input(2)):
        return [_strided_slice_runtime(op, ctx, x)]
    begin = axis_arg(ctx, op.input(1), "begin")
    end = axis_arg(ctx, op.input(2), "end")
    strides = axis_arg(ctx, op.input(3), "strides") if op.input(3) is not None \
        else [1] * len(begin)
    bm, em, ell, new, shrink, offset = _strided_slice_options(op)
    index = []
    dim = 0  # the input dimension this spec entry addresses (before any ellipsis)
    for i, (b, e, s) in enumerate(zip(begin, end, strides)):
        bit = 1 << i
        if ell & bit:
            index.append("...")
            dim = None
            continue
        if new & bit:
            index.append(None)
            continue
        if offset:
            e = b + e
        if shrink & bit:
            index.append(b)
        else:
            start = None if bm & bit else b
            stop = None if em & bit else e
            if dim == 0 and _full_batch_slice(op, ctx, x, start, stop, s):
                start = stop = None
            index.append([start, stop, None if s == 1 else s])
        if dim is not None:
            dim += 1
    return [_apply_index(op, ctx, x, index)]


def _strided_slice_runtime(op, ctx, x):
    """STRIDED_SLICE whose begin or end is computed at run time (constant positive strides,
    no ellipsis / new axis): ``KerasOp(strided_slice_dynamic)``."""
    n = op.input(1).shape[0] if op.input(1).rank == 1 else 1
    strides = axis_arg(ctx, op.input(3), "strides") if op.input(3) is not None else [1] * n
    bm, em, ell, new, shrink, offset = _strided_slice_options(op)
    if ell or new or any(s <= 0 for s in strides):
        raise ConversionError("STRIDED_SLICE with run-time begin/end: only positive strides "
                              "without ellipsis or new axes are supported.")
    rank = op.inputs[0].rank
    n = len(strides)
    begin = partial_ints(ctx, op.input(1)) or [None] * n
    end = partial_ints(ctx, op.input(2)) or [None] * n
    in_shape = list(np.shape(x)) if ctx.is_const(x) else list(x.shape)
    dims = []
    for i in range(rank):
        d = in_shape[i]
        bit = 1 << i
        if i >= n:
            dims.append(d)
            continue
        if shrink & bit:
            continue
        b = None if bm & bit else begin[i]
        e = None if em & bit else end[i]
        if offset and not em & bit:
            e = None if (begin[i] is None or end[i] is None) else begin[i] + end[i]
        if i == 0 and not ctx.is_const(x) and (b is not None or bm & bit) and \
                (e is not None or em & bit) and _full_batch_slice(op, ctx, x, b, e, strides[0]):
            bm, em = bm | 1, em | 1  # a static batch of 1 stands for the Keras batch
            dims.append(None)
            continue
        known = d is not None and (b is not None or bm & bit) and (e is not None or em & bit)
        dims.append(len(range(d)[slice(b, e, strides[i])]) if known else None)
    static = _known_output_shape(op, ctx, x, dims)
    return ctx.op(op, "strided_slice_dynamic", x, ctx.value(op.input(1)),
                  ctx.value(op.input(2)), strides=[int(v) for v in strides], begin_mask=bm,
                  end_mask=em, shrink_axis_mask=shrink, offset=offset, static_shape=static)


@register("DYNAMIC_UPDATE_SLICE", layer="KerasOp(dynamic_update_slice)")
def dynamic_update_slice(op, ctx):
    operand, update, start = ctx.inputs(op)[:3]
    if not ctx.is_const(update) and any(d is None for d in update.shape):
        raise ConversionError("DYNAMIC_UPDATE_SLICE: the update must have a static shape.")
    return [ctx.op(op, "dynamic_update_slice", operand, update, start)]


# ---- padding, tiling, broadcasting -----------------------------------------------------------

_ZERO_PADDING = {3: keras.layers.ZeroPadding1D, 4: keras.layers.ZeroPadding2D,
                 5: keras.layers.ZeroPadding3D}


@register("PAD", "PADV2", layer="keras.layers.ZeroPadding1D/2D/3D / KerasOp(pad)")
def pad(op, ctx):
    x = ctx.value(op.inputs[0])
    pads = np.asarray(ctx.const(op.input(1), "the paddings")).astype(int).tolist()
    value = 0.0
    if op.type == "PADV2" and op.input(2) is not None:
        value = float(np.asarray(ctx.const(op.input(2), "the pad value")).reshape(-1)[0])
    rank = len(pads)
    if value == 0 and not ctx.is_const(x) and not _feeds_only_windows(op, ctx):
        # A zero Pad feeding anything but a convolution/pooling window (e.g. the Add of a
        # channel-padded shortcut) is written as a concatenation: see zero_pad_by_concat.
        return [ctx.op(op, "zero_pad_by_concat", x, pad_width=pads)]
    if (batched(ctx, x) and value == 0 and rank in _ZERO_PADDING and pads[0] == [0, 0]
            and pads[-1] == [0, 0] and "float" in str(x.dtype)):
        spatial = [tuple(p) for p in pads[1:-1]]
        return [ctx.apply(_ZERO_PADDING[rank](spatial[0] if rank == 3 else tuple(spatial),
                                              name=ctx.name(op)), x)]
    kwargs = {"constant_values": value} if value else {}
    if ctx.is_const(x) or "int" in str(x.dtype) or "bool" in str(x.dtype):
        if value == int(value):
            kwargs = {"constant_values": int(value)} if value else {}
    return [ctx.op(op, "pad", x, pad_width=pads, **kwargs)]


_WINDOW_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "AVERAGE_POOL_2D",
                         "MAX_POOL_2D", "L2_POOL_2D", "TRANSPOSE_CONV", "CONV_3D_TRANSPOSE"})


def _feeds_only_windows(op, ctx) -> bool:
    """Every consumer of the pad's output is a windowed op (the usual explicit padding of a
    strided convolution or pooling), and no model output is taken from it."""
    out = op.outputs[0].index
    consumers = ctx.graph.consumers.get(out, [])
    return bool(consumers) and all(c.type in _WINDOW_OPS for c in consumers) and \
        out not in {t.index for t in ctx.graph.outputs}


@register("MIRROR_PAD", layer="KerasOp(pad, reflect/symmetric)")
def mirror_pad(op, ctx):
    x = ctx.value(op.inputs[0])
    pads = np.asarray(ctx.const(op.input(1), "the paddings")).astype(int).tolist()
    mode = "symmetric" if int(op.opt("mode", 0)) == 1 else "reflect"
    return [ctx.op(op, "pad", x, pad_width=pads, mode=mode)]


@register("TILE", layer="KerasOp(tile)")
def tile(op, ctx):
    x = ctx.value(op.inputs[0])
    reps = axis_arg(ctx, op.input(1), "the multiples")
    return [ctx.op(op, "tile", x, repeats=reps)]


@register("BROADCAST_TO", layer="KerasOp(broadcast_to / broadcast_to_keep / fill_dims)")
def broadcast_to(op, ctx):
    x = ctx.value(op.inputs[0])
    target, mask = target_shape(op, ctx)
    if target is None:
        static = [None if d == -1 else int(d) for d in op.outputs[0].shape_signature]
        return [ctx.op(op, "fill_dims", ctx.value(op.input(1)), x, static_shape=static)]
    rank_x = len(np.shape(x)) if ctx.is_const(x) else len(x.shape)
    if batched(ctx, x) and not mask.any() and len(target) == rank_x and target[0] == 1 == \
            op.inputs[0].shape[0]:
        mask = mask.copy()
        mask[0] = 1  # a static batch of 1 stands for the Keras batch
    if mask.any():
        off = len(target) - rank_x
        if ctx.is_const(x) or off < 0 or any(m and (m == 2 or i < off or x.shape[i - off]
                                                    is not None) for i, m in enumerate(mask)):
            # The batch size comes from another tensor: broadcast to the run-time shape.
            y = _fill_batch(op, ctx, op.input(1), x, target, mask)
            if y is not None:
                return [y]
            static = [None if m else int(d) for d, m in zip(target, mask)]
            return [ctx.op(op, "fill_dims", ctx.value(op.input(1)), x, static_shape=static)]
        return [ctx.op(op, "broadcast_to_keep", x,
                       shape=[-1 if m else int(d) for d, m in zip(target, mask)])]
    return [ctx.op(op, "broadcast_to", x, shape=tuple(target))]


@register("BROADCAST_ARGS", layer="KerasOp(broadcast_args)")
def broadcast_args(op, ctx):
    a, b = ctx.inputs(op)[:2]
    return [ctx.op(op, "broadcast_args", a, b)]


# ---- shape, range, fill, reverse -------------------------------------------------------------

_INDEX_TYPES = {2: "int32", 4: "int64"}


@register("SHAPE", layer="(constant) / KerasOp(shape_of)")
def shape(op, ctx):
    x = ctx.value(op.inputs[0])
    dtype = op.outputs[0].float_dtype
    if ctx.is_const(x):
        return [np.array(np.shape(x), dtype=dtype)]
    if all(d is not None for d in x.shape):
        return [np.array(x.shape, dtype=dtype)]
    return [ctx.op(op, "shape_of", x, dtype=dtype)]


@register("RANGE", layer="KerasOp(arange)")
def range_(op, ctx):
    start, limit, delta = ctx.inputs(op)[:3]
    dtype = op.outputs[0].float_dtype
    return [ctx.op(op, "arange", start, limit, delta, dtype=dtype)]


@register("FILL", layer="KerasOp(full / fill_dims)")
def fill(op, ctx):
    value = ctx.value(op.input(1))
    dims, mask = target_shape(op, ctx, 0)
    dtype = op.outputs[0].float_dtype
    if ctx.is_const(value):
        value = np.asarray(value).astype(dtype)
    if dims is not None and not mask.any():
        if ctx.is_const(value):
            return [np.full(dims, value, dtype=dtype)]
        return [ctx.op(op, "broadcast_to", value, shape=tuple(dims))]
    y = _fill_batch(op, ctx, op.input(0), value, dims, mask) if dims is not None else None
    if y is not None:
        return [y]
    static = [None if m else int(d) for d, m in zip(dims, mask)] if dims is not None else \
        [None if d == -1 else int(d) for d in op.outputs[0].shape_signature]
    return [ctx.op(op, "fill_dims", ctx.value(op.input(0)), value, static_shape=static)]


@register("REVERSE_V2", layer="KerasOp(flip)")
def reverse_v2(op, ctx):
    y = ctx.value(op.inputs[0])
    for i, axis in enumerate(axis_arg(ctx, op.input(1))):
        y = ctx.op(op, "flip", y, axis=axis, suffix=f"_{i}" if i else "")
    return [y]
