"""The README's quick start, run as written from a fresh clone with nothing activated.

The first ``bash`` block of README.md is run line by line in a `git clone` of this repository:
`make demo`, then `make serve` and `make ui` (servers, started on free ports and stopped
afterwards), the `curl` request against the real `mlflow models serve` (it must get a 200 and
the answer `make demo` printed) and the CLI. PATH holds no venv and VIRTUAL_ENV is unset.

The clone's `.venv` is the venv running this test (linked, and marked installed so `make`
does not reinstall), with PYTHONPATH pointing at the clone so the clone's code is what runs;
TFLITE_KERAS_QUICKSTART_INSTALL=1 runs `make install` in the clone instead (slow: it installs
TensorFlow and everything else from pip's cache or PyPI).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from servers import free_port, stop

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def quickstart_lines() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _env(clone: Path) -> dict:
    """Not activated: no venv on PATH, no VIRTUAL_ENV, no MLflow state from this process."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != Path(venv_bin).resolve())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "VIRTUAL_ENV", "PYTHONPATH", "TF_CPP"))}
    env["PATH"] = path
    if os.environ.get("TFLITE_KERAS_QUICKSTART_INSTALL") != "1":
        env["PYTHONPATH"] = str(clone)
    return env


def _clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    if os.environ.get("TFLITE_KERAS_QUICKSTART_INSTALL") != "1":
        # Every entry of this venv linked into the clone's .venv, plus the clone's own stamp
        # (newer than its pyproject/constraints, so make does not reinstall).
        venv, linked = Path(sys.prefix), clone / ".venv"
        linked.mkdir()
        for entry in venv.iterdir():
            if entry.name != ".installed-stamp":
                (linked / entry.name).symlink_to(entry)
        (linked / ".installed-stamp").touch()
    return clone


def _sh(command: str, clone: Path, env: dict, timeout: float = 1800):
    return subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _serve(command: str, clone: Path, env: dict, log: Path, ready: str, timeout: float = 180):
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"`{command}` exited {proc.returncode}:\n"
                                 + log.read_text()[-3000:])
        try:
            if requests.get(ready, timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"`{command}` not ready in {timeout}s:\n"
                                 + log.read_text()[-3000:])
        time.sleep(0.5)


def test_readme_quickstart_from_a_fresh_clone(tmp_path):
    lines = quickstart_lines()
    assert lines[0] == "make demo" and "make serve" in lines and "make ui" in lines
    clone = _clone(tmp_path)
    env = _env(clone)
    servers = []
    answer = None
    try:
        for line in lines:
            if line == "make test":
                continue  # the suite itself
            if line == "make serve":
                port = free_port()
                servers.append(_serve(f"make serve PORT={port}", clone, env,
                                      tmp_path / "serve.log", f"http://127.0.0.1:{port}/ping"))
                continue
            if line == "make ui":
                ui_port = free_port()
                servers.append(_serve(f"make ui UI_PORT={ui_port}", clone, env,
                                      tmp_path / "ui.log", f"http://127.0.0.1:{ui_port}/health"))
                continue
            if line.startswith("curl "):
                command = line.replace("127.0.0.1:5001", f"127.0.0.1:{port}")
                result = _sh(command + " -w '\\n%{http_code}'", clone, env, timeout=120)
                body, status = result.stdout.rsplit("\n", 1)
                assert status == "200", (command, result.stdout, result.stderr)
                predictions = json.loads(body)["predictions"]
                assert len(predictions) == 1 and len(predictions[0]) == 10
                best = max(range(10), key=lambda i: predictions[0][i])
                assert best == answer, (best, answer)
                continue
            result = _sh(line, clone, env)
            assert result.returncode == 0, (line, result.stdout[-3000:], result.stderr[-3000:])
            if line == "make demo":
                # The answer the demo promises for the curl request.
                answer = int(re.search(r"answer: digit (\d)", result.stdout).group(1))
                assert f"-d @.mlflow/digit.json" in result.stdout
                assert "make serve" in result.stdout
            if "mlflow-tflite-keras inspect" in line:
                assert "tflite_keras.lineage" in result.stdout
                assert "parity        PASSED" in result.stdout
                noisy = [x for x in result.stderr.splitlines()
                         if x.startswith(("E0000", "W0000", "I0000"))]
                assert not noisy, noisy
    finally:
        for proc in servers:
            stop(proc)
    assert answer is not None and servers


def test_mlproject_entry_point_as_the_readme_runs_it(tmp_path):
    """`PATH="$PWD/.venv/bin:$PATH" .venv/bin/mlflow run . -e ...` from a fresh clone."""
    readme = (REPO / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if "mlflow run . -e convert" in x]
    clone = _clone(tmp_path)
    env = _env(clone)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sys.path.insert(0, str(REPO / "tests"))
    import flavor_models as fm

    model = tmp_path / "model.tflite"
    model.write_bytes(fm.cnn("full-int8"))
    logged = _sh(f".venv/bin/mlflow-tflite-keras log {shlex.quote(str(model))} "
                 "--registered-model-name detector", clone, env)
    assert logged.returncode == 0, logged.stderr[-3000:]
    converted = _sh(line, clone, env)
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert "registered: models:/detector/2" in converted.stdout
