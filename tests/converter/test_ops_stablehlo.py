"""StableHLO ops, written with the schema's object API. Where LiteRT has a kernel (ADD,
MULTIPLY, MAXIMUM, MINIMUM, AND, SHIFT_LEFT, REDUCE_WINDOW, PAD, COMPOSITE, ...) the
reference is LiteRT; elsewhere it is numpy written from the StableHLO specification (LiteRT
2.3 registers no kernel for those ops)."""

import os
import tempfile

import keras
import numpy as np
import pytest

from converter.handmade import FlatModel
from converter.op_harness import check_model, perturbed
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.tflite_model import TFLiteModel

RNG = np.random.default_rng(0)
X = RNG.uniform(-2, 2, (1, 3, 4)).astype(np.float32)
Y = RNG.uniform(0.5, 2, (1, 3, 4)).astype(np.float32)
I = RNG.integers(-20, 20, (1, 3, 4)).astype(np.int32)
J = RNG.integers(0, 5, (1, 3, 4)).astype(np.int32)


def one_op(op_type, inputs, out, options_type=None, **options):
    """A model of one op: ``inputs`` are arrays (model inputs, named input_i) or ``("const",
    array)``; ``out`` is (shape, dtype)."""
    b = FlatModel()
    ids = [b.const(v[1]) if isinstance(v, tuple) else b.input(v.shape, v.dtype)
           for v in inputs]
    y = b.output(*out)
    b.op(op_type, ids, [y], options_type, **options)
    return b.finish(), [v for v in inputs if not isinstance(v, tuple)]


def check_reference(data, feeds, expected, **tol):
    """The Keras model (eager and after a ``.keras`` reload with safe_mode=True) gives the
    specification's answer."""
    model = to_keras(data)
    feeds = feeds[0] if len(feeds) == 1 else {f"input_{i}": v for i, v in enumerate(feeds)}
    got = np.asarray(model(feeds))  # a call: inputs without a shared batch dimension too
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, **({"rtol": 1e-5, "atol": 1e-6} | tol))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(feeds)), got)
    return model


def check_litert(data, op_type, feeds):
    feeds = feeds[0] if len(feeds) == 1 else {f"input_{i}": v for i, v in enumerate(feeds)}
    return check_model(data, [op_type], [feeds])


@pytest.mark.parametrize("name, fn, x", [
    ("STABLEHLO_ABS", np.abs, X), ("STABLEHLO_CBRT", np.cbrt, X),
    ("STABLEHLO_COSINE", np.cos, X), ("STABLEHLO_EXPONENTIAL", np.exp, X),
    ("STABLEHLO_FLOOR", np.floor, X), ("STABLEHLO_LOG", np.log, Y),
    ("STABLEHLO_LOGISTIC", lambda v: 1 / (1 + np.exp(-v)), X),
    ("STABLEHLO_NEGATE", np.negative, X), ("STABLEHLO_RSQRT", lambda v: 1 / np.sqrt(v), Y),
    ("STABLEHLO_TANH", np.tanh, X),
])
def test_unary(name, fn, x):
    data, feeds = one_op(name, [x], (x.shape, x.dtype))
    check_reference(data, feeds, fn(x).astype(x.dtype))


@pytest.mark.parametrize("name", ["STABLEHLO_ADD", "STABLEHLO_MULTIPLY", "STABLEHLO_MAXIMUM",
                                  "STABLEHLO_MINIMUM"])
def test_binary_against_litert(name):
    data, feeds = one_op(name, [X, Y], ((1, 3, 4), np.float32))
    check_litert(data, name, feeds)


@pytest.mark.parametrize("name, a, b, fn", [
    ("STABLEHLO_SUBTRACT", X, Y, np.subtract), ("STABLEHLO_DIVIDE", X, Y, np.divide),
    ("STABLEHLO_POWER", Y, X, np.power), ("STABLEHLO_REMAINDER", X, Y, np.fmod),
    ("STABLEHLO_REMAINDER", I, J + 1, np.fmod),
    ("STABLEHLO_DIVIDE", I, J + 1, lambda a, b: np.trunc(a / b).astype(np.int32)),
], ids=["sub", "div", "pow", "rem", "rem-int", "div-int"])
def test_binary_reference(name, a, b, fn):
    data, feeds = one_op(name, [a, b], (a.shape, a.dtype))
    check_reference(data, feeds, fn(a, b).astype(a.dtype))


