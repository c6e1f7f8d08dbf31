"""Legacy family: LOCAL_RESPONSE_NORMALIZATION, SVDF (hand-built, TF no longer emits it),
REVERSE_SEQUENCE, SEGMENT_SUM, UNSORTED_SEGMENT_SUM/MAX/MIN/PROD, MATRIX_DIAG, MATRIX_SET_DIAG.
"""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema

from converter.handmade import FlatModel
from converter.op_harness import case_fn, check_model, check_op

from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_model import TFLiteModel

F = "float"


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


# ---- LOCAL_RESPONSE_NORMALIZATION ------------------------------------------------------------


def _lrn(x, radius, bias, alpha, beta):
    return tf.nn.local_response_normalization(x, radius, bias, alpha, beta)


@pytest.mark.parametrize("shape, radius, bias, alpha, beta", [
    ((None, 4, 4, 8), 2, 1.0, 0.5, 0.75),
    ((None, 3, 3, 16), 5, 2.0, 1e-2, 0.75),  # AlexNet-style
    ((None, 2, 2, 3), 4, 0.5, 1.0, 0.5),  # window wider than the depth
], ids=["r2", "alexnet", "wide"])
def test_local_response_normalization(shape, radius, bias, alpha, beta):
    fn = case_fn(_lrn, radius=radius, bias=bias, alpha=alpha, beta=beta)
    model, _ = check_op("LOCAL_RESPONSE_NORMALIZATION", fn, [(shape, F)])
    assert "LocalResponseNormalization" in layer_types(model)


# ---- SVDF (hand-built, parity against LiteRT's kernel) ---------------------------------------


def _int8(b, array):
    """A symmetric per-tensor int8 constant (hybrid models' weights)."""
    scale = float(np.abs(array).max()) / 127
    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint = [scale], [0]
    return b.const(np.round(array / scale).astype(np.int8), quantization=q)


