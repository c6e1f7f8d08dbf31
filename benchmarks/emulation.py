"""Cost of quantization emulation: ``to_keras(emulate_quantization=True)`` vs the float
reconstruction of the same quantized ``.tflite`` (MobileNetV2 at 224x224, the cached test
models, full-int8 and dynamic-range).

Each variant is called through ``tf.function(lambda x: model(x, training=False))`` at batch 1
and 16 (median of ``--repeats`` timed calls after a warm-up); the parity of each against the
interpreter is printed too (emulated: full-int8 in steps with the share at 0 steps).

Run: .venv/bin/python benchmarks/emulation.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _time(fn, x, repeats):
    fn(x)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import tensorflow as tf
    from converter.app_models import app_tflite, image_batch

    from mlflow_tflite_keras.converter import convert
    from mlflow_tflite_keras.converter.parity import check_parity

    for recipe in ("full-int8", "dynamic-range"):
        data = app_tflite("MobileNetV2", recipe)
        x4 = image_batch(4)
        row = {}
        for emulate in (False, True):
            model = convert(data, emulate_quantization=emulate).model
            report = check_parity(data, model, x4, compiled=False)
            out = report.outputs[0]
            fn = tf.function(lambda x, m=model: m(x, training=False))
            times = {n: _time(fn, image_batch(n), args.repeats) for n in (1, 16)}
            row[emulate] = times
            figures = (f"steps={out.max_steps:.2f} exact={out.share_exact:.4f}"
                       if out.max_steps is not None else f"rel={out.max_rel_error:.3g}")
            print(f"MobileNetV2 {recipe} {'emulated' if emulate else 'float   '}: "
                  f"batch 1 {times[1] * 1e3:.1f} ms, batch 16 {times[16] * 1e3:.1f} ms; "
                  f"parity {'PASSED' if report.passed else 'FAILED'} {figures}")
        print(f"  emulated / float: batch 1 {row[True][1] / row[False][1]:.2f}x, "
              f"batch 16 {row[True][16] / row[False][16]:.2f}x")


if __name__ == "__main__":
    main()
