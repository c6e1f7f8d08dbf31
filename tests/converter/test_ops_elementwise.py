"""Elementwise arithmetic ops: binary (with constant / runtime broadcasting, fused
activations, int and full-int8 variants), unary math ops and ADD_N."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op

F = "float"
P = "positive"
I = "int"

# Halves check ROUND's half-to-even; negatives check FLOOR_DIV / FLOOR_MOD signs.
HALVES = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5], [2.5, 3.5, 0.49, -0.51, 0.51]], np.float32)
INT_NUM = np.array([[7, -7, 7, -7, 0, 9], [-1, 1, 5, -5, 3, -9]], np.int32)
INT_DEN = np.array([[2, 2, -2, -2, 3, 4], [3, 3, -3, 3, -2, 4]], np.int32)
FLOAT_NUM = np.array([[2.5, -2.5, 2.5, -2.5, 0.3, -0.3]], np.float32)
SQD_X = np.random.default_rng(1).uniform(-1, 1, (3, 8)).astype(np.float32)
SQD_Y = np.random.default_rng(2).uniform(-1, 1, (3, 8)).astype(np.float32)
FLOAT_DEN = np.array([[0.7, 0.7, -0.7, -0.7, 0.4, 0.4]], np.float32)


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def has_suffix(model, suffix):
    return any(layer.name.endswith(suffix) for layer in model.layers)


# ---- ADD / SUB / MUL / DIV -------------------------------------------------------------------

def test_add_runtime_same_shape_uses_add_layer():
    model, _ = check_op("ADD", lambda x, y: x + y, [((None, 5), F), ((None, 5), F)])
    assert "Add" in layer_types(model)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: x + tf.constant([1.0, 2.0, 3.0, 4.0, 5.0]), [((None, 3, 5), F)]),
    (lambda x: tf.constant(0.5) + x, [((None, 4), F)]),
    (lambda x, y: x + y, [((None, 4, 5), F), ((None, 1, 5), F)]),
    (lambda x, y: x + y, [((2, 1, 5), F), ((3, 1), F)]),
    (lambda x, y: x + y, [((None, 5), I), ((None, 5), I)]),
    (lambda x: x + tf.constant([1, -2, 3], tf.int32), [((None, 3), I)]),
], ids=["const-bcast", "scalar-first", "runtime-bcast", "runtime-bcast-both", "int", "int-const"])
def test_add_broadcast(fn, inputs):
    check_op("ADD", fn, inputs)


@pytest.mark.parametrize("fn, suffix", [
    (lambda x, y: tf.nn.relu(x + y), "_relu"),
    (lambda x, y: tf.nn.relu6(x + y), "_relu6"),
    (lambda x, y: tf.clip_by_value(x + y, -1.0, 1.0), "_relu_n1_to_1"),
], ids=["relu", "relu6", "relu_n1_to_1"])
def test_add_fused_activation(fn, suffix):
    model, _ = check_op("ADD", fn, [((None, 6), F), ((None, 6), F)],
                        expect_ops=["ADD"])
    assert has_suffix(model, suffix)


def test_add_full_int8():
    check_op("ADD", lambda x, y: x + y, [((None, 8), F), ((None, 8), F)], recipe="full-int8")


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: x - y, [((None, 5), F), ((None, 5), F)]),
    (lambda x: x - tf.constant([[0.5], [1.5], [-1.0]]), [((None, 3, 4), F)]),
    (lambda x: tf.constant([1.0, 2.0, 3.0, 4.0]) - x, [((None, 4), F)]),
    (lambda x, y: x - y, [((None, 2, 4), F), ((4,), F)]),
    (lambda x, y: x - y, [((None, 5), I), ((None, 5), I)]),
], ids=["runtime", "const-bcast", "const-first", "runtime-bcast", "int"])
def test_sub(fn, inputs):
    model, _ = check_op("SUB", fn, inputs)
    if len(inputs) == 2 and inputs[0] == inputs[1] and inputs[0][1] == F:
        assert "Subtract" in layer_types(model)


def test_sub_fused_relu_and_int8():
    model, _ = check_op("SUB", lambda x, y: tf.nn.relu(x - y), [((None, 6), F), ((6,), F)])
    assert has_suffix(model, "_relu")
    check_op("SUB", lambda x, y: x - y, [((None, 8), F), ((None, 8), F)], recipe="full-int8")


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: x * y, [((None, 5), F), ((None, 5), F)]),
    (lambda x: x * tf.constant([[1.0, -2.0, 3.0]]), [((None, 2, 3), F)]),
    (lambda x, y: x * y, [((None, 3, 1), F), ((None, 1, 4), F)]),
    (lambda x, y: x * y, [((None, 5), I), ((None, 5), I)]),
], ids=["runtime", "const-bcast", "runtime-bcast", "int"])
def test_mul(fn, inputs):
    model, _ = check_op("MUL", fn, inputs)
    if len(inputs) == 2 and inputs[0] == inputs[1] and inputs[0][1] == F:
        assert "Multiply" in layer_types(model)


def test_mul_fused_and_int8():
    model, _ = check_op("MUL", lambda x, y: tf.nn.relu6(4.0 * x * y),
                        [((None, 6), F), ((None, 6), F)], expect_ops=["MUL"])
    assert has_suffix(model, "_relu6")
    check_op("MUL", lambda x: x * tf.constant([0.5, -1.0, 2.0, 0.25]), [((None, 4), F)],
             recipe="full-int8")


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: x / y, [((None, 5), F), ((None, 5), P)]),
    (lambda x, y: x / y, [((None, 3, 5), F), ((None, 1, 5), P)]),
    (lambda x: tf.constant([1.0, 2.0, 3.0]) / x, [((None, 3), P)]),
    (lambda x, y: tf.nn.relu(x / y), [((None, 5), F), ((5,), P)]),
    # Integer DIV truncates toward zero (TF's floordiv would be FLOOR_DIV).
    (lambda x, y: tf.raw_ops.Div(x=x, y=y), [((2, 6), INT_NUM), ((2, 6), INT_DEN)]),
], ids=["runtime", "runtime-bcast", "const-first", "fused-relu", "int-truncates"])
def test_div(fn, inputs):
    check_op("DIV", fn, inputs)


# ---- other binary ops ------------------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.pow(x, y), [((None, 5), P), ((None, 5), F)]),
    (lambda x: tf.pow(x, tf.constant([0.5, 1.5, -1.0])), [((None, 2, 3), P)]),
    (lambda x, y: tf.pow(x, y), [((None, 4), I), ((4,), np.array([0, 1, 2, 3], np.int32))]),
], ids=["runtime", "const-exponent", "int"])
def test_pow(fn, inputs):
    check_op("POW", fn, inputs)


@pytest.mark.parametrize("fn, inputs, recipe", [
    (lambda x, y: tf.math.squared_difference(x, y), [((None, 5), F), ((None, 5), F)], "float32"),
    (lambda x, y: tf.math.squared_difference(x, y), [((None, 2, 5), F), ((5,), F)], "float32"),
    (lambda x: tf.math.squared_difference(x, tf.constant([0.5, -0.5])), [((None, 2), F)],
     "float32"),
    # Fixed arrays: the representative data is the test data itself, so no output saturates
    # at the calibrated range (random samples beyond it would be clipped by the int8 model).
    (lambda x, y: tf.math.squared_difference(x, y), [((3, 8), SQD_X), ((3, 8), SQD_Y)],
     "full-int8"),
], ids=["runtime", "runtime-bcast", "const", "int8"])
def test_squared_difference(fn, inputs, recipe):
    check_op("SQUARED_DIFFERENCE", fn, inputs, recipe=recipe)


@pytest.mark.parametrize("fn, inputs, recipe", [
    (lambda x, y: tf.maximum(x, y), [((None, 5), F), ((None, 5), F)], "float32"),
    (lambda x: tf.maximum(x, tf.constant([0.2, -0.3, 0.0, 0.5])), [((None, 3, 4), F)],
     "float32"),
    (lambda x, y: tf.maximum(x, y), [((None, 5), I), ((5,), I)], "float32"),
    (lambda x, y: tf.maximum(x, y), [((None, 8), F), ((None, 8), F)], "full-int8"),
], ids=["runtime", "const-bcast", "int", "int8"])
def test_maximum(fn, inputs, recipe):
    model, _ = check_op("MAXIMUM", fn, inputs, recipe=recipe)
    if recipe == "float32" and len(inputs) == 2 and inputs[0] == inputs[1]:
        assert "Maximum" in layer_types(model)


@pytest.mark.parametrize("fn, inputs, recipe", [
    (lambda x, y: tf.minimum(x, y), [((None, 5), F), ((None, 5), F)], "float32"),
    (lambda x, y: tf.minimum(x, y), [((None, 2, 5), F), ((None, 1, 5), F)], "float32"),
    (lambda x: tf.minimum(x, 0.3), [((None, 4), F)], "float32"),
    (lambda x: tf.minimum(x, tf.constant([0.2, -0.3, 0.0, 0.5])), [((None, 4), F)],
     "full-int8"),
], ids=["runtime", "runtime-bcast", "scalar", "int8"])
def test_minimum(fn, inputs, recipe):
    model, _ = check_op("MINIMUM", fn, inputs, recipe=recipe)
    if recipe == "float32" and len(inputs) == 2 and inputs[0] == inputs[1]:
        assert "Minimum" in layer_types(model)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.math.floordiv(x, y), [((1, 6), FLOAT_NUM), ((1, 6), FLOAT_DEN)]),
    (lambda x: tf.math.floordiv(x, tf.constant([0.3, -0.4])), [((None, 3, 2), F)]),
    (lambda x, y: tf.math.floordiv(x, y), [((2, 6), INT_NUM), ((2, 6), INT_DEN)]),
], ids=["float", "float-const", "int-signs"])
def test_floor_div(fn, inputs):
    check_op("FLOOR_DIV", fn, inputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.math.floormod(x, y), [((1, 6), FLOAT_NUM), ((1, 6), FLOAT_DEN)]),
    (lambda x: tf.math.floormod(x, tf.constant([0.3, -0.4])), [((None, 3, 2), F)]),
    (lambda x, y: tf.math.floormod(x, y), [((2, 6), INT_NUM), ((2, 6), INT_DEN)]),
], ids=["float", "float-const", "int-signs"])
def test_floor_mod(fn, inputs):
    check_op("FLOOR_MOD", fn, inputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda y, x: tf.math.atan2(y, x), [((None, 5), F), ((None, 5), F)]),
    # tfl.atan2 takes no broadcasting (the TF converter rejects a [3] constant with [?, 3]).
    (lambda y: tf.math.atan2(y, tf.constant([[-1.0, 0.5, 1.0], [0.2, -0.3, 2.0]])),
     [((2, 3), F)]),
], ids=["runtime", "const"])
def test_atan2(fn, inputs):
    check_op("ATAN2", fn, inputs)


# ---- unary ops -------------------------------------------------------------------------------

@pytest.mark.parametrize("op_type, fn, inputs", [
    ("RSQRT", lambda x: tf.math.rsqrt(x), [((None, 5), P)]),
    ("SQRT", lambda x: tf.sqrt(x), [((None, 2, 3), P)]),
    ("SQUARE", lambda x: tf.square(x), [((None, 5), F)]),
    ("EXP", lambda x: tf.exp(x), [((None, 5), F)]),
    ("LOG", lambda x: tf.math.log(x), [((None, 5), P)]),
    ("ABS", lambda x: tf.abs(x), [((None, 5), F)]),
    ("ABS", lambda x: tf.abs(x), [((2, 6), INT_NUM)]),
    ("NEG", lambda x: tf.negative(x), [((None, 5), F)]),
    ("NEG", lambda x: tf.negative(x), [((None, 5), I)]),
    ("SIN", lambda x: tf.sin(x), [((None, 5), F)]),
    ("COS", lambda x: tf.cos(x), [((None, 5), F)]),
    ("FLOOR", lambda x: tf.floor(3.0 * x), [((None, 5), F)]),
    ("CEIL", lambda x: tf.math.ceil(3.0 * x), [((None, 5), F)]),
    ("ROUND", lambda x: tf.round(x), [((2, 5), HALVES)]),
    ("SIGN", lambda x: tf.sign(x), [((2, 5), HALVES)]),
    ("SIGN", lambda x: tf.sign(x), [((2, 6), INT_NUM)]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unary(op_type, fn, inputs):
    check_op(op_type, fn, inputs)


@pytest.mark.parametrize("op_type, fn", [
    ("RSQRT", lambda x: tf.math.rsqrt(x)),
    ("ABS", lambda x: tf.abs(x)),
], ids=["RSQRT", "ABS"])
def test_unary_full_int8(op_type, fn):
    check_op(op_type, fn, [((None, 8), P if op_type == "RSQRT" else F)], recipe="full-int8")


# ---- ADD_N -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y, z: tf.math.add_n([x, y, z]), [((None, 5), F)] * 3),
    (lambda x, y: tf.math.add_n([x, y, tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])]),
     [((2, 3), F)] * 2),
], ids=["runtime", "with-const"])
def test_add_n(fn, inputs):
    model, _ = check_op("ADD_N", fn, inputs)
    if len(inputs) == 3:
        assert "Add" in layer_types(model)



def test_add_broadcast_column_when_batch_equals_channels():
    """(N, C) + (N, 1) with N == C: keras.ops.add would take a bias_add shortcut along the
    wrong axis on TensorFlow; the converter must add row-wise like TFLite."""
    rows = np.arange(3, dtype=np.float32).reshape(3, 1)
    check_op("ADD", lambda x, y: x + y,
             [((3, 3), np.zeros((3, 3), np.float32)), ((3, 1), rows)])
