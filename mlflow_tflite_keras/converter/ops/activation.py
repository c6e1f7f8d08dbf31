"""Activation family: RELU, RELU6, LEAKY_RELU, PRELU, ELU, GELU, HARD_SWISH, LOGISTIC, TANH,
SOFTMAX, LOG_SOFTMAX, L2_NORMALIZATION, ...

Built-in Keras layers wherever their semantics match TFLite's exactly; RELU_N1_TO_1 and
RELU_0_TO_1 are clips (``EXTRA_OPS``).
"""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.registry import register


@register("RELU", layer="keras.layers.ReLU")
def relu(op, ctx):
    return [ctx.apply(keras.layers.ReLU(name=ctx.name(op)), ctx.value(op.inputs[0]))]


@register("RELU6", layer="keras.layers.ReLU(max_value=6)")
def relu6(op, ctx):
    layer = keras.layers.ReLU(max_value=6.0, name=ctx.name(op))
    return [ctx.apply(layer, ctx.value(op.inputs[0]))]


@register("RELU_N1_TO_1", layer="KerasOp(relu_n1_to_1)")
def relu_n1_to_1(op, ctx):
    return [ctx.op(op, "relu_n1_to_1", ctx.value(op.inputs[0]))]


@register("RELU_0_TO_1", layer="KerasOp(relu_0_to_1)")
def relu_0_to_1(op, ctx):
    return [ctx.op(op, "relu_0_to_1", ctx.value(op.inputs[0]))]


@register("LEAKY_RELU", layer="keras.layers.LeakyReLU")
def leaky_relu(op, ctx):
    # TFLite: x >= 0 ? x : alpha * x, for any alpha (Keras' formula is the same).
    alpha = float(op.opt("alpha", 0.2))
    x = ctx.value(op.inputs[0])
    if alpha < 0:  # LeakyReLU rejects a negative slope
        return [_where_negative(op, ctx, x, np.array(alpha, np.float32))]
    layer = keras.layers.LeakyReLU(negative_slope=alpha, name=ctx.name(op))
    return [ctx.apply(layer, x)]


@register("PRELU", layer="keras.layers.PReLU")
def prelu(op, ctx):
    """x >= 0 ? x : alpha * x with a (broadcast) alpha. A constant alpha becomes a trainable
    ``PReLU`` whose ``shared_axes`` are the axes where alpha has size 1."""
    x, alpha = ctx.inputs(op)[:2]
    rank = op.inputs[0].rank
    if ctx.is_const(alpha) and not ctx.is_const(x) and rank >= 2 and alpha.ndim <= rank:
        a = np.asarray(alpha, np.float32).reshape((1,) * (rank - alpha.ndim) + alpha.shape)
        if a.shape[0] == 1 and all(x.shape[i] is not None for i in range(1, rank)
                                   if a.shape[i] != 1):
            shared = [i for i in range(1, rank) if a.shape[i] == 1]
            layer = keras.layers.PReLU(shared_axes=shared or None, name=ctx.name(op))
            layer.build(tuple(x.shape))
            layer.set_weights([a[0]])
            return [layer(x)]
    # Alpha computed at run time, or varying along dimension 0: the formula, op by op.
    return [_where_negative(op, ctx, x, alpha)]


def _where_negative(op, ctx, x, alpha):
    """x >= 0 ? x : alpha * x, op by op."""
    neg = ctx.op(op, "multiply", x, alpha, suffix="_neg")
    positive = ctx.op(op, "greater_equal", x, np.array(0, np.float32), suffix="_pos")
    return ctx.op(op, "where", positive, x, neg)


@register("ELU", layer="keras.layers.ELU")
def elu(op, ctx):
    return [ctx.apply(keras.layers.ELU(alpha=1.0, name=ctx.name(op)), ctx.value(op.inputs[0]))]


@register("GELU", layer="keras.layers.Activation(gelu) / KerasOp(gelu, approximate=True)")
def gelu(op, ctx):
    x = ctx.value(op.inputs[0])
    if op.opt("approximate", False):  # tanh approximation
        return [ctx.op(op, "gelu", x, approximate=True)]
    # keras.activations.gelu defaults to the exact (erf) form.
    return [ctx.apply(keras.layers.Activation("gelu", name=ctx.name(op)), x)]


def _activation(keras_name: str):
    def handler(op, ctx):
        layer = keras.layers.Activation(keras_name, name=ctx.name(op))
        return [ctx.apply(layer, ctx.value(op.inputs[0]))]

    handler.__name__ = keras_name
    return handler


# HARD_SWISH is x * relu6(x + 3) / 6 in both; LOG_SOFTMAX is over the last axis in both.
for _type, _name in {"LOGISTIC": "sigmoid", "TANH": "tanh", "HARD_SWISH": "hard_swish",
                     "LOG_SOFTMAX": "log_softmax"}.items():
    register(_type, layer=f"keras.layers.Activation({_name})")(_activation(_name))


@register("SOFTMAX", layer="keras.layers.Softmax")
def softmax(op, ctx):
    x = ctx.value(op.inputs[0])
    beta = float(op.opt("beta", 1.0))
    if beta != 1.0:
        x = ctx.op(op, "multiply", x, np.array(beta, np.float32), suffix="_beta")
    return [ctx.apply(keras.layers.Softmax(axis=-1, name=ctx.name(op)), x)]


@register("L2_NORMALIZATION", layer="keras.layers.UnitNormalization")
def l2_normalization(op, ctx):
    # TFLite normalizes over the last axis: x / max(||x||, 1e-6); Keras uses 1e-12 as the
    # lower bound, which differs only for vectors of norm below 1e-6.
    layer = keras.layers.UnitNormalization(axis=-1, name=ctx.name(op))
    return [ctx.activation(op, ctx.apply(layer, ctx.value(op.inputs[0])))]
