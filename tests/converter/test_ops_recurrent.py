"""Recurrent ops: UNIDIRECTIONAL_SEQUENCE_LSTM / _RNN, BIDIRECTIONAL_SEQUENCE_LSTM / _RNN.

Keras 3 LSTM layers convert to WHILE loops; TFLiteConverter only fuses an LSTM into
UNIDIRECTIONAL_SEQUENCE_LSTM for a function marked ``api_implements="lstm_..."`` (what Keras 2
did) with a fixed batch size and constant weights. The fused test models are built that way
from the weights of a real ``keras.layers.LSTM``. The other ops are not emitted by the
TF 2 converter at all, so their models are built by hand (``handmade.FlatModel``).

TFLite keeps LSTM/RNN states in variable tensors that persist from one invoke to the next, so
parity is checked one sequence per interpreter (1-row inputs, or a fixed batch in one invoke).
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import pytest

from converter.handmade import FlatModel
from model_factory import cached, fingerprint, fusable_lstm

from converter.op_harness import check_model
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_model import TFLiteModel

T, F, U = 6, 3, 4


def fused_lstm_tflite(name, timesteps=T, units=U, features=F, recipe="float32",
                      saturate=False, embedding=None):
    """A Keras LSTM's weights in Keras 2's fusable LSTM function, converted with a fixed
    batch of 1. Returns (tflite bytes, the keras.layers.LSTM with the same weights)."""
    keras.utils.set_random_seed(0)
    lstm = keras.layers.LSTM(units, return_sequences=True)
    lstm.build((1, timesteps, features))
    kernel, recurrent, bias = lstm.get_weights()
    if saturate:  # i = f = 1, g = sign(sum(x)): the cell state moves by ~1 a step
        kernel, recurrent, bias = np.zeros_like(kernel), np.zeros_like(recurrent), \
            np.zeros_like(bias)
        kernel[:, 2 * units:3 * units] = 8.0
        bias[:2 * units] = 8.0
        lstm.set_weights([kernel, recurrent, bias])

    def build():
        import tensorflow as tf

        k, rk, b = (tf.constant(w) for w in lstm.get_weights())

        fused = fusable_lstm()
        module = tf.Module()
        if embedding is None:
            spec = tf.TensorSpec((1, timesteps, features), tf.float32)
        else:
            spec = tf.TensorSpec((1, timesteps), tf.int32)
            table = tf.constant(np.random.default_rng(1).normal(
                size=(embedding, features)).astype(np.float32))
            dense = tf.constant(np.random.default_rng(2).normal(
                size=(timesteps * units, 2)).astype(np.float32))

        @tf.function(input_signature=[spec])
        def model(x):
            if embedding is not None:
                x = tf.gather(table, x)
            zeros = tf.zeros((1, units))
            y = fused(x, zeros, zeros, k, rk, b)[1]
            if embedding is not None:
                y = tf.matmul(tf.reshape(y, (1, timesteps * units)), dense)
            return y

        module.model = model
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [model.get_concrete_function()], module)
        if recipe == "dynamic-range":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()

    key = [timesteps, units, features, recipe, saturate, embedding, fingerprint(fusable_lstm)]
    return cached(f"fused-lstm-{name}", build, *key), lstm




def rows(shape, n=3, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, shape) * scale).astype(np.float32) for _ in range(n)]


def layers_of(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


# ---- UNIDIRECTIONAL_SEQUENCE_LSTM (TF-fused) --------------------------------------------


def test_unidirectional_lstm_float32_matches_interpreter_and_source_lstm():
    data, source = fused_lstm_tflite("f32")
    op = next(o for o in TFLiteModel(data).main.operators
              if o.name == "UNIDIRECTIONAL_SEQUENCE_LSTM")
    assert op.options.cellClip == 10.0  # TF's fusion always clips; T=6 <= 10 cannot reach it
    model = check_model(data, ["UNIDIRECTIONAL_SEQUENCE_LSTM"], rows((1, T, F)))
    (lstm,) = layers_of(model, keras.layers.LSTM)
    assert lstm.trainable_weights
    for a, b in zip(lstm.get_weights(), source.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    x = rows((4, T, F))[0]  # the Keras model takes any batch
    np.testing.assert_allclose(model(x), source(x), rtol=1e-5, atol=1e-5)


def test_unidirectional_lstm_dynamic_range():
    # Weights under 1024 values stay float: 32x32 gate matrices are quantized to int8.
    data, _ = fused_lstm_tflite("dr", units=32, features=32, recipe="dynamic-range")
    tflite = TFLiteModel(data)
    assert tflite.quantization_kind == "dynamic-range-int8"
    assert any(t.type_name == "INT8" for t in tflite.main.tensors)
    check_model(data, ["UNIDIRECTIONAL_SEQUENCE_LSTM"], rows((1, T, 32)))


def test_unidirectional_lstm_long_sequence_keeps_cell_clip():
    # 14 steps up then 8 down: unclipped the cell state ends near 6, clipped near 2.
    steps = 22
    data, source = fused_lstm_tflite("clip", timesteps=steps, features=1, saturate=True)
    x = np.concatenate([np.ones(14), -np.ones(8)]).astype(np.float32).reshape(1, steps, 1)
    model = check_model(data, ["UNIDIRECTIONAL_SEQUENCE_LSTM"], [x, *rows((1, steps, 1), 2)])
    assert not layers_of(model, keras.layers.LSTM)
    (rnn,) = layers_of(model, keras.layers.RNN)
    assert rnn.cell.cell_clip == 10.0
    assert not np.allclose(model(x), source(x), atol=1e-2)  # the clip acted


def test_text_model_embedding_lstm_dense():
    from mlflow_tflite_keras.converter import supported_operators

    if "GATHER" not in supported_operators():
        pytest.skip("GATHER is not registered yet")
    data, _ = fused_lstm_tflite("text", embedding=20)
    rng = np.random.default_rng(0)
    check_model(data, ["GATHER", "UNIDIRECTIONAL_SEQUENCE_LSTM"],
                [rng.integers(0, 20, (1, T)).astype(np.int32) for _ in range(3)])


# ---- hand-built models ---------------------------------------------------------------------


def _rng_weights(rng, *shape):
    return rng.normal(0, 0.5, shape).astype(np.float32)


def lstm_inputs(b: FlatModel, rng, features, units, prefix=""):
    """The 4 input weights, 4 recurrent weights, (3 omitted peepholes), 4 biases."""
    w = [b.const(_rng_weights(rng, units, features), f"{prefix}w{g}") for g in "ifco"]
    r = [b.const(_rng_weights(rng, units, units), f"{prefix}r{g}") for g in "ifco"]
    bias = [b.const(_rng_weights(rng, units), f"{prefix}b{g}") for g in "ifco"]
    return w, r, bias


def handmade_bilstm(merge: bool, time_major: bool, batch=2):
    rng = np.random.default_rng(3)
    b = FlatModel()
    shape = (T, batch, F) if time_major else (batch, T, F)
    x = b.input(shape)
    fw = lstm_inputs(b, rng, F, U, "fw_")
    bw = lstm_inputs(b, rng, F, U, "bw_")
    out_shape = lambda units: (T, batch, units) if time_major else (batch, T, units)  # noqa: E731
    outs = [b.output(out_shape(2 * U))] if merge else \
        [b.output(out_shape(U)), b.output(out_shape(U))]
    inputs = [x, *fw[0], *fw[1], None, None, None, *fw[2], None, None,
              *bw[0], *bw[1], None, None, None, *bw[2], None, None,
              b.variable((batch, U)), b.variable((batch, U)),
              b.variable((batch, U)), b.variable((batch, U)),
              *[None] * 9]
    assert len(inputs) == 48
    b.op("BIDIRECTIONAL_SEQUENCE_LSTM", inputs, outs, "BidirectionalSequenceLSTMOptions",
         fusedActivationFunction=4, cellClip=0.0, projClip=0.0, mergeOutputs=merge,
         timeMajor=time_major)
    return b.finish(), shape


# LiteRT's BIDIRECTIONAL_SEQUENCE_LSTM reads uninitialized memory for batch-major inputs with
# a batch > 1 (results change from one fresh interpreter to the next); batch 1 is stable.
@pytest.mark.parametrize("merge,time_major,batch", [(True, False, 1), (False, True, 2)])
def test_bidirectional_lstm(merge, time_major, batch):
    data, shape = handmade_bilstm(merge, time_major, batch)
    model = check_model(data, ["BIDIRECTIONAL_SEQUENCE_LSTM"], rows(shape, 2))
    (bi,) = layers_of(model, keras.layers.Bidirectional)
    assert isinstance(bi.forward_layer, keras.layers.LSTM)


@pytest.mark.parametrize("act,time_major", [(4, False), (1, True)])
def test_unidirectional_rnn(act, time_major):
    rng = np.random.default_rng(4)
    b = FlatModel()
    shape = (T, 2, F) if time_major else (2, T, F)
    x = b.input(shape)
    w = b.const(_rng_weights(rng, U, F))
    r = b.const(_rng_weights(rng, U, U))
    bias = b.const(_rng_weights(rng, U))
    y = b.output((T, 2, U) if time_major else (2, T, U))
    b.op("UNIDIRECTIONAL_SEQUENCE_RNN", [x, w, r, bias, b.variable((2, U))], [y],
         "SequenceRNNOptions", timeMajor=time_major, fusedActivationFunction=act)
    model = check_model(b.finish(), ["UNIDIRECTIONAL_SEQUENCE_RNN"], rows(shape, 2))
    assert layers_of(model, keras.layers.SimpleRNN)


def test_bidirectional_rnn_merged():
    rng = np.random.default_rng(5)
    b = FlatModel()
    x = b.input((1, T, F))
    ins = [x]
    for _ in ("fw", "bw"):
        ins += [b.const(_rng_weights(rng, U, F)), b.const(_rng_weights(rng, U, U)),
                b.const(_rng_weights(rng, U)), b.variable((1, U))]
    y = b.output((1, T, 2 * U))
    b.op("BIDIRECTIONAL_SEQUENCE_RNN", ins + [None, None, None], [y],
         "BidirectionalSequenceRNNOptions", timeMajor=False, fusedActivationFunction=4,
         mergeOutputs=True)
    check_model(b.finish(), ["BIDIRECTIONAL_SEQUENCE_RNN"], rows((1, T, F), 2))


@pytest.mark.parametrize("feature", ["peephole", "projection", "cifg"])
def test_lstm_features_keras_cannot_express_are_refused(feature):
    from mlflow.exceptions import MlflowException

    rng = np.random.default_rng(6)
    b = FlatModel()
    x = b.input((1, T, F))
    w, r, bias = lstm_inputs(b, rng, F, U)
    peep = [b.const(_rng_weights(rng, U)) for _ in range(3)] if feature == "peephole" \
        else [None] * 3
    proj = [b.const(_rng_weights(rng, 2, U)), None] if feature == "projection" else [None] * 2
    out_units = 2 if feature == "projection" else U
    if feature == "cifg":
        w[0], r[0], bias[0] = None, None, None
    y = b.output((1, T, out_units))
    b.op("UNIDIRECTIONAL_SEQUENCE_LSTM",
         [x, *w, *r, *peep, *bias, *proj, b.variable((1, out_units)), b.variable((1, U)),
          None, None, None, None], [y], "UnidirectionalSequenceLSTMOptions",
         fusedActivationFunction=4, timeMajor=False)
    expected = {"peephole": "peephole", "projection": "projection", "cifg": "CIFG"}[feature]
    with pytest.raises(MlflowException, match=expected):
        to_keras(b.finish())
