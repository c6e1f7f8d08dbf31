"""DILATE, REDUCE_WINDOW and FAKE_QUANT, written with the schema's object API (TensorFlow's
converter does not emit them from TF ops), against LiteRT."""

import numpy as np
import pytest

from converter.handmade import FlatModel
from converter.op_harness import check_model


def feeds(shape, seed=0, n=2):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(n)]


def out_dim(n, w, s, d):
    return (n - (w - 1) * d - 1) // s + 1


@pytest.mark.parametrize("shape, dilations, pad", [
    ((1, 3, 4), (1, 2, 3), 0.0),
    ((1, 4, 2, 3), (1, 3, 1, 2), -1.5),
], ids=["rank3", "rank4-value"])
def test_dilate(shape, dilations, pad):
    b = FlatModel()
    x = b.input(shape)
    out = tuple((n - 1) * d + 1 for n, d in zip(shape, dilations))
    y = b.output(out)
    b.op("DILATE", [x, b.const(np.array(dilations, np.int32)),
                    b.const(np.array(pad, np.float32))], [y])
    check_model(b.finish(), ["DILATE"], feeds(shape))


@pytest.mark.parametrize("function, window, strides, dilations", [
    (1, (1, 2, 2, 1), (1, 2, 2, 1), (1, 1, 1, 1)),
    (4, (1, 3, 3, 1), (1, 1, 2, 1), (1, 1, 1, 1)),
    (3, (1, 2, 2, 2), (1, 2, 1, 1), (1, 2, 1, 1)),
    (2, (1, 1, 3, 1), (1, 1, 1, 1), (1, 1, 2, 1)),
], ids=["add", "max-strided", "min-dilated", "mul-dilated"])
def test_reduce_window(function, window, strides, dilations):
    shape = (1, 6, 7, 3)
    b = FlatModel()
    x = b.input(shape)
    y = b.output(tuple(out_dim(*a) for a in zip(shape, window, strides, dilations)))
    init = {1: 0.0, 2: 1.0, 3: np.inf, 4: -np.inf}[function]
    b.op("REDUCE_WINDOW", [x, b.const(np.array(init, np.float32)),
                           b.const(np.array(window, np.int64)),
                           b.const(np.array(strides, np.int64)),
                           b.const(np.array(dilations, np.int64))], [y],
         "ReduceWindowOptions", reduceFunction=function)
    check_model(b.finish(), ["REDUCE_WINDOW"], feeds(shape))


@pytest.mark.parametrize("lo, hi, bits, narrow", [
    (-1.0, 1.0, 8, False), (-0.3, 2.7, 4, False), (0.1, 0.9, 8, False)],
    ids=["int8-range", "4bit", "nudged-zero"])  # LiteRT refuses narrow_range at run time
def test_fake_quant(lo, hi, bits, narrow):
    b = FlatModel()
    x = b.input((1, 64))
    y = b.output((1, 64))
    b.op("FAKE_QUANT", [x], [y], "FakeQuantOptions", min=lo, max=hi, numBits=bits,
         narrowRange=narrow)
    # Off the rounding ties: a half step apart the two sides may round differently.
    x = np.linspace(-1.5, 3.0, 64, dtype=np.float32).reshape(1, 64) + np.float32(1e-3)
    check_model(b.finish(), ["FAKE_QUANT"], [x])
