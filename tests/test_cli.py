"""The `mlflow-tflite-keras` CLI and the MLproject entry points, as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flavor_models as fm
from servers import clean_env

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("mlflow-tflite-keras"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def run(args, env, cwd=None, timeout=600):
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture
def env(tmp_path):
    return clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def int8_file(tmp_path):
    path = tmp_path / "digits_int8.tflite"
    path.write_bytes(fm.cnn("full-int8"))
    return path


def test_help_explains_each_command(env):
    result = run([CLI, "--help"], env)
    assert result.returncode == 0
    for command in ("inspect", "log", "convert", "verify"):
        assert command in result.stdout
        sub = run([CLI, command, "--help"], env)
        assert sub.returncode == 0 and len(sub.stdout) > 100


def test_inspect_file(int8_file, env):
    result = run([CLI, "inspect", str(int8_file)], env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "quantization  full-int8" in out and "CONV_2D" in out and "ok" in out
    assert "q(scale=" in out
    as_json = json.loads(run([CLI, "inspect", str(int8_file), "--json"], env).stdout)
    assert as_json["quantization"] == "full-int8"
    assert as_json["unsupported_operators"] == []


def test_inspect_bad_file_exit_code(tmp_path, env):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all, not even close")
    result = run([CLI, "inspect", str(bad), "--no-converter"], env)
    assert result.returncode == 2
    assert "Error: Not a TFLite model" in result.stderr and "Traceback" not in result.stderr


def test_log_convert_verify(int8_file, env):
    logged = run([CLI, "log", str(int8_file), "--registered-model-name", "digits"], env)
    assert logged.returncode == 0, logged.stderr
    assert "registered: models:/digits/1" in logged.stdout
    converted = run([CLI, "convert", "models:/digits/1", "--alias", "champion"], env)
    assert converted.returncode == 0, converted.stderr
    assert "registered: models:/digits/2" in converted.stdout
    assert "parity_passed: 1" in converted.stdout
    assert "Checking parity" in converted.stderr  # progress for long steps
    verified = run([CLI, "verify", "models:/digits@champion"], env)
    assert verified.returncode == 0, verified.stderr
    assert "parity PASSED" in verified.stdout
    strict = run([CLI, "convert", "models:/digits/1", "--min-cosine", "1.01"], env)
    assert strict.returncode == 1 and "Parity check failed" in strict.stderr
    wrapped = run([CLI, "convert", "models:/digits/1", "--wrap-op", "SOFTMAX"], env)
    assert wrapped.returncode == 0, wrapped.stderr
    assert "registered: models:/digits/3" in wrapped.stdout
    description = subprocess.run([sys.executable, "-c", (
        "import mlflow; print(mlflow.MlflowClient().get_model_version('digits', '3')"
        ".description)")], capture_output=True, text=True, env=env).stdout
    assert "frozen TFLiteLayers" in description and "SOFTMAX" in description
    not_keras = run([CLI, "verify", "models:/digits/1"], env)
    assert not_keras.returncode == 2 and "not a Keras version" in not_keras.stderr


def test_mlflow_run_entry_points(int8_file, env):
    logged = run([MLFLOW, "run", str(REPO), "-e", "log", "-P", f"path={int8_file}",
                  "-P", "registered_model_name=proj", "--env-manager", "local"], env)
    assert logged.returncode == 0, logged.stderr[-3000:]
    converted = run([MLFLOW, "run", str(REPO), "-e", "convert", "-P", "model_uri=models:/proj/1",
                     "-P", "alias=champion", "--env-manager", "local"], env)
    assert converted.returncode == 0, converted.stderr[-3000:]
    check = run([sys.executable, "-c", (
        "import mlflow; c = mlflow.MlflowClient();"
        "mv = c.get_model_version_by_alias('proj', 'champion');"
        "print(mv.version, mv.tags['tflite_keras.role'])")], env)
    assert check.stdout.split() == ["2", "reconstructed-keras"], check.stderr
