"""Start real MLflow processes on 127.0.0.1 for tests, and stop them reliably."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    """This environment minus MLflow's run/experiment state, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # mlflow runs helpers (uvicorn, gunicorn) by name: put this venv's bin first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(TF_CPP_MIN_LOG_LEVEL="3", **{k: str(v) for k, v in extra.items()})
    return env


@contextlib.contextmanager
def running(args: list[str], port: int, ready_path: str, log: Path, timeout: float = 180,
            env: dict | None = None):
    """Run ``args`` until ``http://127.0.0.1:port{ready_path}`` answers 200; yield the base
    URL; kill the whole process group afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env=env or clean_env(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[:3]} exited with {proc.returncode}:\n"
                                   + log.read_text()[-4000:])
            try:
                if requests.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[:3]} not ready in {timeout}s:\n"
                                   + log.read_text()[-4000:])
            time.sleep(0.5)
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 15):
    """SIGTERM the process group (the server and its workers), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def model_server(model_uri: str, log: Path, env: dict | None = None, workers: int = 1,
                 env_manager: str = "local", timeout: float = 180):
    """``mlflow models serve``; with ``env_manager`` "virtualenv" or "uv" MLflow first builds
    the model's environment from its requirements (allow for that in ``timeout``)."""
    port = free_port()
    args = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", env_manager,
            "--host", "127.0.0.1", "-p", str(port), "--workers", str(workers)]
    return running(args, port, "/ping", log, env=env, timeout=timeout)


def tracking_server(root: Path, log: Path):
    """``mlflow server`` with a SQLite backend and proxied artifacts (--serve-artifacts)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    args = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
            "--workers", "1"]
    return running(args, port, "/health", log)
