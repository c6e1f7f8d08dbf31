"""Keras -> ``.tflite`` with a named quantization recipe (TensorFlow needed, imported lazily).

What each recipe is, and how it is made, is :mod:`mlflow_tflite_keras.recipes`; this module
applies it with TFLiteConverter or ai-edge-quantizer. Exporting *like a source model* (its
interface, its recipe) is :mod:`mlflow_tflite_keras.export`.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable, Iterable

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.recipes import (
    CONVERTER_RECIPES,
    FULL_INTEGER,
    normalize_recipe,
    quantizer_config,
)
from mlflow_tflite_keras.tflite_model import TFLiteModel

__all__ = ["convert_with_recipe", "export_saved_model", "keras_to_tflite",
           "quantize_float_model", "representative_dataset"]


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
    """Convert a Keras model to ``.tflite`` bytes with one of
    :data:`~mlflow_tflite_keras.recipes.RECIPES`.

    Full-integer recipes need ``representative_data``; their interface types default to the
    recipe's integer type (int8 / uint8 / int16), pass ``np.float32`` to keep float I/O.
    """
    import tensorflow as tf

    recipe = normalize_recipe(recipe)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        export_saved_model(model, saved_model_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        return convert_with_recipe(converter, recipe, representative_data,
                                   inference_input_type, inference_output_type)


def export_saved_model(model, directory: str) -> None:
    """Keras 3's own SavedModel export: it keeps dict inputs/outputs and their names, which
    TFLiteConverter.from_keras_model (a tf_keras-era path) does not. A batch size the model
    declares (``keras.Input(..., batch_size=1)``) is kept: the export would otherwise make it
    dynamic, which models with recurrent layers cannot be lowered with."""
    import keras
    import tensorflow as tf

    signature = None
    if model.inputs and all(t.shape and t.shape[0] is not None for t in model.inputs):
        struct = getattr(model, "_inputs_struct", None)
        struct = model.inputs if struct is None else struct
        signature = [keras.tree.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype, name=t.name), struct)]
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(directory, format="tf_saved_model", verbose=False,
                     input_signature=signature)


def convert_with_recipe(converter, recipe: str, representative_data=None,
                        inference_input_type=None, inference_output_type=None) -> bytes:
    """Run a ``tf.lite.TFLiteConverter`` with a recipe: TFLiteConverter's own settings where it
    has the recipe (:data:`~mlflow_tflite_keras.recipes.CONVERTER_RECIPES`), else a float
    conversion quantized by ai-edge-quantizer (:func:`quantize_float_model`). Builtin ops
    only: a Flex op would need the Select-TF-ops runtime, which the source's app does not
    have."""
    import tensorflow as tf

    recipe = normalize_recipe(recipe)
    settings = CONVERTER_RECIPES.get(recipe)
    if settings is None:
        return quantize_float_model(convert_with_recipe(converter, "float32"), recipe)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if "optimizations" in settings:
        converter.optimizations = [getattr(tf.lite.Optimize, o) for o in settings["optimizations"]]
    if "supported_types" in settings:
        converter.target_spec.supported_types = [tf.as_dtype(t)
                                                 for t in settings["supported_types"]]
    full_integer = FULL_INTEGER.get(recipe)
    if full_integer is not None:
        if representative_data is None:
            raise MlflowException(f"Recipe '{recipe}' needs representative_data.",
                                  error_code=INVALID_PARAMETER_VALUE)
        converter.representative_dataset = representative_dataset(representative_data)
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, full_integer.ops_set)]
        converter.inference_input_type = tf.as_dtype(inference_input_type or full_integer.io_type)
        converter.inference_output_type = tf.as_dtype(inference_output_type
                                                       or full_integer.io_type)
    try:
        # TensorFlow prints its SavedModel export summary to stdout; keep CLI output clean.
        # Calibration uses tf.lite.Interpreter, which warns that it is deprecated.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            return converter.convert()
    except Exception as e:
        raise MlflowException(f"TFLiteConverter failed for recipe '{recipe}': {e}") from e


def quantize_float_model(float_model: bytes, recipe: str) -> bytes:
    """Quantize a float ``.tflite`` with ai-edge-quantizer to a weight-only or dynamic-range
    recipe with int8 or int4 weights, channelwise or blockwise (``...-blockwise-<N>``: INT4
    constants with ``BlockwiseQuantization`` of that block size, on the ops that support it,
    e.g. FULLY_CONNECTED). Raises if nothing was quantized: the recipe would not be kept."""
    from ai_edge_quantizer import qtyping, quantizer

    recipe = normalize_recipe(recipe)
    weight_only, bits, block_size = quantizer_config(recipe)
    granularity = (qtyping.QuantGranularity(f"BLOCKWISE_{block_size}") if block_size
                   else qtyping.QuantGranularity.CHANNELWISE)
    quant = quantizer.Quantizer(bytearray(float_model))
    add = quant.add_weight_only_config if weight_only else quant.add_dynamic_config
    add(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=bits,
        granularity=granularity)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = bytes(quant.quantize(enable_progress_report=False).quantized_model)
    except Exception as e:
        raise MlflowException(f"ai-edge-quantizer failed for recipe '{recipe}': "
                              f"{type(e).__name__}: {e}", error_code=INVALID_PARAMETER_VALUE
                              ) from e
    made = TFLiteModel(result).quantization_kind
    if made != recipe:
        raise MlflowException(
            f"ai-edge-quantizer made a '{made}' model for recipe '{recipe}': none of the "
            "model's ops supports it (blockwise recipes apply to FULLY_CONNECTED weights whose "
            "input dimension is a multiple of the block size).",
            error_code=INVALID_PARAMETER_VALUE)
    return result
