"""Builtin operators with no Keras meaning: the unsupported-operators error names each with
its reason, and ``unsupported="wrap"`` runs them in a TFLiteLayer (LSH_PROJECTION, which
LiteRT runs, next to converted ops)."""

import numpy as np
import pytest

from converter.handmade import FlatModel
from mlflow_tflite_keras.converter import UnsupportedOperatorsError, convert, to_keras
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.converter.registry import (
    NOT_CONVERTIBLE,
    load_handlers,
    schema_builtin_operators,
)


def lsh_model():
    """features -> FULLY_CONNECTED -> LSH_PROJECTION (dense, 3 hashes x 4 bits) -> RESHAPE
    (back to a batch of 1) -> CAST."""
    rng = np.random.default_rng(0)
    b = FlatModel()
    x = b.input((1, 6))
    h = b.intermediate((1, 5))
    bits = b.intermediate((12,), np.int32)
    rows = b.intermediate((1, 12), np.int32)
    y = b.output((1, 12))
    b.op("FULLY_CONNECTED", [x, b.const(rng.normal(size=(5, 6)).astype(np.float32)),
                             b.const(np.zeros(5, np.float32))], [h], "FullyConnectedOptions")
    b.op("LSH_PROJECTION", [b.const(rng.normal(size=(3, 4)).astype(np.float32)), h],
         [bits], "LSHProjectionOptions", type=2)
    b.op("RESHAPE", [bits, b.const(np.array([1, 12], np.int32))], [rows])
    b.op("CAST", [rows], [y])
    return b.finish()


def test_error_gives_the_reason_and_wrap_runs_the_op():
    data = lsh_model()
    with pytest.raises(UnsupportedOperatorsError) as e:
        to_keras(data)
    assert e.value.unsupported == {"LSH_PROJECTION": 1}
    assert NOT_CONVERTIBLE["LSH_PROJECTION"] in str(e.value)
    # The RESHAPE joins the region: a TFLiteLayer's outputs keep the batch dimension.
    result = convert(data, unsupported="wrap", wrap_ops=["RESHAPE"])
    assert [sorted(r["ops"]) for r in result.report.wrapped_regions] == \
        [["1:LSH_PROJECTION", "2:RESHAPE"]]
    x = np.random.default_rng(1).normal(size=(1, 6)).astype(np.float32)
    report = check_parity(data, result.model, x)
    assert report.passed, str(report)


def test_every_schema_operator_is_converted_or_has_a_reason():
    handlers = load_handlers()
    schema = set(schema_builtin_operators())
    assert set(NOT_CONVERTIBLE) <= schema and not set(NOT_CONVERTIBLE) & set(handlers)
    converted = [op for op in schema if op in handlers]
    assert len(converted) >= 150, len(converted)
