import os
import sys
from pathlib import Path

# Quiet TensorFlow's C++ logging in test output; tests import it lazily.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres_tracking_server(tmp_path_factory):
    """One ``mlflow server`` on a throwaway PostgreSQL cluster for the whole session (its
    database migrations take a while); skips with the reason where PostgreSQL is missing."""
    from servers import tracking_server_on

    with tracking_server_on("postgres", tmp_path_factory.mktemp("postgres-server")) as url:
        yield url
