"""Serving the way MLflow users deploy: `mlflow models serve` in the model's own environment.

With `--env-manager virtualenv` (pyenv provides the Python version, pip installs) and `uv`,
MLflow builds a fresh environment from the requirements this flavor wrote (`ai-edge-litert`,
`numpy`, `mlflow`; this package travels in the model's `code/` directory) and serves from it.
These tests build that environment from PyPI (network), in a temporary MLFLOW_ENV_ROOT, and
check that it has no TensorFlow and that its answers equal the pyfunc's. The Docker image
MLflow would build is checked through `mlflow models generate-dockerfile` (no Docker here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

import flavor_models as fm
import mlflow
from servers import MLFLOW, clean_env, model_server

pytestmark = pytest.mark.slow

ENV_BUILD_TIMEOUT = 900  # seconds: creating the environment and installing ~100 packages


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("envs-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("serving-envs")
        with mlflow.start_run():
            info = mlflow.tflite_keras.log_model(fm.cnn("full-int8"), name="model",
                                                 input_example=fm.images(2))
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri,
                                                         dst_path=str(root / "model")))
        expected = mlflow.pyfunc.load_model(str(local)).predict(fm.images(16))
    finally:
        mlflow.set_tracking_uri(None)
    return local, expected


def _requirements(model_dir: Path) -> dict[str, str]:
    lines = (model_dir / "requirements.txt").read_text().split()
    return dict(line.split("==") for line in lines)


def test_flavor_requirements_have_no_tensorflow(logged):
    model_dir, _ = logged
    requirements = _requirements(model_dir)
    assert sorted(requirements) == ["ai-edge-litert", "mlflow", "numpy"]
    assert requirements["mlflow"] == mlflow.__version__
    assert (model_dir / "code" / "mlflow_tflite_keras" / "flavor.py").is_file()


@pytest.mark.parametrize("env_manager", ["virtualenv", "uv"])
def test_serve_in_the_models_own_environment(logged, env_manager, tmp_path):
    model_dir, expected = logged
    env_root = tmp_path / "envs"
    env = clean_env(MLFLOW_ENV_ROOT=str(env_root))  # this venv's bin (uv) first on PATH
    needs = {"virtualenv": "pyenv", "uv": "uv"}[env_manager]
    if not shutil.which(needs, path=env["PATH"]):
        pytest.skip(f"--env-manager {env_manager} needs `{needs}` on PATH (uv: the test extra "
                    "installs it; pyenv: https://github.com/pyenv/pyenv)")
    with model_server(str(model_dir), tmp_path / "serve.log", env=env, env_manager=env_manager,
                      timeout=ENV_BUILD_TIMEOUT) as base:
        response = requests.post(f"{base}/invocations",
                                 json={"inputs": fm.images(16).tolist()}, timeout=60)
        assert response.status_code == 200, response.text
        served = np.asarray(response.json()["predictions"], dtype=np.float32)
    assert served.shape == expected.shape == (16, 10)
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-7)

    # The environment MLflow built: the flavor's requirements, and no TensorFlow at all.
    (python,) = list(env_root.glob("*/bin/python"))
    probe = subprocess.run([str(python), "-c", (
        "import importlib.metadata as m, importlib.util as u;"
        "print(u.find_spec('tensorflow') is None, u.find_spec('keras') is None,"
        " m.version('ai-edge-litert'), m.version('mlflow'))")],
        capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    requirements = _requirements(model_dir)
    assert probe.stdout.split() == ["True", "True", requirements["ai-edge-litert"],
                                    requirements["mlflow"]]


def test_generated_dockerfile_installs_the_flavor_requirements(logged, tmp_path):
    model_dir, _ = logged
    out = tmp_path / "docker"
    result = subprocess.run([MLFLOW, "models", "generate-dockerfile", "-m", str(model_dir),
                             "-d", str(out)], capture_output=True, text=True, timeout=300,
                            env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    dockerfile = (out / "Dockerfile").read_text()
    # The image installs the model's own environment (not this machine's packages) ...
    assert "model_dir" in dockerfile and "_install_pyfunc_deps" in dockerfile
    copied = next(out.glob("model_dir/**/MLmodel")).parent
    # ... whose requirements are the flavor's: LiteRT, numpy, mlflow; no TensorFlow.
    assert _requirements(copied) == _requirements(model_dir)
    assert "tensorflow" not in (copied / "requirements.txt").read_text()
    assert "tensorflow" not in dockerfile.lower()
