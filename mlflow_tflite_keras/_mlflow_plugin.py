"""Makes ``mlflow.tflite_keras`` exist as soon as ``import mlflow`` runs.

Mechanism: the package declares an entry point in MLflow's ``mlflow.run_context_provider``
group, which ``import mlflow`` loads (``mlflow.tracking.context.registry``). Loading it imports
only this module, which

* puts a lazy module object at ``sys.modules["mlflow.tflite_keras"]`` and on the ``mlflow``
  package, resolving to ``mlflow_tflite_keras.flavor`` on first attribute access, and
* provides :class:`TFLiteKerasRunContext`, a provider that adds no tags (``in_context`` is
  False), because the registry needs a class.

It imports nothing heavy (no TensorFlow, not even the flavor) and swallows every error, so a
broken install can never break ``import mlflow``.
"""

import sys
import types

_TARGET = "mlflow_tflite_keras.flavor"
_ALIAS = "mlflow.tflite_keras"


class _LazyFlavorModule(types.ModuleType):
    """Stands in for ``mlflow.tflite_keras`` until first used, then becomes the flavor."""

    def _load(self):
        import importlib

        module = importlib.import_module(_TARGET)
        sys.modules[_ALIAS] = module
        parent = sys.modules.get("mlflow")
        if parent is not None:
            setattr(parent, "tflite_keras", module)
        self.__dict__.update(module.__dict__)
        return module

    def __getattr__(self, item):
        return getattr(self._load(), item)

    def __dir__(self):
        return dir(self._load())


def install_alias():
    """Register ``mlflow.tflite_keras`` (idempotent; never raises)."""
    try:
        if _ALIAS not in sys.modules:
            sys.modules[_ALIAS] = _LazyFlavorModule(_ALIAS, __doc__)
        parent = sys.modules.get("mlflow")
        if parent is not None and "tflite_keras" not in vars(parent):
            setattr(parent, "tflite_keras", sys.modules[_ALIAS])
    except Exception:  # pragma: no cover - must never break `import mlflow`
        pass


class TFLiteKerasRunContext:
    """Adds no run tags: it exists so that ``import mlflow`` installs the alias.

    Duck-typed like ``mlflow.tracking.context.abstract_context.RunContextProvider`` (the
    registry only calls these two methods): subclassing would import mlflow from here, which
    is circular when ``mlflow_tflite_keras`` is imported before ``mlflow``.
    """

    def __init__(self):
        # Instantiated by the registry during `import mlflow`: the `mlflow` module exists now
        # even when this module was first imported before it.
        install_alias()

    def in_context(self):
        return False

    def tags(self):
        return {}


install_alias()
