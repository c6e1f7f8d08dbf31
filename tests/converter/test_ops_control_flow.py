"""Control flow: WHILE (Keras 3 LSTM / GRU / SimpleRNN / Bidirectional text models, plain
``tf.while_loop``), IF (``tf.cond``), CALL_ONCE + resource variables.

Keras 3 recurrent layers convert to a WHILE loop whose cond and body are other subgraphs; the
TF converter needs a fixed batch for them (``TensorListReserve`` needs a static element
shape), so those models are exported with a batch of 1 and rebuilt for one example, mapped
over the batch (``PerExample``), as the interpreter runs them (one invoke per row).
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op
from model_factory import cached

from mlflow_tflite_keras.converter import convert, to_keras
from mlflow_tflite_keras.converter.layers.control_flow import IfElse, PerExample, WhileLoop
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_model import TFLiteModel

SEQ, VOCAB = 8, 30
F = "float"


# ---- Keras 3 recurrent text models (fixed batch of 1) -----------------------------------------

def make_text_model(kind):
    """Embedding + recurrent layer + Dense. Sizes keep every recurrent weight matrix at
    >= 1024 elements, so the dynamic-range recipe quantizes them."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((SEQ,), dtype="int32", batch_size=1)
    x = keras.layers.Embedding(VOCAB, 32)(tokens)
    x = {"lstm": lambda: keras.layers.LSTM(16),
         "gru": lambda: keras.layers.GRU(32),
         "simple_rnn": lambda: keras.layers.SimpleRNN(32),
         "bidirectional_lstm": lambda: keras.layers.Bidirectional(keras.layers.LSTM(16)),
         }[kind]()(x)
    return keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(x))


def text_tflite(kind, recipe):
    def build():
        from mlflow_tflite_keras.keras_export import convert_with_recipe

        model = make_text_model(kind)
        with tempfile.TemporaryDirectory() as d:
            model.export(d, format="tf_saved_model", verbose=False,
                         input_signature=[tf.TensorSpec((1, SEQ), tf.int32)])
            converter = tf.lite.TFLiteConverter.from_saved_model(d)
            return convert_with_recipe(converter, recipe)

    return cached(f"cf-text-{kind}-{recipe}", build, kind, recipe)


def tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, SEQ)).astype(np.int32)


def nested_layers(model, cls):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, cls)]


def body_dense_kernels(model):
    """The Dense kernels inside every WhileLoop body (the loop's FULLY_CONNECTED weights)."""
    return [layer.kernel for loop in nested_layers(model, WhileLoop)
            for layer in loop.body_model.layers if isinstance(layer, keras.layers.Dense)]


KINDS = ["lstm", "gru", "simple_rnn", "bidirectional_lstm"]


@pytest.mark.parametrize("recipe", ["float32", "dynamic-range"])
@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_text_model(kind, recipe):
    data = text_tflite(kind, recipe)
    tflite = TFLiteModel(data)
    assert "WHILE" in tflite.operator_names
    assert tflite.quantization_kind == ("none" if recipe == "float32" else
                                         "dynamic-range-int8")
    result = convert(data)
    model = result.model
    assert nested_layers(model, PerExample) and nested_layers(model, WhileLoop)
    assert body_dense_kernels(model), "the loop body's FULLY_CONNECTED should be Dense layers"
    x = tokens(6)
    report = check_parity(data, model, x)
    assert report.passed, str(report)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    again = check_parity(data, reloaded, x)
    assert again.passed, "after .keras reload: " + str(again)


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_text_model_trains(kind):
    model = to_keras(text_tflite(kind, "float32"))
    x, y = tokens(16, seed=1), np.random.default_rng(2).integers(0, 3, 16)
    kernels = body_dense_kernels(model)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
    grads = tape.gradient(loss, kernels)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads), \
        "gradients must reach the loop body's weights"
    before = [k.numpy().copy() for k in kernels]
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy",
                  jit_compile=False)
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert any(not np.allclose(b, k.numpy()) for b, k in zip(before, kernels))


# ---- plain tf.while_loop (dynamic batch) ------------------------------------------------------

W = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 4)).astype(np.float32)


def counted_loop(x):
    _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 0.5 + tf.tanh(y)),
                         [tf.constant(0), x])
    return y


def matmul_loop(x):
    _, y = tf.while_loop(lambda i, y: i < 4, lambda i, y: (i + 1, tf.tanh(tf.matmul(y, W))),
                         [tf.constant(0), x])
    return y


def data_dependent_loop(x):
    """Trip count from the data: doubles until the largest magnitude reaches 8."""
    _, y = tf.while_loop(lambda n, y: tf.logical_and(tf.reduce_max(tf.abs(y)) < 8.0, n < 20),
                         lambda n, y: (n + 1, y * 2.0), [tf.constant(0), x])
    return y


@pytest.mark.parametrize("fn", [counted_loop, matmul_loop, data_dependent_loop],
                         ids=["counted", "matmul", "data-dependent"])
def test_while_loop(fn):
    model, _ = check_op("WHILE", fn, [((None, 4), F)])
    assert nested_layers(model, WhileLoop)
    assert tuple(model.output.shape) == (None, 4)


def growing_loop(x):
    """A loop variable whose shape changes every iteration (declared shape invariant)."""
    _, acc = tf.while_loop(
        lambda i, a: i < 3,
        lambda i, a: (i + 1, tf.concat([a, x * tf.cast(i, tf.float32)], 1)),
        [tf.constant(0), x], shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, None])])
    return acc


def test_while_loop_growing_variable():
    model, _ = check_op("WHILE", growing_loop, [((None, 2), F)])
    loop = nested_layers(model, WhileLoop)[0]
    assert [None, None] in loop.shapes
    assert model(np.ones((2, 2), np.float32)).shape == (2, 8)


