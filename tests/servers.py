"""Start real MLflow processes on 127.0.0.1 for tests, and stop them reliably."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def tracking_server(root: Path, log: Path, backend_store_uri: str | None = None,
                    workers: int = 1):
    """``mlflow server`` with a SQLite (default) or given backend store and proxied artifacts
    (--serve-artifacts)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    args = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
            "--workers", str(workers)]
    return running(args, port, "/health", log)


# ---- PostgreSQL ---------------------------------------------------------------------------------


class PostgresUnavailable(RuntimeError):
    """PostgreSQL (Debian's ``postgresql`` package, ``make postgres``) or psycopg2 is missing."""


def _postgres_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name)
                        if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: run `make postgres` (as root: apt-get install postgresql) "
        "to run these tests against a PostgreSQL backend store.")


@contextlib.contextmanager
def postgres_cluster(log: Path):
    """A throwaway PostgreSQL cluster (initdb in a fresh temporary directory, listening on
    127.0.0.1 only, trust authentication); yields its SQLAlchemy URI, stops the server and
    removes the directory afterwards. initdb and the server refuse to run as root: as root they
    run as the unprivileged ``postgres`` user the Debian package creates."""
    try:
        import psycopg2  # noqa: F401  (the URI below needs it in mlflow server)
    except ImportError:
        raise PostgresUnavailable("psycopg2 is not installed (pip install -c constraints.txt "
                                  "-e '.[test]').") from None
    bin_dir = _postgres_bin()
    run_as = {}
    directory = Path(tempfile.mkdtemp(prefix="mlflow-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory)
            raise PostgresUnavailable("Running as root and there is no 'postgres' user to run "
                                      "PostgreSQL as (install Debian's postgresql).") from None
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    data = directory / "data"
    port = free_port()
    env = {**clean_env(), "LC_ALL": "C", "HOME": str(directory)}

    def run(*args):
        with open(log, "ab") as out:
            subprocess.run([str(bin_dir / args[0]), *args[1:]], check=True, stdout=out,
                           stderr=subprocess.STDOUT, env=env, cwd=directory, timeout=120,
                           **run_as)

    started = False
    try:
        run("initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8",
            "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        run("pg_ctl", "-D", str(data), "-o", options, "-l", str(directory / "server.log"),
            "-w", "-t", "60", "start")
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        with contextlib.suppress(Exception), open(log, "ab") as out:
            out.write((directory / "server.log").read_bytes())
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def tracking_server_on(backend: str, root: Path, workers: int | None = None):
    """``mlflow server`` on a ``"sqlite"`` or ``"postgres"`` backend store (a throwaway
    cluster); skips the calling test with the reason when PostgreSQL is unavailable. The
    PostgreSQL server runs several workers: its store takes concurrent writers."""
    import pytest

    root.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        with tracking_server(root, root / "server.log", workers=workers or 1) as url:
            yield url
        return
    try:
        cluster = postgres_cluster(root / "postgres.log")
        uri = cluster.__enter__()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    try:
        with tracking_server(root, root / "server.log", backend_store_uri=uri,
                             workers=workers or 4) as url:
            yield url
    finally:
        cluster.__exit__(None, None, None)
