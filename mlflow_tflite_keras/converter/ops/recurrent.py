"""Recurrent family: UNIDIRECTIONAL_SEQUENCE_LSTM, UNIDIRECTIONAL_SEQUENCE_RNN,
BIDIRECTIONAL_SEQUENCE_LSTM, BIDIRECTIONAL_SEQUENCE_RNN.

TFLite stores one weight matrix per gate ([units, input] / [units, units]); Keras packs them
as ``kernel [input, 4u]``, ``recurrent_kernel [u, 4u]``, ``bias [4u]`` in gate order
i, f, c, o. The initial states are variable tensors (zeros at load) in the flatbuffer; the
Keras layers start from zeros on every call, which is what the source model did.

TFLite's Keras-LSTM fusion always sets ``cellClip=10``. The cell state grows by less than 1 a
step from zero (``|c_t| <= |c_{t-1}| + |i*g| < |c_{t-1}| + 1``), so when the sequence length is
known and at most the clip, clipping can never act and a plain ``keras.layers.LSTM`` is exact.
Otherwise the clip is kept with :class:`ClippedLSTMCell` inside ``keras.layers.RNN``.
"""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers.recurrent import ClippedLSTMCell, IntegerLSTMCell
from mlflow_tflite_keras.converter.registry import register

# ActivationFunctionType -> Keras activation of the cell (gate activations are sigmoid).
_CELL_ACTIVATIONS = {0: "linear", 1: "relu", 3: "relu6", 4: "tanh", 6: "sigmoid"}


# ---- helpers ------------------------------------------------------------------------------


def _activation(op, what="the cell"):
    code = op.opt("fusedActivationFunction", 0)
    if code not in _CELL_ACTIVATIONS:
        raise ConversionError(f"{op.type}: activation code {code} for {what} has no Keras "
                              "equivalent.")
    return _CELL_ACTIVATIONS[code]


def _timesteps(op) -> int | None:
    t = op.inputs[0]
    axis = 0 if op.opt("timeMajor", False) else 1
    return t.shape[axis] if t.shape_signature[axis] != -1 else None


def _initial_state(op, ctx, index: int, what: str):
    """Initial states: variable tensors (zeros at load), omitted or zero constants are the
    Keras default; a computed state becomes ``initial_state``; other constants are refused."""
    t = op.input(index)
    if t is None or t.is_variable or t.index not in ctx.values:
        return None
    v = ctx.values[t.index]
    if ctx.is_const(v):
        if np.any(v):
            raise ConversionError(f"{op.type}: a non-zero constant initial {what} is not "
                                  "supported (Keras recurrent layers start from zeros).")
        return None
    return v


def _gate_weights(op, ctx, first: int, n: int, what: str, prefix: str = "") -> list:
    tensors = [op.input(first + k) for k in range(n)]
    if any(t is None for t in tensors):
        missing = [first + k for k, t in enumerate(tensors) if t is None]
        raise ConversionError(
            f"{op.type}: {prefix}{what} input(s) {missing} are omitted (CIFG, coupled input "
            "and forget gates): keras.layers.LSTM always has an input gate.")
    return [np.asarray(ctx.const(t, f"{prefix}{what}"), dtype=np.float32) for t in tensors]


def _refuse_lstm_extras(op, *, peephole, projection, layer_norm, aux=(), prefix=""):
    features = []
    if any(op.input(i) is not None for i in peephole):
        features.append("peephole connections")
    if any(op.input(i) is not None for i in projection):
        features.append("a projection layer")
    if any(op.input(i) is not None for i in layer_norm):
        features.append("layer normalization")
    if any(op.input(i) is not None for i in aux):
        features.append("an auxiliary input")
    if features:
        raise ConversionError(f"{op.type}: {prefix}LSTM with {' and '.join(features)} cannot "
                              "be expressed as keras.layers.LSTM.")


def _lstm_weights(op, ctx, base: int, bias_base: int, prefix: str = ""):
    """(kernel [in, 4u], recurrent_kernel [u, 4u], bias [4u]) in Keras's i, f, c, o order."""
    w = _gate_weights(op, ctx, base, 4, "input weights", prefix)
    r = _gate_weights(op, ctx, base + 4, 4, "recurrent weights", prefix)
    biases = [op.input(bias_base + k) for k in range(4)]
    units = w[0].shape[0]
    b = [np.zeros(units, np.float32) if t is None else
         np.asarray(ctx.const(t, f"{prefix}gate bias"), dtype=np.float32) for t in biases]
    return (np.concatenate([m.T for m in w], axis=1), np.concatenate([m.T for m in r], axis=1),
            np.concatenate(b))


