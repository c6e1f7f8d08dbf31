"""Comparison, logical and selection ops, CAST, ZEROS_LIKE: bool outputs, dtype
changes, broadcasting with constant and runtime operands, and full-int8 variants."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op

F = "float"
I = "int"
B = "bool"

WIDE = np.linspace(-3.5, 3.5, 15, dtype=np.float32).reshape(3, 5)  # negatives, halves, 0
INTS = np.array([[-3, 0, 2, 7, -1], [5, 0, -8, 1, 1]], np.int32)


def dtypes_out(model):
    return str(model.outputs[0].dtype)


# ---- comparisons -----------------------------------------------------------------------------

@pytest.mark.parametrize("op_type, fn, inputs", [
    ("EQUAL", lambda x, y: tf.equal(x, y), [((None, 5), I), ((None, 5), I)]),
    ("EQUAL", lambda x: tf.equal(x, tf.constant([1, 2, 3, 4, 5])), [((None, 5), I)]),
    ("EQUAL", lambda x, y: tf.equal(x, y), [((None, 3, 1), I), ((None, 1, 4), I)]),
    ("NOT_EQUAL", lambda x, y: tf.not_equal(x, y), [((None, 5), I), ((5,), I)]),
    ("NOT_EQUAL", lambda x: tf.not_equal(x, 0.0), [((3, 5), WIDE)]),
    ("LESS", lambda x, y: tf.less(x, y), [((None, 5), F), ((None, 5), F)]),
    ("LESS", lambda x: tf.less(x, tf.constant([[0.5], [-0.5]])), [((None, 2, 4), F)]),
    ("LESS_EQUAL", lambda x, y: tf.less_equal(x, y), [((None, 5), I), ((None, 1), I)]),
    ("LESS_EQUAL", lambda x: tf.less_equal(x, 0.5), [((3, 5), WIDE)]),
    ("GREATER", lambda x, y: tf.greater(x, y), [((None, 2, 5), F), ((5,), F)]),
    ("GREATER", lambda x: tf.greater(x, tf.constant([0, 1, 2, 3, 4])), [((None, 5), I)]),
    ("GREATER_EQUAL", lambda x, y: tf.greater_equal(x, y), [((None, 5), I), ((None, 5), I)]),
    ("GREATER_EQUAL", lambda x: tf.greater_equal(x, -0.5), [((3, 5), WIDE)]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_comparison(op_type, fn, inputs):
    model, _ = check_op(op_type, fn, inputs)
    assert dtypes_out(model) == "bool"


@pytest.mark.parametrize("op_type, fn, inputs", [
    ("LOGICAL_AND", lambda x, y: tf.logical_and(x, y), [((None, 5), B), ((None, 5), B)]),
    ("LOGICAL_AND", lambda x: tf.logical_and(x, tf.constant([True, False, True])),
     [((None, 2, 3), B)]),
    ("LOGICAL_OR", lambda x, y: tf.logical_or(x, y), [((None, 4, 5), B), ((None, 1, 5), B)]),
    ("LOGICAL_OR", lambda x: tf.logical_or(x, tf.constant([[False], [True]])),
     [((None, 2, 3), B)]),
    ("LOGICAL_NOT", lambda x: tf.logical_not(x), [((None, 5), B)]),
    ("LOGICAL_NOT", lambda x: tf.logical_not(x), [((None, 2, 5), B)]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_logical(op_type, fn, inputs):
    model, _ = check_op(op_type, fn, inputs)
    assert dtypes_out(model) == "bool"


# ---- selection -------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs", [
    (lambda c, x, y: tf.where(c, x, y), [((None, 5), B), ((None, 5), F), ((None, 5), F)]),
    (lambda c, x, y: tf.where(c, x, y), [((None, 1), B), ((None, 5), F), ((5,), F)]),
    (lambda x: tf.where(x > 0.0, x, tf.constant([1.0, 2.0, 3.0, 4.0])), [((None, 4), F)]),
    (lambda c, x: tf.where(c, x, tf.constant([-1, -2, -3])), [((None, 3), B), ((None, 3), I)]),
    (lambda x, y: tf.where(tf.constant([True, False, True]), x, y),
     [((None, 3), F), ((None, 3), F)]),
], ids=["runtime", "bcast", "const-else", "int-const", "const-cond"])
def test_select_v2(fn, inputs):
    check_op("SELECT_V2", fn, inputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda c, x, y: tf.raw_ops.Select(condition=c, x=x, y=y),
     [((3, 4), B), ((3, 4), F), ((3, 4), F)]),
    (lambda c, x, y: tf.raw_ops.Select(condition=c, x=x, y=y),
     [((3,), B), ((3, 4), F), ((3, 4), F)]),
    (lambda c, x, y: tf.raw_ops.Select(condition=c, x=x, y=y),
     [((3,), B), ((3, 2, 4), I), ((3, 2, 4), I)]),
], ids=["same-shape", "rows", "rows-3d-int"])
def test_select(fn, inputs):
    check_op("SELECT", fn, inputs)


# ---- CAST / ZEROS_LIKE ------------------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs, dtype", [
    (lambda x: tf.cast(x, tf.int32), [((3, 5), WIDE)], "int32"),  # truncates toward zero
    (lambda x: tf.cast(x, tf.float32), [((2, 5), INTS)], "float32"),
    (lambda x: tf.cast(x, tf.bool), [((2, 5), INTS)], "bool"),
    (lambda x: tf.cast(x, tf.bool), [((3, 5), WIDE)], "bool"),
    (lambda x: tf.cast(x, tf.float32), [((None, 5), B)], "float32"),
    (lambda x: tf.cast(x, tf.int32), [((None, 5), B)], "int32"),
    (lambda x: tf.cast(x, tf.int64), [((None, 2, 5), I)], "int64"),
    (lambda x: tf.cast(x > 0.0, tf.float32) * x, [((None, 5), F)], "float32"),
], ids=["f2i", "i2f", "i2b", "f2b", "b2f", "b2i", "i2i64", "mask"])
def test_cast(fn, inputs, dtype):
    model, _ = check_op("CAST", fn, inputs)
    assert dtypes_out(model) == dtype


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.raw_ops.ZerosLike(x=x), [((2, 5), I)]),
    (lambda x: tf.zeros_like(x) + x, [((None, 5), F)]),
], ids=["int", "float"])
def test_zeros_like(fn, inputs):
    check_op("ZEROS_LIKE", fn, inputs)


# ---- full-int8 -------------------------------------------------------------------------------

@pytest.mark.parametrize("op_type, fn, inputs", [
    ("LESS", lambda x, y: tf.less(x, y), [((None, 8), F), ((None, 8), F)]),
    ("GREATER_EQUAL", lambda x: tf.greater_equal(x, tf.constant([0.5, -0.5, 0.0, 0.25])),
     [((None, 4), F)]),
    ("SELECT_V2", lambda x, y: tf.where(x > y, x, y * 0.5), [((None, 8), F), ((None, 8), F)]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_full_int8(op_type, fn, inputs):
    check_op(op_type, fn, inputs, recipe="full-int8")
