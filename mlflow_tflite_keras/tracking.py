"""The embedded default: a local SQLite tracking store plus local artifacts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["experiment", "failed_run_on_error", "start_run", "use_default_tracking"]

DEFAULT_HOME = ".mlflow"
_artifact_root: Path | None = None  # set when the embedded store is in use


def use_default_tracking(home: str | os.PathLike | None = None) -> str:
    """Use ``MLFLOW_TRACKING_URI`` when set; otherwise a SQLite store in ``home``
    (default ``./.mlflow``) with artifacts beside it. Returns the tracking URI in use."""
    global _artifact_root
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = Path(home or DEFAULT_HOME).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        _artifact_root = root / "artifacts"
    mlflow.set_tracking_uri(uri)
    return uri


def experiment(name: str) -> str:
    """Get or create an experiment (artifacts in the embedded store's folder when in use)."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (_artifact_root / name).as_uri() if _artifact_root is not None else None
    return mlflow.create_experiment(name, artifact_location=location)


def start_run(experiment_id: str | None = None, run_name: str | None = None):
    """A new run, or the run ``mlflow run`` started for this process (``MLFLOW_RUN_ID``)."""
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name)


@contextlib.contextmanager
def failed_run_on_error(failure_tag: str, reason_prefix: str = ""):
    """When the block raises, end the active run FAILED with the reason in ``failure_tag``
    (then re-raise): a run that registered nothing says why."""
    import mlflow

    try:
        yield
    except BaseException as e:
        mlflow.set_tag(failure_tag, f"{reason_prefix}{e}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
