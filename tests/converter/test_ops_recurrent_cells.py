"""The one-step LSTM and RNN cells (written with the schema's object API) against LiteRT:
keras.layers.LSTM / SimpleRNN over one step with trainable weights; a 5% change of a kernel
fails parity."""

import keras
import numpy as np
import pytest

from converter.handmade import FlatModel
from converter.op_harness import assert_kernel_change_fails, check_model
from converter.test_ops_recurrent import _rng_weights, layers_of, lstm_inputs, rows

F, U = 5, 4


def lstm_cell_model(batch, act=4, clip=0.0, seed=6):
    rng = np.random.default_rng(seed)
    b = FlatModel()
    x = b.input((batch, F))
    w, r, bias = lstm_inputs(b, rng, F, U)
    y = b.output((batch, U))
    inputs = [x, *w, *r, None, None, None, *bias, None, None,
              b.variable((batch, U)), b.variable((batch, U)), None, None, None, None]
    b.op("LSTM", inputs, [y], "LSTMOptions", fusedActivationFunction=act, cellClip=clip,
         projClip=0.0, kernelType=0)
    return b.finish()


def rnn_cell_model(batch, act=4, seed=7):
    rng = np.random.default_rng(seed)
    b = FlatModel()
    x = b.input((batch, F))
    y = b.output((batch, U))
    b.op("RNN", [x, b.const(_rng_weights(rng, U, F)), b.const(_rng_weights(rng, U, U)),
                 b.const(_rng_weights(rng, U)), b.variable((batch, U))], [y],
         "RNNOptions", fusedActivationFunction=act)
    return b.finish()


def rejects_five_percent(data, model, layer, feeds):
    # The input kernel: from the zero state the recurrent kernel does not act in one step.
    assert_kernel_change_fails(data, model, feeds, weight=layer.cell.kernel)


@pytest.mark.parametrize("batch, act, clip", [(1, 4, 0.0), (3, 4, 10.0), (2, 1, 0.5)],
                         ids=["tanh", "batch3-clip10", "relu-clip-acts"])
def test_lstm_cell(batch, act, clip):
    data = lstm_cell_model(batch, act, clip)
    feeds = rows((batch, F), 2, scale=2.0)
    model = check_model(data, ["LSTM"], feeds)
    recurrent = layers_of(model, keras.layers.RNN)  # LSTM is an RNN
    assert len(recurrent) == 1 and len(recurrent[0].trainable_weights) == 3
    if clip and clip < 1:
        assert recurrent[0].cell.cell_clip == clip
    rejects_five_percent(data, model, recurrent[0], feeds[0])


@pytest.mark.parametrize("batch, act", [(1, 4), (2, 1)], ids=["tanh", "relu-batch2"])
def test_rnn_cell(batch, act):
    data = rnn_cell_model(batch, act)
    feeds = rows((batch, F), 2)
    model = check_model(data, ["RNN"], feeds)
    (rnn,) = layers_of(model, keras.layers.SimpleRNN)
    assert len(rnn.trainable_weights) == 3
    rejects_five_percent(data, model, rnn, feeds[0])
