"""Target of the ``mlflow.run_context_provider`` entry point: tiny, and it cannot fail.

``import mlflow`` instantiates :class:`TFLiteKerasRunContext`; that installs the
``mlflow.tflite_keras`` alias and the Keras layer hook (see ``_mlflow_plugin``). Whatever goes
wrong there (even a broken install of this package) is swallowed, so ``import mlflow`` works.
The provider adds no run tags. It is duck-typed like MLflow's ``RunContextProvider`` (the
registry only calls these methods): subclassing would import mlflow from here.
"""


__all__ = ["TFLiteKerasRunContext"]


class TFLiteKerasRunContext:
    def __init__(self):
        try:
            from mlflow_tflite_keras import _mlflow_plugin

            _mlflow_plugin.install()
        except Exception:  # pragma: no cover - must never break `import mlflow`
            pass

    def in_context(self):
        return False

    def tags(self):
        return {}
