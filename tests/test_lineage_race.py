"""Concurrent registrations: two processes running ``register_keras_version`` on the same
source at once are both listed on the source version and on the source logged model, on a
real ``mlflow server`` backed by SQLite and by PostgreSQL (what teams share)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flavor_models as fm
import mlflow
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage
from servers import clean_env, tracking_server_on

# Rounds per run: every round is a fresh source both workers link at once (a file barrier,
# then reads slowed by 0-150 ms each), so a lost update shows in most rounds; 4 rounds keep
# the chance of missing one small while each round costs two conversions with their parity
# checks (10 rounds took 130 s on SQLite and 150 s on PostgreSQL).
ROUNDS = 4
WORKER = Path(__file__).with_name("lineage_race_worker.py")


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    if request.param == "postgres":
        yield request.param, request.getfixturevalue("postgres_tracking_server")
    else:
        with tracking_server_on("sqlite", tmp_path / "server") as url:
            yield request.param, url


@pytest.mark.slow
def test_concurrent_registrations_are_both_listed(server, tmp_path):
    backend, url = server
    prefix = f"race-{backend}"
    mlflow.set_tracking_uri(url)
    try:
        mlflow.set_experiment(f"race-{backend}")
        data, x = fm.cnn("float32"), fm.digits()[0]
        sources = {}
        for r in range(ROUNDS):
            with mlflow.start_run():
                info = mlflow.tflite_keras.log_model(data, name="model", input_example=x[:4],
                                                     registered_model_name=f"{prefix}-{r}")
            sources[r] = info.model_id
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        env = clean_env(PYTHONPATH=":".join(sys.path), CUDA_VISIBLE_DEVICES="-1",
                        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
        workers = [subprocess.Popen(
            [sys.executable, str(WORKER), url, prefix, str(ROUNDS), str(barrier), str(w)],
            stdout=subprocess.PIPE, stderr=open(tmp_path / f"worker-{w}.log", "wb"),
            text=True, env=env) for w in (0, 1)]
        outputs = [w.communicate(timeout=1800)[0] for w in workers]
        for w, proc in enumerate(workers):
            assert proc.returncode == 0, (tmp_path / f"worker-{w}.log").read_text()[-3000:]
        registered = {r: set() for r in range(ROUNDS)}
        for out in outputs:
            for line in out.splitlines():
                if not line.startswith("RESULT "):
                    continue  # mlflow prints its own lines too
                record = json.loads(line[len("RESULT "):])
                registered[record["round"]].add(record["ref"])
        client = MlflowClient()
        for r in range(ROUNDS):
            name = f"{prefix}-{r}"
            assert len(registered[r]) == 2, registered[r]
            expected = sorted(registered[r], key=lambda ref: int(ref.rsplit("/", 1)[1]))
            assert lineage.keras_versions_of(name, 1) == expected, (r, registered[r])
            logged = client.get_logged_model(sources[r]).tags
            assert logged[lineage.KERAS_VERSIONS] == ",".join(expected), (r, logged)
            for ref in expected:  # and each points back at the source
                keras_version = client.get_model_version(*ref.rsplit("/", 1))
                assert keras_version.tags[lineage.PARENT] == f"{name}/1"
    finally:
        mlflow.set_tracking_uri(None)
