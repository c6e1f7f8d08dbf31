"""Keras layers of this package, for ops with no built-in Keras layer, one module per family.

All are registered serializable (package ``mlflow_tflite_keras``), so reconstructed models
save to ``.keras`` and reload with ``safe_mode=True``: no Lambda layers, no pickled code.
Importing this package registers every layer and every ``KerasOp`` function, and nothing of
the converter's handlers (``converter/ops``): it is what the Keras loading hook imports.
"""

from mlflow_tflite_keras.converter.layers.keras_op import (  # noqa: F401
    EXTRA_OPS,
    PACKAGE,
    DeclaredConstant,
    KerasOp,
    StoredConstants,
    extra_op,
)
from mlflow_tflite_keras.converter.layers.control_flow import (  # noqa: F401
    IfElse,
    PerExample,
    WhileLoop,
    per_example_model,
)
from mlflow_tflite_keras.converter.layers.custom import (  # noqa: F401
    DetectionPostProcess,
    Landmarks2TransformMatrix,
    Landmarks2TransformMatrixV1,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    TransformLandmarks,
    TransformTensorBilinear,
)
from mlflow_tflite_keras.converter.layers.legacy import LocalResponseNormalization  # noqa: F401
from mlflow_tflite_keras.converter.layers.recurrent import ClippedLSTMCell  # noqa: F401
from mlflow_tflite_keras.converter.layers.spectral import RFFT2D, ComplexPart  # noqa: F401
from mlflow_tflite_keras.converter.layers.streaming import (  # noqa: F401
    StreamingCell,
    StreamingRNN,
)

import mlflow_tflite_keras.tflite_layer  # noqa: E402,F401  (registers TFLiteLayer)

__all__ = ["EXTRA_OPS", "PACKAGE", "RFFT2D", "ClippedLSTMCell", "ComplexPart", "DeclaredConstant",
           "DetectionPostProcess", "IfElse", "KerasOp", "Landmarks2TransformMatrix",
           "Landmarks2TransformMatrixV1", "LocalResponseNormalization", "MaxPoolingWithArgmax2D",
           "MaxUnpooling2D", "PerExample", "StoredConstants", "StreamingCell", "StreamingRNN",
           "TransformLandmarks", "TransformTensorBilinear", "WhileLoop", "extra_op",
           "per_example_model"]