def _svdf_model(op_type, batch, size, filters, memory, rank, act, bias=True, seed=0,
                hybrid=False):
    rng = np.random.default_rng(seed)
    b = FlatModel()
    x = b.input((batch, size))
    weights = [rng.uniform(-1, 1, shape).astype(np.float32)
               for shape in ((filters, size), (filters, memory))]
    wf, wt = (_int8(b, w) if hybrid else b.const(w) for w in weights)
    bb = b.const(rng.uniform(-1, 1, (filters // rank,)).astype(np.float32)) if bias else None
    state = b.variable((batch, memory * filters))
    y = b.output((batch, filters // rank))
    b.op(op_type, [x, wf, wt, bb, state], [y], "SVDFOptions", rank=rank,
         fusedActivationFunction=act)
    return b.finish()




@pytest.mark.parametrize("batch, rank, act, bias", [
    (2, 1, 0, True), (2, 2, 1, True), (1, 2, 0, False), (3, 1, 3, True),
], ids=["rank1", "rank2-relu", "batch1-nobias", "relu6"])
def test_svdf_is_one_step_from_zero_state(batch, rank, act, bias):
    size, filters, memory = 6, 8, 4
    data = _svdf_model("SVDF", batch, size, filters, memory, rank, act, bias)
    rng = np.random.default_rng(1)
    inputs = [(rng.uniform(-1, 1, (batch, size)) * 2).astype(np.float32) for _ in range(3)]
    model = check_model(data, ["SVDF"], inputs)
    assert "Dense" in layer_types(model)
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    assert dense.trainable_weights


def test_svdf_hybrid_int8_weights():
    # LiteRT's hybrid kernel quantizes the input to int8 per row: the default dynamic-range
    # tolerances (max abs error ~2e-3 here).
    data = _svdf_model("SVDF", 2, 6, 8, 4, 2, 0, hybrid=True, seed=3)
    rng = np.random.default_rng(2)
    inputs = [rng.uniform(-1, 1, (2, 6)).astype(np.float32) for _ in range(2)]
    check_model(data, ["SVDF"], inputs)


# ---- REVERSE_SEQUENCE ------------------------------------------------------------------------


def _reverse(x, lengths, seq_axis, batch_axis):
    return tf.reverse_sequence(x, tf.constant(lengths), seq_axis=seq_axis,
                               batch_axis=batch_axis)


@pytest.mark.parametrize("shape, lengths, seq_axis, batch_axis", [
    ((3, 5, 2), [1, 5, 3], 1, 0),
    ((4, 3, 2), [4, 0, 2], 0, 1),
    ((2, 3, 6), [6, 2, 0], 2, 1),
], ids=["seq1-batch0", "seq0-batch1", "seq2-batch1"])
def test_reverse_sequence_constant_lengths(shape, lengths, seq_axis, batch_axis):
    fn = case_fn(_reverse, lengths=lengths, seq_axis=seq_axis, batch_axis=batch_axis)
    check_op("REVERSE_SEQUENCE", fn, [(shape, F)])


def test_reverse_sequence_runtime_lengths():
    lengths = np.array([2, 5, 1], np.int32)
    check_op("REVERSE_SEQUENCE",
             lambda x, n: tf.reverse_sequence(x, n, seq_axis=1, batch_axis=0),
             [((3, 5, 4), F), ((3,), lengths)])


def test_reverse_sequence_dynamic_batch():
    lengths = np.array([3, 0, 5], np.int32)  # check_op feeds a batch of 3
    check_op("REVERSE_SEQUENCE",
             lambda x, n: tf.reverse_sequence(x, n, seq_axis=1, batch_axis=0),
             [((None, 5, 2), F), ((None,), lengths)])


# ---- segment reductions ----------------------------------------------------------------------


def _segment_sum(x, ids):
    return tf.math.segment_sum(x, tf.constant(ids))


@pytest.mark.parametrize("shape, ids", [
    ((5, 3), [0, 0, 1, 2, 2]),  # LiteRT requires ids increasing by 0 or 1
    ((4, 2, 3), [0, 1, 1, 1]),
], ids=["gap", "rank3"])
def test_segment_sum(shape, ids):
    check_op("SEGMENT_SUM", case_fn(_segment_sum, ids=ids), [(shape, F)])


def _unsorted(x, kind, ids, count):
    fn = getattr(tf.math, f"unsorted_segment_{kind}")
    return fn(x, tf.constant(ids), count)


@pytest.mark.parametrize("op_type", ["UNSORTED_SEGMENT_SUM", "UNSORTED_SEGMENT_MAX",
                                     "UNSORTED_SEGMENT_MIN", "UNSORTED_SEGMENT_PROD"])
@pytest.mark.parametrize("shape, ids, count", [
    ((5, 3), [0, 3, 1, 3, 0], 4),  # segment 2 empty
    ((6, 2, 2), [2, 0, 1, 2, 0, 1], 3),
], ids=["gap", "rank3"])
def test_unsorted_segment(op_type, shape, ids, count):
    kind = op_type.rsplit("_", 1)[-1].lower()
    check_op(op_type, case_fn(_unsorted, kind=kind, ids=ids, count=count), [(shape, F)])


def test_unsorted_segment_sum_runtime_ids():
    ids = np.array([1, 0, 2, 1, 2], np.int32)
    check_op("UNSORTED_SEGMENT_SUM", lambda x, i: tf.math.unsorted_segment_sum(x, i, 3),
             [((5, 3), F), ((5,), ids)])


# ---- MATRIX_DIAG / MATRIX_SET_DIAG ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(None, 4), (None, 2, 3)], ids=["rank2", "rank3"])
def test_matrix_diag(shape):
    check_op("MATRIX_DIAG", lambda x: tf.linalg.diag(x), [(shape, F)])


@pytest.mark.parametrize("shape, diag", [
    ((None, 3, 4), (None, 3)), ((None, 4, 3), (None, 3)), ((None, 2, 3, 3), (None, 2, 3)),
], ids=["wide", "tall", "rank4"])
def test_matrix_set_diag(shape, diag):
    check_op("MATRIX_SET_DIAG", lambda x, d: tf.linalg.set_diag(x, d), [(shape, F), (diag, F)])
