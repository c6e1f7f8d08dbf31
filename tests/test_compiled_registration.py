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


def test_blazeface_keras_version_is_served_like_eager(sqlite_store, tmp_path):
    """A real-world-shaped detector (channel-padded shortcuts, two heads): registered, then
    served by `mlflow models serve` from its Keras version; answers equal the eager model's."""
    import json

    import requests

    from converter.real_models import blazeface, face_images
    from servers import model_server

    x = face_images(1)
    with mlflow.start_run(run_name="log-blazeface"):
        mlflow.tflite_keras.log_model(blazeface("float32"), name="model",
                                      registered_model_name="face", input_example=x)
    version = lineage.register_keras_version("models:/face/1")
    keras_model = mlflow.keras.load_model(f"models:/face/{version.version}")
    eager = keras_model(x)
    with model_server(f"models:/face/{version.version}", tmp_path / "serve.log",
                      env=clean_env(MLFLOW_TRACKING_URI=sqlite_store)) as url:
        response = requests.post(url + "/invocations", data=json.dumps({"inputs": x.tolist()}),
                                 headers={"Content-Type": "application/json"}, timeout=300)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    for name in ("regressors", "classificators"):
        expected = np.asarray(eager[name])
        got = np.asarray(served[name], np.float32)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.ptp(expected))
