"""Cost of quantization emulation: ``to_keras(emulate_quantization=True)`` vs the float
reconstruction of the same quantized ``.tflite`` (MobileNetV2 at 64x64, as
tests/converter/app_models.py builds it, and the audio CNN, full-int8 and dynamic-range; the
dynamic-range digits LSTM, a WHILE loop: the cached test models).

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
    from model_factory import (digits, keras_model_tflite, make_audio_cnn, make_digits_lstm,
                               tones)

    from mlflow_tflite_keras.converter import convert
    from mlflow_tflite_keras.converter.parity import check_parity

    def audio(recipe):  # the cached models of tests/converter/test_emulation.py
        rep = (lambda: tones()[0][:64]) if recipe == "full-int8" else None
        return keras_model_tflite("audio-cnn-emulation", make_audio_cnn, recipe,
                                  representative=rep)

    # (name, the .tflite bytes, a batch of n inputs)
    cases = [(f"MobileNetV2 {r}", lambda r=r: app_tflite("MobileNetV2", r), image_batch)
             for r in ("full-int8", "dynamic-range")]
    cases += [(f"audio CNN {r}", lambda r=r: audio(r), lambda n: tones(n, seed=1)[0])
              for r in ("full-int8", "dynamic-range")]
    cases.append(("digits LSTM (WHILE) dynamic-range",
                  lambda: keras_model_tflite("digits-lstm-emulation", make_digits_lstm,
                                             "dynamic-range"),
                  lambda n: digits()[0][-n:, ..., 0]))
    for name, source, batch in cases:
        data = source()
        row = {}
        for emulate in (False, True):
            model = convert(data, emulate_quantization=emulate).model
            report = check_parity(data, model, batch(4), compiled=False)
            out = report.outputs[0]
            fn = tf.function(lambda x, m=model: m(x, training=False))
            times = {n: _time(fn, batch(n), args.repeats) for n in (1, 16)}
            row[emulate] = times
            figures = (f"steps={out.max_steps:.2f} exact={out.share_exact:.4f}"
                       if out.max_steps is not None else f"rel={out.max_rel_error:.3g}")
            print(f"{name} {'emulated' if emulate else 'float   '}: "
                  f"batch 1 {times[1] * 1e3:.1f} ms, batch 16 {times[16] * 1e3:.1f} ms; "
                  f"parity {'PASSED' if report.passed else 'FAILED'} {figures}")
        print(f"  emulated / float: batch 1 {row[True][1] / row[False][1]:.2f}x, "
              f"batch 16 {row[True][16] / row[False][16]:.2f}x")


if __name__ == "__main__":
    main()
