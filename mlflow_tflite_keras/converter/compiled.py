"""Compiled inference of a Keras model, the way its users run it: ``model.predict`` (a
``tf.function`` graph), optionally in a child process so that a crash of the graph runtime
(a segfault in a fused kernel) is reported as a failed check instead of killing the caller.

Eager calls and compiled graphs can differ: TensorFlow rewrites graphs (grappler, oneDNN
fusions) and some rewrites crash or compute differently. A model is only checked when it has
been run compiled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from mlflow_tflite_keras.converter.metrics import error_metrics

__all__ = ["CompiledCheck", "CompiledInferenceError", "check_compiled", "predict_compiled"]

# Compiled and eager results of the same model differ by float reassociation only.
COMPILED_MAX_REL_DIFF = 1e-5


class CompiledInferenceError(RuntimeError):
    """``model.predict`` crashed or raised; the message says how."""


@dataclass
class CompiledCheck:
    """``model.predict`` against the eager call on the same inputs."""

    passed: bool
    max_rel_diff: float | None  # max |compiled - eager| / output value range, over outputs
    reason: str | None = None  # why it failed (a crash, an exception, a mismatch)

    def __str__(self):
        if self.passed:
            return f"compiled inference PASSED (max rel diff to eager {self.max_rel_diff:.3g})"
        return f"compiled inference FAILED: {self.reason}"


def as_output_list(result, keras_model=None) -> list[np.ndarray]:
    """A model's outputs (a tensor, a list, or a dict) as numpy arrays, in ``keras_model``'s
    output order (the signature's): JAX and PyTorch return dicts with sorted keys."""
    import keras

    if isinstance(result, dict):
        names = list(keras_model.output) if keras_model is not None and \
            isinstance(keras_model.output, dict) and set(keras_model.output) == set(result) \
            else list(result)
        result = [result[n] for n in names]
    elif not isinstance(result, (list, tuple)):
        result = [result]
    return [np.asarray(keras.ops.convert_to_numpy(r)) for r in result]


def predict_compiled(keras_model, feed, *, isolated: bool = False,
                     timeout: float = 900) -> list[np.ndarray]:
    """``keras_model``'s compiled predict function (the graph ``model.predict`` runs) on
    ``feed`` as one batch. ``isolated=True`` runs it in a child process (the model saved to
    ``.keras`` and loaded with ``safe_mode=True``) and raises :class:`CompiledInferenceError`
    when the child crashes, fails or times out."""
    if not isolated:
        # predict_on_batch: the same tf.function as predict, without predict's slicing of
        # every input along axis 0 (models with unbatched inputs cannot be sliced).
        return as_output_list(keras_model.predict_on_batch(feed), keras_model)
    with tempfile.TemporaryDirectory(prefix="tflite-keras-compiled-") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        keras_model.save(model_path)
        feed_path, out_path = os.path.join(tmp, "feed.npz"), os.path.join(tmp, "out.npz")
        if isinstance(feed, dict):
            np.savez(feed_path, **{f"dict:{k}": np.asarray(v) for k, v in feed.items()})
        else:
            np.savez(feed_path, **{"array:": np.asarray(feed)})
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        try:
            proc = subprocess.run([sys.executable, "-m", __name__, model_path, feed_path,
                                   out_path], capture_output=True, text=True, timeout=timeout,
                                  env=env)
        except subprocess.TimeoutExpired as e:
            raise CompiledInferenceError(f"model.predict did not finish in {timeout:.0f} s") from e
        if proc.returncode != 0:
            raise CompiledInferenceError(_failure(proc))
        with np.load(out_path) as outputs:
            return [outputs[f"out{i}"] for i in range(len(outputs.files))]


def check_compiled(keras_model, feed, *, isolated: bool = True, eager=None,
                   max_rel_diff: float = COMPILED_MAX_REL_DIFF) -> CompiledCheck:
    """Run ``keras_model`` compiled (``model.predict``; in a child process when ``isolated``)
    and eagerly on ``feed`` and compare. A crash, an exception or a difference above
    ``max_rel_diff`` of an output's value range fails the check; the caller survives.
    ``eager``: the eager outputs when already computed."""
    if eager is None:
        eager = as_output_list(keras_model(feed, training=False), keras_model)
    try:
        compiled = predict_compiled(keras_model, feed, isolated=isolated)
    except CompiledInferenceError as e:
        return CompiledCheck(False, None, str(e))
    return compare_compiled(eager, compiled, max_rel_diff)


def compare_compiled(eager: list[np.ndarray], compiled: list[np.ndarray],
                     max_rel_diff: float = COMPILED_MAX_REL_DIFF) -> CompiledCheck:
    if len(eager) != len(compiled):
        return CompiledCheck(False, None, f"model.predict returned {len(compiled)} outputs, "
                                          f"the eager call {len(eager)}")
    worst = 0.0
    for i, (e, c) in enumerate(zip(eager, compiled)):
        if e.shape != c.shape:
            return CompiledCheck(False, None, f"output {i}: model.predict shape "
                                              f"{list(c.shape)} != eager {list(e.shape)}")
        e64, c64 = np.asarray(e, np.float64), np.asarray(c, np.float64)
        if not e64.size:
            continue
        worst = max(worst, error_metrics(e64, c64, np.abs(e64 - c64))[1])
    if worst > max_rel_diff:
        return CompiledCheck(False, worst, f"model.predict differs from the eager call by "
                                           f"{worst:.3g} of the output range (> {max_rel_diff})")
    return CompiledCheck(True, worst)


def _failure(proc: subprocess.CompletedProcess) -> str:
    code = proc.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"model.predict crashed the process ({name})"
        if -code == signal.SIGSEGV:
            what += ("; TensorFlow's graph runtime failed on a pattern this model contains "
                     "(the eager call works)")
    else:
        what = f"model.predict failed (exit code {code})"
    last = [line for line in (proc.stderr or "").strip().splitlines()
            if line.strip() and not line.startswith(("I0000", "W0000", "E0000", "WARNING: All"))]
    return what + (f": {last[-1][:500]}" if last and code > 0 else "")


def _worker(model_path: str, feed_path: str, out_path: str) -> None:
    import json
    import zipfile

    from mlflow_tflite_keras.converter.deep import run_deep

    # Keras maps a functional graph recursively when it loads it: deep models need room.
    with zipfile.ZipFile(model_path) as archive:
        depth = len(json.loads(archive.read("config.json")).get("config", {}).get("layers", []))
    run_deep(_load_and_predict, depth, model_path, feed_path, out_path)


def _load_and_predict(model_path: str, feed_path: str, out_path: str) -> None:
    import keras

    import mlflow_tflite_keras.converter.layers  # noqa: F401  (registers the package's layers)

    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    with np.load(feed_path) as data:
        if any(k.startswith("dict:") for k in data.files):
            feed = {k[len("dict:"):]: data[k] for k in data.files}
        else:
            feed = data["array:"]
    outputs = predict_compiled(model, feed)
    np.savez(out_path, **{f"out{i}": o for i, o in enumerate(outputs)})


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
