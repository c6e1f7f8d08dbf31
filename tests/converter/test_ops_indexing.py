"""Indexing ops: GATHER (embedding lookup -> trainable Embedding; axis / batch_dims),
GATHER_ND, SCATTER_ND, TOPK_V2, WHERE, ONE_HOT, CUMSUM."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op

F = "float"
I = "int"
TABLE = np.random.default_rng(0).uniform(-1, 1, (10, 4)).astype(np.float32)
CUBE = np.random.default_rng(1).uniform(-1, 1, (4, 3, 2)).astype(np.float32)


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def test_gather_embedding_lookup():
    model, _ = check_op("GATHER", lambda i: tf.gather(TABLE, i), [((None, 3), I)])
    (emb,) = [layer for layer in model.layers if type(layer).__name__ == "Embedding"]
    assert emb.trainable and len(emb.trainable_weights) == 1
    np.testing.assert_allclose(emb.get_weights()[0], TABLE)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.gather(x, [2, 0, 2], axis=1), [((None, 4), F)]),
    (lambda x: tf.gather(x, [[1, 0], [3, 3]], axis=-1), [((None, 2, 4), F)]),
    (lambda i: tf.gather(CUBE, i, axis=1), [((None,), np.array([0, 2, 1], np.int32))]),
    (lambda x, i: tf.gather(x, i, axis=1, batch_dims=1),
     [((None, 5, 2), F), ((None, 3), np.array([[0, 4, 1], [2, 2, 3], [4, 0, 0]], np.int32))]),
], ids=["axis1", "negative-axis-2d-indices", "const-3d", "batch-dims"])
def test_gather(fn, inputs):
    check_op("GATHER", fn, inputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda i: tf.gather_nd(CUBE, i),
     [((None, 2), np.array([[0, 1], [3, 2], [2, 0]], np.int32))]),
    (lambda x: tf.gather_nd(x, [[0, 1, 1], [0, 2, 0]]), [((1, 3, 2), F)]),
    (lambda x: tf.gather_nd(x, [[1, 0], [2, 1]]), [((None, 3, 4, 2), F)]),
    (lambda x: tf.gather_nd(x, [[2], [0]]), [((3, 4), F)]),
], ids=["const-params", "static-batch", "batched-params", "unbatched-rows"])
def test_gather_nd(fn, inputs):
    check_op("GATHER_ND", fn, inputs)


def test_scatter_nd():
    check_op("SCATTER_ND", lambda u: tf.scatter_nd([[1], [3], [4]], u, [6, 2]), [((3, 2), F)])


@pytest.mark.parametrize("k, shape", [(2, (None, 5)), (3, (None, 2, 6))], ids=["2d", "3d"])
def test_topk_v2(k, shape):
    check_op("TOPK_V2", lambda x: tf.math.top_k(x, k), [(shape, F)])


def test_where_dynamic_size():
    check_op("WHERE", lambda x: tf.where(x > 0), [((None, 5), F)])


def test_where_exports_with_builtins_only():
    """keras.ops.nonzero would export an int64 tf.Unpack, which has no builtin kernel."""
    from converter.op_harness import _feeds, check_export, op_tflite
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    inputs = [((None, 5), F)]
    source = op_tflite("where", lambda x: tf.where(x > 0), inputs)
    feeds = _feeds(TFLiteModel(source), inputs, np.random.default_rng(3))
    exported = check_export(source, to_keras(source), feeds)
    assert "WHERE" in exported.operator_names


@pytest.mark.parametrize("fn", [
    lambda i: tf.one_hot(i, 10),
    lambda i: tf.one_hot(i, 6, on_value=2.0, off_value=-1.0, axis=1),
], ids=["default", "on-off-axis"])
def test_one_hot(fn):
    check_op("ONE_HOT", fn, [((None, 3), I)])


@pytest.mark.parametrize("exclusive, reverse", [(False, False), (True, False), (False, True),
                                                (True, True)])
def test_cumsum(exclusive, reverse):
    check_op("CUMSUM", lambda x: tf.cumsum(x, axis=-1, exclusive=exclusive, reverse=reverse),
             [((None, 2, 5), F)])


def test_cumsum_axis1_int():
    check_op("CUMSUM", lambda x: tf.cumsum(x, axis=1), [((None, 4), I)])
