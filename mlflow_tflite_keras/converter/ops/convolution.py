"""Convolution and dense family: CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D,
CONV_3D_TRANSPOSE, FULLY_CONNECTED, BATCH_MATMUL.

Every op with constant weights becomes the matching built-in Keras layer holding those weights
as trainable variables. Layouts (TFLite -> Keras):

* CONV_2D filter ``[Cout, H, W, Cin/groups]`` -> Conv2D kernel ``[H, W, Cin/groups, Cout]``
* DEPTHWISE_CONV_2D filter ``[1, H, W, Cin*mult]`` -> DepthwiseConv2D kernel
  ``[H, W, Cin, mult]`` (output channel ``c*mult + m``, as in TF)
* TRANSPOSE_CONV weights ``[Cout, H, W, Cin]`` -> Conv2DTranspose kernel ``[H, W, Cout, Cin]``
* CONV_3D / CONV_3D_TRANSPOSE filters are already in TF (= Keras) layout
* FULLY_CONNECTED weights ``[units, K]`` -> Dense kernel ``[K, units]``
"""

from __future__ import annotations

import string

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.ops._common import (
    padding,
    transpose_output_padding,
    with_weights,
)
from mlflow_tflite_keras.converter.registry import register


def finish(op, ctx, y, activation_done):
    """Apply the fused activation unless the layer already carries it."""
    return y if activation_done else ctx.activation(op, y)


def build_shape(t, channels=None):
    """A build shape for a channels-last layer: only the channel count matters."""
    return (None,) * (t.rank - 1) + (channels if channels is not None else t.shape[-1],)


def _bias(ctx, op, i):
    t = op.input(i)
    if t is None:
        return None
    return ctx.const(t, "the bias").astype(np.float32).reshape(-1)


@register("CONV_2D", layer="keras.layers.Conv2D")
def conv_2d(op, ctx):
    x = ctx.value(op.inputs[0])
    kernel = ctx.const(op.input(1), "the filter")  # OHWI
    bias = _bias(ctx, op, 2)
    in_channels = op.inputs[0].shape[-1]
    if in_channels % kernel.shape[-1]:
        raise ConversionError(f"input channels {in_channels} are not a multiple of the "
                              f"filter's {kernel.shape[-1]}")
    act = ctx.activation_name(op)
    layer = keras.layers.Conv2D(
        filters=kernel.shape[0],
        kernel_size=kernel.shape[1:3],
        strides=(op.opt("strideH", 1), op.opt("strideW", 1)),
        padding=padding(op),
        dilation_rate=(op.opt("dilationHFactor", 1), op.opt("dilationWFactor", 1)),
        groups=in_channels // kernel.shape[-1],
        use_bias=bias is not None,
        activation=act or None,
        name=ctx.name(op),
    )
    weights = [np.transpose(kernel, (1, 2, 3, 0))] + ([bias] if bias is not None else [])
    with_weights(layer, build_shape(op.inputs[0]), weights)
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


@register("DEPTHWISE_CONV_2D", layer="keras.layers.DepthwiseConv2D")
def depthwise_conv_2d(op, ctx):
    x = ctx.value(op.inputs[0])
    kernel = ctx.const(op.input(1), "the filter")  # [1, H, W, Cin*mult]
    bias = _bias(ctx, op, 2)
    in_channels = op.inputs[0].shape[-1]
    if kernel.shape[0] != 1 or kernel.shape[-1] % in_channels:
        raise ConversionError(f"filter shape {list(kernel.shape)} does not fit "
                              f"{in_channels} input channels")
    mult = kernel.shape[-1] // in_channels
    act = ctx.activation_name(op)
    layer = keras.layers.DepthwiseConv2D(
        kernel_size=kernel.shape[1:3],
        strides=(op.opt("strideH", 1), op.opt("strideW", 1)),
        padding=padding(op),
        depth_multiplier=mult,
        dilation_rate=(op.opt("dilationHFactor", 1), op.opt("dilationWFactor", 1)),
        use_bias=bias is not None,
        activation=act or None,
        name=ctx.name(op),
    )
    h, w = kernel.shape[1:3]
    weights = [kernel.reshape(h, w, in_channels, mult)] + ([bias] if bias is not None else [])
    with_weights(layer, build_shape(op.inputs[0]), weights)
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


