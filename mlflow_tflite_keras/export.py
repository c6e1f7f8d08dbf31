"""Keras -> ``.tflite`` with a named quantization recipe (TensorFlow needed)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

RECIPES = ("float32", "float16", "dynamic-range", "full-int8", "full-uint8", "int16x8")
_ALIASES = {"none": "float32", "fp32": "float32", "fp16": "float16", "dynamic": "dynamic-range",
            "int8": "full-int8", "uint8": "full-uint8"}


def normalize_recipe(recipe: str) -> str:
    name = _ALIASES.get(str(recipe).lower(), str(recipe).lower())
    if name not in RECIPES:
        raise MlflowException(f"Unknown quantization recipe '{recipe}'; use one of {RECIPES}.",
                              error_code=INVALID_PARAMETER_VALUE)
    return name


def representative_dataset(data, limit: int = 200) -> Callable[[], Iterable[list[np.ndarray]]]:
    """A TFLiteConverter representative dataset from an array, a list of arrays (one per
    input) or a callable that already yields lists of arrays."""
    if callable(data):
        return data
    inputs = list(data) if isinstance(data, (list, tuple)) else [data]
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    count = min(limit, min(len(x) for x in inputs))

    def generate():
        for i in range(count):
            yield [x[i:i + 1] for x in inputs]

    return generate


def keras_to_tflite(model, recipe: str = "float32", representative_data=None,
                    inference_input_type=None, inference_output_type=None) -> bytes:
    """Convert a Keras model to ``.tflite`` bytes with one of :data:`RECIPES`.

    Full-integer recipes need ``representative_data``; their interface types default to the
    recipe's integer type (int8 / uint8 / int16), pass ``np.float32`` to keep float I/O.
    """
    import tensorflow as tf

    recipe = normalize_recipe(recipe)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        # Keras 3's own SavedModel export keeps dict inputs/outputs and their names, which
        # TFLiteConverter.from_keras_model (a tf_keras-era path) does not.
        model.export(saved_model_dir, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        return _convert(converter, recipe, representative_data, inference_input_type,
                        inference_output_type)


def _convert(converter, recipe, representative_data, inference_input_type,
             inference_output_type) -> bytes:
    import tensorflow as tf

    if recipe == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif recipe == "dynamic-range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif recipe in ("full-int8", "full-uint8", "int16x8"):
        if representative_data is None:
            raise MlflowException(f"Recipe '{recipe}' needs representative_data.",
                                  error_code=INVALID_PARAMETER_VALUE)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative_data)
        io_type = {"full-int8": tf.int8, "full-uint8": tf.uint8, "int16x8": tf.int16}[recipe]
        if recipe == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.as_dtype(inference_input_type or io_type)
        converter.inference_output_type = tf.as_dtype(inference_output_type or io_type)
    try:
        # TensorFlow prints its SavedModel export summary to stdout; keep CLI output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as e:
        raise MlflowException(f"TFLiteConverter failed for recipe '{recipe}': {e}") from e
