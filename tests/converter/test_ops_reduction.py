"""Reductions: MEAN, SUM, REDUCE_MAX/MIN/PROD/ANY/ALL and ARG_MAX/ARG_MIN, with keep_dims
true/false, several and negative axes, on batched inputs (check_op feeds batch 3)."""

import pytest
import tensorflow as tf

from converter.op_harness import check_op

F = "float"
P = "positive"


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


@pytest.mark.parametrize("keep", [False, True], ids=["drop", "keep"])
def test_mean_spatial_is_global_average_pooling(keep):
    model, _ = check_op("MEAN", lambda x: tf.reduce_mean(x, [1, 2], keepdims=keep),
                        [((None, 4, 4, 3), F)])
    assert "GlobalAveragePooling2D" in layer_types(model)


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.reduce_mean(x, -1), (None, 3, 5)),
    (lambda x: tf.reduce_mean(x, [-1, 1], keepdims=True), (None, 3, 2, 5)),
    (lambda x: tf.reduce_mean(x, 0), (None, 4)),
], ids=["last", "negative-keep", "batch-axis"])
def test_mean(fn, shape):
    check_op("MEAN", fn, [(shape, F)])


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.reduce_sum(x, 1), (None, 4, 3)),
    (lambda x: tf.reduce_sum(x, [1, 2], keepdims=True), (None, 2, 3, 2)),
    (lambda x: tf.reduce_sum(x, [0, -1]), (None, 2, 3)),
], ids=["one", "two-keep", "with-batch"])
def test_sum(fn, shape):
    check_op("SUM", fn, [(shape, F)])


def test_reduce_max_global_pooling():
    model, _ = check_op("REDUCE_MAX", lambda x: tf.reduce_max(x, 1), [((None, 5, 3), F)])
    assert "GlobalMaxPooling1D" in layer_types(model)


@pytest.mark.parametrize("op_type, fn, shape, kind", [
    ("REDUCE_MAX", lambda x: tf.reduce_max(x, [-1], keepdims=True), (None, 3, 4), F),
    ("REDUCE_MIN", lambda x: tf.reduce_min(x, [1, -1]), (None, 3, 2, 4), F),
    ("REDUCE_MIN", lambda x: tf.reduce_min(x, 2, keepdims=True), (None, 3, 4), F),
    ("REDUCE_PROD", lambda x: tf.reduce_prod(x, -1), (None, 2, 4), P),
    ("REDUCE_PROD", lambda x: tf.reduce_prod(x, [1, 2], keepdims=True), (None, 2, 3), P),
], ids=["max-keep", "min-two", "min-keep", "prod", "prod-keep"])
def test_reduce(op_type, fn, shape, kind):
    check_op(op_type, fn, [(shape, kind)])


@pytest.mark.parametrize("op_type, fn", [
    ("REDUCE_ANY", lambda x: tf.cast(tf.reduce_any(x > 0.5, -1), tf.float32)),
    ("REDUCE_ALL", lambda x: tf.cast(tf.reduce_all(x > -0.5, [1, 2], keepdims=True),
                                     tf.float32)),
], ids=["any", "all-keep"])
def test_reduce_bool(op_type, fn):
    check_op(op_type, fn, [((None, 3, 4), F)])


@pytest.mark.parametrize("op_type, fn, shape", [
    ("ARG_MAX", lambda x: tf.argmax(x, -1), (None, 6)),
    ("ARG_MAX", lambda x: tf.argmax(x, 1, output_type=tf.int32), (None, 4, 3)),
    ("ARG_MIN", lambda x: tf.argmin(x, -2), (None, 4, 3)),
    ("ARG_MIN", lambda x: tf.argmin(x, 2, output_type=tf.int32), (None, 2, 5)),
], ids=["max-last", "max-int32", "min-negative", "min-int32"])
def test_arg(op_type, fn, shape):
    check_op(op_type, fn, [(shape, F)])


@pytest.mark.parametrize("op_type, fn", [
    ("MEAN", lambda x: tf.reduce_mean(x, -1)),
    ("ARG_MAX", lambda x: tf.argmax(x, -1)),
], ids=["mean", "argmax"])
def test_full_int8(op_type, fn):
    check_op(op_type, fn, [((None, 2, 6), F)], recipe="full-int8", min_top1=0.0)


@pytest.mark.parametrize("recipe", ["float32", "full-int8"])
def test_arg_max_exports_with_builtins_only(recipe):
    """keras.ops.argmax would export tf.BitwiseAnd (its subnormal workaround): a Flex op."""
    import numpy as np

    from converter.op_harness import _feeds, check_export, op_tflite
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    inputs = [((None, 2, 6), F)]
    source = op_tflite("arg_max", lambda x: tf.argmax(x, -1), inputs, recipe)
    feeds = _feeds(TFLiteModel(source), inputs, np.random.default_rng(3))
    rep = np.random.default_rng(4).uniform(-1, 1, (16, 2, 6)).astype(np.float32)
    exported = check_export(source, to_keras(source), feeds, representative_data=rep,
                            min_top1=0.0)
    assert "ARG_MAX" in exported.operator_names
