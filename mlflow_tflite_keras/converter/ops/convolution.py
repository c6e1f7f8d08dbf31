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
    shared_layer,
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


def _kernel_layer(op, ctx, layer_cls, x, input_t, kernel, bias, **config):
    """``layer_cls(**config)`` holding ``kernel`` (Keras layout) and ``bias`` (or none), built
    for ``input_t``'s channels, applied to ``x``, with the op's fused activation (carried by
    the layer when Keras names it); one layer for the ops sharing these weights."""
    act = ctx.activation_name(op)

    def make():
        layer = layer_cls(use_bias=bias is not None, activation=act or None,
                          name=ctx.name(op), **config)
        return with_weights(layer, build_shape(input_t),
                            [kernel] + ([bias] if bias is not None else []))

    layer = shared_layer(op, ctx, make, layer_cls.__name__, act, sorted(config.items()))
    return [finish(op, ctx, ctx.apply(layer, x), act is not False)]


@register("CONV_2D", layer="keras.layers.Conv2D")
def conv_2d(op, ctx):
    x = ctx.value(op.inputs[0])
    kernel = ctx.const(op.input(1), "the filter")  # OHWI
    bias = _bias(ctx, op, 2)
    in_channels = op.inputs[0].shape[-1]
    if in_channels % kernel.shape[-1]:
        raise ConversionError(f"input channels {in_channels} are not a multiple of the "
                              f"filter's {kernel.shape[-1]}")
    return _kernel_layer(
        op, ctx, keras.layers.Conv2D, x, op.inputs[0], np.transpose(kernel, (1, 2, 3, 0)), bias,
        filters=kernel.shape[0],
        kernel_size=kernel.shape[1:3],
        strides=(op.opt("strideH", 1), op.opt("strideW", 1)),
        padding=padding(op),
        dilation_rate=(op.opt("dilationHFactor", 1), op.opt("dilationWFactor", 1)),
        groups=in_channels // kernel.shape[-1])


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
    h, w = kernel.shape[1:3]
    return _kernel_layer(
        op, ctx, keras.layers.DepthwiseConv2D, x, op.inputs[0],
        kernel.reshape(h, w, in_channels, mult), bias,
        kernel_size=kernel.shape[1:3],
        strides=(op.opt("strideH", 1), op.opt("strideW", 1)),
        padding=padding(op),
        depth_multiplier=mult,
        dilation_rate=(op.opt("dilationHFactor", 1), op.opt("dilationWFactor", 1)))


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


def _transposed(op, ctx, layer_cls, kernel, filters):
    """TRANSPOSE_CONV / CONV_3D_TRANSPOSE (inputs: output_shape, filter, input, optional
    bias) as ``layer_cls`` holding ``kernel`` (Keras layout), sized exactly as TFLite sizes
    the output."""
    n = kernel.ndim - 2
    pad = padding(op)
    strides = tuple(op.opt(f"stride{axis}", 1) for axis in "DHW"[3 - n:])
    output_padding = transpose_output_padding(pad, _spatial(op.inputs[2], n),
                                              _output_size(op, ctx, n), kernel.shape[:n],
                                              strides)
    return _kernel_layer(op, ctx, layer_cls, ctx.value(op.inputs[2]), op.inputs[2], kernel,
                         _bias(ctx, op, 3), filters=filters, kernel_size=kernel.shape[:n],
                         strides=strides, padding=pad, output_padding=output_padding)


@register("TRANSPOSE_CONV", layer="keras.layers.Conv2DTranspose")
def transpose_conv(op, ctx):
    # inputs: output_shape, weights [Cout, H, W, Cin], input, optional bias
    weights = ctx.const(op.input(1), "the weights")
    return _transposed(op, ctx, keras.layers.Conv2DTranspose,
                       np.transpose(weights, (1, 2, 0, 3)), weights.shape[0])


@register("CONV_3D", layer="keras.layers.Conv3D")
def conv_3d(op, ctx):
    x = ctx.value(op.inputs[0])
    kernel = ctx.const(op.input(1), "the filter")  # [D, H, W, Cin/groups, Cout]
    bias = _bias(ctx, op, 2)
    in_channels = op.inputs[0].shape[-1]
    if in_channels % kernel.shape[3]:
        raise ConversionError(f"input channels {in_channels} do not fit the filter "
                              f"{list(kernel.shape)}")
    return _kernel_layer(
        op, ctx, keras.layers.Conv3D, x, op.inputs[0], kernel, bias,
        filters=kernel.shape[-1], kernel_size=kernel.shape[:3],
        strides=(op.opt("strideD", 1), op.opt("strideH", 1), op.opt("strideW", 1)),
        padding=padding(op),
        dilation_rate=(op.opt("dilationDFactor", 1), op.opt("dilationHFactor", 1),
                       op.opt("dilationWFactor", 1)),
        groups=in_channels // kernel.shape[3])


@register("CONV_3D_TRANSPOSE", layer="keras.layers.Conv3DTranspose")
def conv_3d_transpose(op, ctx):
    # inputs: output_shape, filter [D, H, W, Cout, Cin], input, optional bias
    kernel = ctx.const(op.input(1), "the filter")
    if any(op.opt(k, 1) != 1 for k in ("dilationDFactor", "dilationHFactor",
                                        "dilationWFactor")):
        raise ConversionError("dilated 3-D transposed convolutions are not supported")
    return _transposed(op, ctx, keras.layers.Conv3DTranspose, kernel, kernel.shape[3])


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

    def dense():
        layer = keras.layers.Dense(weights.shape[0], use_bias=bias is not None,
                                   activation=act or None, name=ctx.name(op))
        return with_weights(layer, (None, k), [weights.T] + ([bias] if bias is not None else []))

    layer = shared_layer(op, ctx, dense, act)
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
