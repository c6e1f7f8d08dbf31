"""Converter benchmark: conversion time, reconstructed-model speed and conversion memory.

MobileNetV2 float32 (224x224, weights=None, the cached model of ``_models.py``):

* conversion time: ``to_keras`` + ``check_parity`` (8 random samples) in a fresh process,
  after the imports (target <= 15 s);
* inference: the reconstructed model vs the original Keras model, same input, batch 1 and
  16, both through ``tf.function(lambda x: model(x, training=False))`` and both through
  ``model.predict`` (target: ratio <= 1.25);
* memory: peak RSS during ``to_keras`` minus the baseline RSS of a process that has imported
  TensorFlow, Keras and this package and built nothing (target <= 3x the ``.tflite`` size).
  Each measurement runs in its own subprocess; the peak is the kernel's VmHWM, reset after
  the imports through ``/proc/self/clear_refs`` (a 2 ms RSS sampler where that is refused).

Run: .venv/bin/python benchmarks/convert.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
TIME_TARGET_S = 15.0
INFERENCE_TARGET = 1.25
MEMORY_TARGET = 3.0  # x the .tflite size, above the baseline
LARGE_MEMORY_TARGET = 2.0  # x the float32 weight bytes, above the TF baseline (--memory)


# ---- memory ---------------------------------------------------------------------------------

def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


class PeakRSS:
    """Peak RSS over a block: the kernel's high-water mark reset on entry, or sampling."""

    def __enter__(self):
        self.start = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.sampler = None
        except OSError:
            self.samples = [self.start]
            self.stop = threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.002):
            self.samples.append(_status("VmRSS"))

    def __exit__(self, *exc):
        if self.sampler is None:
            self.peak = _status("VmHWM")
        else:
            self.stop.set()
            self.sampler.join()
            self.peak = max(self.samples + [_status("VmRSS")])
        self.end = _status("VmRSS")
        return False


def _imports():
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import mlflow_tflite_keras.converter  # noqa: F401
    import mlflow_tflite_keras.converter.parity  # noqa: F401


def _warm_up():
    """What any Keras model build pays once per process: a tiny functional model with set
    weights, called once."""
    import gc

    import keras
    import numpy as np

    x = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, name="warm_conv")
    dense = keras.layers.Dense(2, name="warm_dense")
    model = keras.Model(x, dense(keras.layers.ReLU()(conv(x))))
    conv.set_weights([np.ones((3, 3, 3, 4), "float32"), np.zeros(4, "float32")])
    model(np.zeros((1, 8, 8, 3), "float32"), training=False)
    del model, conv, dense, x
    gc.collect()


def child(kind: str, path: str) -> dict:
    """One measurement in this (fresh) process; returns figures in bytes / seconds."""
    import numpy as np
    out = {}
    t0 = time.perf_counter()
    if kind == "baseline-tf":  # TensorFlow and Keras only
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    else:
        _imports()
    out["import_s"] = time.perf_counter() - t0
    out["baseline"] = _status("VmRSS")
    if kind.startswith("baseline"):
        return out
    if kind == "warm":
        _warm_up()  # TF/Keras runtime initialised by a tiny functional model, then measure
        out["baseline"] = _status("VmRSS")
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity

    with PeakRSS() as convert_mem:
        t = time.perf_counter()
        model = to_keras(path)
        out["to_keras_s"] = time.perf_counter() - t
    out["convert_peak"] = convert_mem.peak
    out["after_convert"] = convert_mem.end
    out["weight_bytes"] = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    if kind == "warm":
        return out
    with PeakRSS() as parity_mem:
        t = time.perf_counter()
        report = check_parity(path, model)
        out["parity_s"] = time.perf_counter() - t
    out["parity_peak"] = parity_mem.peak
    out["parity_passed"] = report.passed
    out["n_layers"] = len(model.layers)
    return out


