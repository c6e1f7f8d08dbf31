"""CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D, CONV_3D_TRANSPOSE, FULLY_CONNECTED,
BATCH_MATMUL."""

from __future__ import annotations

import numpy as np
import pytest

from converter.op_harness import case_fn, check_op

tf = pytest.importorskip("tensorflow")


# TFLiteConverter's dynamic-range recipe runs int8 weights in hybrid kernels.
KIND_OF_RECIPE = {"dynamic-range": "dynamic-range-int8"}


def w(*shape, seed=0):
    """A constant weight tensor (deterministic, so cached models stay valid)."""
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))




def _layers(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def _assert_trainable(model, cls, n=1):
    import keras

    layers = _layers(model, getattr(keras.layers, cls))
    assert len(layers) >= n, [type(layer).__name__ for layer in model.layers]
    for layer in layers:
        assert layer.trainable_weights


# ---- CONV_2D -----------------------------------------------------------------------------

CONV2D_CASES = {
    "same_bias_relu": (lambda x: tf.nn.relu(tf.nn.conv2d(x, w(3, 3, 3, 4), 1, "SAME")
                                            + w(4, seed=1)), (None, 6, 6, 3)),
    "valid_stride2_nobias": (lambda x: tf.nn.conv2d(x, w(3, 3, 2, 5), 2, "VALID"),
                             (None, 7, 7, 2)),
    "same_stride2_even": (lambda x: tf.nn.conv2d(x, w(2, 2, 2, 3), [1, 2, 2, 1], "SAME"),
                          (None, 7, 5, 2)),
    "dilated_relu6": (lambda x: tf.nn.relu6(tf.nn.conv2d(x, w(3, 3, 2, 3), 1, "SAME",
                                                         dilations=2) + w(3, seed=2)),
                      (None, 8, 8, 2)),
    "rect_kernel_strides": (lambda x: tf.nn.conv2d(x, w(1, 3, 2, 2), [1, 1, 2, 1], "VALID"),
                            (1, 5, 6, 2)),
    "tanh": (lambda x: tf.tanh(tf.nn.conv2d(x, w(1, 1, 3, 2), 1, "VALID") + w(2, seed=3)),
             (None, 4, 4, 3)),
}


@pytest.mark.parametrize("case", sorted(CONV2D_CASES))
def test_conv_2d(case):
    fn, shape = CONV2D_CASES[case]
    model, _ = check_op("CONV_2D", fn, [(shape, "float")])
    _assert_trainable(model, "Conv2D")
    assert model.input_shape[0] is None


def test_conv_2d_grouped():
    import keras

    fn = lambda x: tf.nn.conv2d(x, w(3, 3, 2, 6), 1, "SAME")  # noqa: E731 (4 in -> 2 groups)
    model, _ = check_op("CONV_2D", fn, [((None, 5, 5, 4), "float")])
    conv = _layers(model, keras.layers.Conv2D)[0]
    assert conv.groups == 2


def test_conv_1d_keras_layer():
    """keras Conv1D lowers to EXPAND_DIMS + CONV_2D + RESHAPE/SQUEEZE."""
    from mlflow_tflite_keras.converter import supported_operators
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    from converter.op_harness import op_tflite

    fn = lambda x: tf.nn.conv1d(x, w(3, 2, 4), 1, "SAME") + w(4, seed=5)  # noqa: E731
    ops = set(TFLiteModel(op_tflite("conv_1d", fn, [((None, 10, 2), "float")])).operator_names)
    missing = ops - set(supported_operators())
    if missing:
        pytest.skip(f"shape ops not converted yet: {missing}")
    check_op("CONV_2D", fn, [((None, 10, 2), "float")])


@pytest.mark.parametrize("recipe", ["full-int8", "dynamic-range", "float16"])
def test_conv_2d_quantized(recipe):
    # >= 1024 weights: smaller constants are left in float by dynamic-range / float16.
    fn = lambda x: tf.nn.relu(tf.nn.conv2d(x, w(3, 3, 16, 16), 1, "SAME")  # noqa: E731
                              + w(16, seed=1))
    model, report = check_op("CONV_2D", fn, [((1, 5, 5, 16), "float")], recipe=recipe)
    assert report.quantization == KIND_OF_RECIPE.get(recipe, recipe)
    _assert_trainable(model, "Conv2D")


def test_conv_2d_per_channel_weights_dequantized():
    """full-int8 stores per-channel int8 filters; the Keras kernel is their float value."""
    import keras

    from mlflow_tflite_keras.tflite_model import TFLiteModel

    from converter.op_harness import op_tflite

    kernel = np.random.default_rng(0).uniform(-1, 1, (3, 3, 3, 8)).astype(np.float32)
    kernel *= np.linspace(0.05, 2.0, 8, dtype=np.float32)  # very different channel ranges
    fn = lambda x: tf.nn.conv2d(x, tf.constant(kernel), 1, "SAME")  # noqa: E731
    inputs = [((1, 6, 6, 3), "float")]
    model, _ = check_op("CONV_2D", fn, inputs, recipe="full-int8")
    data = op_tflite("conv_2d", fn, inputs, "full-int8")
    filt = [t for t in TFLiteModel(data).subgraphs[0].tensors
            if t.type_name == "INT8" and len(t.shape) == 4 and t.shape[0] == 8]
    assert filt and filt[0].quantization.per_channel
    conv = _layers(model, keras.layers.Conv2D)[0]
    got = conv.get_weights()[0]  # [H, W, Cin, Cout]
    step = np.abs(kernel).max(axis=(0, 1, 2)) / 127
    assert np.all(np.abs(got - kernel) <= step * 0.51 + 1e-7)


# ---- DEPTHWISE_CONV_2D -------------------------------------------------------------------

DW_CASES = {
    "same_bias": (lambda x: tf.nn.depthwise_conv2d(x, w(3, 3, 3, 1), [1, 1, 1, 1], "SAME")
                  + w(3, seed=1), (None, 6, 6, 3)),
    "mult2_valid_stride2": (lambda x: tf.nn.depthwise_conv2d(x, w(3, 3, 2, 2), [1, 2, 2, 1],
                                                             "VALID"), (None, 7, 7, 2)),
    "mult3_relu6": (lambda x: tf.nn.relu6(tf.nn.depthwise_conv2d(
        x, w(2, 2, 2, 3), [1, 1, 1, 1], "SAME") + w(6, seed=2)), (None, 5, 5, 2)),
    "dilated": (lambda x: tf.nn.depthwise_conv2d(x, w(3, 3, 4, 1), [1, 1, 1, 1], "SAME",
                                                 dilations=[2, 2]), (None, 8, 8, 4)),
}


@pytest.mark.parametrize("case", sorted(DW_CASES))
def test_depthwise_conv_2d(case):
    fn, shape = DW_CASES[case]
    model, _ = check_op("DEPTHWISE_CONV_2D", fn, [(shape, "float")])
    _assert_trainable(model, "DepthwiseConv2D")


@pytest.mark.parametrize("recipe", ["full-int8", "dynamic-range"])
def test_depthwise_conv_2d_quantized(recipe):
    fn = lambda x: tf.nn.relu(tf.nn.depthwise_conv2d(  # noqa: E731
        x, w(3, 3, 64, 2), [1, 1, 1, 1], "SAME") + w(128, seed=1))
    _, report = check_op("DEPTHWISE_CONV_2D", fn, [((1, 4, 4, 64), "float")], recipe=recipe)
    assert report.quantization == KIND_OF_RECIPE.get(recipe, recipe)


# ---- TRANSPOSE_CONV ----------------------------------------------------------------------

TCONV_CASES = {
    # (weights [H, W, Cout, Cin], input shape, output shape, stride, padding)
    "same_s2_k3": ((3, 3, 4, 2), (1, 4, 4, 2), (1, 8, 8, 4), 2, "SAME"),
    "same_s2_k3_odd_out": ((3, 3, 3, 2), (1, 4, 4, 2), (1, 7, 7, 3), 2, "SAME"),
    "same_s2_k2": ((2, 2, 3, 2), (1, 4, 5, 2), (1, 8, 10, 3), 2, "SAME"),
    "same_s2_k4_odd_out": ((4, 4, 3, 2), (1, 4, 4, 2), (1, 7, 7, 3), 2, "SAME"),
    "valid_s2_k3": ((3, 3, 3, 2), (1, 4, 4, 2), (1, 9, 9, 3), 2, "VALID"),
    "valid_s2_k3_pad": ((3, 3, 3, 2), (1, 4, 4, 2), (1, 10, 10, 3), 2, "VALID"),
    "valid_s3_k2": ((2, 2, 3, 2), (1, 3, 3, 2), (1, 9, 9, 3), 3, "VALID"),
    "same_s1": ((3, 3, 2, 3), (1, 5, 5, 3), (1, 5, 5, 2), 1, "SAME"),
}


@pytest.mark.parametrize("case", sorted(TCONV_CASES))
def test_transpose_conv(case):
    kshape, ishape, oshape, s, pad = TCONV_CASES[case]
    fn = case_fn(lambda x, k, o, s, pad: tf.nn.relu(
        tf.nn.conv2d_transpose(x, w(*k), o, s, pad) + w(k[2], seed=4)),
        k=kshape, o=oshape, s=s, pad=pad)
    model, _ = check_op("TRANSPOSE_CONV", fn, [(ishape, "float")])
    _assert_trainable(model, "Conv2DTranspose")
    assert model.output_shape[1:] == oshape[1:]


def test_transpose_conv_keras_layer():
    """keras.layers.Conv2DTranspose (no bias, through a functional model graph)."""
    fn = lambda x: tf.nn.conv2d_transpose(x, w(3, 3, 2, 3), (1, 6, 6, 2), 3,  # noqa: E731
                                          "SAME")
    check_op("TRANSPOSE_CONV", fn, [((1, 2, 2, 3), "float")])


def test_transpose_conv_int8():
    fn = lambda x: tf.nn.conv2d_transpose(x, w(3, 3, 4, 2), (1, 8, 8, 4), 2,  # noqa: E731
                                          "SAME")
    check_op("TRANSPOSE_CONV", fn, [((1, 4, 4, 2), "float")], recipe="full-int8")


# ---- CONV_3D / CONV_3D_TRANSPOSE ---------------------------------------------------------

CONV3D_CASES = {
    "same_bias": (lambda x: tf.nn.conv3d(x, w(2, 2, 2, 2, 3), [1] * 5, "SAME") + w(3, seed=1),
                  (None, 4, 4, 4, 2)),
    "valid_stride2_relu": (lambda x: tf.nn.relu(tf.nn.conv3d(x, w(3, 3, 3, 2, 2),
                                                             [1, 2, 2, 2, 1], "VALID")),
                           (None, 5, 5, 5, 2)),
    "dilated": (lambda x: tf.nn.conv3d(x, w(2, 2, 2, 1, 2), [1] * 5, "SAME",
                                       dilations=[1, 2, 2, 2, 1]), (None, 4, 5, 5, 1)),
}


@pytest.mark.parametrize("case", sorted(CONV3D_CASES))
def test_conv_3d(case):
    fn, shape = CONV3D_CASES[case]
    model, _ = check_op("CONV_3D", fn, [(shape, "float")])
    _assert_trainable(model, "Conv3D")


@pytest.mark.parametrize("pad,oshape", [("SAME", (1, 6, 8, 8, 3)), ("VALID", (1, 7, 9, 9, 3))])
def test_conv_3d_transpose(pad, oshape):
    fn = case_fn(lambda x, o, pad: tf.nn.conv3d_transpose(
        x, w(2, 3, 3, 3, 2), o, [1, 2, 2, 2, 1], pad) + w(3, seed=1), o=oshape, pad=pad)
    model, _ = check_op("CONV_3D_TRANSPOSE", fn, [((1, 3, 4, 4, 2), "float")])
    _assert_trainable(model, "Conv3DTranspose")


# ---- FULLY_CONNECTED ---------------------------------------------------------------------

FC_CASES = {
    "bias_relu": (lambda x: tf.nn.relu(tf.matmul(x, w(6, 4)) + w(4, seed=1)), (None, 6)),
    "no_bias": (lambda x: tf.matmul(x, w(5, 3)), (None, 5)),
    "tanh": (lambda x: tf.tanh(tf.matmul(x, w(5, 3)) + w(3, seed=2)), (1, 5)),
    "rank3_keep_dims": (lambda x: tf.matmul(x, w(4, 3)) + w(3, seed=1), (None, 7, 4)),
}


@pytest.mark.parametrize("case", sorted(FC_CASES))
def test_fully_connected(case):
    fn, shape = FC_CASES[case]
    model, _ = check_op("FULLY_CONNECTED", fn, [(shape, "float")])
    _assert_trainable(model, "Dense")


def test_fully_connected_runtime_weights():
    """Weights computed at run time: FULLY_CONNECTED with a non-constant weights input."""
    fn = lambda x, y: tf.matmul(x, y, transpose_b=True) + w(5, seed=1)  # noqa: E731
    check_op("FULLY_CONNECTED", fn, [((3, 4), "float"), ((5, 4), "float")])


@pytest.mark.parametrize("recipe", ["full-int8", "dynamic-range", "float16"])
def test_fully_connected_quantized(recipe):
    fn = lambda x: tf.nn.relu(tf.matmul(x, w(64, 32)) + w(32, seed=1))  # noqa: E731
    _, report = check_op("FULLY_CONNECTED", fn, [((1, 64), "float")], recipe=recipe)
    assert report.quantization == KIND_OF_RECIPE.get(recipe, recipe)


@pytest.mark.parametrize("recipe, n_dense", [("float32", 1), ("dynamic-range", 1),
                                             ("full-int8", 2)])
def test_fully_connected_ops_reading_one_weight_tensor_share_one_dense(recipe, n_dense):
    """Two FULLY_CONNECTED ops reading one kernel and bias (as an RNN unrolled over time
    steps reads its recurrent kernel): one Dense layer called twice, so training keeps the
    weight tied. Full-int8 sources hold two int32 biases (each on its op's input scale): two
    layers. Parity holds (op by op for the quantized recipes)."""
    import keras

    fn = lambda x: tf.matmul(tf.tanh(tf.matmul(x, w(4, 4)) + w(4, seed=1)),  # noqa: E731
                             w(4, 4)) + w(4, seed=1)
    model, _ = check_op("FULLY_CONNECTED", fn, [((None, 4), "float")], recipe=recipe)
    dense = _layers(model, keras.layers.Dense)
    calls = sorted(len(layer._inbound_nodes) for layer in dense)
    assert calls == ([2] if n_dense == 1 else [1, 1]), [layer.name for layer in dense]
    assert len(model.trainable_weights) == 2 * n_dense


def test_conv_2d_ops_reading_one_filter_share_one_layer():
    """Two CONV_2D ops reading one filter and bias (a Keras layer called twice): one Conv2D
    called twice, the weight tied through training; a third with other strides is its own."""
    import keras

    def fn(x):
        def conv(v, stride):
            return tf.nn.relu(tf.nn.conv2d(v, w(3, 3, 3, 3), stride, "SAME") + w(3, seed=1))
        return conv(conv(conv(x, 1), 1), 2)

    model, _ = check_op("CONV_2D", fn, [((None, 6, 6, 3), "float")])
    convs = _layers(model, keras.layers.Conv2D)
    assert sorted(len(layer._inbound_nodes) for layer in convs) == [1, 2], \
        [layer.name for layer in convs]


# ---- BATCH_MATMUL ------------------------------------------------------------------------

BMM_CASES = {
    "runtime": (lambda a, b: tf.matmul(a, b), [((2, 3, 4), "float"), ((2, 4, 5), "float")]),
    "adj_y": (lambda a, b: tf.matmul(a, b, adjoint_b=True),
              [((2, 3, 4), "float"), ((2, 5, 4), "float")]),
    "adj_x": (lambda a, b: tf.matmul(a, b, adjoint_a=True),
              [((2, 4, 3), "float"), ((2, 4, 5), "float")]),
    "broadcast": (lambda a, b: tf.matmul(a, b),
                  [((2, 1, 3, 4), "float"), ((3, 4, 5), "float")]),
    "dynamic_batch": (lambda a, b: tf.matmul(a, b, adjoint_a=True, adjoint_b=True),
                      [((None, 4, 3), "float"), ((None, 5, 4), "float")]),
}


@pytest.mark.parametrize("case", sorted(BMM_CASES))
def test_batch_matmul(case):
    fn, inputs = BMM_CASES[case]
    check_op("BATCH_MATMUL", fn, inputs)


def test_batch_matmul_constant_batched_rhs_einsum():
    fn = lambda a: tf.matmul(a, w(3, 4, 5))  # noqa: E731
    model, _ = check_op("BATCH_MATMUL", fn, [((None, 3, 2, 4), "float")])
    _assert_trainable(model, "EinsumDense")


@pytest.mark.parametrize("recipe", ["dynamic-range", "full-int8"])
def test_batch_matmul_quantized(recipe):
    fn = lambda a: tf.matmul(a, w(3, 32, 16))  # noqa: E731
    _, report = check_op("BATCH_MATMUL", fn, [((1, 3, 4, 32), "float")], recipe=recipe)
    assert report.quantization == KIND_OF_RECIPE.get(recipe, recipe)


# ---- EMBEDDING_LOOKUP --------------------------------------------------------------------

def _gather_as_embedding_lookup(data: bytes) -> bytes:
    """TF emits GATHER for embedding lookups; EMBEDDING_LOOKUP(ids, table) is the same
    computation with the inputs swapped and no options, which LiteRT runs."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    gather = schema.BuiltinOperator.GATHER
    lookup = schema.BuiltinOperator.EMBEDDING_LOOKUP
    codes = [i for i, c in enumerate(model.operatorCodes)
             if max(c.builtinCode, c.deprecatedBuiltinCode) == gather]
    for i in codes:
        model.operatorCodes[i].builtinCode = lookup
        model.operatorCodes[i].deprecatedBuiltinCode = lookup
    for op in model.subgraphs[0].operators:
        if op.opcodeIndex in codes:
            op.inputs = list(reversed(list(op.inputs)))
            op.builtinOptionsType, op.builtinOptions = 0, None
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_embedding_lookup():
    import keras

    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    from converter.op_harness import op_tflite

    fn = lambda ids: tf.gather(w(12, 5), ids)  # noqa: E731
    data = _gather_as_embedding_lookup(op_tflite("gather", fn, [((6,), "int")]))
    assert TFLiteModel(data).operator_names == ["EMBEDDING_LOOKUP"]
    model = to_keras(data)
    ids = np.arange(6, dtype=np.int32) * 2 % 12
    report = check_parity(data, model, ids)
    assert report.passed, str(report)
    _assert_trainable(model, "Embedding")
    assert isinstance(model.layers[-1], keras.layers.Embedding)


def _edit_model(data: bytes, edit) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    edit(model, schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_fully_connected_keep_num_dims_false_rank3():
    """FULLY_CONNECTED flattening a rank-3 input itself (keep_num_dims=False), as older
    converters emit it: made by editing a keep_num_dims=True model."""
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    from converter.op_harness import op_tflite

    fn, shape = FC_CASES["rank3_keep_dims"]

    def edit(model, schema):
        sg = model.subgraphs[0]
        (op,) = sg.operators
        assert op.builtinOptions.keepNumDims
        op.builtinOptions.keepNumDims = False
        out = sg.tensors[op.outputs[0]]
        out.shape, out.shapeSignature = [7, 3], [-1, 3]

    data = _edit_model(op_tflite("fully_connected", fn, [(shape, "float")]), edit)
    assert TFLiteModel(data).operator_names == ["FULLY_CONNECTED"]
    model = to_keras(data)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 7, 4)).astype(np.float32)
    report = check_parity(data, model, x)
    assert report.passed, str(report)
    assert tuple(model(x).shape) == (21, 3)


def test_transpose_conv_dynamic_batch():
    """With a dynamic batch TF computes output_shape (SHAPE / STRIDED_SLICE / PACK); the
    handler takes the spatial size from the static output shape."""
    from mlflow_tflite_keras.converter import supported_operators
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    from converter.op_harness import op_tflite

    fn = lambda x: tf.nn.conv2d_transpose(  # noqa: E731
        x, w(3, 3, 4, 2), tf.stack([tf.shape(x)[0], 7, 7, 4]), 2, "SAME")
    inputs = [((None, 4, 4, 2), "float")]
    ops = set(TFLiteModel(op_tflite("transpose_conv", fn, inputs)).operator_names)
    missing = ops - set(supported_operators())
    if missing:
        pytest.skip(f"shape ops not converted yet: {missing}")
    model, _ = check_op("TRANSPOSE_CONV", fn, inputs)
    assert model.input_shape[0] is None and model.output_shape[1:] == (7, 7, 4)
