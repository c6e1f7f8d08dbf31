"""Reconstruction of trainable Keras models from ``.tflite`` flatbuffers (needs TensorFlow).

Importing this package registers the package's Keras layers (:mod:`.layers`) and nothing
more: the conversion entry points and the op handlers (``converter/ops``, registered by
:func:`load_handlers` when a conversion starts) are imported on first use, so loading a saved
``.keras`` model never imports a handler.
"""

import importlib

from mlflow_tflite_keras.converter import layers  # noqa: F401  (registers every layer)

_EXPORTS = {
    "ConversionReport": "convert", "ConversionResult": "convert",
    "UnsupportedOperatorsError": "convert", "convert": "convert", "to_keras": "convert",
    "load_handlers": "registry", "supported_custom_operators": "registry",
    "supported_operators": "registry", "reset_streaming_state": "streaming",
}

__all__ = ["ConversionReport", "ConversionResult", "UnsupportedOperatorsError", "convert",
           "load_handlers", "reset_streaming_state", "supported_operators", "to_keras"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