def run_child(kind: str, path: str) -> dict:
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, path],
        capture_output=True, text=True, timeout=600, cwd=HERE)
    if result.returncode:
        raise RuntimeError(f"child {kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- inference ------------------------------------------------------------------------------

def _median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def inference(data: bytes, repeats: int) -> list[tuple]:
    import numpy as np
    import tensorflow as tf

    from _models import make_mobilenet_v2
    from mlflow_tflite_keras.converter import to_keras

    original = make_mobilenet_v2()
    rebuilt = to_keras(data)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 16):
        x = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
        xt = tf.constant(x)
        fns = {}
        for label, model in (("original", original), ("rebuilt", rebuilt)):
            compiled = tf.function(lambda v, m=model: m(v, training=False))
            fns[("tf.function", label)] = lambda c=compiled: c(xt).numpy()
            fns[("predict", label)] = lambda m=model: m.predict(x, batch_size=batch, verbose=0)
        for fn in fns.values():
            fn()  # trace / build the predict function
        for method in ("tf.function", "predict"):
            # Interleaved rounds share machine noise; best round of each.
            times = {"original": [], "rebuilt": []}
            for _ in range(3):
                for label in times:
                    times[label].append(_median_time(fns[(method, label)],
                                                     max(1, repeats // 3)))
            rows.append((method, batch, min(times["original"]), min(times["rebuilt"])))
    return rows


# ---- report ---------------------------------------------------------------------------------

def run_children(data: bytes, *kinds) -> list[dict]:
    """:func:`run_child` of each kind on ``data`` written to a temporary file."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.tflite")
        with open(path, "wb") as f:
            f.write(data)
        return [run_child(kind, path) for kind in kinds]


def large_memory():
    """Peak RSS of ``to_keras`` on large models, in float32 weight bytes (the Keras model's
    variables): above a TensorFlow + Keras baseline (target <= 2x on float32), above the
    converter's imports, and above a warm Keras runtime."""
    from _models import app

    print(f"{'model':<24} {'file MiB':>8} {'fp32 weights MiB':>16} {'/TF baseline':>12} "
          f"{'/imports':>9} {'/warm':>7} {'kept':>6}  status")
    for recipe in ("float32", "float16"):
        data = app("ResNet50", recipe)
        base_tf, base, warm = run_children(data, "baseline-tf", "baseline", "warm")
        weights = warm["weight_bytes"]
        peak = warm["convert_peak"]
        ratio = (peak - base_tf["baseline"]) / weights
        print(f"{'ResNet50 64x64 ' + recipe:<24} {len(data) / 2 ** 20:>8.1f} "
              f"{weights / 2 ** 20:>16.1f} {(peak - base_tf['baseline']) / weights:>12.2f} "
              f"{(peak - base['baseline']) / weights:>9.2f} "
              f"{(peak - warm['baseline']) / weights:>7.2f} "
              f"{(warm['after_convert'] - warm['baseline']) / weights:>6.2f}  "
              f"{'OK' if ratio <= LARGE_MEMORY_TARGET else 'MISS'}", flush=True)
    print("(ratios: peak RSS during to_keras above each baseline / float32 weight bytes; "
          "kept: RSS still held after, model alive; target <= 2.0 above the TF baseline)")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true",
                        help="only the conversion memory of the large models (ResNet50 64x64 "
                             "float32 and float16), as ratios to their float32 weight bytes")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.memory:
        return large_memory()

    from _models import mobilenet_v2

    data = mobilenet_v2("float32")
    size = len(data)
    mb = 2 ** 20
    base_tf, base, conv, warm = run_children(data, "baseline-tf", "baseline", "convert", "warm")
    rows = inference(data, args.repeats)

    def status(ok):
        return "OK" if ok else "MISS"

    print(f"MobileNetV2 float32 224x224, weights=None: {size / mb:.1f} MiB .tflite, "
          f"{conv['n_layers']} Keras layers rebuilt; {os.cpu_count()} CPUs")
    print(f"{'measure':<50} {'value':>11} {'baseline':>11} {'ratio':>7} "
          f"{'target':>9}  status")
    line = "{:<50} {:>11} {:>11} {:>7} {:>9}  {}"
    total = conv["to_keras_s"] + conv["parity_s"]
    print(line.format("conversion: to_keras + check_parity (cold)", f"{total:.2f} s", "-", "-",
                      f"<= {TIME_TARGET_S:.0f} s", status(total <= TIME_TARGET_S)))
    print(line.format("  to_keras", f"{conv['to_keras_s']:.2f} s", "", "", "", ""))
    print(line.format(f"  check_parity (8 samples, "
                      f"{'passed' if conv['parity_passed'] else 'FAILED'})",
                      f"{conv['parity_s']:.2f} s", "", "", "", ""))
    worst = 0.0
    for method, batch, t_orig, t_rebuilt in rows:
        ratio = t_rebuilt / t_orig
        worst = max(worst, ratio)
        print(line.format(f"inference {method}, batch {batch} (rebuilt vs orig)",
                          f"{t_rebuilt * 1e3:.1f} ms", f"{t_orig * 1e3:.1f} ms", f"{ratio:.2f}",
                          f"<= {INFERENCE_TARGET}", status(ratio <= INFERENCE_TARGET)))
    extra = conv["convert_peak"] - base["baseline"]
    ratio = extra / size
    print(line.format("peak RSS during to_keras", f"{conv['convert_peak'] / mb:.0f} MiB",
                      f"{base['baseline'] / mb:.0f} MiB", "", "", ""))
    print(line.format("  above baseline, in .tflite sizes", f"{extra / mb:.1f} MiB",
                      f"{size / mb:.1f} MiB", f"{ratio:.2f}x", f"<= {MEMORY_TARGET:.0f}x",
                      status(ratio <= MEMORY_TARGET)))
    print(line.format("  RSS kept after to_keras (model alive)",
                      f"{(conv['after_convert'] - base['baseline']) / mb:.1f} MiB", "", "", "",
                      ""))
    warm_extra = warm["convert_peak"] - warm["baseline"]
    print(line.format("  above a warm baseline (TF/Keras runtime used)",
                      f"{warm_extra / mb:.1f} MiB", f"{size / mb:.1f} MiB",
                      f"{warm_extra / size:.2f}x", "", "info"))
    print(line.format("peak RSS during check_parity (8 x 224x224)",
                      f"{(conv['parity_peak'] - base['baseline']) / mb:.1f} MiB", "", "", "",
                      "info"))
    print(line.format("baseline after a tiny warm-up model", f"{warm['baseline'] / mb:.0f} MiB",
                      "", "", "", "info"))
    print(line.format("baseline: import TF + Keras only", f"{base_tf['baseline'] / mb:.0f} MiB",
                      "", "", "", "info"))
    print(line.format("baseline: + mlflow_tflite_keras.converter",
                      f"{base['baseline'] / mb:.0f} MiB", "", "", "", "info"))
    print(line.format("  (process of the conversion, same imports)",
                      f"{conv['baseline'] / mb:.0f} MiB", "", "", "", "info"))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
