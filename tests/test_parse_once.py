"""One parse per flatbuffer and call chain: the ``TFLiteModel`` parsed when a source is loaded
travels through ``register_keras_version`` and ``finetune`` (conversion, parity, export),
and the exported ``.tflite`` is parsed once, by the export's interface check.

Counted by the ``count_parses`` fixture (tests/conftest.py), which wraps the real parse."""

from __future__ import annotations

import os

import pytest

import flavor_models as fm
import mlflow
from mlflow_tflite_keras import lineage
from mlflow_tflite_keras.finetune import finetune
from mlflow_tflite_keras.tflite_model import TFLiteModel


@pytest.fixture
def tracking(tmp_path):
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(tmp_path / ".mlflow")
    mlflow.set_experiment(experiment_id=experiment("parse-once"))
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_counter_sees_every_parse(count_parses):
    """The counter is not blind: two parses of one flatbuffer count two."""
    data = fm.cnn("float32")
    TFLiteModel(data)
    TFLiteModel.load(data)
    assert count_parses.of(data) == 2 and count_parses.total == 2, count_parses


@pytest.fixture
def logged(tracking):
    """A full-int8 .tflite registered as digits/1; (x, y, its bytes)."""
    x, y = fm.digits()
    source = fm.cnn("full-int8")
    with mlflow.start_run():
        mlflow.tflite_keras.log_model(source, name="model", input_example=x[:4],
                                      registered_model_name="digits")
    return x, y, source


def test_register_parses_the_source_once(logged, count_parses):
    x, _, source = logged
    count_parses.clear()
    lineage.register_keras_version("models:/digits/1", parity_inputs=x[:64])
    assert count_parses.of(source) == 1 and count_parses.total == 1, count_parses


def test_finetune_parses_the_source_once(logged, count_parses):
    """The source .tflite once (the TFLiteModel then goes to the converter, the export and
    its interface check); the exported one once, by the export's interface check (the
    TFLiteModel then goes to parity and to log_model)."""
    x, y, source = logged
    keras_version = lineage.register_keras_version("models:/digits/1", parity_inputs=x[:64])
    count_parses.clear()
    result = finetune(f"models:/digits/{keras_version.version}", (x[:200], y[:200]),
                      epochs=1, learning_rate=1e-3, verbose=False)
    exported = mlflow.tflite_keras.load_model(
        f"models:/digits/{result.tflite_version.version}").model_bytes
    assert count_parses.of(source) == 1 and count_parses.of(exported) == 1, count_parses
    assert count_parses.total == 2, count_parses
