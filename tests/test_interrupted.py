"""Nothing lost: an interrupted ``log_model(..., registered_model_name=...)`` or
``register_keras_version(...)`` never leaves a model version pointing at missing or partial
artifacts, nor lineage tags pointing at versions that do not exist.

The operation runs in a subprocess (``interrupt_driver.py``) that is SIGKILLed at points spread
over the duration of an uninterrupted run, against a file-based SQLite store with local
artifacts and against a real ``mlflow server`` (``--serve-artifacts``). After every kill, every
model version that exists is downloaded and loaded with its flavor, and the lineage tags on
both sides are checked. A Python-level interruption (``KeyboardInterrupt``) inside
``register_keras_version`` is tested in process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import flavor_models as fm
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage
from servers import clean_env, tracking_server

DRIVER = Path(__file__).with_name("interrupt_driver.py")
# Timed kills per operation, plus one in the middle of every slow registry step and one before
# each registry step. The conversion spends most of its time converting and checking parity
# (no registry writes: every kill there leaves the same state), so fewer timed kills suffice.
KILL_POINTS = {"log": 6, "convert": 3}
SOURCE = "interrupted-src"  # the .tflite version that register_keras_version converts
pytestmark = pytest.mark.slow  # servers, and a subprocess per kill


@pytest.fixture(scope="module", params=["sqlite", "server", "postgres"])
def store(request, tmp_path_factory):
    """(tracking URI, experiment id, working dir) of a store with ``SOURCE`` version 1."""
    root = tmp_path_factory.mktemp(f"interrupted-{request.param}")
    saved_uri = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    try:
        if request.param == "sqlite":
            from mlflow_tflite_keras.tracking import experiment, use_default_tracking

            os.environ.pop("MLFLOW_TRACKING_URI", None)
            use_default_tracking(root / ".mlflow")  # sqlite:///... + file artifacts
            experiment_id = experiment("interrupted")
            yield _prepared(mlflow.get_tracking_uri(), experiment_id, root)
        elif request.param == "postgres":  # a team's server: PostgreSQL backend store
            url = request.getfixturevalue("postgres_tracking_server")
            mlflow.set_tracking_uri(url)
            experiment_id = mlflow.create_experiment("interrupted")
            yield _prepared(url, experiment_id, root)
        else:
            with tracking_server(root / "server", root / "server.log") as url:
                mlflow.set_tracking_uri(url)
                experiment_id = mlflow.create_experiment("interrupted")
                yield _prepared(url, experiment_id, root)
    finally:
        mlflow.set_tracking_uri(saved_uri)


def _prepared(uri, experiment_id, root):
    (root / "cnn.tflite").write_bytes(fm.cnn("float32"))
    with mlflow.start_run(experiment_id=experiment_id, run_name="source"):
        mlflow.tflite_keras.log_model(root / "cnn.tflite", name="model",
                                      registered_model_name=SOURCE)
    return uri, experiment_id, root


class Driver:
    """The driver process; its stdout lines are collected with their arrival times."""

    def __init__(self, args, env, log):
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(DRIVER), *args], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=DRIVER.parent,
                start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.mark = 0  # index of the first line of the current attempt

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def wait_for(self, prefix, timeout=180) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in self.lines[self.mark:]:
                if line.startswith(prefix):
                    return t
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.005)
        raise AssertionError(f"driver: no {prefix!r} (exit {self.proc.poll()}), "
                             f"see the driver log: {self.lines[self.mark:]}")

    def go(self, kill_at_step: int = 0) -> tuple[float, int]:
        """Fork a child running the operation: (start time, child pid). ``kill_at_step``: the
        child SIGKILLs itself just before that registry step (1 = the first)."""
        if self.mark == 0:
            self.wait_for("READY")
        self.mark = len(self.lines)
        self.proc.stdin.write(f"go {kill_at_step}\n")
        self.proc.stdin.flush()
        started = time.monotonic()
        self.wait_for("CHILD")
        pid = int(next(line for _, line in self.lines[self.mark:] if line.startswith("CHILD"))
                  .split()[1])
        return started, pid

    def kill(self, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.wait_for(f"EXIT {pid}")

    def steps(self) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.lines[self.mark:]
                if line.startswith(("START", "PHASE", "DONE", "KILLED"))]

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


def kill_points(steps, started, n: int) -> list[float]:
    """Offsets from the start, spread over the operation and a little past its end, plus the
    middle of every registry step that lasted 50 ms or more (e.g. an upload to the server)."""
    done = next(t for t, line in steps if line.startswith("DONE")) - started
    spread = [1.05 * done * (i + 0.5) / n for i in range(n)]
    begun = {}
    for t, line in steps:
        if line.startswith("PHASE") and not line.endswith(" done"):
            begun[line] = t
        elif line.startswith("PHASE") and t - begun[line[:-len(" done")]] >= 0.05:
            spread.append((t + begun[line[:-len(" done")]]) / 2 - started)
    return spread


class Checker:
    """Checks every model version of a store; complete ones are remembered."""

    def __init__(self):
        self.client = MlflowClient()
        self.verified: set[tuple[str, str]] = set()

    def versions(self, name) -> dict[str, object]:
        return {str(mv.version): mv for mv in
                self.client.search_model_versions(f"name = '{name}'")}

    def check_all(self, names):
        for name in names:
            for version, mv in self.versions(name).items():
                self.check_version(mv)
        self.check_source()

    def check_version(self, mv):
        key = (mv.name, str(mv.version))
        # Tags are written with the version, in the same transaction: a Keras version always
        # carries its lineage, and its source exists.
        if mv.tags.get(lineage.ROLE) == lineage.ROLE_KERAS:
            source = self.client.get_model_version(*mv.tags[lineage.PARENT].split("/"))
            assert source.tags.get(lineage.ROLE) != lineage.ROLE_KERAS
            assert mv.tags[lineage.PARENT] == f"{source.name}/{source.version}"
            assert lineage.model_id_of(mv)
        if key in self.verified:
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(f"models:/{mv.name}/{mv.version}",
                                                        dst_path=tmp)
            if mv.tags.get(lineage.ROLE) == lineage.ROLE_KERAS:
                model = mlflow.keras.load_model(local)
                assert model.outputs, key
            else:
                loaded = mlflow.tflite_keras.load_model(local)
                assert loaded.model.sha256 == mlflow.models.Model.load(local).flavors[
                    "tflite_keras"]["sha256"], key
                loaded.interpreter()
        self.verified.add(key)

    def check_source(self):
        """The source's links name only Keras versions that exist and point back at it."""
        source = self.client.get_model_version(SOURCE, "1")
        refs = linked(source.tags)
        for ref in refs:
            name, version = ref.rsplit("/", 1)
            keras_version = self.client.get_model_version(name, version)  # raises if missing
            assert keras_version.tags[lineage.ROLE] == lineage.ROLE_KERAS
            assert keras_version.tags[lineage.PARENT] == f"{SOURCE}/1"
        if refs:
            assert source.tags[lineage.ROLE] == lineage.ROLE_SOURCE
        return refs


