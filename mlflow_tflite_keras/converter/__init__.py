"""Reconstruction of trainable Keras models from ``.tflite`` flatbuffers (needs TensorFlow)."""

from mlflow_tflite_keras.converter.convert import (  # noqa: F401
    ConversionReport,
    ConversionResult,
    UnsupportedOperatorsError,
    convert,
    to_keras,
)
from mlflow_tflite_keras.converter.registry import (  # noqa: F401
    load_handlers,
    supported_custom_operators,
    supported_operators,
)
from mlflow_tflite_keras.converter.streaming import reset_streaming_state  # noqa: F401

__all__ = ["ConversionReport", "ConversionResult", "UnsupportedOperatorsError", "convert",
           "load_handlers", "reset_streaming_state", "supported_operators", "to_keras"]

load_handlers()  # registers every handler and every package layer
