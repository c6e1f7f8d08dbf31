"""Compiled inference of a Keras model, the way its users run it: ``model.predict`` (a
``tf.function`` graph), optionally in a child process so that a crash of the graph runtime
(a segfault in a fused kernel) is reported as a failed check instead of killing the caller.

Eager calls and compiled graphs can differ: TensorFlow rewrites graphs (grappler, oneDNN
fusions) and some rewrites crash or compute differently. A model is only checked when it has
been run compiled.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
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
    when the child crashes, fails or times out. The children are forked from one server
    process per caller that has imported Keras once (see :class:`_ForkServer`)."""
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
        err_path = os.path.join(tmp, "stderr.txt")
        try:
            code = _run_isolated([model_path, feed_path, out_path, err_path], timeout)
        except subprocess.TimeoutExpired as e:
            raise CompiledInferenceError(f"model.predict did not finish in {timeout:.0f} s") from e
        if code != 0:
            with open(err_path, errors="replace") as err:
                raise CompiledInferenceError(_failure(code, err.read()))
        with np.load(out_path) as outputs:
            return [outputs[f"out{i}"] for i in range(len(outputs.files))]


def _run_isolated(args: list[str], timeout: float) -> int:
    """The exit code of a fresh process running ``_worker(*args[:3])`` with its stderr in
    ``args[3]`` (negative: killed by that signal); raises ``subprocess.TimeoutExpired``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if not hasattr(os, "fork"):
        with open(args[3], "wb") as err:
            return subprocess.run([sys.executable, "-m", __name__, *args[:3]], env=env,
                                  stdout=err, stderr=err, timeout=timeout).returncode
    global _server
    with _server_lock:
        if _server is None or not _server.usable(env):
            if _server is not None and _server.owner == os.getpid():
                _server.close()
            if _server is None:
                atexit.register(_close_server)
            _server = _ForkServer(env)
        try:
            return _server.run(args, timeout)
        except CompiledInferenceError:
            _server.close()  # it died or is out of step: the next call starts another
            raise


class _ForkServer:
    """A child process that has imported Keras (TensorFlow's import takes seconds) and forks
    one grandchild per isolated prediction: each prediction still runs, and may crash, in a
    process of its own, without paying for the import each time. The server runs no
    TensorFlow op itself, so its children start with no thread pools (safe to fork). It exits
    when this process closes its stdin: at exit, or when this process dies."""

    def __init__(self, env: dict):
        self.env_key = _env_key(env)
        self.owner = os.getpid()
        self.log = tempfile.TemporaryFile()  # the server's own stderr (its import's noise)
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env)
        self.buffer = b""

    def usable(self, env: dict) -> bool:
        """Started by this process (not inherited through a fork), running, same env."""
        return self.owner == os.getpid() and self.proc.poll() is None and \
            self.env_key == _env_key(env)

    def run(self, args: list[str], timeout: float) -> int:
        import json
        import time

        deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps(args) + "\n").encode())
        self.proc.stdin.flush()
        pid = int(self._line(deadline + 120))  # on first use, the server is still importing
        try:
            return int(self._line(deadline))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._line(time.monotonic() + 60)  # the server reaps it and says so
            raise

    def _line(self, deadline: float) -> str:
        import select
        import time

        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.proc.args, 0)
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.log.seek(0)
                    raise CompiledInferenceError(
                        f"the process running model.predict exited ({self.proc.wait()}): "
                        + self.log.read().decode(errors="replace")[-2000:])
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


_server: _ForkServer | None = None
_server_lock = threading.Lock()


def _env_key(env: dict) -> tuple:
    # MLflow's run state (MLFLOW_RUN_ID, MLFLOW_EXPERIMENT_ID...) changes between calls and
    # means nothing to a prediction; any other change (KERAS_BACKEND, paths) starts a new server.
    return tuple(sorted((k, v) for k, v in env.items() if not k.startswith("MLFLOW_")))


def _close_server():
    if _server is not None and _server.owner == os.getpid():
        _server.close()


def _serve() -> None:
    """The fork server's loop: a JSON list [model, feed, out, stderr path] per line in; the
    grandchild's pid, then its exit code (negative: the signal that killed it) per line out."""
    import json
    import traceback

    import keras  # noqa: F401  (the point of the server: imported once)

    import mlflow_tflite_keras.converter.layers  # noqa: F401
    from mlflow_tflite_keras.converter import deep  # noqa: F401

    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints go to stderr: stdout carries the replies only
    for line in sys.stdin:
        model_path, feed_path, out_path, err_path = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                reply.close()
                err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(err, 2)
                os.dup2(err, 1)
                os.close(err)
                _worker(model_path, feed_path, out_path)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        reply.write(f"{pid}\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        reply.write(f"{os.waitstatus_to_exitcode(status)}\n")
        reply.flush()


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


def _failure(code: int, stderr: str) -> str:
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
    last = [line for line in (stderr or "").strip().splitlines()
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
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        _worker(*sys.argv[1:4])