def _output_size(op, ctx, n):
    """The ``n`` spatial output sizes of a transposed convolution: its constant
    ``output_shape`` operand, else the output tensor's shape."""
    out_shape = op.input(0)
    if out_shape is not None and ctx.is_const(ctx.value(out_shape)):
        return [int(v) for v in ctx.value(out_shape).reshape(-1)[1:1 + n]]
    return list(op.outputs[0].shape[1:1 + n])


def _spatial(t, n):
    sig = t.shape_signature if len(t.shape_signature) == t.rank else t.shape
    return [None if sig[i] < 0 else t.shape[i] for i in range(1, 1 + n)]


@register("TRANSPOSE_CONV", layer="keras.layers.Conv2DTranspose")
def transpose_conv(op, ctx):
    # inputs: output_shape, weights [Cout, H, W, Cin], input, optional bias
    weights = ctx.const(op.input(1), "the weights")
    x = ctx.value(op.inputs[2])
    bias = _bias(ctx, op, 3)
    pad = padding(op)
    strides = (op.opt("strideH", 1), op.opt("strideW", 1))
    out_hw = _output_size(op, ctx, 2)
    output_padding = transpose_output_padding(pad, _spatial(op.inputs[2], 2), out_hw,
                                               weights.shape[1:3], strides)
    act = ctx.activation_name(op)
    layer = keras.layers.Conv2DTranspose(
        filters=weights.shape[0], kernel_size=weights.shape[1:3], strides=strides,
        padding=pad, output_padding=output_padding, use_bias=bias is not None,
        activation=act or None, name=ctx.name(op))
    kernel = np.transpose(weights, (1, 2, 0, 3))
    with_weights(layer, build_shape(op.inputs[2]),
                 [kernel] + ([bias] if bias is not None else []))
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


@register("CONV_3D", layer="keras.layers.Conv3D")
def conv_3d(op, ctx):
    x = ctx.value(op.inputs[0])
    kernel = ctx.const(op.input(1), "the filter")  # [D, H, W, Cin/groups, Cout]
    bias = _bias(ctx, op, 2)
    in_channels = op.inputs[0].shape[-1]
    if in_channels % kernel.shape[3]:
        raise ConversionError(f"input channels {in_channels} do not fit the filter "
                              f"{list(kernel.shape)}")
    act = ctx.activation_name(op)
    layer = keras.layers.Conv3D(
        filters=kernel.shape[-1], kernel_size=kernel.shape[:3],
        strides=(op.opt("strideD", 1), op.opt("strideH", 1), op.opt("strideW", 1)),
        padding=padding(op),
        dilation_rate=(op.opt("dilationDFactor", 1), op.opt("dilationHFactor", 1),
                       op.opt("dilationWFactor", 1)),
        groups=in_channels // kernel.shape[3], use_bias=bias is not None,
        activation=act or None, name=ctx.name(op))
    with_weights(layer, build_shape(op.inputs[0]), [kernel] + ([bias] if bias is not None else []))
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


@register("CONV_3D_TRANSPOSE", layer="keras.layers.Conv3DTranspose")
def conv_3d_transpose(op, ctx):
    # inputs: output_shape, filter [D, H, W, Cout, Cin], input, optional bias
    kernel = ctx.const(op.input(1), "the filter")
    x = ctx.value(op.inputs[2])
    bias = _bias(ctx, op, 3)
    pad = padding(op)
    strides = (op.opt("strideD", 1), op.opt("strideH", 1), op.opt("strideW", 1))
    if any(op.opt(k, 1) != 1 for k in ("dilationDFactor", "dilationHFactor",
                                        "dilationWFactor")):
        raise ConversionError("dilated 3-D transposed convolutions are not supported")
    out_dhw = _output_size(op, ctx, 3)
    output_padding = transpose_output_padding(pad, _spatial(op.inputs[2], 3), out_dhw,
                                               kernel.shape[:3], strides)
    act = ctx.activation_name(op)
    layer = keras.layers.Conv3DTranspose(
        filters=kernel.shape[3], kernel_size=kernel.shape[:3], strides=strides, padding=pad,
        output_padding=output_padding, use_bias=bias is not None, activation=act or None,
        name=ctx.name(op))
    with_weights(layer, build_shape(op.inputs[2]),
                 [kernel] + ([bias] if bias is not None else []))
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


