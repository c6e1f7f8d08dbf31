"""A streaming (stateful) .tflite registered as a Keras version end to end: the Python API
and the CLI `convert` / `verify`, on the embedded SQLite store."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import mlflow
from converter.streaming_models import frames, streaming_conv, streaming_multi_state
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    root = tmp_path_factory.mktemp("streaming-lineage")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(root / ".mlflow")
    mlflow.set_experiment(experiment_id=experiment("streaming"))
    yield root
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def _log(name, data):
    with mlflow.start_run(run_name="log-streaming"):
        # The input example: frames of one stream, one row per invoke (as the pyfunc runs it).
        mlflow.tflite_keras.log_model(data, name="model", registered_model_name=name,
                                      input_example=frames(1, 6, seed=3)[0])


def test_register_keras_version_of_a_streaming_source(store):
    name = "wake-word"
    _log(name, streaming_multi_state())
    version = lineage.register_keras_version(f"models:/{name}/1")
    assert str(version.version) == "2"
    assert version.tags["tflite_keras.parity_passed"] == "1"
    run = MlflowClient().get_run(version.run_id)
    assert run.data.metrics["parity_max_rel_error"] < 1e-5
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/parity_report.json")
    assert report["n_samples"] == 8 * 32  # sequences x frames, one invoke per frame
    # The Keras version is the sequence model: [batch, time, *frame] -> [batch, time, 5],
    # answering like the .tflite fed the same frames one per invoke.
    keras_model = mlflow.keras.load_model(f"models:/{name}/2")
    x = frames(1, 20, seed=9)
    tflite = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(x[0])
    np.testing.assert_allclose(np.asarray(keras_model.predict(x, verbose=0))[0], tflite,
                               rtol=1e-5, atol=1e-5)


def test_int8_streaming_source_with_parity_frames(store):
    name = "wake-word-int8"
    _log(name, streaming_conv("full-int8"))
    from mlflow_tflite_keras.runtime import TFLiteRunner
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    spec = TFLiteRunner(TFLiteModel(streaming_conv("full-int8"))).signature().inputs[0]
    x = frames(4, 32, seed=5)
    version = lineage.register_keras_version(
        f"models:/{name}/1", parity_inputs=spec.dequantize(spec.quantize(x)),
        tolerances={"max_steps": 8.0})
    assert version.tags["tflite_keras.parity_passed"] == "1"
    run = MlflowClient().get_run(version.run_id)
    assert run.data.metrics["parity_max_steps"] <= 8.0


def test_cli_convert_and_verify_a_streaming_source(store, tmp_path):
    import subprocess

    from servers import clean_env

    path = tmp_path / "kws.tflite"
    path.write_bytes(streaming_conv())
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    cli = str(os.path.join(os.path.dirname(sys.executable), "mlflow-tflite-keras"))

    def run(*args):
        return subprocess.run([cli, *args], capture_output=True, text=True, env=env,
                              timeout=600)

    logged = run("log", str(path), "--registered-model-name", "kws")
    assert logged.returncode == 0, logged.stderr
    converted = run("convert", "models:/kws/1", "--time-steps", "16", "--alias", "champion")
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert "registered: models:/kws/2" in converted.stdout
    assert "parity_passed: 1" in converted.stdout
    verified = run("verify", "models:/kws@champion")
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert "parity PASSED" in verified.stdout


@pytest.mark.parametrize("targets", ["per-sequence", "per-step"])
def test_finetune_a_streaming_source_on_sequences(store, targets):
    """The .tflite source is reconstructed, trained on [N, time, *frame] sequences (one label
    per sequence: its last step is trained; or a target per step), exported like the source
    (one frame per invoke, state in resource variables) and registered."""
    from mlflow_tflite_keras.finetune import finetune
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    name = f"kws-finetune-{targets}"
    data = streaming_conv()
    _log(name, data)
    x = frames(48, 24, seed=13)
    if targets == "per-sequence":  # wake word or not: the mean of feature 0 at the end
        y = (x[:, -6:, 0, 0].mean(axis=1) > 0).astype(np.int64)
    else:
        y = np.cumsum(x[..., 0, :4], axis=1) * 0.2  # [N, T, 4]
    result = finetune(f"models:/{name}/1", (x, y), epochs=4, batch_size=16,
                      learning_rate=1e-2)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.interface.ok, str(result.interface)
    assert result.parity.passed, str(result.parity)
    new = TFLiteModel(mlflow.tflite_keras.load_model(
        f"models:/{result.tflite_version.name}/{result.tflite_version.version}").model_bytes)
    assert new.is_stateful and "ASSIGN_VARIABLE" in new.operator_names
    assert new.sha256 != TFLiteModel(data).sha256
