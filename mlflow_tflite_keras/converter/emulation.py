"""The emulation pass of ``to_keras(emulate_quantization=True)``.

The builder calls it where each tensor gets its Keras value: every quantized activation of
the source (graph inputs and op outputs) is followed by a
:class:`~mlflow_tflite_keras.converter.layers.quantization.FakeQuant` with the source's scale /
zero point and its integer type's range; a hybrid (dynamic-range) op sees its float input
quantized per batch / per row as its kernel does
(:class:`~mlflow_tflite_keras.converter.layers.quantization.HybridInputQuant`). Quantized weights
start exactly on their dequantized integers (``ir.decode_constant``); the layer holding them is
wrapped in a :class:`~mlflow_tflite_keras.converter.layers.quantization.QuantizedWeights` that
keeps them on the source's grid while ``fit`` moves them (:func:`quantize_weights`).
"""

from __future__ import annotations

from contextlib import contextmanager

import keras
import numpy as np

from mlflow_tflite_keras.converter.ir import Op, Tensor
from mlflow_tflite_keras.converter.layers.quantization import (
    FakeQuant,
    HybridInputQuant,
    QuantizedWeights,
)
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
    model_output = any(o.index == t.index for o in ctx.graph.outputs)
    layer = FakeQuant(quantization.scale.reshape(-1), quantization.zero_point.reshape(-1),
                      qmin, qmax, axis, model_output=model_output,
                      name=_unique(ctx, f"{name}_fakequant"))
    return layer(value)


def quantize_outputs(ctx, op: Op) -> None:
    """Fake-quantize the op's quantized outputs in ``ctx.values``."""
    for t in op.outputs:
        ctx.values[t.index] = fake_quantize(ctx, t, ctx.values.get(t.index), _safe(t.name))


def quantize_weights(ctx, op: Op, layer):
    """``layer`` (built, holding the op's weights) wrapped so its weights stay on the grid of
    the op's quantized constant operands; ``layer`` itself when none of its weights comes
    from a constant of a quantized source.

    A weight is matched to a constant of the same size, and the constant's channel axis to
    the Keras axes (a contiguous run whose sizes multiply to the channel count, the last
    such run first) on which the weight is exactly on the constant's grid: handlers
    transpose / reshape constants into Keras layouts, and a weight taken from a quantized
    constant is its dequantized integers, so the right scheme leaves it unchanged. In a
    quantized source, a weight equal to a float constant (a dynamic-range model's biases and
    small kernels) is recorded too: ``export_tflite(like=source)`` writes it back there."""
    constants = [t for t in op.inputs if t is not None and t.is_quantized
                 and t.data is not None and t.quantization.block_shape is None]
    floats = [t for t in op.inputs if t is not None and not t.is_quantized
              and t.data is not None and t.type_name == "FLOAT32"] \
        if ctx.graph.model.quantization_kind != "none" else []
    if not (constants or floats) or not layer.weights or isinstance(layer, QuantizedWeights):
        return layer
    entries, float_entries, used = [], [], set()
    for i, w in enumerate(layer.weights):
        value = np.asarray(w.numpy(), np.float64)
        entry = _quantized_entry(ctx, value, constants, used)
        if entry is not None:
            entries.append({"weight": i, **entry})
            continue
        for t in floats:
            perm = None if t.index in used or t.data.size != value.size else \
                _layout(t.data, value)
            if perm is not None:
                float_entries.append({"weight": i, "source": _source(ctx, t, perm)})
                used.add(t.index)
                break
    if not entries and not float_entries:
        return layer
    return QuantizedWeights(layer, entries, float_weights=float_entries,
                            name=_unique(ctx, f"{layer.name}_qweights"))


def _quantized_entry(ctx, value, constants, used):
    """The quantization entry of the first unused quantized constant ``value`` is on the grid
    of (marking it used), or None."""
    for t in constants:
        if t.index in used or t.data.size != value.size:
            continue
        entry = _grid_of(value, t)
        if entry is not None:
            perm = _layout(t.data, value)
            if perm is not None:  # where export_tflite(like=source) writes it back
                entry["source"] = _source(ctx, t, perm)
            used.add(t.index)
            return entry
    return None


def _source(ctx, t: Tensor, perm) -> dict:
    return {"subgraph": int(ctx.graph.subgraph_index), "tensor": int(t.index), "perm": perm}


def _grid_of(value, t: Tensor):
    """The quantization entry putting ``value`` on ``t``'s grid, or None."""
    quantization = t.quantization
    scale = np.asarray(quantization.scale, np.float64).reshape(-1)
    zero_point = np.asarray(quantization.zero_point, np.float64).reshape(-1)
    qmin, qmax = integer_range(t.type_name)
    if t.type_name == "INT8" and np.all(zero_point == 0):
        qmin = -127  # symmetric int8 weights (TFLite's quantization spec: [-127, 127])
    base = {"scale": scale.tolist(), "zero_point": zero_point.astype(int).tolist(),
            "qmin": int(qmin), "qmax": int(qmax)}
    if scale.size == 1:
        candidates = [None]
    else:
        shape = value.shape
        candidates = [list(range(start, end)) for end in range(len(shape), 0, -1)
                      for start in range(end - 1, -1, -1)
                      if int(np.prod(shape[start:end])) == scale.size]
    for axes in candidates:
        target = [1] * value.ndim
        for a in axes or []:
            target[a] = value.shape[a]
        s, z = scale.reshape(target), zero_point.reshape(target)
        steps = value / s + z
        q = np.round(steps)
        # in grid steps, allowing float32's rounding of large integers (int32/int64 biases)
        if np.all((q >= qmin) & (q <= qmax)) and \
                np.all(np.abs(steps - q) <= np.maximum(1e-3, 1e-6 * np.abs(q))):
            return {**base, "axes": axes}
    return None


def _layout(data: np.ndarray, value: np.ndarray):
    """The axis permutation ``perm`` with ``transpose(data, perm).reshape(value.shape) ==
    value`` (how the handler laid the source constant out for Keras), or None."""
    from itertools import permutations

    data = np.asarray(data, np.float32)
    value = np.asarray(value, np.float32)
    for perm in permutations(range(data.ndim)):
        if np.array_equal(np.transpose(data, perm).reshape(value.shape), value):
            return list(perm)
    return None


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
    row_size, asymmetric, kernel = hybrid_scheme(op, value.shape)
    layer = HybridInputQuant(row_size, asymmetric, kernel,
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
