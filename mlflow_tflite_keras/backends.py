"""Exporting from a Keras backend other than TensorFlow.

Reconstructions train on every Keras backend (``KERAS_BACKEND=jax`` or ``torch``), but
converting back to ``.tflite`` needs TensorFlow's converter, which only takes a TensorFlow
graph, and Keras picks its backend once per process. So :func:`~mlflow_tflite_keras.export.
export_tflite` called under another backend saves the model to ``.keras`` and runs the export
in a child process on the TensorFlow backend (the same ``.keras`` file loads and answers the
same there), with the same arguments; the bytes (or ``(bytes, report)``) come back, and so
does any error the export raised.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile

EXPORT_TIMEOUT = 3600.0
# What the child runs, by name: ``export`` imports this module to dispatch here.
EXPORT_FUNCTION = ("mlflow_tflite_keras.export", "export_tflite")


def keras_backend() -> str:
    import keras

    return keras.backend.backend()


def export_in_tensorflow_process(keras_model, *, like=None, representative_data=None,
                                 num_samples: int = 200, timeout: float = EXPORT_TIMEOUT,
                                 **kwargs):
    """``export_tflite(keras_model, like=like, ...)`` run in a TensorFlow child process."""
    from mlflow.exceptions import MlflowException

    from mlflow_tflite_keras.flavor import load_like

    if callable(representative_data):  # a generator cannot cross processes: its samples can
        samples = []
        for sample in representative_data():
            samples.append(sample)
            if len(samples) >= num_samples:
                break
        representative_data = _Samples(samples)
    with tempfile.TemporaryDirectory(prefix="tflite-keras-export-") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        keras_model.save(model_path)
        args = {"like": load_like(like).model_bytes if like is not None else None,
                "representative_data": representative_data, "num_samples": num_samples,
                **kwargs}
        args_path, out_path = os.path.join(tmp, "args.pkl"), os.path.join(tmp, "out.pkl")
        with open(args_path, "wb") as f:
            pickle.dump(args, f)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow",
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        try:
            proc = subprocess.run([sys.executable, "-m", __name__, model_path, args_path,
                                   out_path], capture_output=True, text=True, env=env,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise MlflowException(f"The export to .tflite (in a TensorFlow process) did not "
                                  f"finish in {timeout:.0f} s.") from e
        if not os.path.isfile(out_path):
            tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
            raise MlflowException(f"The export to .tflite (in a TensorFlow process, exit code "
                                  f"{proc.returncode}) failed:\n{tail}")
        with open(out_path, "rb") as f:
            ok, value = pickle.load(f)
    if not ok:
        raise value
    return value


class _Samples:
    """Calibration samples drawn in the parent, replayed in the child (a callable, as
    ``representative_data`` may be)."""

    def __init__(self, samples):
        self.samples = samples

    def __call__(self):
        return iter(self.samples)


def _export(model_path: str, args_path: str, out_path: str) -> None:
    import keras

    import importlib

    import mlflow_tflite_keras.converter  # noqa: F401  (registers the package's layers)

    module, name = EXPORT_FUNCTION
    export_tflite = getattr(importlib.import_module(module), name)

    with open(args_path, "rb") as f:
        args = pickle.load(f)
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
        result = (True, export_tflite(model, **args))
    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            pickle.dumps(e)
            result = (False, e)
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled: its text
            from mlflow.exceptions import MlflowException

            result = (False, MlflowException(f"{type(e).__name__}: {e}"))
    with open(out_path, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    _export(*sys.argv[1:4])
