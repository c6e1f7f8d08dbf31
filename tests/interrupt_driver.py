"""Driver for tests/test_interrupted.py: run a registry operation in a process of its own, so
the test can SIGKILL it at a chosen moment.

    python interrupt_driver.py log MODEL.tflite NAME   # log_model(..., registered_model_name=NAME)
    python interrupt_driver.py convert SOURCE_URI      # register_keras_version(SOURCE_URI)

The tracking store and experiment come from MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_ID.

The driver imports everything (TensorFlow takes seconds) without touching the store, prints
``READY``, then for each ``go`` line on stdin forks a child that runs the operation once:

    CHILD <pid>                      (from the driver, right after the fork)
    START                            (from the child, then the operation)
    PHASE <step> / PHASE <step> done (the registry steps: upload, version creation, tagging)
    DONE <name>/<version>            (the child finished)
    EXIT <pid> <wait status>         (from the driver, once the child is gone)

With ``go K`` the child SIGKILLs itself just before its K-th registry step (the timed kills
of the test rarely land in those few milliseconds). The test SIGKILLs the child (a whole process: the store and artifact uploads see a client
vanish mid-operation) and the driver stays ready for the next one. TensorFlow's thread pools
and MLflow's store connections are only created in the children.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback

_TRACED = ("log_model_artifacts", "_create_model_version", "update_model_version",
           "set_model_version_tag", "set_logged_model_tags", "delete_model_version")


def _say(line: str) -> None:
    """One line in one write: the driver and its child share the pipe."""
    os.write(1, (line + "\n").encode())


_steps = {"begun": 0, "kill_at": 0}  # in a child: registry steps begun, step to die at


def _trace_registry_steps() -> None:
    from mlflow.tracking import MlflowClient

    for method in _TRACED:
        original = getattr(MlflowClient, method)

        @functools.wraps(original)
        def traced(*args, __original=original, __method=method, **kwargs):
            _steps["begun"] += 1
            if _steps["begun"] == _steps["kill_at"]:
                _say(f"KILLED before {__method}")
                os.kill(os.getpid(), signal.SIGKILL)
            _say(f"PHASE {__method}")
            result = __original(*args, **kwargs)
            _say(f"PHASE {__method} done")
            return result

        setattr(MlflowClient, method, traced)


def _operation(argv: list[str]):
    import mlflow
    import mlflow.tflite_keras  # noqa: F401  (the flavor, eagerly)
    from mlflow_tflite_keras.flavor import log_model

    op = argv[0]
    if op == "log":
        path, name = argv[1], argv[2]

        def run() -> str:
            with mlflow.start_run(run_name="interrupted-log"):
                info = log_model(path, name="model", registered_model_name=name)
            return f"{name}/{info.registered_model_version}"
    elif op == "convert":
        # Everything register_keras_version imports lazily, so only the operation is timed.
        import keras  # noqa: F401
        import mlflow.keras  # noqa: F401

        from mlflow_tflite_keras.converter import convert  # noqa: F401
        from mlflow_tflite_keras.converter.parity import check_parity  # noqa: F401
        from mlflow_tflite_keras.lineage import register_keras_version

        def run() -> str:
            version = register_keras_version(argv[1])
            return f"{version.name}/{version.version}"
    else:
        raise SystemExit(f"unknown operation {op!r}")
    return run


def main(argv: list[str]) -> None:
    sys.stdout = sys.stderr  # stdout (fd 1) carries only the protocol lines above
    run = _operation(argv)
    _trace_registry_steps()
    _say("READY")
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "go":
            break
        pid = os.fork()
        if pid == 0:
            _steps["kill_at"] = int(words[1]) if len(words) > 1 else 0
            code = 0
            try:
                _say("START")
                _say(f"DONE {run()}")
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _say(f"CHILD {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"EXIT {pid} {status}")


if __name__ == "__main__":
    main(sys.argv[1:])
