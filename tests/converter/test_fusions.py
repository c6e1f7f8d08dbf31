"""Decomposed layer normalizations become one trainable ``LayerNormalization``
(converter/fusions.py): from Keras through TFLiteConverter, from PyTorch through litert-torch;
near misses convert op by op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op

GAMMA = np.linspace(0.5, 1.5, 12).astype("float32")
BETA = np.linspace(-0.3, 0.3, 12).astype("float32")
EPSILON = 1e-3
LITERT_TORCH = Path(__file__).resolve().parent.parent / "data" / "litert_torch"


def _keras_layer_norm_model():
    """Dense -> LayerNormalization -> Dense on the digits rows, trained 3 epochs, then gamma
    and beta set to known non-trivial values."""
    import keras

    from model_factory import digits

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Dense(12)(keras.layers.Reshape((8, 8))(inp))
    norm = keras.layers.LayerNormalization(epsilon=1e-3, name="norm")
    h = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(norm(h)))
    model = keras.Model(inp, h)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = digits()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    norm.set_weights([np.linspace(0.5, 1.5, 12).astype("float32"),
                      np.linspace(-0.3, 0.3, 12).astype("float32")])
    return model


@pytest.fixture(scope="module")
def keras_ln():
    from model_factory import keras_model_tflite
    from mlflow_tflite_keras.converter import convert

    data = keras_model_tflite("fusion-layer-norm-digits3", _keras_layer_norm_model)
    return data, convert(data)


def _layer_norms(model):
    import keras

    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.LayerNormalization)]


def _digits(n=16, start=0):
    from model_factory import digits

    return digits()[0][start:start + n]


def test_keras_layer_norm_is_one_trainable_layer(keras_ln):
    from mlflow_tflite_keras.converter.parity import check_parity

    data, result = keras_ln
    model = result.model
    (norm,) = _layer_norms(model)
    assert norm.axis in (-1, [-1], [2])
    assert norm.epsilon == pytest.approx(EPSILON)
    assert norm.scale and norm.center
    np.testing.assert_allclose(norm.gamma.numpy(), GAMMA, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.beta.numpy(), BETA, rtol=1e-5, atol=1e-6)
    assert {id(w) for w in (norm.gamma, norm.beta)} <= {id(w) for w in model.trainable_weights}
    # No leftover elementwise op of the pattern: its ops map to the one layer.
    ops = [key for key, layers in result.report.layers.items() if layers == [norm.name]]
    assert {k.split(":")[1] for k in ops} >= {"MEAN", "SQUARED_DIFFERENCE", "RSQRT"}
    for start in (0, 16):
        report = check_parity(data, model, _digits(start=start),
                              tensor_map=result.report.tensor_map)
        assert report.passed, str(report)
        assert report.compiled is not None and report.compiled.passed, str(report)
    out = np.asarray(model(_digits()))
    assert float(np.std(out, axis=0).max()) > 1e-2


def test_a_five_percent_gamma_change_fails_parity(keras_ln):
    from mlflow_tflite_keras.converter.parity import check_parity

    data, result = keras_ln
    (norm,) = _layer_norms(result.model)
    original = np.array(norm.gamma.numpy())
    norm.gamma.assign(original * 1.05)
    try:
        wrong = check_parity(data, result.model, _digits(), compiled=False)
    finally:
        norm.gamma.assign(original)
    assert not wrong.passed, str(wrong)
    assert check_parity(data, result.model, _digits(), compiled=False).passed


def test_a_compiled_fit_step_trains_gamma_and_beta():
    import keras

    from model_factory import digits, keras_model_tflite
    from mlflow_tflite_keras.converter import to_keras

    data = keras_model_tflite("fusion-layer-norm-digits3", _keras_layer_norm_model)
    model = to_keras(data)  # fresh: the fit must not disturb the module's model
    (norm,) = _layer_norms(model)
    gamma, beta = np.array(norm.gamma.numpy()), np.array(norm.beta.numpy())
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  jit_compile=False)
    x, y = digits()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert not model.run_eagerly
    assert not np.array_equal(gamma, norm.gamma.numpy())
    assert not np.array_equal(beta, norm.beta.numpy())


def test_litert_torch_transformer_layer_norms_fuse(monkeypatch):
    from mlflow_tflite_keras.converter import convert
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data = (LITERT_TORCH / "transformer.tflite").read_bytes()
    result = convert(data)
    model = result.model
    norms = _layer_norms(model)
    # torch's encoder layer has norm1, norm2 and the model a final norm: three MEAN pairs.
    means = sum(1 for op in TFLiteModel(data).subgraphs[0].operators if op.opcode == "MEAN")
    assert len(norms) == 3 == (means - 1) // 2  # the last MEAN pools over the sequence
    affine = [n for n in norms if n.scale and n.center]
    # litert-torch folds norm1's gamma/beta into the next FULLY_CONNECTED too (its normalized
    # tensor feeds both): that one has none, the others' are trainable.
    assert len(affine) == 2
    weights = {id(w) for w in model.trainable_weights}
    for n in affine:
        assert id(n.gamma) in weights and id(n.beta) in weights
    x = np.random.default_rng(0).random(tuple(model.inputs[0].shape)).astype("float32")
    report = check_parity(data, model, x, tensor_map=result.report.tensor_map)
    assert report.passed and report.compiled is not None and report.compiled.passed, str(report)
    trainable = len(model.trainable_weights)
    # Op by op (the fusion switched off) gamma and beta are constants, not weights.
    from mlflow_tflite_keras.converter import fusions, to_keras

    monkeypatch.setattr(fusions, "plan", lambda graph, steps, handlers, ctx: steps)
    unfused = to_keras(data)
    assert not _layer_norms(unfused)
    assert trainable == len(unfused.trainable_weights) + 2 * len(affine)


def _layer_norm(x, axis, also_mean=False):
    mean = tf.reduce_mean(x, axis, keepdims=True)
    var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis, keepdims=True)
    y = (x - mean) * tf.math.rsqrt(var + 1e-5) * tf.constant(GAMMA[:5]) + tf.constant(BETA[:5])
    return y + mean if also_mean else y


@pytest.mark.parametrize("fn, shape, fused", [
    (lambda x: _layer_norm(x, -1), (None, 3, 5), True),
    (lambda x: _layer_norm(x, -1, also_mean=True), (None, 3, 5), False),
    (lambda x: _layer_norm(tf.transpose(x, [0, 2, 1]), 1), (None, 5, 3), False),
], ids=["last-axis", "mean-used-elsewhere", "non-last-axis"])
def test_near_misses_convert_op_by_op(fn, shape, fused):
    model, _ = check_op("RSQRT", fn, [(shape, "float")])
    assert bool(_layer_norms(model)) == fused


def test_a_folded_input_runs_the_ops_one_by_one(keras_ln):
    """When the pattern's input is a build-time constant the fusion hands its ops back to
    ``run_ops``, which folds them (a layer of constant rows is beta)."""
    from mlflow_tflite_keras.converter import fusions
    from mlflow_tflite_keras.converter.builder import BuildContext
    from mlflow_tflite_keras.converter.ir import build_graph
    from mlflow_tflite_keras.converter.registry import load_handlers
    from mlflow_tflite_keras.converter.subgraph import run_ops
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data, _ = keras_ln
    graph = build_graph(TFLiteModel.load(data), 0)
    ctx, handlers = BuildContext(graph), load_handlers()
    steps = fusions.plan(graph, None, handlers, ctx)
    (fusion,) = [s for s in steps if isinstance(s, fusions.LayerNormFusion)]
    assert len(steps) == len(graph.ops) - len(fusion.ops) + 1
    ctx.values[fusion.x.index] = np.full(fusion.x.shape, 2.0, np.float32)
    assert fusion.materialize(ctx) == fusion.ops
    run_ops(graph, ctx, handlers, steps=[fusion])
    y = ctx.values[fusion.y.index]
    assert isinstance(y, np.ndarray)
    # TF computes x * (gamma * r) - mean * (gamma * r): float32 cancellation, r = 31.6
    np.testing.assert_allclose(y, np.broadcast_to(BETA, y.shape), atol=1e-5)


def test_a_quantized_graph_is_left_op_by_op():
    """int8 weights (hybrid kernels): the pattern converts op by op, as the source runs."""
    from mlflow_tflite_keras.converter import to_keras

    data = (LITERT_TORCH / "transformer-dynamic-int8.tflite").read_bytes()
    assert not _layer_norms(to_keras(data))
