"""Recurrent cells: LSTM and RNN, the one-step (non-sequence) operators. Each becomes the
Keras recurrent layer of its sequence twin (``keras.layers.LSTM`` / ``SimpleRNN``, trainable
weights in Keras's layout) run over a sequence of one step.

TFLite keeps the state in variable tensors that persist between invocations; the Keras layer
starts from zeros (or the computed initial state) on every call, which is what the model does
on its first invocation (as for the sequence operators).
"""

from __future__ import annotations

import keras

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.ops.recurrent import (
    ClippedLSTMCell,
    _activation,
    _initial_state,
    _rnn_weights,
    lstm_operands,
)
from mlflow_tflite_keras.converter.registry import register


def _one_step(op, ctx, layer, weights, initial_state=None):
    x = ctx.value(op.inputs[0])
    if op.inputs[0].rank != 2:
        raise ConversionError(f"{op.type}: input of rank {op.inputs[0].rank}, expected 2.")
    features = op.inputs[0].shape[1]
    layer.build((None, 1, features))
    layer.set_weights(weights)
    step = ctx.apply(keras.layers.Reshape((1, features), name=ctx.name(op, "_step")), x)
    if initial_state is not None:
        return layer(step, initial_state=initial_state)
    return layer(step)


@register("LSTM", layer="keras.layers.LSTM over one step (RNN(ClippedLSTMCell) when the clip "
          "can act)")
def lstm(op, ctx):
    if op.opt("kernelType", 0) != 0:
        raise ConversionError("LSTM: the BASIC kernel (4 fused inputs) is not supported; only "
                              "the FULL kernel.")
    if len(op.outputs) != 1:
        raise ConversionError(f"LSTM: {len(op.outputs)} outputs (an old format); expected 1.")
    kernel, recurrent, bias, h0, c0 = lstm_operands(op, ctx)
    units = recurrent.shape[0]
    act = _activation(op)
    clip = float(op.opt("cellClip", 0.0) or 0.0)
    # One step from zeros moves the cell state by less than 1: a clip >= 1 cannot act.
    if clip > 0 and (clip < 1 or c0 is not None):
        layer = keras.layers.RNN(ClippedLSTMCell(units, cell_clip=clip, activation=act),
                                 name=ctx.name(op))
    else:
        layer = keras.layers.LSTM(units, activation=act, name=ctx.name(op))
    return [_one_step(op, ctx, layer, [kernel, recurrent, bias],
                      None if h0 is None else [h0, c0])]


@register("RNN", layer="keras.layers.SimpleRNN over one step")
def rnn(op, ctx):
    weights = _rnn_weights(op, ctx, 1)
    h0 = _initial_state(op, ctx, 4, "hidden state")
    layer = keras.layers.SimpleRNN(weights[1].shape[0], activation=_activation(op),
                                   name=ctx.name(op))
    return [_one_step(op, ctx, layer, weights, None if h0 is None else [h0])]