def constant_loop(x):
    _, v = tf.while_loop(lambda i, v: i < 5, lambda i, v: (i + 1, v * 1.5 + 1.0),
                         [tf.constant(0), tf.ones((4,))])
    return x + v


def test_while_loop_on_constants_folds():
    model, _ = check_op("WHILE", constant_loop, [((None, 4), F)])
    assert not nested_layers(model, WhileLoop)


def two_input_loop(x, y):
    _, a, b = tf.while_loop(lambda i, a, b: i < 3, lambda i, a, b: (i + 1, a + tf.tanh(b), b * 0.9),
                            [tf.constant(0), x, y])
    return a, b


def test_while_loop_fixed_batch_two_inputs_two_outputs():
    model, _ = check_op("WHILE", two_input_loop, [((1, 4), F), ((1, 4), F)])
    assert nested_layers(model, PerExample)  # fixed batch of 1: mapped over the batch
    x, y = (np.random.default_rng(s).uniform(-1, 1, (3, 4)).astype(np.float32) for s in (0, 1))
    feed = dict(zip([t.name for t in model.inputs], (x, y)))
    out = list(model(feed).values())
    expected_b = y * 0.9 ** 3
    expected_a = x + np.tanh(y) + np.tanh(y * 0.9) + np.tanh(y * 0.81)
    np.testing.assert_allclose(out[0], expected_a, rtol=1e-5)
    np.testing.assert_allclose(out[1], expected_b, rtol=1e-5)


def test_while_loop_trains_body_weights():
    model, _ = check_op("WHILE", matmul_loop, [((None, 4), F)], roundtrip=False)
    kernels = body_dense_kernels(model)
    assert kernels
    x = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x) ** 2)
    grads = tape.gradient(loss, kernels)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


# ---- IF ---------------------------------------------------------------------------------------

M = np.random.default_rng(1).uniform(-1, 1, (4, 4)).astype(np.float32)


def cond_on_flag(x, p):
    return tf.cond(p[0] > 0, lambda: tf.matmul(x, M), lambda: tf.reverse(x, [1]) * 3.0)


def cond_on_data(x):
    return tf.cond(tf.reduce_sum(x) > 0, lambda: tf.tanh(x) * 2.0, lambda: tf.exp(x) - 1.0)


@pytest.mark.parametrize("flag", [1.0, -1.0], ids=["then", "else"])
def test_if_runtime_flag(flag):
    model, _ = check_op("IF", cond_on_flag, [((None, 4), F),
                                             ((1,), np.array([flag], np.float32))])
    assert nested_layers(model, IfElse)


@pytest.mark.parametrize("seed", [0, 3])
def test_if_data_predicate(seed):
    model, _ = check_op("IF", cond_on_data, [((None, 4), F)], seed=seed)
    assert nested_layers(model, IfElse)
    x = np.full((2, 4), 0.5, np.float32)
    np.testing.assert_allclose(model(x), np.tanh(x) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(model(-x), np.exp(-x) - 1.0, rtol=1e-6)


# ---- resource variables -----------------------------------------------------------------------

def _running_total_module():
    class RunningTotal(tf.Module):
        def __init__(self):
            self.total = tf.Variable(np.arange(4, dtype=np.float32) / 4, name="running_total")

        @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
        def __call__(self, x):
            self.total.assign_add(x[0])
            return x + self.total

    module = RunningTotal()
    return [module.__call__.get_concrete_function()], module


def stateful_tflite():
    def build():
        functions, module = _running_total_module()
        converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, module)
        converter.experimental_enable_resource_variables = True
        return converter.convert()

    return cached("cf-stateful-running-total", build)


def test_stateful_model_with_a_state_without_batch_dimension_runs_per_example():
    """A streaming model converts to a recurrent model (tests/converter/test_streaming.py);
    this one's state [4] has no leading batch 1, so its step is built at the exact shapes and
    mapped over the batch (one stream per example)."""
    data = stateful_tflite()
    assert {"CALL_ONCE", "VAR_HANDLE", "ASSIGN_VARIABLE"} <= set(TFLiteModel(data).operator_names)
    model = to_keras(data)
    cell = model.layers[-1].cell
    assert cell.per_example and cell.state_shapes == [(4,)]
    x = np.random.default_rng(0).uniform(-1, 1, (3, 20, 4)).astype(np.float32)
    # out_t = x_t + total_t, total_t = total_0 + x_1 + ... + x_t
    expected = x + np.arange(4, dtype=np.float32) / 4 + np.cumsum(x, axis=1)
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    report = check_parity(data, model, x, max_rel_error=1e-5)
    assert report.passed and report.n_samples == 60, str(report)


def _without_assignments(data: bytes) -> bytes:
    """The stateful model with its ASSIGN_VARIABLE ops removed: variables initialized by
    CALL_ONCE and only read."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    assign = [i for i, c in enumerate(m.operatorCodes)
              if max(c.builtinCode, c.deprecatedBuiltinCode) ==
              schema.BuiltinOperator.ASSIGN_VARIABLE]
    m.subgraphs[0].operators = [op for op in m.subgraphs[0].operators
                                if op.opcodeIndex not in assign]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_read_only_variables_become_constants():
    data = _without_assignments(stateful_tflite())
    tflite = TFLiteModel(data)
    main = {op.name for op in tflite.subgraphs[0].operators}
    assert {"CALL_ONCE", "VAR_HANDLE", "READ_VARIABLE"} <= main
    assert "ASSIGN_VARIABLE" not in main  # only in the CALL_ONCE initializer
    model = to_keras(data)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
    np.testing.assert_allclose(model(x), x + np.arange(4) / 4, rtol=1e-6)
    report = check_parity(data, model, x)
    assert report.passed, str(report)
