"""mlflow-tflite-keras: TensorFlow Lite models as first-class MLflow models.

The public API, also reachable as ``mlflow.tflite_keras`` (the same module object):

* The flavor: :func:`save_model`, :func:`log_model`, :func:`load_model` (a
  :class:`LoadedTFLiteModel`), ``FLAVOR_NAME``, :func:`get_default_pip_requirements`,
  :func:`get_default_conda_env`, and :class:`TFLiteModel` (a parsed flatbuffer).
* Back to Keras: :func:`to_keras`, :func:`convert`, :func:`supported_operators`,
  :func:`check_parity`, :func:`locate_divergence`, :class:`TFLiteLayer`.
* Registry and round trip: :func:`register_keras_version`, :func:`finetune`,
  :func:`export_tflite`, :func:`keras_to_tflite`, :func:`compare_interfaces`.
* Errors: :class:`UnsupportedOperatorsError`, :class:`InterfaceChangedError`,
  :class:`ParityCheckError` (all :class:`~mlflow.exceptions.MlflowException`).

Importing this package is cheap: it imports neither TensorFlow nor MLflow. Each name is
resolved (PEP 562) from the module that defines it on first use; only the converter names,
:class:`TFLiteLayer` and the exporters import TensorFlow/Keras.
"""

import sys as _sys
import types as _types

__version__ = "0.1.0"

_LAZY = {
    "FLAVOR_NAME": "mlflow_tflite_keras.flavor",
    "save_model": "mlflow_tflite_keras.flavor",
    "log_model": "mlflow_tflite_keras.flavor",
    "load_model": "mlflow_tflite_keras.flavor",
    "LoadedTFLiteModel": "mlflow_tflite_keras.flavor",
    "get_default_pip_requirements": "mlflow_tflite_keras.flavor",
    "get_default_conda_env": "mlflow_tflite_keras.flavor",
    "TFLiteModel": "mlflow_tflite_keras.tflite_model",
    "to_keras": "mlflow_tflite_keras.converter",
    "convert": "mlflow_tflite_keras.converter",
    "supported_operators": "mlflow_tflite_keras.converter",
    "supported_custom_operators": "mlflow_tflite_keras.converter",
    "check_parity": "mlflow_tflite_keras.converter.parity",
    "check_ops": "mlflow_tflite_keras.converter.parity",
    "check_compiled": "mlflow_tflite_keras.converter.compiled",
    "locate_divergence": "mlflow_tflite_keras.converter.parity",
    "register_keras_version": "mlflow_tflite_keras.lineage",
    "finetune": "mlflow_tflite_keras.finetune",
    "keras_to_tflite": "mlflow_tflite_keras.keras_export",
    "export_tflite": "mlflow_tflite_keras.export",
    "compare_interfaces": "mlflow_tflite_keras.interface",
    "TFLiteLayer": "mlflow_tflite_keras.tflite_layer",
    "UnsupportedOperatorsError": "mlflow_tflite_keras.errors",
    "InterfaceChangedError": "mlflow_tflite_keras.errors",
    "ParityCheckError": "mlflow_tflite_keras.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mlflow_tflite_keras' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*__all__, "__version__", *(n for n in globals() if n.startswith("__"))})


class _Package(_types.ModuleType):
    """Keeps public functions that share a submodule's name (``finetune``) bound to the
    function: importing ``mlflow_tflite_keras.finetune`` would otherwise rebind the package
    attribute to the submodule (the import system sets it after loading a submodule)."""

    def __setattr__(self, name, value):
        if (name in _LAZY and isinstance(value, _types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

try:  # `import mlflow_tflite_keras` alone also provides `mlflow.tflite_keras` (cheap, no imports)
    from mlflow_tflite_keras import _mlflow_plugin as _plugin

    _plugin.install()
except Exception:  # pragma: no cover
    pass
