"""Resize and space-rearrangement family: RESIZE_BILINEAR, RESIZE_NEAREST_NEIGHBOR,
DEPTH_TO_SPACE, SPACE_TO_DEPTH, SPACE_TO_BATCH_ND, BATCH_TO_SPACE_ND.

Resizes go through ``KerasOp(resize_tflite)`` (``converter/layers/``): ``keras.layers.Resizing``
/ ``keras.ops.image.resize`` expose neither ``align_corners`` nor TFLite's legacy
(``half_pixel_centers=False``) coordinates, so the exact TFLite sampling is rebuilt by gathers.
Depth/space moves are reshape + transpose chains (``Reshape`` / ``Permute`` layers when the
batch dimension stays dynamic).
"""

from __future__ import annotations

import keras

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.registry import register


def _static_dims(op, t, dims, what):
    sig = t.shape_signature if len(t.shape_signature) == t.rank else t.shape
    if any(sig[d] < 0 for d in dims):
        raise ConversionError(f"{op.type} needs static {what} (shape {list(sig)})")
    return [t.shape[d] for d in dims]


def _resize(op, ctx, method):
    x = ctx.value(op.inputs[0])
    _static_dims(op, op.inputs[0], (1, 2), "height and width")
    size_t = op.input(1)
    if size_t is not None and ctx.is_const(ctx.value(size_t)):
        size = [int(v) for v in ctx.value(size_t).reshape(-1)]
    else:
        size = list(op.outputs[0].shape[1:3])
    align, half = bool(op.opt("alignCorners", False)), bool(op.opt("halfPixelCenters", False))
    return [ctx.op(op, "resize_tflite", x, size=size, method=method, align_corners=align,
                   half_pixel_centers=half)]


@register("RESIZE_BILINEAR", layer="KerasOp(resize_tflite)")
def resize_bilinear(op, ctx):
    return _resize(op, ctx, "bilinear")


@register("RESIZE_NEAREST_NEIGHBOR", layer="KerasOp(resize_tflite)")
def resize_nearest_neighbor(op, ctx):
    return _resize(op, ctx, "nearest")


def _rearrange(op, ctx, x, steps):
    """Apply ("reshape", full_shape) / ("transpose", full_perm) steps. With a dynamic batch
    that stays in place, built-in Reshape / Permute layers; otherwise KerasOp with the full
    static shapes."""
    dynamic = not ctx.is_const(x) and x.shape[0] is None
    if dynamic and all(kind == "reshape" or perm[0] == 0 for kind, perm in steps):
        for i, (kind, arg) in enumerate(steps):
            suffix = f"_{kind}{i}"
            if kind == "reshape":
                layer = keras.layers.Reshape(tuple(arg[1:]), name=ctx.name(op, suffix))
            else:
                layer = keras.layers.Permute(tuple(p for p in arg[1:]), name=ctx.name(op, suffix))
            x = ctx.apply(layer, x)
        return x
    for i, (kind, arg) in enumerate(steps):
        if kind == "reshape":
            x = ctx.op(op, "reshape", x, suffix=f"_reshape{i}", newshape=tuple(arg))
        else:
            x = ctx.op(op, "transpose", x, suffix=f"_transpose{i}", axes=tuple(arg))
    return x


def _depth_space_operands(op, ctx):
    """DEPTH_TO_SPACE / SPACE_TO_DEPTH: ``(x, block size, batch (-1 when dynamic), static
    (height, width, depth))``."""
    x = ctx.value(op.inputs[0])
    b = -1 if not ctx.is_const(x) and x.shape[0] is None else op.inputs[0].shape[0]
    hwc = _static_dims(op, op.inputs[0], (1, 2, 3), "height, width and depth")
    return x, int(op.opt("blockSize", 1)), b, hwc


@register("DEPTH_TO_SPACE", layer="keras.layers.Reshape + keras.layers.Permute")
def depth_to_space(op, ctx):
    x, bs, b, (h, w, c) = _depth_space_operands(op, ctx)
    co = c // (bs * bs)
    # TF's DCR order: input depth index = (i * bs + j) * co + c
    return [_rearrange(op, ctx, x, [
        ("reshape", (b, h, w, bs, bs, co)),
        ("transpose", (0, 1, 3, 2, 4, 5)),
        ("reshape", (b, h * bs, w * bs, co)),
    ])]


