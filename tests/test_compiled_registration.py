"""Never register what cannot be served: a Keras model whose compiled inference crashes
TensorFlow is refused by register_keras_version and by the CLI, atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlflow
from converter.test_compiled import crashing_model, guard_input
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage
from servers import clean_env

CLI = str(Path(sys.executable).with_name("mlflow-tflite-keras"))


def log_crashing_source(name):
    """The plain-Keras guard model, logged as a .tflite with the Keras model kept: LiteRT runs
    the .tflite fine; the kept Keras model crashes TensorFlow under model.predict."""
    x = guard_input(2)
    with mlflow.start_run(run_name="log-crashing-source"):
        mlflow.tflite_keras.log_model(crashing_model(), name="model",
                                      registered_model_name=name, input_example=x,
                                      keep_source=True)


@pytest.fixture
def sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("compiled-check")
    yield uri
    mlflow.set_tracking_uri(None)


def test_register_refuses_a_model_whose_compiled_inference_crashes(sqlite_store):
    log_crashing_source("guard")
    client = MlflowClient()
    with pytest.raises(MlflowException, match="model.predict crashed the process .SIGSEGV"):
        lineage.register_keras_version("models:/guard/1", method="kept-source")
    assert [str(v.version) for v in client.search_model_versions("name='guard'")] == ["1"]
    assert lineage.KERAS_VERSIONS not in client.get_model_version("guard", "1").tags
    runs = client.search_runs([mlflow.get_experiment_by_name("compiled-check").experiment_id],
                              "tags.`tflite_keras.role` = 'reconstructed-keras'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "SIGSEGV" in runs[0].data.tags["tflite_keras.failure"]
    assert runs[0].data.metrics["parity_compiled_passed"] == 0.0
    assert np.isfinite(np.asarray(crashing_model()(guard_input()))).all()  # we survived


def test_cli_convert_exits_1_and_registers_nothing(sqlite_store):
    log_crashing_source("guard-cli")
    proc = subprocess.run([CLI, "convert", "models:/guard-cli/1", "--method", "kept-source"],
                          capture_output=True, text=True, timeout=900,
                          env=clean_env(MLFLOW_TRACKING_URI=sqlite_store))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "model.predict crashed the process (SIGSEGV)" in proc.stderr
    versions = MlflowClient().search_model_versions("name='guard-cli'")
    assert [str(v.version) for v in versions] == ["1"]