def lstm_operands(op, ctx):
    """``(kernel, recurrent kernel, bias, h0, c0)`` of a unidirectional LSTM (the sequence
    operator and the one-step cell share the operand layout); peephole, projection and layer
    norm refused; both initial states computed or neither."""
    _refuse_lstm_extras(op, peephole=(9, 10, 11), projection=(16, 17),
                        layer_norm=(20, 21, 22, 23))
    kernel, recurrent, bias = _lstm_weights(op, ctx, 1, 12)
    h0 = _initial_state(op, ctx, 18, "output state")
    c0 = _initial_state(op, ctx, 19, "cell state")
    if (h0 is None) != (c0 is None):
        raise ConversionError(f"{op.type}: only one of the two initial states is computed; "
                              "give both or neither.")
    return kernel, recurrent, bias, h0, c0

def _integer_lstm(op) -> bool:
    """TFLite's integer LSTM kernel: int8 input, INT16 cell state."""
    cell = op.input(19)
    return op.inputs[0].type_name == "INT8" and cell is not None and \
        cell.type_name == "INT16" and op.input(18) is not None and op.input(18).is_quantized


def _integer_cell(op, units: int, activation: str, clip: float) -> IntegerLSTMCell:
    """The integer kernel's quantization parameters (lstm.cc PopulateQuantizedLstmParams8x8_16:
    per-tensor weight scales, the output state's grid, the hidden intermediate's grid, a
    power-of-two cell scale) on an IntegerLSTMCell."""

    def scale(index):
        t = op.input(index)
        if t is None or not t.is_quantized or t.quantization.scale.size != 1:
            raise ConversionError(f"{op.type}: the integer LSTM kernel needs per-tensor "
                                  f"quantization on input {index}.")
        return float(t.quantization.scale[0])

    hidden = op.input(18).quantization
    inner = op.intermediates[4].quantization if len(op.intermediates) > 4 and \
        op.intermediates[4].is_quantized else hidden
    source = op.inputs[0].quantization
    try:
        return IntegerLSTMCell(
            units, input_scale=float(source.scale[0]),
            input_zero_point=int(source.zero_point[0]),
            kernel_scales=[scale(i) for i in range(1, 5)],
            recurrent_scales=[scale(i) for i in range(5, 9)],
            bias_scales=[1.0 if op.input(i) is None else scale(i) for i in range(12, 16)],
            cell_scale=scale(19), hidden_scale=float(hidden.scale[0]),
            hidden_zero_point=int(hidden.zero_point[0]),
            intermediate_hidden_scale=float(inner.scale[0]),
            intermediate_hidden_zero_point=int(inner.zero_point[0]), cell_clip=clip,
            activation=activation)
    except ValueError as e:
        raise ConversionError(f"{op.type}: {e}.") from e


def _lstm_layer(op, ctx, units: int, name: str, go_backwards=False, clipped=None):
    """A built-in LSTM, or RNN(ClippedLSTMCell) when the cell clip can act; an emulated
    integer LSTM is RNN(IntegerLSTMCell) on the kernel's grids."""
    act = _activation(op)
    clip = float(op.opt("cellClip", 0.0) or 0.0)
    if getattr(ctx, "emulate_quantization", False) and _integer_lstm(op):
        return keras.layers.RNN(_integer_cell(op, units, act, clip), return_sequences=True,
                                go_backwards=go_backwards, name=name)
    steps = _timesteps(op)
    if clip > 0 and (clipped or steps is None or steps > clip):
        cell = ClippedLSTMCell(units, cell_clip=clip, activation=act)
        return keras.layers.RNN(cell, return_sequences=True, go_backwards=go_backwards,
                                name=name)
    return keras.layers.LSTM(units, activation=act, return_sequences=True,
                             go_backwards=go_backwards, name=name)


def _to_batch_major(op, ctx, x):
    if op.opt("timeMajor", False):
        return ctx.op(op, "transpose", x, suffix="_to_batch_major", axes=(1, 0, 2))
    return x


def _from_batch_major(op, ctx, y):
    if op.opt("timeMajor", False):
        return ctx.op(op, "transpose", y, suffix="_to_time_major", axes=(1, 0, 2))
    return y


def _call(ctx, layer, x, initial_state=None):
    if initial_state is not None:
        return layer(ctx.tensor(x), initial_state=initial_state)
    return ctx.apply(layer, x)


def _check_input(op):
    if op.inputs[0].rank != 3:
        raise ConversionError(f"{op.type}: input of rank {op.inputs[0].rank}, expected 3.")


def _batch_major_shape(op):
    t = op.inputs[0]
    shape = list(t.shape)
    if op.opt("timeMajor", False):
        shape[0], shape[1] = shape[1], shape[0]
    return (None, shape[1], shape[2])


# ---- LSTM ---------------------------------------------------------------------------------


@register("UNIDIRECTIONAL_SEQUENCE_LSTM",
          layer="keras.layers.LSTM (keras.layers.RNN(ClippedLSTMCell) when the clip can act; "
                "RNN(IntegerLSTMCell) for an emulated integer LSTM)")
def unidirectional_sequence_lstm(op, ctx):
    _check_input(op)
    kernel, recurrent, bias, h0, c0 = lstm_operands(op, ctx)
    units = recurrent.shape[0]
    layer = _lstm_layer(op, ctx, units, ctx.name(op), clipped=c0 is not None)
    layer.build(_batch_major_shape(op))
    layer.set_weights([kernel, recurrent, bias])
    x = _to_batch_major(op, ctx, ctx.value(op.inputs[0]))
    y = _call(ctx, layer, x, None if h0 is None else [h0, c0])
    return [_from_batch_major(op, ctx, y)]