def test_and_shift_left_against_litert():
    for name in ("STABLEHLO_AND", "STABLEHLO_SHIFT_LEFT"):
        data, feeds = one_op(name, [I, J], (I.shape, np.int32))
        check_litert(data, name, feeds)


def test_or_convert_clamp_select_compare():
    data, feeds = one_op("STABLEHLO_OR", [I, J], (I.shape, np.int32))
    check_reference(data, feeds, I | J)
    data, feeds = one_op("STABLEHLO_CONVERT", [X], (X.shape, np.int32))
    check_reference(data, feeds, np.trunc(X).astype(np.int32))
    data, feeds = one_op("STABLEHLO_CLAMP", [("const", np.float32(-0.5)), X,
                                             ("const", np.float32(1.0))], (X.shape, np.float32))
    check_reference(data, feeds, np.clip(X, -0.5, 1.0))
    for direction, fn in enumerate([np.equal, np.not_equal, np.greater_equal, np.greater,
                                    np.less_equal, np.less]):
        b = FlatModel()
        x, y = b.input(I.shape, np.int32), b.input(J.shape, np.int32)
        mask = b.intermediate(I.shape, np.int32)
        b.tensors[mask].type = 6  # BOOL
        out = b.output(X.shape)
        b.op("STABLEHLO_COMPARE", [x, y], [mask], "StablehloCompareOptions",
             comparisonDirection=direction)
        b.op("STABLEHLO_SELECT", [mask, b.const(X), b.const(Y)], [out])
        check_reference(b.finish(), [I, J], np.where(fn(I, J), X, Y))


def test_shape_ops():
    data, feeds = one_op("STABLEHLO_RESHAPE", [X], ((1, 12), np.float32))
    check_reference(data, feeds, X.reshape(1, 12))
    data, feeds = one_op("STABLEHLO_TRANSPOSE", [X], ((1, 4, 3), np.float32),
                         "StablehloTransposeOptions", permutation=[0, 2, 1])
    check_reference(data, feeds, X.transpose(0, 2, 1))
    data, feeds = one_op("STABLEHLO_CONCATENATE", [X, Y], ((1, 3, 8), np.float32),
                         "StablehloConcatenateOptions", dimension=2)
    check_reference(data, feeds, np.concatenate([X, Y], axis=2))
    data, feeds = one_op("STABLEHLO_SLICE", [X], ((1, 2, 2), np.float32),
                         "StablehloSliceOptions", startIndices=[0, 1, 0],
                         limitIndices=[1, 3, 4], strides=[1, 1, 2])
    check_reference(data, feeds, X[:, 1:3, 0:4:2])
    v = RNG.uniform(-1, 1, (1, 4)).astype(np.float32)
    data, feeds = one_op("STABLEHLO_BROADCAST_IN_DIM", [v], ((1, 3, 4), np.float32),
                         "StablehloBroadcastInDimOptions", broadcastDimensions=[0, 2])
    check_reference(data, feeds, np.broadcast_to(v[:, None, :], (1, 3, 4)))


def test_iota_and_broadcast_constant():
    b = FlatModel()
    x = b.input(X.shape)
    idx = b.intermediate(X.shape)
    y = b.output(X.shape)
    b.op("STABLEHLO_IOTA", [], [idx], "StablehloIotaOptions", iotaDimension=2)
    b.op("STABLEHLO_ADD", [x, idx], [y])
    iota = np.broadcast_to(np.arange(4, dtype=np.float32), X.shape)
    check_reference(b.finish(), [X], X + iota)


@pytest.mark.parametrize("low, high, interior", [
    ([0, 1, 2], [0, 2, 0], [0, 0, 0]), ([0, 0, -1], [0, 1, 1], [0, 1, 2])],
    ids=["edges", "interior-negative"])
def test_pad(low, high, interior):
    out = tuple(n + lo + hi + max(n - 1, 0) * i for n, lo, hi, i in
                zip(X.shape, low, high, interior))
    data, feeds = one_op("STABLEHLO_PAD", [X, ("const", np.float32(0.25))],
                         (out, np.float32), "StablehloPadOptions", edgePaddingLow=low,
                         edgePaddingHigh=high, interiorPadding=interior)
    check_litert(data, "STABLEHLO_PAD", feeds)


