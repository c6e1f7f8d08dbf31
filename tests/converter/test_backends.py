"""Reconstructions on the JAX (and PyTorch) Keras backends.

The suite's real-world-shaped models are converted under TensorFlow (this process) and saved to
``.keras``; a worker process started with ``KERAS_BACKEND=jax`` (Keras picks its backend once,
at import) reloads each one and also rebuilds it with ``to_keras`` there, and judges both:
parity with LiteRT at the float tolerance (eager and compiled), a 5% kernel change rejected,
and a ``fit`` step that changes every trainable weight (see ``backend_worker.py``).
The landmark model is also exported back to ``.tflite`` after that step (the
export runs in a TensorFlow child process). ``TFLITE_KERAS_TEST_BACKEND=torch`` runs the same on
PyTorch where it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converter import real_models, streaming_models
from converter.app_models import SMALL, small_tflite
import roundtrip_models

pytestmark = pytest.mark.slow  # eight models converted, then checked in a JAX process

BACKEND = os.environ.get("TFLITE_KERAS_TEST_BACKEND", "jax")
WORKER = Path(__file__).with_name("backend_worker.py")


def _cases():
    """name -> (tflite bytes factory, input batch factory, to_keras kwargs, fit)."""
    # landmarks (three outputs, not in name order) is also exported back to .tflite after
    # the fit step: see EXPORTED.
    return {
        "blazeface": (real_models.blazeface, lambda: real_models.face_images(2), {}, True),
        "landmarks": (lambda: roundtrip_models.model("landmarks"),
                      lambda: roundtrip_models.inputs("landmarks", 4), {}, True),
        "spectral": (lambda: roundtrip_models.model("spectral"),
                     lambda: roundtrip_models.inputs("spectral", 4), {}, True),
        "keyword-spotter": (real_models.keyword_spotter, lambda: real_models.mfcc_frames(4),
                            {}, True),
        "streaming-keyword-spotter": (streaming_models.streaming_conv,
                                      lambda: streaming_models.frames(2, 6), {}, False),
        "lstm-text": (lambda: small_tflite("lstm-text"), lambda: SMALL["lstm-text"][1](4), {},
                      True),
        "transformer": (lambda: small_tflite("transformer"),
                        lambda: SMALL["transformer"][1](4), {}, True),
        # The STFT front end (no weights upstream) runs on LiteRT; the dense head trains.
        "wrapped-region": (lambda: roundtrip_models.model("spectral"),
                           lambda: roundtrip_models.inputs("spectral", 4),
                           {"wrap_ops": ["RFFT2D"]}, True),
    }


CASES = list(_cases())
EXPORTED = {"landmarks"}


@pytest.fixture(scope="module")
def backend_results(tmp_path_factory):
    if importlib.util.find_spec(BACKEND) is None:
        pytest.skip(f"the {BACKEND} package is not installed")
    from mlflow_tflite_keras.converter import to_keras

    root = tmp_path_factory.mktemp(f"backend-{BACKEND}")
    manifest = []
    for name, (make, inputs, kwargs, fit) in _cases().items():
        data = make()
        (root / f"{name}.tflite").write_bytes(data)
        np.save(root / f"{name}.npy", inputs())
        to_keras(data, **kwargs).save(root / f"{name}.keras")  # built under TensorFlow
        manifest.append({"name": name, "tflite": str(root / f"{name}.tflite"),
                         "keras": str(root / f"{name}.keras"),
                         "inputs": str(root / f"{name}.npy"), "to_keras_kwargs": kwargs,
                         "fit": fit, "export": name in EXPORTED})
    (root / "cases.json").write_text(json.dumps(manifest))
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(WORKER), str(root)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((root / "results.json").read_text())
    assert results["backend"] == BACKEND
    return results["cases"]


@pytest.mark.parametrize("how", ["loaded", "to_keras"])
@pytest.mark.parametrize("case", CASES)
def test_reconstruction_on_backend(backend_results, case, how):
    """Saved under TensorFlow and reloaded (``loaded``), or rebuilt by ``to_keras`` on the
    backend itself: parity with LiteRT, a 5% kernel change rejected, every weight trained."""
    result = backend_results[case][how]
    assert "error" not in result, result.get("traceback", result.get("error"))
    parity = result["parity"]
    assert parity["passed"], parity["report"]
    assert parity.get("rejects_5_percent", True), f"{case}: a 5% kernel change passed"
    if "fit" in result:
        fit = result["fit"]
        assert fit["n_trainable"] > 0 and np.isfinite(fit["loss"])
        assert not fit["unchanged"], f"{case}: fit left {fit['unchanged']} unchanged"
    if "export" in result:
        assert result["export"]["passed"], result["export"]["report"]


FINETUNE_WORKER = """
import sys
import keras
import flavor_models as fm
from mlflow_tflite_keras.tracking import use_default_tracking
from mlflow_tflite_keras.finetune import finetune

use_default_tracking(sys.argv[1])
x, y = fm.digits()
assert keras.backend.backend() == sys.argv[2], keras.backend.backend()
r = finetune("models:/digits/2", (x[:300], y[:300]), epochs=2, learning_rate=1e-3)
print("RESULT", r.keras_version.version, r.tflite_version.version, r.parity.passed,
      r.interface.ok, flush=True)
"""


def test_finetune_on_backend(tmp_path):
    """``finetune`` under ``KERAS_BACKEND=jax``: it trains there, exports in a TensorFlow child
    process and registers both versions, the export checked against the JAX model."""
    if importlib.util.find_spec(BACKEND) is None:
        pytest.skip(f"the {BACKEND} package is not installed")
    import flavor_models as fm
    import mlflow
    from mlflow_tflite_keras import lineage
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    store = tmp_path / ".mlflow"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(store)
    try:
        mlflow.set_experiment(experiment_id=experiment("finetune"))
        x, _ = fm.digits()
        with mlflow.start_run():
            mlflow.tflite_keras.log_model(fm.cnn("float32"), name="model", input_example=x[:4],
                                          registered_model_name="digits")
        lineage.register_keras_version("models:/digits/1", parity_inputs=x[:64])
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", FINETUNE_WORKER, str(store), BACKEND], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RESULT 3 4 True True" in proc.stdout, proc.stdout[-2000:]
