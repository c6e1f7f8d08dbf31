"""Operators ai-edge-quantizer inserts, keyed by custom code (``aeq.*``), which LiteRT's default
resolver runs.

* ``aeq.hadamard_rotation`` (the quantizer's ``HADAMARD_ROTATION`` algorithm, before the
  fully-connected / embedding ops whose weights it rotated): flexbuffer options
  ``hadamard_size`` and ``random_binary_vector``. The kernel transforms contiguous blocks of
  ``hadamard_size`` values of a ``[features, size]`` or ``[batch, features, size]`` input
  with a normalised fast Walsh-Hadamard transform; the sign vector is stored, not applied.
"""

from __future__ import annotations

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers.custom import HadamardRotation
from mlflow_tflite_keras.converter.ops.custom import flex_options
from mlflow_tflite_keras.converter.registry import register_custom


@register_custom("aeq.hadamard_rotation", layer="HadamardRotation (package layer, matmul)")
def hadamard_rotation(op, ctx):
    size = int(flex_options(op, ("hadamard_size",))["hadamard_size"])
    t = op.inputs[0]
    if size < 1 or size & (size - 1):
        raise ConversionError(f"{op.type}: hadamard_size {size} is not a power of two.")
    if t.type_name != "FLOAT32" or t.rank not in (2, 3) or t.shape[-1] % size:
        # Other ranks are misread by the kernel, and a partial block straddles rows.
        raise ConversionError(f"{op.type}: needs a float32 [features, size] or [batch, "
                              f"features, size] input with size a multiple of {size}; got "
                              f"{t.type_name} {list(t.shape_signature)}.")
    return [ctx.apply(HadamardRotation(size, name=ctx.name(op)), ctx.value(t))]