def body(b: FlatModel, op_type, dtype=np.float32):
    """A reduction body subgraph ``(a, b) -> op(a, b)``; returns its index."""
    sub = FlatModel()
    a, c = sub.input((), dtype), sub.input((), dtype)
    y = sub.output((), dtype)
    sub.op(op_type, [a, c], [y])
    return b.add_subgraph(sub, "body")


@pytest.mark.parametrize("op_type, init, fn", [
    ("STABLEHLO_ADD", 0.5, lambda x, axes: x.sum(axes) + 0.5),
    ("STABLEHLO_MAXIMUM", -np.inf, lambda x, axes: x.max(axes)),
    ("STABLEHLO_MULTIPLY", 1.0, lambda x, axes: x.prod(axes)),
], ids=["sum-init", "max", "prod"])
def test_reduce(op_type, init, fn):
    b = FlatModel()
    x = b.input(X.shape)
    y = b.output((1, 3))
    b.op("STABLEHLO_REDUCE", [x, b.const(np.array(init, np.float32))], [y],
         "StablehloReduceOptions", dimensions=[2], bodySubgraphIndex=body(b, op_type))
    check_reference(b.finish(), [X], fn(X, 2))


@pytest.mark.parametrize("op_type, init, window, strides, padding, base", [
    ("STABLEHLO_ADD", 0.0, [1, 2, 2], [1, 1, 2], [0, 0, 0, 0, 0, 0], [1, 1, 1]),
    ("STABLEHLO_MAXIMUM", -np.inf, [1, 2, 3], [1, 1, 1], [0, 0, 1, 0, 1, 1], [1, 1, 1]),
    ("STABLEHLO_ADD", 0.0, [1, 2, 2], [1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 2, 1]),
], ids=["sum", "max-padded", "sum-base-dilated"])
def test_reduce_window(op_type, init, window, strides, padding, base):
    shape = X.shape
    padded = [n + padding[2 * i] + padding[2 * i + 1] + (n - 1) * (base[i] - 1)
              for i, n in enumerate(shape)]
    out = tuple((p - w) // s + 1 for p, w, s in zip(padded, window, strides))
    b = FlatModel()
    x = b.input(shape)
    y = b.output(out)
    b.op("STABLEHLO_REDUCE_WINDOW", [x, b.const(np.array(init, np.float32))], [y],
         "StablehloReduceWindowOptions", windowDimensions=window, windowStrides=strides,
         baseDilations=base, windowDilations=[1, 1, 1], padding=padding,
         bodySubgraphIndex=body(b, op_type))
    check_litert(b.finish(), "STABLEHLO_REDUCE_WINDOW", [X])


def test_dot_general_constant_rhs_is_einsum_dense():
    w = RNG.normal(size=(4, 5)).astype(np.float32)
    data, feeds = one_op("STABLEHLO_DOT_GENERAL", [X, ("const", w)], ((1, 3, 5), np.float32),
                         "StablehloDotGeneralOptions", lhsBatchingDimensions=[],
                         rhsBatchingDimensions=[], lhsContractingDimensions=[2],
                         rhsContractingDimensions=[0])
    model = check_reference(data, feeds, X @ w, rtol=1e-5, atol=1e-5)
    (dense,) = [layer for layer in model.layers if isinstance(layer, keras.layers.EinsumDense)]
    assert [tuple(v.shape) for v in dense.trainable_weights] == [(4, 5)]


def test_dot_general_batched_runtime():
    a = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    c = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    data, feeds = one_op("STABLEHLO_DOT_GENERAL", [a, c], ((2, 3, 5), np.float32),
                         "StablehloDotGeneralOptions", lhsBatchingDimensions=[0],
                         rhsBatchingDimensions=[0], lhsContractingDimensions=[2],
                         rhsContractingDimensions=[2])
    check_reference(data, feeds, np.einsum("bij,bkj->bik", a, c), rtol=1e-5, atol=1e-5)


def test_dynamic_slice_and_update_clamp_the_start():
    b = FlatModel()
    x = b.input(X.shape)
    s = [b.const(np.array(v, np.int32)) for v in (0, 2, -1)]
    y = b.output((1, 2, 3))
    b.op("STABLEHLO_DYNAMIC_SLICE", [x, *s], [y], "StablehloDynamicSliceOptions",
         sliceSizes=[1, 2, 3])
    check_reference(b.finish(), [X], X[:, 1:3, 0:3])  # start 2 -> 1, -1 -> 0
    b = FlatModel()
    x = b.input(X.shape)
    u = b.const(np.full((1, 2, 2), 9.0, np.float32))
    s = [b.const(np.array(v, np.int32)) for v in (0, 5, 1)]
    y = b.output(X.shape)
    b.op("STABLEHLO_DYNAMIC_UPDATE_SLICE", [x, u, *s], [y])
    expected = X.copy()
    expected[:, 1:3, 1:3] = 9.0
    check_reference(b.finish(), [X], expected)


def composite_model(name, decomposition: FlatModel, attributes: dict):
    from flatbuffers import flexbuffers

    b = FlatModel()
    x = b.input((1, 3, 4))
    y = b.output((1, 3, 4))
    b.op("STABLEHLO_COMPOSITE", [x], [y], "StableHLOCompositeOptions",
         decompositionSubgraphIndex=b.add_subgraph(decomposition), version=1,
         compositeAttributes=np.frombuffer(flexbuffers.Dumps(attributes), np.uint8),
         compositeAttributesFormat=0)
    b.operators[-1].builtinOptions2.name = name  # "name" is also FlatModel.op's argument
    data = b.finish()
    assert "STABLEHLO_COMPOSITE" in TFLiteModel(data).operator_names
    return data


def test_composite_inlines_its_decomposition():
    sub = FlatModel()
    a = sub.input((1, 3, 4))
    t = sub.intermediate((1, 3, 4))
    out = sub.output((1, 3, 4))
    sub.op("STABLEHLO_MULTIPLY", [a, a], [t])
    sub.op("STABLEHLO_ADD", [t, a], [out])
    check_litert(composite_model("test.square_plus", sub, {"k": 1}), "STABLEHLO_COMPOSITE", [X])


@pytest.mark.parametrize("name, attributes, decomposition, layer", [
    ("aten.gelu.default", {"approximate": "none"}, ("GELU", "GeluOptions", {}), "Activation"),
    ("aten.gelu.default", {"approximate": "tanh"}, ("GELU", "GeluOptions",
                                                    {"approximate": True}), "KerasOp"),
    ("aten.hardswish.default", {}, ("HARD_SWISH", None, {}), "Activation"),
], ids=["gelu", "gelu-tanh", "hardswish"])
def test_known_composites_become_keras_layers(name, attributes, decomposition, layer):
    op_type, options_type, options = decomposition
    sub = FlatModel()
    a = sub.input((1, 3, 4))
    out = sub.output((1, 3, 4))
    sub.op(op_type, [a], [out], options_type, **options)
    model = check_litert(composite_model(name, sub, attributes), "STABLEHLO_COMPOSITE", [X])
    assert [type(v).__name__ for v in model.layers[1:]] == [layer]  # one layer, not inlined


@pytest.mark.parametrize("cin, cout, groups, k, strides, dilation, padding", [
    (3, 4, 1, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    (4, 6, 2, (3, 2), (2, 1), (1, 1), (0, 1, 1, 0)),
    (3, 6, 3, (3, 3), (1, 1), (2, 2), (0, 0, 0, 0)),
], ids=["nchw-padded", "grouped-strided", "depthwise-dilated"])
def test_convolution_torch_layout(cin, cout, groups, k, strides, dilation, padding):
    """NCHW input, OIHW kernel, NCHW result (PyTorch's layout), against tf.nn.convolution."""
    import tensorflow as tf

    x = RNG.uniform(-1, 1, (1, cin, 7, 8)).astype(np.float32)
    w = RNG.normal(size=(cout, cin // groups, *k)).astype(np.float32)
    pads = [(padding[0], padding[1]), (padding[2], padding[3])]
    nhwc = np.pad(x.transpose(0, 2, 3, 1), [(0, 0), *pads, (0, 0)])
    hwio = w.transpose(2, 3, 1, 0)
    ref = np.concatenate([
        tf.nn.convolution(nhwc[..., g * (cin // groups):(g + 1) * (cin // groups)],
                          hwio[..., g * (cout // groups):(g + 1) * (cout // groups)],
                          strides=strides, dilations=dilation, padding="VALID").numpy()
        for g in range(groups)], axis=-1).transpose(0, 3, 1, 2)
    data, feeds = one_op("STABLEHLO_CONVOLUTION", [x, ("const", w)], (ref.shape, np.float32),
                         "StablehloConvolutionOptions", windowStrides=list(strides),
                         padding=list(padding), rhsDilation=list(dilation),
                         inputBatchDimension=0, inputFeatureDimension=1,
                         inputSpatialDimensions=[2, 3], kernelInputFeatureDimension=1,
                         kernelOutputFeatureDimension=0, kernelSpatialDimensions=[2, 3],
                         outputBatchDimension=0, outputFeatureDimension=1,
                         outputSpatialDimensions=[2, 3], featureGroupCount=groups,
                         batchGroupCount=1)
    model = check_reference(data, feeds, ref, rtol=1e-4, atol=1e-5)
    assert any(isinstance(v, keras.layers.Conv2D) or
               isinstance(v, keras.layers.DepthwiseConv2D) for v in model.layers)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == w.size
    undo = perturbed(model)  # a 5% change of the kernel is seen
    assert not np.allclose(model.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-5)
    undo()


def test_gather_embedding_rows_and_windows():
    table = RNG.normal(size=(6, 4)).astype(np.float32)
    ids = np.array([[[3], [0], [5]]], np.int32)  # [1, 3, 1]: index vectors of one
    data, feeds = one_op("STABLEHLO_GATHER", [("const", table), ids],
                         ((1, 3, 4), np.float32), "StablehloGatherOptions", offsetDims=[2],
                         collapsedSliceDims=[0], startIndexMap=[0], indexVectorDim=2,
                         sliceSizes=[1, 4])
    check_reference(data, feeds, table[ids[..., 0]])
    check_litert(data, "STABLEHLO_GATHER", feeds)
    # 2-D windows of 2 x 2 at (row, col) starts, the second clamped; offsets first.
    starts = np.array([[1, 0], [5, 3]], np.int32)
    data, feeds = one_op("STABLEHLO_GATHER", [("const", table), starts],
                         ((2, 2, 2), np.float32), "StablehloGatherOptions",
                         offsetDims=[0, 1], collapsedSliceDims=[], startIndexMap=[0, 1],
                         indexVectorDim=1, sliceSizes=[2, 2])
    expected = np.stack([table[1:3, 0:2], table[4:6, 2:4]], axis=-1)
    check_reference(data, feeds, expected)
    check_litert(data, "STABLEHLO_GATHER", feeds)


def comparator(b: FlatModel, direction, n_operands):
    sub = FlatModel()
    args = [sub.input((), np.float32) for _ in range(2 * n_operands)]
    y = sub.output((), np.int32)
    sub.tensors[y].type = 6  # BOOL
    sub.op("STABLEHLO_COMPARE", args[:2], [y], "StablehloCompareOptions",
           comparisonDirection=direction)
    return b.add_subgraph(sub, "comparator")


@pytest.mark.parametrize("direction, n", [(5, 1), (3, 2)], ids=["ascending", "descending-2"])
def test_sort(direction, n):
    b = FlatModel()
    xs = [b.input(X.shape) for _ in range(n)]
    ys = [b.output(X.shape) for _ in range(n)]
    b.op("STABLEHLO_SORT", xs, ys, "StablehloSortOptions", dimension=2, isStable=True,
         comparatorSubgraphIndex=comparator(b, direction, n))
    feeds = [X, Y][:n]
    order = np.argsort(-X if direction == 3 else X, axis=2)
    expected = [np.take_along_axis(v, order, axis=2) for v in feeds]
    model = to_keras(b.finish())
    got = model.predict(feeds[0] if n == 1 else {"input_0": X, "input_1": Y}, verbose=0)
    got = list(got.values()) if isinstance(got, dict) else got if n > 1 else [got]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), e)


def test_while_counts_and_scales():
    """while i < 4: x = x * 1.5; i = i + 1 (a counter of shape [1]: this package reads a
    scalar constant as [1])."""
    cond = FlatModel()
    ci, cx = cond.input((1,), np.int32), cond.input((1, 3, 4))
    flag = cond.output((1,), np.int32)
    cond.tensors[flag].type = 6  # BOOL
    cond.op("STABLEHLO_COMPARE", [ci, cond.const(np.array([4], np.int32))], [flag],
            "StablehloCompareOptions", comparisonDirection=5)
    body = FlatModel()
    bi, bx = body.input((1,), np.int32), body.input((1, 3, 4))
    ni, nx = body.output((1,), np.int32), body.output((1, 3, 4))
    body.op("STABLEHLO_ADD", [bi, body.const(np.array([1], np.int32))], [ni])
    body.op("STABLEHLO_MULTIPLY", [bx, body.const(np.full((1, 3, 4), 1.5, np.float32))], [nx])
    b = FlatModel()
    x = b.input((1, 3, 4))
    i_out, y = b.intermediate((1,), np.int32), b.output((1, 3, 4))
    b.op("STABLEHLO_WHILE", [b.const(np.array([0], np.int32)), x], [i_out, y],
         "StablehloWhileOptions", condSubgraphIndex=b.add_subgraph(cond, "cond"),
         bodySubgraphIndex=b.add_subgraph(body, "body"))
    check_reference(b.finish(), [X], X * 1.5 ** 4)


def update_body(b: FlatModel, add: bool):
    sub = FlatModel()
    old, new = sub.input((), np.float32), sub.input((), np.float32)
    if add:
        y = sub.output((), np.float32)
        sub.op("STABLEHLO_ADD", [old, new], [y])
    else:
        sub.outputs.append(new)  # returns the update
    return b.add_subgraph(sub, "update")


@pytest.mark.parametrize("add", [False, True], ids=["replace", "add"])
def test_scatter_rows(add):
    """Rows of a [5, 4] operand updated at indices [[3], [0], [9]] (the last does not fit:
    skipped)."""
    operand = RNG.normal(size=(5, 4)).astype(np.float32)
    updates = RNG.normal(size=(3, 4)).astype(np.float32)
    b = FlatModel()
    x = b.input((5, 4))
    u = b.input((3, 4))
    y = b.output((5, 4))
    b.op("STABLEHLO_SCATTER", [x, b.const(np.array([[3], [0], [9]], np.int32)), u], [y],
         "StablehloScatterOptions", updateWindowDims=[1], insertedWindowDims=[0],
         scatterDimsToOperandDims=[0], indexVectorDim=1, indicesAreSorted=False,
         uniqueIndices=False, updateComputationSubgraphIndex=update_body(b, add))
    expected = operand.copy()
    for row, update in zip([3, 0], updates[:2]):
        expected[row] = expected[row] + update if add else update
    data = b.finish()
    check_reference(data, [operand, updates], expected)
    check_litert(data, "STABLEHLO_SCATTER", [operand, updates])


def case_model(index_input: bool, index_value=0, n_branches=2):
    """CASE(index, x) over branches x * (k + 2) for k in range(n_branches)."""
    b = FlatModel()
    idx = b.input((1,), np.int32, "index") if index_input else \
        b.const(np.array([index_value], np.int32))
    x = b.input((1, 3, 4), name="x")
    y = b.output((1, 3, 4))
    branches = []
    for k in range(n_branches):
        sub = FlatModel()
        a = sub.input((1, 3, 4))
        out = sub.output((1, 3, 4))
        sub.op("STABLEHLO_MULTIPLY", [a, sub.const(np.full((1, 3, 4), k + 2.0, np.float32))],
               [out])
        branches.append(b.add_subgraph(sub, f"branch{k}"))
    b.op("STABLEHLO_CASE", [idx, x], [y], "StablehloCaseOptions",
         branchSubgraphIndices=branches)
    return b.finish()


def test_case_runtime_index_two_branches():
    data = case_model(True)
    model = to_keras(data)
    for index, factor in ((0, 2.0), (1, 3.0), (7, 3.0)):  # out of range: the last branch
        got = model({"index": np.array([index], np.int32), "x": X})
        np.testing.assert_allclose(np.asarray(got), X * factor, rtol=1e-6)
        check_model(data, ["STABLEHLO_CASE"], [{"index": np.array([index], np.int32), "x": X}])


@pytest.mark.parametrize("index, factor", [(1, 3.0), (2, 4.0), (5, 4.0)])
def test_case_constant_index_inlines_the_branch(index, factor):
    data = case_model(False, index, n_branches=3)
    check_reference(data, [X], X * factor)
    check_litert(data, "STABLEHLO_CASE", [X])


def test_convolution_1d_channels_last():
    """NWC input, WIO kernel, NWC result (JAX's layout): no transposes, a Conv1D."""
    import tensorflow as tf

    x = RNG.uniform(-1, 1, (1, 9, 3)).astype(np.float32)
    w = RNG.normal(size=(3, 3, 5)).astype(np.float32)
    ref = tf.nn.convolution(np.pad(x, [(0, 0), (2, 0), (0, 0)]), w, strides=2,
                            padding="VALID").numpy()
    data, feeds = one_op("STABLEHLO_CONVOLUTION", [x, ("const", w)], (ref.shape, np.float32),
                         "StablehloConvolutionOptions", windowStrides=[2], padding=[2, 0],
                         rhsDilation=[1], inputBatchDimension=0, inputFeatureDimension=2,
                         inputSpatialDimensions=[1], kernelInputFeatureDimension=1,
                         kernelOutputFeatureDimension=2, kernelSpatialDimensions=[0],
                         outputBatchDimension=0, outputFeatureDimension=2,
                         outputSpatialDimensions=[1], featureGroupCount=1, batchGroupCount=1)
    model = check_reference(data, feeds, ref, rtol=1e-4, atol=1e-5)
    assert [type(v).__name__ for v in model.layers[1:]] == ["ZeroPadding1D", "Conv1D"]


def argmax_body(b: FlatModel):
    """JAX's argmax body: (a_val, a_idx, b_val, b_idx) -> the larger value, the lower index
    on ties."""
    sub = FlatModel()
    av, ai = sub.input((), np.float32), sub.input((), np.int32)
    bv, bi = sub.input((), np.float32), sub.input((), np.int32)
    flags = [sub.intermediate((), np.int32) for _ in range(5)]
    for f in flags:
        sub.tensors[f].type = 6  # BOOL
    gt, eq, lt, tie, take_a = flags
    ov, oi = sub.output((), np.float32), sub.output((), np.int32)
    sub.op("STABLEHLO_COMPARE", [av, bv], [gt], "StablehloCompareOptions", comparisonDirection=3)
    sub.op("STABLEHLO_COMPARE", [av, bv], [eq], "StablehloCompareOptions", comparisonDirection=0)
    sub.op("STABLEHLO_COMPARE", [ai, bi], [lt], "StablehloCompareOptions", comparisonDirection=5)
    sub.op("STABLEHLO_AND", [eq, lt], [tie])
    sub.op("STABLEHLO_OR", [gt, tie], [take_a])
    sub.op("STABLEHLO_SELECT", [take_a, av, bv], [ov])
    sub.op("STABLEHLO_SELECT", [take_a, ai, bi], [oi])
    return b.add_subgraph(sub, "argmax")


def test_reduce_with_any_body_argmax():
    x = np.round(RNG.uniform(-2, 2, (2, 3, 5)), 0).astype(np.float32)  # with ties
    b = FlatModel()
    xin = b.input(x.shape)
    idx = b.intermediate(x.shape, np.int32)
    v, i = b.output((2, 3)), b.output((2, 3), np.int32)
    b.op("STABLEHLO_IOTA", [], [idx], "StablehloIotaOptions", iotaDimension=2)
    b.op("STABLEHLO_REDUCE", [xin, idx, b.const(np.array(-np.inf, np.float32)),
                              b.const(np.array(0, np.int32))], [v, i],
         "StablehloReduceOptions", dimensions=[2], bodySubgraphIndex=argmax_body(b))
    model = to_keras(b.finish())
    out = model(x)
    got_v, got_i = (np.asarray(out[k]) for k in ("output_0", "output_1"))
    np.testing.assert_array_equal(got_v, x.max(2))
    np.testing.assert_array_equal(got_i, x.argmax(2))  # numpy: the first maximum
    compiled = model.predict(x, verbose=0)  # under tf.function
    np.testing.assert_array_equal(np.asarray(compiled["output_1"]), x.argmax(2))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(reloaded(x)["output_1"]), x.argmax(2))