@register("BIDIRECTIONAL_SEQUENCE_LSTM", layer="keras.layers.Bidirectional(keras.layers.LSTM)")
def bidirectional_sequence_lstm(op, ctx):
    _check_input(op)
    for prefix, peep, proj in (("forward ", (9, 10, 11), (16, 17)),
                               ("backward ", (26, 27, 28), (33, 34))):
        _refuse_lstm_extras(op, peephole=peep, projection=proj, layer_norm=(),
                            aux=(39, 40, 41, 42, 43, 44, 45, 46, 47), prefix=prefix)
    fw = _lstm_weights(op, ctx, 1, 12, "forward ")
    bw = _lstm_weights(op, ctx, 18, 29, "backward ")
    for index, what in ((35, "forward output state"), (36, "forward cell state"),
                        (37, "backward output state"), (38, "backward cell state")):
        if _initial_state(op, ctx, index, what) is not None:
            raise ConversionError(f"{op.type}: a computed initial {what} is not supported.")
    merge = bool(op.opt("mergeOutputs", False))
    name = ctx.name(op)
    layer = keras.layers.Bidirectional(
        _lstm_layer(op, ctx, fw[1].shape[0], f"{name}_forward"),
        backward_layer=_lstm_layer(op, ctx, bw[1].shape[0], f"{name}_backward",
                                   go_backwards=True),
        merge_mode="concat" if merge else None, name=name)
    layer.build(_batch_major_shape(op))
    layer.forward_layer.set_weights(list(fw))
    layer.backward_layer.set_weights(list(bw))
    return _bidirectional_outputs(op, ctx, layer, merge)


def _bidirectional_outputs(op, ctx, layer, merge):
    x = _to_batch_major(op, ctx, ctx.value(op.inputs[0]))
    y = ctx.apply(layer, x)
    if merge:
        return [_from_batch_major(op, ctx, y)]
    return [_from_batch_major(op, ctx, v) for v in y][:len(op.outputs)]


# ---- simple RNN ---------------------------------------------------------------------------


def _rnn_weights(op, ctx, base: int, prefix: str = ""):
    w = np.asarray(ctx.const(op.input(base), f"{prefix}weights"), dtype=np.float32)
    r = np.asarray(ctx.const(op.input(base + 1), f"{prefix}recurrent weights"),
                   dtype=np.float32)
    b_t = op.input(base + 2)
    b = np.zeros(w.shape[0], np.float32) if b_t is None else \
        np.asarray(ctx.const(b_t, f"{prefix}bias"), dtype=np.float32)
    return [w.T, r.T, b]


def _simple_rnn(op, units, name, go_backwards=False):
    return keras.layers.SimpleRNN(units, activation=_activation(op), return_sequences=True,
                                  go_backwards=go_backwards, name=name)


@register("UNIDIRECTIONAL_SEQUENCE_RNN", layer="keras.layers.SimpleRNN")
def unidirectional_sequence_rnn(op, ctx):
    _check_input(op)
    weights = _rnn_weights(op, ctx, 1)
    h0 = _initial_state(op, ctx, 4, "hidden state")
    layer = _simple_rnn(op, weights[1].shape[0], ctx.name(op))
    layer.build(_batch_major_shape(op))
    layer.set_weights(weights)
    x = _to_batch_major(op, ctx, ctx.value(op.inputs[0]))
    y = _call(ctx, layer, x, None if h0 is None else [h0])
    return [_from_batch_major(op, ctx, y)]


@register("BIDIRECTIONAL_SEQUENCE_RNN", layer="keras.layers.Bidirectional(keras.layers.SimpleRNN)")
def bidirectional_sequence_rnn(op, ctx):
    _check_input(op)
    if any(op.input(i) is not None for i in (9, 10, 11)):
        raise ConversionError(f"{op.type}: an auxiliary input cannot be expressed in Keras.")
    fw = _rnn_weights(op, ctx, 1, "forward ")
    bw = _rnn_weights(op, ctx, 5, "backward ")
    for index, what in ((4, "forward hidden state"), (8, "backward hidden state")):
        if _initial_state(op, ctx, index, what) is not None:
            raise ConversionError(f"{op.type}: a computed initial {what} is not supported.")
    merge = bool(op.opt("mergeOutputs", False))
    name = ctx.name(op)
    layer = keras.layers.Bidirectional(
        _simple_rnn(op, fw[1].shape[0], f"{name}_forward"),
        backward_layer=_simple_rnn(op, bw[1].shape[0], f"{name}_backward", go_backwards=True),
        merge_mode="concat" if merge else None, name=name)
    layer.build(_batch_major_shape(op))
    layer.forward_layer.set_weights(fw)
    layer.backward_layer.set_weights(bw)
    return _bidirectional_outputs(op, ctx, layer, merge)
