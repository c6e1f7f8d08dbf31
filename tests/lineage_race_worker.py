"""One side of tests/test_lineage_race.py: ``register_keras_version`` on source ``PREFIX-R/1``
for R = 0..ROUNDS-1, entering the linking step of each round together with the other worker.

    python lineage_race_worker.py TRACKING_URI PREFIX ROUNDS BARRIER_DIR WORKER_ID

Fault injection around the real calls, to make the race likely rather than rare: both workers
wait at a file barrier before linking, and every registry read sleeps a little before
returning (a read-modify-write from a stale read is what loses updates). Prints one JSON line
per round.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage


def main(uri, prefix, rounds, barrier, me):
    mlflow.set_tracking_uri(uri)
    barrier = Path(barrier)
    current = {"round": 0}
    rng = random.Random(int(me) * 7919)

    def wait_for_both():
        r = current["round"]
        (barrier / f"{r}-{me}").touch()
        deadline = time.monotonic() + 180
        while not all((barrier / f"{r}-{w}").exists() for w in ("0", "1")):
            if time.monotonic() > deadline:
                raise TimeoutError("the other worker never reached the linking step")
            time.sleep(0.005)

    real_link = lineage._link_source

    def synchronized_link(*args, **kwargs):
        wait_for_both()
        return real_link(*args, **kwargs)

    lineage._link_source = synchronized_link
    for method in ("get_model_version", "get_logged_model"):
        real = getattr(MlflowClient, method)

        def slow_read(self, *args, _real=real, **kwargs):
            result = _real(self, *args, **kwargs)
            time.sleep(rng.uniform(0.0, 0.15))
            return result

        setattr(MlflowClient, method, slow_read)

    for r in range(rounds):
        current["round"] = r
        version = lineage.register_keras_version(f"models:/{prefix}-{r}/1")
        print("RESULT", json.dumps({"round": r, "ref": f"{version.name}/{version.version}"}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