def linked(tags: dict) -> list[str]:
    """The Keras versions a source names: its per-version tags and its list tag (a link
    killed between writing the one and the other has only the first)."""
    refs = {v for k, v in tags.items() if k.startswith(lineage.KERAS_VERSION_PREFIX)}
    refs.update(r for r in tags.get(lineage.KERAS_VERSIONS, "").split(",") if r)
    return sorted(refs, key=lineage._ref_order)


@pytest.mark.parametrize("op", ["log", "convert"])
def test_sigkill_leaves_no_broken_version(store, op, request):
    if op == "convert" and request.node.callspec.params["store"] == "postgres":
        # The conversion's registry calls are logging's plus the source's links: SIGKILLed on
        # the embedded store and through the REST API of the SQLite-backed server; a killed
        # client leaves the same server-side state whatever the backend store (and on the
        # PostgreSQL server every slow step also gets a mid-step kill: 361 s of the suite).
        pytest.skip("conversion SIGKILLs: covered on the sqlite store and the server")
    uri, experiment_id, root = store
    name = f"interrupted-{op}"
    args = ["log", str(root / "cnn.tflite"), name] if op == "log" else \
        ["convert", f"models:/{SOURCE}/1"]
    names = [name, SOURCE]
    env = clean_env(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_ID=experiment_id,
                    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", CUDA_VISIBLE_DEVICES="-1")
    checker = Checker()
    began = time.monotonic()
    driver = Driver(args, env, root / f"driver-{op}.log")
    try:
        # Uninterrupted runs: the second (warm, like the rest) times the operation and its
        # registry steps.
        for _ in range(2):
            started, pid = driver.go()
            driver.wait_for("DONE")
            driver.kill(pid)
            timeline = driver.steps()
        checker.check_all(names)
        before = checker.versions(SOURCE)["1"].tags
        outcomes = []
        registry_steps = sum(line.startswith("PHASE") and not line.endswith(" done")
                             for _, line in timeline)
        # Timed kills, then a kill just before each registry step of the uninterrupted run.
        plan = [(offset, 0) for offset in kill_points(timeline, started, KILL_POINTS[op])]
        plan += [(None, k) for k in range(1, registry_steps + 1)]
        for offset, step in plan:
            started, pid = driver.go(step)
            if offset is not None:
                time.sleep(max(0.0, started + offset - time.monotonic()))
            else:
                # The child kills itself (or finishes, if a step is not repeated).
                with contextlib.suppress(AssertionError):
                    driver.wait_for("EXIT", timeout=60)
            driver.kill(pid)
            steps = driver.steps()
            when = f"{offset:5.2f}s" if offset is not None else f"step {step}"
            outcomes.append(f"{when}  {steps[-1][1] if steps else '(before START)'}")
            checker.check_all(names)
            # The source is untouched, or linked to exactly one more (existing) Keras version.
            after = checker.versions(SOURCE)["1"].tags
            old, new = linked(before), linked(after)
            assert after == before or new == old or (
                new[:len(old)] == old and len(new) == len(old) + 1), (before, after)
            before = after
    finally:
        driver.close()
    print(f"\n[{op}] uninterrupted: " + ", ".join(
        f"{t - timeline[0][0]:.2f}s {line}" for t, line in timeline)
        + f"\n[{op}] {len(checker.verified)} versions verified, "
        f"{time.monotonic() - began:.1f}s in all; killed at (last step seen):\n  "
        + "\n  ".join(outcomes))
    assert len(checker.verified) >= 3  # the source and the uninterrupted runs' versions


@pytest.mark.parametrize("target", ["Model.log", "register_model"])
def test_keyboard_interrupt_leaves_no_version_and_a_failed_run(store, monkeypatch, target):
    uri, experiment_id, _ = store
    client = MlflowClient()
    name = f"ki-{target.replace('.', '-').lower()}"
    source_tags = client.get_model_version(SOURCE, "1").tags

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if target == "Model.log":
        monkeypatch.setattr(lineage.Model, "log", interrupt)
    else:
        monkeypatch.setattr(mlflow, "register_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        lineage.register_keras_version(f"models:/{SOURCE}/1", registered_model_name=name,
                                       experiment_id=experiment_id)
    assert mlflow.active_run() is None
    with pytest.raises(MlflowException):
        client.get_registered_model(name)
    assert client.get_model_version(SOURCE, "1").tags == source_tags
    runs = client.search_runs([experiment_id], "tags.`tflite_keras.role` = 'reconstructed-keras'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED"
    assert "tflite_keras.failure" in runs[0].data.tags


def test_interrupt_while_linking_leaves_no_dangling_reference(store, monkeypatch):
    """Interrupted after the source version is tagged (while tagging its logged model): the
    new version is deleted, and the source must not keep a reference to it."""
    uri, experiment_id, _ = store
    client = MlflowClient()
    name = "ki-linking"
    source_tags = client.get_model_version(SOURCE, "1").tags
    source_model_id = lineage.model_id_of(client.get_model_version(SOURCE, "1"))
    logged_tags = client.get_logged_model(source_model_id).tags
    original = MlflowClient.set_logged_model_tags

    def interrupt_source_link(self, model_id, tags):
        if tags.get(lineage.KERAS_VERSIONS, "").endswith(f"{name}/1"):
            raise KeyboardInterrupt
        return original(self, model_id, tags)

    monkeypatch.setattr(MlflowClient, "set_logged_model_tags", interrupt_source_link)
    with pytest.raises(KeyboardInterrupt):
        lineage.register_keras_version(f"models:/{SOURCE}/1", registered_model_name=name,
                                       experiment_id=experiment_id)
    assert client.search_model_versions(f"name = '{name}'") == []
    # The source links what it linked before, and nothing of the rolled-back version. (Its
    # list tag may have been rewritten: a registration SIGKILLed by the test above between
    # its per-version tag and the list gets listed by the next update.)
    for before, after in ((source_tags, client.get_model_version(SOURCE, "1").tags),
                          (logged_tags, client.get_logged_model(source_model_id).tags)):
        assert linked(after) == linked(before)
        assert not any(name in value for value in after.values()), after
        assert {k: v for k, v in after.items() if k != lineage.KERAS_VERSIONS} == \
            {k: v for k, v in before.items() if k != lineage.KERAS_VERSIONS}
    runs = client.search_runs([experiment_id], "tags.`tflite_keras.role` = 'reconstructed-keras'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED"
    assert "linking failed" in runs[0].data.tags["tflite_keras.failure"]
    Checker().check_source()
