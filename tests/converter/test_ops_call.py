"""CALL: the called subgraph is inlined into one flat Keras model. LiteRT has no kernel for
CALL (the schema keeps it, the runtime never registered it), so the reference is the same
computation written without CALL, run by LiteRT."""

import keras
import numpy as np
import pytest

from converter.handmade import FlatModel
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel

W = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
BIAS = np.array([0.1, -0.2, 0.3], np.float32)


def dense_relu(b, x, y):
    """y = relu(x @ W.T + BIAS), written into ``b``."""
    b.op("FULLY_CONNECTED", [x, b.const(W), b.const(BIAS)], [y], "FullyConnectedOptions",
         fusedActivationFunction=1)


def callee():
    sub = FlatModel()
    x = sub.input((1, 4), name="sub_x")
    h = sub.intermediate((1, 3))
    y = sub.output((1, 3), name="sub_y")
    dense_relu(sub, x, h)
    sub.op("MUL", [h, sub.const(np.array([2.0], np.float32))], [y], "MulOptions")
    return sub


def test_call_inlines_the_subgraph_twice():
    b = FlatModel()
    x, x2 = b.input((1, 4)), b.input((1, 4))
    a, c = b.intermediate((1, 3)), b.intermediate((1, 3))
    y = b.output((1, 3))
    index = b.add_subgraph(callee())
    b.op("CALL", [x], [a], "CallOptions", subgraph=index)
    b.op("CALL", [x2], [c], "CallOptions", subgraph=index)
    b.op("ADD", [a, c], [y], "AddOptions")
    model = to_keras(b.finish())
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat
    assert len([w for w in model.trainable_weights if w.path.endswith("kernel")]) == 2

    ref = FlatModel()  # the same computation without CALL, for LiteRT
    rx, rx2 = ref.input((1, 4)), ref.input((1, 4))
    parts = []
    for inp in (rx, rx2):
        h, s = ref.intermediate((1, 3)), ref.intermediate((1, 3))
        dense_relu(ref, inp, h)
        ref.op("MUL", [h, ref.const(np.array([2.0], np.float32))], [s], "MulOptions")
        parts.append(s)
    ry = ref.output((1, 3))
    ref.op("ADD", parts, [ry], "AddOptions")
    runner = TFLiteRunner(TFLiteModel(ref.finish()))
    rng = np.random.default_rng(1)
    for _ in range(3):
        feeds = [rng.uniform(-1, 1, (1, 4)).astype(np.float32) for _ in range(2)]
        expected = next(iter(runner.predict({"input_0": feeds[0],
                                             "input_1": feeds[1]}).values()))
        got = np.asarray(model.predict({"input_0": feeds[0], "input_1": feeds[1]}, verbose=0))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_recursive_call_is_refused():
    """The model reader refuses subgraphs that call each other in a cycle, CALL included."""
    from mlflow.exceptions import MlflowException

    loop = FlatModel()
    a = loop.input((1, 4))
    y = loop.output((1, 4))
    loop.op("CALL", [a], [y], "CallOptions", subgraph=1)  # itself, once it is subgraph 1
    b = FlatModel()
    x = b.input((1, 4))
    out = b.output((1, 4))
    b.op("CALL", [x], [out], "CallOptions", subgraph=b.add_subgraph(loop))
    with pytest.raises(MlflowException, match="cycle"):
        to_keras(b.finish())
