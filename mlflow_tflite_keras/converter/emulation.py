"""The emulation pass of ``to_keras(emulate_quantization=True)``.

The builder calls it where each tensor gets its Keras value: every quantized activation of
the source (graph inputs and op outputs) is followed by a
:class:`~mlflow_tflite_keras.converter.layers.quantization.FakeQuant` with the source's scale /
zero point and its integer type's range; a hybrid (dynamic-range) op sees its float input
quantized per batch / per row as its kernel does
(:class:`~mlflow_tflite_keras.converter.layers.quantization.HybridInputQuant`). Quantized weights are
already exactly their dequantized integers (``ir.decode_constant``).
"""

from __future__ import annotations

from contextlib import contextmanager

import keras

from mlflow_tflite_keras.converter.ir import Op, Tensor
from mlflow_tflite_keras.converter.layers.quantization import FakeQuant, HybridInputQuant
from mlflow_tflite_keras.tflite_model import integer_range


def fake_quantize(ctx, t: Tensor, value, name: str):
    """``value`` snapped to ``t``'s quantization grid (a KerasTensor of a quantized tensor;
    anything else unchanged)."""
    if not (isinstance(value, keras.KerasTensor) and t.is_quantized) or \
            t.quantization.block_shape is not None:
        return value
    qmin, qmax = integer_range(t.type_name)
    quantization = t.quantization
    axis = quantization.quantized_dimension if quantization.per_channel else None
    layer = FakeQuant(quantization.scale.reshape(-1), quantization.zero_point.reshape(-1),
                      qmin, qmax, axis, name=_unique(ctx, f"{name}_fakequant"))
    return layer(value)


def quantize_outputs(ctx, op: Op) -> None:
    """Fake-quantize the op's quantized outputs in ``ctx.values``."""
    for t in op.outputs:
        ctx.values[t.index] = fake_quantize(ctx, t, ctx.values.get(t.index), _safe(t.name))


@contextmanager
def hybrid_inputs(ctx, op: Op):
    """While a hybrid op's handler runs, its float input is the kernel's int8-quantized one
    (restored afterwards: other consumers see the float tensor)."""
    from mlflow_tflite_keras.converter.hybrid import hybrid_scheme, is_hybrid

    x = op.inputs[0] if op.inputs else None
    value = ctx.values.get(x.index) if x is not None else None
    if not (isinstance(value, keras.KerasTensor) and is_hybrid(op)):
        yield
        return
    row_size, asymmetric = hybrid_scheme(op, value.shape)
    layer = HybridInputQuant(row_size, asymmetric,
                             name=_unique(ctx, f"{_safe(op.outputs[0].name)}_hybrid_input"))
    ctx.values[x.index] = layer(value)
    try:
        yield
    finally:
        ctx.values[x.index] = value


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name.split(";")[0]).strip("_.-")[:60] or "t"


def _unique(ctx, base: str) -> str:
    ctx.layer_names[base] += 1
    n = ctx.layer_names[base]
    return base if n == 1 else f"{base}_{n}"
