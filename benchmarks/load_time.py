"""Load time of the flavor vs LiteRT's own load, same model, same run.

Models (generated locally, cached): ResNet50 64x64 float16 (~47 MB) and float32 (~94 MB),
MobileNetV2 64x64 float32 (~9 MB). For each, the best of ``--repeats`` (files in the page
cache, as on a serving host after the first load):

* LiteRT: ``Interpreter(model_path=...)`` + ``allocate_tensors()`` + the first ``invoke``;
* flavor: ``mlflow.tflite_keras.flavor._load_pyfunc`` (what ``mlflow.pyfunc.load_model``
  calls), without the first prediction, which creates the interpreter (LiteRT's share);
* pyfunc: ``mlflow.pyfunc.load_model`` + the first ``predict`` (MLflow reads MLmodel,
  checks requirements, ...).

Target: flavor <= 10 ms (+ LiteRT's own load, which happens at the first prediction).
``import mlflow`` is not counted (the flavor cannot change it); run
``python -X importtime -c "import mlflow"`` for that.
Run: .venv/bin/python benchmarks/load_time.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402
from _models import app, inputs_for  # noqa: E402

MODELS = {
    "ResNet50 64x64 float16": lambda: app("ResNet50", "float16"),
    "ResNet50 64x64 float32": lambda: app("ResNet50", "float32"),
    "MobileNetV2 64x64 float32": lambda: app("MobileNetV2", "float32"),
}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    from mlflow_tflite_keras.flavor import _load_pyfunc

    print(f"{'model':<27} {'MB':>5} {'LiteRT ms':>10} {'flavor ms':>10} {'pyfunc ms':>10} "
          f"{'pyfunc/LiteRT':>13}")
    with tempfile.TemporaryDirectory() as d:
        for label, make in MODELS.items():
            data = make()
            path = os.path.join(d, label.replace(" ", "-"))
            mlflow.tflite_keras.save_model(data, path)
            tflite = os.path.join(path, "model.tflite")
            x = inputs_for(data, 1)
            threads = os.cpu_count() or 1

            def litert():
                interp = Interpreter(model_path=tflite, num_threads=threads)
                interp.allocate_tensors()
                interp.set_tensor(interp.get_input_details()[0]["index"], x)
                interp.invoke()

            def pyfunc():
                mlflow.pyfunc.load_model(path).predict(x)

            t_litert = best(litert, args.repeats)
            t_flavor = best(lambda: _load_pyfunc(path), args.repeats)
            t_pyfunc = best(pyfunc, args.repeats)
            print(f"{label:<27} {len(data) / 1e6:>5.0f} {t_litert * 1e3:>10.1f} "
                  f"{t_flavor * 1e3:>10.2f} {t_pyfunc * 1e3:>10.1f} "
                  f"{t_pyfunc / t_litert:>13.2f}", flush=True)
    print("target: flavor <= 10 ms (+ LiteRT's own load)")


if __name__ == "__main__":
    main()
