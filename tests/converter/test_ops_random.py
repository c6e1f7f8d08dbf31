"""RANDOM_STANDARD_NORMAL, RANDOM_UNIFORM, MULTINOMIAL: seeded Keras random draws. Parity with
LiteRT is on distribution (two-sample Kolmogorov-Smirnov test; category frequencies), not on
values; the same test tells the wrong distribution apart."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from converter.op_harness import op_tflite
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel

N = 4000
ZEROS = np.zeros((1, N), np.float32)


def litert(data, feeds):
    return next(iter(TFLiteRunner(TFLiteModel(data)).predict(feeds).values()))


def keras_twice(model, feeds):
    """Two draws of the model, and one of its ``.keras`` reload (safe_mode=True)."""
    first, second = (np.asarray(model.predict(feeds, verbose=0)) for _ in range(2))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    return first, second, np.asarray(reloaded.predict(feeds, verbose=0))


@pytest.mark.parametrize("op_type, fn, wrong", [
    ("RANDOM_STANDARD_NORMAL", lambda x: x + tf.random.normal([N], seed=7),
     lambda rng: rng.uniform(-1.7, 1.7, N)),
    ("RANDOM_UNIFORM", lambda x: x + tf.random.uniform([N], seed=7),
     lambda rng: rng.normal(0.5, 0.29, N)),
], ids=["normal", "uniform"])
def test_random_draws_follow_litert_distribution(op_type, fn, wrong):
    data = op_tflite(op_type.lower(), fn, [((1, N), "float")])
    assert op_type in TFLiteModel(data).operator_names
    model = to_keras(data)
    reference = litert(data, ZEROS).reshape(-1)
    draws = keras_twice(model, ZEROS)
    for sample in draws:
        assert sample.shape == (1, N)
        assert stats.ks_2samp(sample.reshape(-1), reference).pvalue > 1e-3
    assert not np.array_equal(draws[0], draws[1])  # a fresh draw each call
    other = wrong(np.random.default_rng(0))
    assert stats.ks_2samp(other, reference).pvalue < 1e-4  # the check tells them apart


def test_multinomial_frequencies():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32))
    data = op_tflite("multinomial", lambda x: tf.random.categorical(x, N, seed=3),
                     [((2, 4), logits)])
    assert "MULTINOMIAL" in TFLiteModel(data).operator_names
    model = to_keras(data)
    probs = np.exp(logits)

    def frequencies(samples):
        return np.stack([np.bincount(row, minlength=4) / N for row in samples])

    reference = litert(data, logits)
    assert np.abs(frequencies(reference) - probs).max() < 0.04
    for sample in keras_twice(model, logits):
        assert sample.shape == reference.shape and sample.dtype == reference.dtype
        assert np.abs(frequencies(sample) - probs).max() < 0.04


def test_random_draw_with_the_input_shape():
    """``tf.random.normal(tf.shape(x))``: a run-time shape, the batch dimension open."""
    data = op_tflite("random_standard_normal", lambda x: x + tf.random.normal(tf.shape(x), seed=5),
                     [((None, 500), "float")])
    assert "RANDOM_STANDARD_NORMAL" in TFLiteModel(data).operator_names
    model = to_keras(data)
    assert tuple(model.output.shape) == (None, 500)
    zeros = np.zeros((4, 500), np.float32)
    reference = litert(data, zeros)
    for sample in keras_twice(model, zeros):
        assert sample.shape == reference.shape == (4, 500)
        assert stats.ks_2samp(sample.reshape(-1), reference.reshape(-1)).pvalue > 1e-3
