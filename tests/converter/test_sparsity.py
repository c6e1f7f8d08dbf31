"""Sparse constants (SparsityParameters) and DENSIFY.

``densify`` is checked on hand-written CSR examples (with a block map, a column-major
traversal, every index vector type), against LiteRT's own DENSIFY kernel on hand-built models,
and end to end on TFLiteConverter's EXPERIMENTAL_SPARSITY output.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from converter.handmade import FlatModel
from model_factory import cached

from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.converter.sparsity import SparsityError, densify
from mlflow_tflite_keras.tflite_model import TFLiteModel

_VECTORS = {"int32": (schema.SparseIndexVector.Int32Vector, schema.Int32VectorT, np.int32),
            "uint16": (schema.SparseIndexVector.Uint16Vector, schema.Uint16VectorT, np.uint16),
            "uint8": (schema.SparseIndexVector.Uint8Vector, schema.Uint8VectorT, np.uint8)}


def dense_dim(size):
    d = schema.DimensionMetadataT()
    d.format, d.denseSize = schema.DimensionType.DENSE, size
    return d


def csr_dim(segments, indices, kind="int32"):
    code, cls, dtype = _VECTORS[kind]
    d = schema.DimensionMetadataT()
    d.format = schema.DimensionType.SPARSE_CSR
    seg, idx = cls(), cls()
    seg.values, idx.values = np.asarray(segments, dtype), np.asarray(indices, dtype)
    d.arraySegmentsType, d.arraySegments = code, seg
    d.arrayIndicesType, d.arrayIndices = code, idx
    return d


def sparsity(order, dims, block_map=None):
    s = schema.SparsityParametersT()
    s.traversalOrder, s.blockMap, s.dimMetadata = list(order), block_map, dims
    return s


DENSE_4X4 = np.array([[1, 0, 0, 0], [0, 0, 2, 3], [0, 0, 0, 0], [4, 0, 0, 5]], np.float32)
DENSE_2X8 = np.array([[1, 2, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 3, 4]], np.float32)

# (values, sparsity, shape, expected)
EXAMPLES = {
    "csr": (np.array([1, 2, 3, 4, 5], np.float32),
            lambda kind: sparsity([0, 1], [dense_dim(4), csr_dim([0, 1, 3, 3, 5],
                                                                  [0, 2, 3, 0, 3], kind)]),
            (4, 4), DENSE_4X4),
    "column_major": (np.array([1, 4, 2, 3, 5], np.float32),
                     lambda kind: sparsity([1, 0], [dense_dim(4), csr_dim([0, 2, 2, 3, 5],
                                                                          [0, 3, 1, 1, 3], kind)]),
                     (4, 4), DENSE_4X4),
    "block_1x4": (np.array([1, 2, 0, 0, 0, 0, 3, 4], np.float32),
                  lambda kind: sparsity([0, 1, 2], [dense_dim(2), csr_dim([0, 1, 2], [0, 1], kind),
                                                    dense_dim(4)], block_map=[1]),
                  (2, 8), DENSE_2X8),
}


@pytest.mark.parametrize("kind", ["int32", "uint16", "uint8"])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_densify_examples(example, kind):
    values, make, shape, expected = EXAMPLES[example]
    np.testing.assert_array_equal(densify(values, make(kind), shape), expected)


def test_densify_block_2x2_csr_on_both_block_rows():
    # 4x4 in 2x2 blocks: block (0,0) and (1,1) present. Levels: rows/2 dense, cols/2 CSR,
    # then the 2x2 block dense.
    expected = np.zeros((4, 4), np.float32)
    expected[:2, :2] = [[1, 2], [3, 4]]
    expected[2:, 2:] = [[5, 6], [7, 8]]
    s = sparsity([0, 1, 2, 3], [dense_dim(2), csr_dim([0, 1, 2], [0, 1]), dense_dim(2),
                                dense_dim(2)], block_map=[0, 1])
    np.testing.assert_array_equal(densify(np.arange(1, 9, dtype=np.float32), s, (4, 4)),
                                  expected)


def test_densify_rejects_inconsistent_metadata():
    values, make, shape, _ = EXAMPLES["csr"]
    with pytest.raises(SparsityError, match="stores 4 values"):
        densify(values[:4], make("int32"), shape)
    with pytest.raises(SparsityError, match="traversal_order"):
        densify(values, sparsity([0], [dense_dim(4)]), shape)


def handmade_densify_add(example):
    """x + DENSIFY(sparse constant): LiteRT's DENSIFY kernel decodes the same bytes."""
    values, make, shape, expected = EXAMPLES[example]
    b = FlatModel()
    x = b.input((1, *shape))
    w = b.const(values, "sparse_w", shape=shape, sparsity=make("uint8"))
    wd = b.intermediate(shape, name="dense_w")
    y = b.output((1, *shape))
    b.op("DENSIFY", [w], [wd])
    b.op("ADD", [x, wd], [y], "AddOptions")
    return b.finish(), expected


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_densify_op_matches_litert(example):
    data, expected = handmade_densify_add(example)
    tflite = TFLiteModel(data)
    assert any(t.sparsity is not None for t in tflite.main.tensors)
    model = to_keras(data)
    report = check_parity(data, model, np.zeros((1, *expected.shape), np.float32))
    assert report.passed, str(report)
    np.testing.assert_array_equal(np.asarray(model(np.zeros((1, *expected.shape)))[0]),
                                  expected)


# ---- TFLiteConverter EXPERIMENTAL_SPARSITY ---------------------------------------------------


def sparse_keras_tflite(kind):
    def build():
        import tensorflow as tf

        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        if kind == "dense":  # 1x4 blocks, ~80% zero: FULLY_CONNECTED reads the sparse weight
            model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32)])
            w, b = model.layers[0].get_weights()
            w = w * np.kron(rng.random((16, 8)) < 0.2, np.ones((4, 4)))
        else:  # random 80% zeros: DENSIFY feeds CONV_2D
            model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(16, 3)])
            w, b = model.layers[0].get_weights()
            w = w * (rng.random(w.shape) < 0.2)
        model.layers[0].set_weights([w, b])
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert()

    return cached(f"sparse-{kind}", build, kind)


@pytest.mark.parametrize("kind,ops", [("dense", {"FULLY_CONNECTED"}),
                                      ("conv", {"DENSIFY", "CONV_2D"})])
def test_experimental_sparsity_models(kind, ops):
    data = sparse_keras_tflite(kind)
    tflite = TFLiteModel(data)
    assert ops <= set(tflite.operator_names)
    assert any(t.sparsity is not None for t in tflite.main.tensors)
    model = to_keras(data)
    report = check_parity(data, model)
    assert report.passed, str(report)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    assert check_parity(data, reloaded).passed
    kernel = next(layer for layer in model.layers if layer.weights).get_weights()[0]
    assert 0.6 < float(np.mean(kernel == 0)) < 0.95  # the zeros came back where they were
