import os
import sys
from pathlib import Path

# Quiet TensorFlow's C++ logging in test output; tests import it lazily.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402


# Scheduling under pytest-xdist (`make test`: --dist loadscope). A work unit runs on one worker:
# a module (its module-scoped fixtures are set up once), split by store where the module's
# fixtures are per store (a server each). Modules with a `slow` test are sent first, so the
# long units run side by side at the start instead of leaving one worker alone with them at
# the end. (pytest-xdist 3.8's `loadgroup` cannot group on pytest 9: it renames node ids
# through an attribute pytest 9 no longer reads.)
PER_STORE = {"tests/test_interrupted.py", "tests/test_lineage.py"}


def work_unit(nodeid: str) -> str:
    module, _, test = nodeid.partition("::")
    if module in PER_STORE and test.endswith("]"):
        return f"{module}:{test[test.index('[') + 1:-1].split('-')[0]}"
    return module


@pytest.hookimpl(optionalhook=True)  # an xdist hook: fine without xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the order below
    return WorkUnitScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after pytest has ordered tests by their fixtures' params
def pytest_collection_modifyitems(config, items):
    slow = {item.nodeid.partition("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.partition("::")[0] not in slow)  # stable


@pytest.fixture(scope="session")
def postgres_tracking_server(tmp_path_factory):
    """One ``mlflow server`` on a throwaway PostgreSQL cluster for the whole session (its
    database migrations take a while); skips with the reason where PostgreSQL is missing."""
    from servers import tracking_server_on

    with tracking_server_on("postgres", tmp_path_factory.mktemp("postgres-server")) as url:
        yield url


@pytest.fixture
def tracking(tmp_path):
    """A throwaway local tracking store (SQLite) and experiment for the test."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    yield tmp_path
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set_experiment exports it


class ParseCounter:
    """The ``.tflite`` flatbuffers parsed (``TFLiteModel`` built from bytes) while the
    :func:`count_parses` fixture is active, by content."""

    def __init__(self):
        self.digests: list[str] = []

    @property
    def total(self) -> int:
        return len(self.digests)

    def of(self, model_bytes) -> int:
        """How often these bytes were parsed."""
        import hashlib

        return self.digests.count(hashlib.sha256(bytes(model_bytes)).hexdigest())

    def clear(self):
        """Count from here on (after a chain's set-up steps)."""
        self.digests.clear()

    def __repr__(self):
        return f"ParseCounter(total={self.total}, digests={[d[:8] for d in self.digests]})"


@pytest.fixture
def count_parses(monkeypatch):
    """Counts flatbuffer parses by wrapping the real ``TFLiteModel.__init__`` (the one parse
    of the package: every reader goes through it). For parse-count tests of a call chain:
    ``assert count_parses.of(model_bytes) == 1``."""
    import hashlib

    from mlflow_tflite_keras.tflite_model import TFLiteModel

    counter = ParseCounter()
    real_init = TFLiteModel.__init__

    def counting_init(self, model_bytes):
        counter.digests.append(hashlib.sha256(bytes(model_bytes)).hexdigest())
        real_init(self, model_bytes)

    monkeypatch.setattr(TFLiteModel, "__init__", counting_init)
    return counter