@register("SPACE_TO_DEPTH", layer="keras.layers.Reshape + keras.layers.Permute")
def space_to_depth(op, ctx):
    x, bs, b, (h, w, c) = _depth_space_operands(op, ctx)
    return [_rearrange(op, ctx, x, [
        ("reshape", (b, h // bs, bs, w // bs, bs, c)),
        ("transpose", (0, 1, 3, 2, 4, 5)),
        ("reshape", (b, h // bs, w // bs, bs * bs * c)),
    ])]


def _block_operands(op, ctx, pairs_name):
    """SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND operands: ``(x, block, [[before, after]] per
    block dimension, static spatial sizes, static inner sizes)``."""
    block = [int(v) for v in ctx.const(op.input(1), "the block shape").reshape(-1)]
    pairs = ctx.const(op.input(2), pairs_name).reshape(-1, 2).astype(int).tolist()
    t, m = op.inputs[0], len(block)
    spatial = _static_dims(op, t, range(1, 1 + m), "spatial dimensions")
    rest = _static_dims(op, t, range(1 + m, t.rank), "inner dimensions")
    return ctx.value(t), block, pairs, spatial, rest


@register("SPACE_TO_BATCH_ND", layer="KerasOp(pad, reshape, transpose)")
def space_to_batch_nd(op, ctx):
    x, block, pads, spatial, rest = _block_operands(op, ctx, "the paddings")
    m = len(block)
    if any(p for pair in pads for p in pair):
        x = ctx.op(op, "pad", x, suffix="_pad",
                   pad_width=[[0, 0]] + pads + [[0, 0]] * len(rest))
    padded = [s + p0 + p1 for s, (p0, p1) in zip(spatial, pads)]
    if any(p % bs for p, bs in zip(padded, block)):
        raise ConversionError(f"padded spatial shape {padded} is not a multiple of {block}")
    split = [-1]
    for p, bs in zip(padded, block):
        split += [p // bs, bs]
    x = ctx.op(op, "reshape", x, suffix="_split", newshape=tuple(split + rest))
    perm = [2 + 2 * i for i in range(m)] + [0] + [1 + 2 * i for i in range(m)] + \
        [1 + 2 * m + i for i in range(len(rest))]
    x = ctx.op(op, "transpose", x, suffix="_transpose", axes=tuple(perm))
    out = [-1] + [p // bs for p, bs in zip(padded, block)] + rest
    return [ctx.op(op, "reshape", x, suffix="_merge", newshape=tuple(out))]


@register("BATCH_TO_SPACE_ND", layer="KerasOp(reshape, transpose) + keras.layers.CroppingND")
def batch_to_space_nd(op, ctx):
    x, block, crops, spatial, rest = _block_operands(op, ctx, "the crops")
    m = len(block)
    x = ctx.op(op, "reshape", x, suffix="_split", newshape=tuple(block + [-1] + spatial + rest))
    perm = [m]
    for i in range(m):
        perm += [m + 1 + i, i]
    perm += [2 * m + 1 + i for i in range(len(rest))]
    x = ctx.op(op, "transpose", x, suffix="_transpose", axes=tuple(perm))
    full = [s * bs for s, bs in zip(spatial, block)]
    x = ctx.op(op, "reshape", x, suffix="_merge", newshape=tuple([-1] + full + rest))
    if any(c for pair in crops for c in pair):
        cropping = {1: keras.layers.Cropping1D, 2: keras.layers.Cropping2D,
                    3: keras.layers.Cropping3D}.get(m)
        if cropping is None or len(rest) != 1 or ctx.is_const(x):
            raise ConversionError(f"crops of a {m}-D block with inner dims {rest}")
        arg = tuple(crops[0]) if m == 1 else tuple(tuple(c) for c in crops)
        x = ctx.apply(cropping(arg, name=ctx.name(op, "_crop")), x)
    return [x]
