"""Keras layers of this package, for ops with no built-in Keras layer, one module per family
(``keras_op.py``: ``KerasOp``, the ``StoredConstants`` mixin and the general ``KerasOp``
functions; ``control_flow.py``, ``custom.py``, ``legacy.py``, ``recurrent.py``,
``spectral.py``, ``streaming.py``).

All are registered serializable (package ``mlflow_tflite_keras``), so reconstructed models
save to ``.keras`` and reload with ``safe_mode=True``: no Lambda layers, no pickled code.
Importing this package imports every module of it, registering every layer and every
``KerasOp`` function, and nothing of the converter's handlers (``converter/ops``): it is what
the Keras loading hook imports. A new layer goes into its family's module (or a new module
here); nothing else needs to list it.
"""

import importlib
import pkgutil

from mlflow_tflite_keras.converter.layers.keras_op import (  # noqa: F401
    EXTRA_OPS,
    PACKAGE,
    DeclaredConstant,
    KerasOp,
    StoredConstants,
    extra_op,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

import mlflow_tflite_keras.tflite_layer  # noqa: E402,F401  (registers TFLiteLayer)

__all__ = ["EXTRA_OPS", "PACKAGE", "DeclaredConstant", "KerasOp", "StoredConstants", "extra_op"]