@register("FULLY_CONNECTED", layer="keras.layers.Dense")
def fully_connected(op, ctx):
    x = ctx.value(op.inputs[0])
    weights = ctx.value(op.input(1))  # [units, K]
    bias = _bias(ctx, op, 2)
    out = op.outputs[0]
    k = op.input(1).shape[-1]
    in_t = op.inputs[0]
    if in_t.rank != out.rank or in_t.shape[-1] != k:
        # keep_num_dims=False (or an input whose last dimension is not K): TFLite flattens
        # the input to [-1, K].
        if not ctx.is_const(x) and x.shape[0] is None and in_t.rank >= 2 \
                and int(np.prod(in_t.shape[1:])) == k:
            x = ctx.apply(keras.layers.Reshape((k,), name=ctx.name(op, "_flatten")), x)
        else:
            x = ctx.op(op, "reshape", x, suffix="_flatten", newshape=(-1, k))
        if out.rank > 2:
            raise ConversionError(f"output rank {out.rank} after flattening the input")
    if not ctx.is_const(weights):
        # Weights computed at run time: a matmul, not a layer.
        y = ctx.op(op, "matmul", x, ctx.op(op, "transpose", weights, suffix="_wt"))
        if bias is not None:
            y = ctx.op(op, "add_exact", y, bias, suffix="_bias")
        return [ctx.activation(op, y)]
    act = ctx.activation_name(op)
    layer = keras.layers.Dense(weights.shape[0], use_bias=bias is not None,
                               activation=act or None, name=ctx.name(op))
    with_weights(layer, (None, k), [weights.T] + ([bias] if bias is not None else []))
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


def _swap_last(op, ctx, v, suffix):
    if ctx.is_const(v):
        return np.swapaxes(v, -1, -2)
    return ctx.op(op, "swapaxes", v, suffix=suffix, axis1=-1, axis2=-2)


@register("BATCH_MATMUL", layer="keras.layers.Dense / keras.layers.EinsumDense / KerasOp(matmul)")
def batch_matmul(op, ctx):
    x, y = ctx.value(op.inputs[0]), ctx.value(op.inputs[1])
    adj_x, adj_y = bool(op.opt("adjX", False)), bool(op.opt("adjY", False))
    if adj_x:
        x = _swap_last(op, ctx, x, "_adj_x")
    if ctx.is_const(y) and not ctx.is_const(x):
        w = np.asarray(y, np.float32)
        if adj_y:
            w = np.swapaxes(w, -1, -2)
        while w.ndim > 2 and w.shape[0] == 1:
            w = w[0]
        x_rank = len(x.shape)
        if w.ndim == 2:
            layer = keras.layers.Dense(w.shape[1], use_bias=False, name=ctx.name(op))
            with_weights(layer, (None, w.shape[0]), [w])
            return [ctx.apply(layer, x)]
        nb = w.ndim - 2  # batch dims of the weights, matched to x's trailing batch dims
        x_batch = tuple(x.shape[x_rank - 2 - nb:x_rank - 2])
        if w.ndim < x_rank and x_batch == w.shape[:nb] and None not in x_batch:
            letters = string.ascii_lowercase
            lead = letters[:x_rank - 2 - nb]
            bdims = letters[x_rank - 2 - nb:x_rank - 2]
            m, kk, n = "xyz"
            equation = f"{lead}{bdims}{m}{kk},{bdims}{kk}{n}->{lead}{bdims}{m}{n}"
            out_shape = tuple(x.shape[1:-1]) + (w.shape[-1],)
            layer = keras.layers.EinsumDense(equation, output_shape=out_shape,
                                             name=ctx.name(op))
            with_weights(layer, (None, *x.shape[1:]), [w])
            return [ctx.apply(layer, x)]
        return [ctx.op(op, "matmul", x, w)]
    if adj_y:
        y = _swap_last(op, ctx, y, "_adj_y")
    return [ctx.op(op, "matmul", x, y)]


@register("EMBEDDING_LOOKUP", layer="keras.layers.Embedding / KerasOp(take)")
def embedding_lookup(op, ctx):
    ids, table = ctx.value(op.inputs[0]), ctx.value(op.inputs[1])
    if ctx.is_const(ids) or not ctx.is_const(table) or table.ndim != 2:
        return [ctx.op(op, "take", table, ids, axis=0)]
    layer = keras.layers.Embedding(table.shape[0], table.shape[1], name=ctx.name(op))
    with_weights(layer, (None,), [table])
    return [ctx.apply(layer, ids)]
