"""Bitwise ops: BITCAST, BITWISE_XOR, RIGHT_SHIFT against LiteRT."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op

SIGNED = np.array([[-8, -1, 0, 1, 7, 1 << 30], [5, -5, 123456, -123456, 3, -3]], np.int32)
FLOAT_BITS = np.array([[1.5, -2.25, 0.0, 3e-5, 7.0, -1e6]], np.float32).view(np.int32)
SHIFTS = np.array([[1, 2, 3, 0, 1, 4], [0, 1, 31, 2, 5, 1]], np.int32)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.bitwise.bitwise_xor(x, y), [((None, 5), "int"), ((None, 5), "int")]),
    (lambda x: tf.bitwise.bitwise_xor(x, tf.constant([1, 2, 4, 8, 16], tf.int32)),
     [((None, 5), "int")]),
    (lambda x, y: tf.bitwise.bitwise_xor(x, y), [((2, 6), SIGNED), ((2, 6), SHIFTS)]),
], ids=["runtime", "const", "signed"])
def test_bitwise_xor(fn, inputs):
    check_op("BITWISE_XOR", fn, inputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.bitwise.right_shift(x, y), [((2, 6), SIGNED), ((2, 6), SHIFTS)]),
    (lambda x: tf.bitwise.right_shift(x, tf.constant(2, tf.int32)), [((None, 4), "int")]),
], ids=["signed-arithmetic", "scalar-shift"])
def test_right_shift(fn, inputs):
    check_op("RIGHT_SHIFT", fn, inputs)


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.bitcast(x, tf.int32), [((None, 4), "float")]),
    (lambda x: tf.bitcast(x, tf.float32) * 2.0, [((1, 6), FLOAT_BITS)]),
    (lambda x: tf.bitcast(x, tf.int16), [((None, 3), "float")]),
], ids=["float-to-int", "int-to-float", "narrower"])
def test_bitcast(fn, inputs):
    check_op("BITCAST", fn, inputs)
