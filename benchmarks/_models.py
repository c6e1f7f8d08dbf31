"""Benchmark models, generated once and cached next to the test models (no downloads).

Every model's outputs depend on its input: the tiny one is trained on the digits, the image
ones have batch-norm statistics calibrated on data (``tests/converter/app_models.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(_TESTS))
sys.path.insert(0, str(_TESTS / "converter"))

from model_factory import (  # noqa: E402
    calibrate_batch_norm,
    digits_trained_tflite,
    keras_model_tflite,
)


def make_mobilenet_v2():
    """MobileNetV2 at its standard 224x224 input (~14 MB float32, ~300 MFLOPs), batch-norm
    statistics calibrated on data so that its outputs depend on the input."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    images = np.random.default_rng(2).uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32)
    return calibrate_batch_norm(model, images)


def mobilenet_v2(recipe: str = "float32") -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    return keras_model_tflite(
        "bench-mobilenet-v2", make_mobilenet_v2, recipe,
        representative=lambda: rng.uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32))


def make_tiny_mlp():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def tiny() -> bytes:
    """A 64-32-10 MLP trained 3 epochs on the digits (8x8x1 -> 10), a few KB."""
    return digits_trained_tflite("bench-tiny-mlp", make_tiny_mlp)


def app(name: str, recipe: str = "float32") -> bytes:
    """A Keras application (64x64x3 -> 10) with calibrated batch norm: MobileNetV2 (~9 MB
    float32), ResNet50 (~94 MB float32, ~47 MB float16), ..."""
    from app_models import app_tflite

    return app_tflite(name, recipe)


def inputs_for(model_bytes: bytes, batch: int, seed: int = 0):
    """Random inputs in [0, 1) of the model's first input's row shape and dtype."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=model_bytes).get_input_details()[0]
    shape = (batch, *detail["shape"][1:])
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(detail["dtype"])
