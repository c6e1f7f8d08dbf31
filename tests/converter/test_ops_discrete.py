"""Discrete ops: BUCKETIZE, UNIQUE, SPARSE_TO_DENSE (TensorFlow emits them), and RANK,
EMBEDDING_LOOKUP_SPARSE (written with the schema's object API) against LiteRT."""

import numpy as np
import pytest
import tensorflow as tf

from converter.handmade import FlatModel
from converter.op_harness import check_model, check_op

REPEATS = np.array([3.0, 1.0, 3.0, -2.0, 1.0, 7.0, 7.0, 0.5], np.float32)
INDICES = np.array([[0, 1], [2, 5], [4, 0]], np.int32)


@pytest.mark.parametrize("boundaries, shape", [
    ([0.0, 0.5, 1.0], (None, 4)),
    ([-0.75, -0.1, 0.1, 0.2, 0.9], (None, 2, 3)),
], ids=["three", "five-rank3"])
def test_bucketize(boundaries, shape):
    from converter.op_harness import case_fn

    fn = case_fn(lambda x, b: tf.raw_ops.Bucketize(input=x, boundaries=b), b=boundaries)
    check_op("BUCKETIZE", fn, [(shape, "float")])


@pytest.mark.parametrize("fn", [
    lambda x: tf.unique(x)[0] * 2.0,
    lambda x: tf.unique(x)[1],
], ids=["values", "indices"])
def test_unique(fn):
    check_op("UNIQUE", fn, [((8,), REPEATS)])


@pytest.mark.parametrize("fn, inputs", [
    (lambda i: tf.raw_ops.SparseToDense(sparse_indices=i, output_shape=[5, 6],
                                        sparse_values=tf.constant([1.0, 2.0, 3.0]),
                                        default_value=-1.0), [((3, 2), INDICES)]),
    (lambda i, v: tf.raw_ops.SparseToDense(sparse_indices=i, output_shape=[5, 6],
                                           sparse_values=v, default_value=0.0),
     [((3, 2), INDICES), ((3,), "float")]),
    (lambda i: tf.raw_ops.SparseToDense(sparse_indices=i, output_shape=[8],
                                        sparse_values=tf.constant(4), default_value=1),
     [((3,), np.array([1, 4, 6], np.int32))]),
], ids=["const-values", "runtime-values", "1d-scalar-value"])
def test_sparse_to_dense(fn, inputs):
    check_op("SPARSE_TO_DENSE", fn, inputs)


def test_rank_is_a_constant():
    b = FlatModel()
    x = b.input((1, 3, 4))
    r, rf = b.intermediate((), np.int32), b.intermediate(())
    y = b.output((1, 3, 4))
    b.op("RANK", [x], [r], "RankOptions")
    b.op("CAST", [r], [rf])
    b.op("ADD", [x, rf], [y], "AddOptions")
    feeds = np.random.default_rng(0).uniform(-1, 1, (1, 3, 4)).astype(np.float32)
    check_model(b.finish(), ["RANK"], [feeds])


def embedding_lookup_sparse_model(combiner, n=5, rows=3, vocab=7, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    b = FlatModel()
    ids = b.input((n,), np.int32, "ids")
    indices = b.input((n, 2), np.int32, "indices")
    weights = b.input((n,), np.float32, "weights")
    shape = b.const(np.array([rows, 3], np.int32))
    params = b.const(rng.normal(size=(vocab, dim)).astype(np.float32))
    y = b.output((rows, dim))
    b.op("EMBEDDING_LOOKUP_SPARSE", [ids, indices, shape, weights, params], [y],
         "EmbeddingLookupSparseOptions", combiner=combiner)
    return b.finish()


@pytest.mark.parametrize("combiner", [0, 1, 2], ids=["sum", "mean", "sqrtn"])
def test_embedding_lookup_sparse(combiner):
    data = embedding_lookup_sparse_model(combiner)
    feeds = [{"ids": np.array([1, 6, 0, 2, 2], np.int32),
              # row 1 has no entries: zeros
              "indices": np.array([[0, 0], [0, 1], [0, 2], [2, 0], [2, 1]], np.int32),
              "weights": np.array([0.5, 2.0, 1.0, 1.5, -0.25], np.float32)}]
    model = check_model(data, ["EMBEDDING_LOOKUP_SPARSE"], feeds)
    assert [w.shape for w in model.trainable_weights] == [(7, 4)]
