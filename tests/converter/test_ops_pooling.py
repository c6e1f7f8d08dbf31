"""AVERAGE_POOL_2D, MAX_POOL_2D, L2_POOL_2D."""

from __future__ import annotations

import pytest

from converter.op_harness import case_fn, check_op

tf = pytest.importorskip("tensorflow")

POOL_CASES = {
    # name: (ksize, strides, padding, input shape)
    "2x2_s2_valid": (2, 2, "VALID", (None, 6, 6, 3)),
    "3x3_s2_same_odd": (3, 2, "SAME", (None, 7, 7, 2)),  # padded edges: excluded from the mean
    "3x3_s1_same": (3, 1, "SAME", (None, 5, 5, 2)),
    "2x3_s12_same": ((2, 3), (1, 2), "SAME", (None, 5, 6, 2)),
    "global_valid": ((4, 5), 1, "VALID", (1, 4, 5, 3)),
}




@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_average_pool_2d(case):
    import keras

    k, s, pad, shape = POOL_CASES[case]
    fn = case_fn(lambda x, k, s, pad: tf.nn.avg_pool2d(x, k, s, pad), k=k, s=s, pad=pad)
    model, _ = check_op("AVERAGE_POOL_2D", fn, [(shape, "float")])
    assert any(isinstance(layer, keras.layers.AveragePooling2D) for layer in model.layers)


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_max_pool_2d(case):
    import keras

    k, s, pad, shape = POOL_CASES[case]
    fn = case_fn(lambda x, k, s, pad: tf.nn.max_pool2d(x, k, s, pad), k=k, s=s, pad=pad)
    model, _ = check_op("MAX_POOL_2D", fn, [(shape, "float")])
    assert any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)


def test_pool_fused_relu6():
    fn = lambda x: tf.nn.relu6(tf.nn.avg_pool2d(x * 8.0, 2, 2, "SAME"))  # noqa: E731
    check_op("AVERAGE_POOL_2D", fn, [((None, 5, 5, 2), "float")])
    fn = lambda x: tf.nn.relu(tf.nn.max_pool2d(x, 3, 2, "SAME"))  # noqa: E731
    check_op("MAX_POOL_2D", fn, [((None, 5, 5, 2), "float")])


def test_chained_pools():
    fn = lambda x: tf.nn.avg_pool2d(tf.nn.max_pool2d(x, 2, 1, "SAME"), 2, 2, "VALID")  # noqa
    check_op("MAX_POOL_2D", fn, [((None, 6, 6, 2), "float")],
             expect_ops=["MAX_POOL_2D", "AVERAGE_POOL_2D"])


@pytest.mark.parametrize("recipe", ["full-int8", "int16x8"])
def test_pool_quantized(recipe):
    fn = lambda x: tf.nn.max_pool2d(tf.nn.avg_pool2d(x, 3, 2, "SAME"), 2, 1, "VALID")  # noqa
    check_op("AVERAGE_POOL_2D", fn, [((1, 7, 7, 4), "float")], recipe=recipe,
             expect_ops=["AVERAGE_POOL_2D", "MAX_POOL_2D"])


def _retype(data: bytes, old: str, new: str) -> bytes:
    """The model with every ``old`` operator code changed to ``new`` (same inputs/options):
    for ops TensorFlow's converter never emits but LiteRT runs."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    old_code = getattr(schema.BuiltinOperator, old)
    new_code = getattr(schema.BuiltinOperator, new)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == old_code:
            code.builtinCode = new_code
            code.deprecatedBuiltinCode = min(new_code, 127)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("case", ["2x2_s2_valid", "3x3_s2_same_odd"])
def test_l2_pool_2d(case):
    """TF never emits L2_POOL_2D (sqrt(avg_pool(x^2)) stays three ops); the op is made by
    retyping an AVERAGE_POOL_2D model, then checked against the LiteRT kernel."""
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    from converter.op_harness import op_tflite

    k, s, pad, shape = POOL_CASES[case]
    fn = case_fn(lambda x, k, s, pad: tf.nn.avg_pool2d(x, k, s, pad), k=k, s=s, pad=pad)
    data = _retype(op_tflite("average_pool_2d", fn, [(shape, "float")]),
                   "AVERAGE_POOL_2D", "L2_POOL_2D")
    assert TFLiteModel(data).operator_names == ["L2_POOL_2D"]
    report = check_parity(data, to_keras(data))
    assert report.passed, str(report)
