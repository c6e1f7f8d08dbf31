"""mlflow-tflite-keras: TensorFlow Lite models as first-class MLflow models.

Importing this package is cheap: it imports neither TensorFlow nor MLflow. Public names are
resolved lazily (PEP 562) from the modules that define them.
"""

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
    "keras_to_tflite": "mlflow_tflite_keras.export",
    "export_tflite": "mlflow_tflite_keras.export",
    "compare_interfaces": "mlflow_tflite_keras.export",
    "TFLiteLayer": "mlflow_tflite_keras.tflite_layer",
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
    return sorted(set(globals()) | set(_LAZY))


try:  # `import mlflow_tflite_keras` alone also provides `mlflow.tflite_keras` (cheap, no imports)
    from mlflow_tflite_keras import _mlflow_plugin as _plugin

    _plugin.install()
except Exception:  # pragma: no cover
    pass
