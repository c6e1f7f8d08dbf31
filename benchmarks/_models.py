"""Benchmark models, generated once and cached next to the test models."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from model_factory import keras_model_tflite  # noqa: E402


def make_mobilenet_v2():
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))


def mobilenet_v2(recipe: str = "float32") -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    return keras_model_tflite(
        "bench-mobilenet-v2", make_mobilenet_v2, recipe,
        representative=lambda: rng.uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32))
