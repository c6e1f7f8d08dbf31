"""What ``import mlflow`` sets up for this package (through ``_entry_point``).

* ``mlflow.tflite_keras``: the ``mlflow_tflite_keras`` package itself, placed at
  ``sys.modules["mlflow.tflite_keras"]`` and on the ``mlflow`` package. Its public names are
  resolved lazily (see ``mlflow_tflite_keras.__init__``), so this costs nothing.
* A one-shot post-import hook on ``keras``: once Keras is imported, the converter's layers are
  imported too, so their ``register_keras_serializable`` registrations exist and
  ``mlflow.keras.load_model`` / ``mlflow models serve`` load reconstructed models natively.

Nothing heavy is imported here (no TensorFlow, no Keras, not even the flavor), and every step
swallows its errors.
"""

import importlib
import importlib.util
import sys

__all__ = ["install"]

_PACKAGE = "mlflow_tflite_keras"
_ALIAS = "mlflow.tflite_keras"
# Every layer of the package, without the converter's handlers.
_KERAS_LAYERS = "mlflow_tflite_keras.converter.layers"


def install_alias():
    package = sys.modules.get(_PACKAGE) or importlib.import_module(_PACKAGE)
    sys.modules.setdefault(_ALIAS, package)
    parent = sys.modules.get("mlflow")
    if parent is not None and "tflite_keras" not in vars(parent):
        setattr(parent, "tflite_keras", sys.modules[_ALIAS])


class _KerasLayersHook:
    """Meta-path finder: wraps the real ``keras`` loader to register our layers after it."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # one shot; also lets find_spec below see the real keras
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        register_keras_layers()

    def __getattr__(self, item):
        return getattr(self.loader, item)


def register_keras_layers():
    try:
        importlib.import_module(_KERAS_LAYERS)
    except Exception:  # pragma: no cover - a broken converter must not break Keras
        pass


def install_keras_hook():
    if "keras" in sys.modules:
        register_keras_layers()
    elif not any(isinstance(f, _KerasLayersHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasLayersHook())


def install():
    """Idempotent; never raises."""
    for step in (install_alias, install_keras_hook):
        try:
            step()
        except Exception:  # pragma: no cover
            pass
