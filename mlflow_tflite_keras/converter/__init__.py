"""Reconstruction of trainable Keras models from ``.tflite`` flatbuffers (needs TensorFlow).

Importing this package registers the package's Keras layers (:mod:`.layers`); the op handlers
(``converter/ops``) are imported by :func:`load_handlers` when a conversion starts, so loading
a saved ``.keras`` model never imports a handler.
"""

from mlflow_tflite_keras.converter import layers  # noqa: F401  (registers every layer)
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
