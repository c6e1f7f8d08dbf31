"""Pyfunc predict time vs the raw LiteRT interpreter, same model, same run.

MobileNetV2 (weights=None) float32 at batch 1 and batch 32. Target: ratio <= 1.05.
Run: .venv/bin/python benchmarks/pyfunc_overhead.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import mlflow  # noqa: E402
from _models import mobilenet_v2  # noqa: E402


def raw_runner(model_bytes: bytes, batch: int, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes, num_threads=num_threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [batch, 224, 224, 3])
    interp.allocate_tensors()

    def run(x):
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


def timed(fn, x, repeats):
    fn(x)  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    data = mobilenet_v2("float32")
    with tempfile.TemporaryDirectory() as d:
        mlflow.tflite_keras.save_model(data, os.path.join(d, "m"))
        pyfunc = mlflow.pyfunc.load_model(os.path.join(d, "m"))
        rng = np.random.default_rng(0)
        print(f"MobileNetV2 float32 ({len(data) / 1e6:.1f} MB), median of {args.repeats}")
        print(f"{'batch':>6} {'raw ms':>9} {'pyfunc ms':>10} {'ratio':>7}")
        ratios = []
        for batch in (1, 32):
            x = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
            # Same thread count as the pyfunc (all cores unless configured).
            raw = raw_runner(data, batch, pyfunc.get_raw_model()._runner.num_threads)
            np.testing.assert_array_equal(pyfunc.predict(x), raw(x))
            # Interleave to share any machine noise between the two.
            t_raw, t_pyfunc = [], []
            for _ in range(3):
                t_raw.append(timed(raw, x, args.repeats // 3 or 1))
                t_pyfunc.append(timed(pyfunc.predict, x, args.repeats // 3 or 1))
            r, p = min(t_raw), min(t_pyfunc)
            ratios.append(p / r)
            print(f"{batch:>6} {r * 1e3:>9.2f} {p * 1e3:>10.2f} {p / r:>7.3f}")
        print(f"max ratio {max(ratios):.3f} (target <= 1.05): "
              f"{'OK' if max(ratios) <= 1.05 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
