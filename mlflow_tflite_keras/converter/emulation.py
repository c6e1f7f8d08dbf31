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

A float layer followed by rounding lands one step off wherever the kernel rounds otherwise
(deep models compound it), so where LiteRT's default kernels are known the wrapped layers
compute on the integers with the kernel's own requantization (XNNPACK's qs8 / qu8
convolutions / fully connected; hybrid convolutions with their epilogues), and ADD / MUL / MEAN /
QUANTIZE get the kernel's value (:func:`integer_arithmetic`): bit-exact, straight-through
gradients. Full-uint8 models (TF1's converter: uint8 activations, asymmetric uint8 weights)
go the same way: XNNPACK's qu8 kernels share the qs8 arithmetic, with the weights' zero
point in the accumulation.
"""

from __future__ import annotations

from contextlib import contextmanager

import keras
import numpy as np

from mlflow_tflite_keras.converter.integer_kernels import (
    kernel_params,
    per_tensor_quantized,
    scale_and_zero_point,
)
from mlflow_tflite_keras.converter.ir import FUSED_ACTIVATIONS, Op, Tensor
from mlflow_tflite_keras.converter.layers.fixed_point import quantize_multiplier
from mlflow_tflite_keras.converter.layers.int16_kernels import (
    Int16Arithmetic,
    Int16Mean,
    Int16Softmax,
    Int16x8Weights,
    activation_range,
    add_multipliers,
    mean_multiplier,
    mul_multipliers,
)
from mlflow_tflite_keras.converter.layers.integer_kernels import IntegerKernel
from mlflow_tflite_keras.converter.layers.quantization import (
    FakeQuant,
    HybridInputQuant,
    IntegerArithmetic,
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
    model_input = any(i.index == t.index for i in ctx.graph.inputs)
    layer = FakeQuant(quantization.scale.reshape(-1), quantization.zero_point.reshape(-1),
                      qmin, qmax, axis, model_output=model_output, model_input=model_input,
                      name=_unique(ctx, f"{name}_fakequant"))
    return layer(value)


def quantize_outputs(ctx, op: Op) -> None:
    """Fake-quantize the op's quantized outputs in ``ctx.values`` (an op whose integer kernel
    rounds otherwise than its float layers first gets the kernel's value:
    :func:`integer_arithmetic`, :func:`integer_kernel`, and the int16x8 SOFTMAX / MEAN / ADD /
    MUL kernels)."""
    integer_arithmetic(ctx, op)
    integer_kernel(ctx, op)
    if op.type == "MEAN" and _int16_activations(op):
        _int16_mean(ctx, op)
    if op.type in ("ADD", "MUL") and _int16_activations(op):
        _int16_arithmetic(ctx, op)
    if op.type == "SOFTMAX" and _int16_activations(op):
        x, y = ctx.values.get(op.inputs[0].index), ctx.values.get(op.outputs[0].index)
        if isinstance(x, keras.KerasTensor) and isinstance(y, keras.KerasTensor):
            layer = Int16Softmax(float(op.inputs[0].quantization.scale.reshape(-1)[0]),
                                 float(op.opt("beta", 1.0)),
                                 float(op.outputs[0].quantization.scale.reshape(-1)[0]),
                                 name=_unique(ctx, f"{_safe(op.outputs[0].name)}_int16"))
            ctx.values[op.outputs[0].index] = layer([x, y])
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
    requantize = _int16x8_requantization(op, layer, entries)
    if requantize is not None:
        return Int16x8Weights(layer, entries, float_weights=float_entries,
                              int16_requantize=requantize,
                              name=_unique(ctx, f"{layer.name}_qweights"))
    requantize = _xnnpack_requantize(op, layer, entries) if not float_entries else None
    hybrid = integer_hybrid(op)
    if hybrid is not None and not (
            isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            and len(entries) == 1 and len(entries) + len(float_entries) == len(layer.weights)):
        # hybrid_inputs left the input to this wrapper: it quantizes it, the float layer runs
        hybrid = {**hybrid, "integer": False}
    return QuantizedWeights(layer, entries, float_weights=float_entries, requantize=requantize,
                            hybrid=hybrid, name=_unique(ctx, f"{layer.name}_qweights"))


def integer_hybrid(op: Op) -> dict | None:
    """The :class:`QuantizedWeights` ``hybrid`` config of a hybrid convolution whose kernel's
    integer arithmetic is replayed (XNNPACK's qd8 CONV_2D; TFLite's per-channel hybrid
    DEPTHWISE_CONV_2D, which XNNPACK leaves to it), or None (its input is quantized by a
    :class:`HybridInputQuant` before the float layer instead)."""
    from mlflow_tflite_keras.converter.hybrid import hybrid_scheme, is_hybrid

    if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D") or not is_hybrid(op):
        return None
    w = op.inputs[1]
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    if w.type_name != "INT8" or np.any(np.asarray(w.quantization.zero_point) != 0) or \
            (bias is not None and bias.type_name != "FLOAT32"):
        return None
    row_size, asymmetric, kernel = hybrid_scheme(op, op.inputs[0].shape)
    if kernel != "xnnpack" and not (op.type == "DEPTHWISE_CONV_2D" and asymmetric):
        return None  # other builtin hybrid kernels: not replayed
    channels = op.outputs[0].shape[-1]
    scale = np.asarray(w.quantization.scale, np.float32).reshape(-1)
    return {"row_size": row_size, "asymmetric": asymmetric, "kernel": kernel,
            "weight_scale": np.broadcast_to(scale, (channels,)).tolist()}


# ---- the integer kernels LiteRT runs by default (its XNNPACK delegate) ------------------------
# A float layer followed by rounding computes the integer kernel's result except where the
# kernel's own rounding (fixed-point multipliers, float32 requantization, ties) lands
# elsewhere: one step on a few elements per op, which deep models (MobileNetV2: 16 steps at
# the output) compound. Where XNNPACK takes the op (xnnpack_delegate.cc), its arithmetic is
# replayed exactly.

#: Full-integer ops XNNPACK runs as qs8 / qu8 convolutions / fully connected (fp32
#: requantization).
XNNPACK_QS8_KERNEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})


#: Activation types of the replayed kernels: XNNPACK's qs8 (int8) and qu8 (uint8, the
#: full-uint8 models TF1's converter made) kernels share their requantization arithmetic.
INTEGER_ACTIVATION_TYPES = ("INT8", "UINT8")


def _per_tensor_integer(t) -> bool:
    """An int8 / uint8 tensor with one scale and zero point."""
    return per_tensor_quantized(t, INTEGER_ACTIVATION_TYPES)


def _xnnpack_requantize(op: Op, layer, entries) -> dict | None:
    """The :class:`QuantizedWeights` ``requantize`` config of a qs8 / qu8 convolution / fully
    connected op (XNNPACK's convolution-nhwc.c / fully-connected-nc.c: int32 accumulator of
    the stored integers less the input zero point times the weights less theirs (qs8: zero;
    qu8: uint8 weights with any zero point), plus the int32 bias, times the float32
    ``input_scale * kernel_scale[c] / output_scale``, rounded half to even, plus the output
    zero point, clamped), or None (another kernel, or a layer that is not the op's kernel
    alone)."""
    x, out = (op.inputs[0] if op.inputs else None), (op.outputs[0] if op.outputs else None)
    w = op.inputs[1] if len(op.inputs) > 1 else None
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if op.type not in XNNPACK_QS8_KERNEL_OPS or not (_per_tensor_integer(x) and
                                                    _per_tensor_integer(out)) \
            or x.type_name != out.type_name or w is None or not w.is_quantized \
            or w.type_name != x.type_name or w.quantization.block_shape is not None \
            or (w.type_name == "INT8" and np.any(np.asarray(w.quantization.zero_point) != 0)) \
            or (w.type_name == "UINT8" and w.quantization.scale.size != 1) \
            or (bias is not None and bias.type_name != "INT32") \
            or len(entries) != len(layer.weights) or activation not in ("linear", "relu"):
        return None
    s_in = np.float32(x.quantization.scale.reshape(-1)[0])
    s_out = np.float32(out.quantization.scale.reshape(-1)[0])
    s_w = np.asarray(w.quantization.scale, np.float32).reshape(-1)
    multiplier = s_in * s_w / s_out  # float32 arithmetic, in XNNPACK's order
    if np.any(multiplier >= 256.0):  # XNNPACK refuses the op: the builtin kernel runs it
        return None
    qmin, qmax = integer_range(out.type_name)
    zero_point = int(out.quantization.zero_point.reshape(-1)[0])
    return {"input_scale": float(s_in),
            "accumulator_scale": (np.float64(s_in) * s_w.astype(np.float64)).tolist(),
            "multiplier": multiplier.tolist(), "output_scale": float(s_out),
            "low": int(qmin) - zero_point, "high": int(qmax) - zero_point}


def _activation_bounds(op: Op, t) -> tuple[int, int]:
    """The fused activation's clamp on ``t``'s stored integers (TFLite's
    CalculateActivationRangeQuantized)."""
    qmin, qmax = integer_range(t.type_name)
    scale, zero_point = scale_and_zero_point(t)
    act = FUSED_ACTIVATIONS.get(op.opt("fusedActivationFunction", 0))
    low, high = {"relu": (0.0, None), "relu6": (0.0, 6.0),
                 "relu_n1_to_1": (-1.0, 1.0)}.get(act, (None, None))
    lo = qmin if low is None else max(qmin, zero_point + int(np.round(low / scale)))
    hi = qmax if high is None else min(qmax, zero_point + int(np.round(high / scale)))
    return int(lo), int(hi)


def _xnnpack_add(op: Op) -> dict | None:
    """XNNPACK's qs8 / qu8 ADD parameters (microparams-init.c,
    xnn_init_qs8_add_minmax_scalar_params and its qu8 twin, the same arithmetic: 20-bit
    multipliers of the float32 input/output scale ratios, a shift, a rounding bias), or None
    when XNNPACK does not take the op (its delegate's scale-ratio limits)."""
    if len(op.inputs) != 2 or not all(_per_tensor_integer(t) for t in [*op.inputs, *op.outputs]) \
            or len({t.type_name for t in [*op.inputs, *op.outputs]}) != 1:
        return None
    a, b, out = op.inputs[0], op.inputs[1], op.outputs[0]
    (sa, za), (sb, zb), (so, zo) = (scale_and_zero_point(t) for t in (a, b, out))
    ratios = np.array([sa / so, sb / so], np.float32)
    if np.any(ratios < np.float32(1.0 / 1024.0)) or np.any(ratios >= np.float32(256.0)):
        return None
    exponent = int(np.max(ratios).view(np.uint32) >> 23) - 127
    shift = 20 - exponent
    ma, mb = (int(np.rint(r * np.float32(2.0 ** shift))) for r in ratios)
    low, high = _activation_bounds(op, out)
    return {"a_scale": float(sa), "a_zero_point": za, "b_scale": float(sb), "b_zero_point": zb,
            "a_multiplier": ma, "b_multiplier": mb, "shift": shift,
            "bias": (1 << (shift - 1)) - ma * za - mb * zb,
            "output_zero_point": zo, "output_scale": float(so), "low": low, "high": high}


def _xnnpack_mean(op: Op) -> dict | None:
    """XNNPACK's qs8 / qu8 MEAN (reduce-nd.c: the int32 sum of the stored integers converted as
    ``sum * inverse_scale + zero_point`` in float32, rounded half to even, where
    ``inverse_scale = (input_scale / output_scale) * (1 / n)`` and ``zero_point =
    output_zero_point - n * input_zero_point * inverse_scale``), or None."""
    x, axes = op.inputs[0], (op.inputs[1] if len(op.inputs) > 1 else None)
    if axes is None or axes.data is None or not (_per_tensor_integer(x) and
                                                _per_tensor_integer(op.outputs[0])) \
            or x.type_name != op.outputs[0].type_name:
        return None
    rank = len(x.shape)
    reduced = sorted({int(a) % rank for a in np.asarray(axes.data).reshape(-1)})
    n = int(np.prod([x.shape[a] for a in reduced]))
    if not reduced or n <= 0:
        return None
    (si, zi), (so, zo) = scale_and_zero_point(x), scale_and_zero_point(op.outputs[0])
    inverse = np.float32(si / so) * np.float32(np.float32(1.0) / np.float32(n))
    zero_point = np.float32(zo) - np.float32(np.float32(n * zi) * inverse)
    qmin, qmax = integer_range(op.outputs[0].type_name)
    return {"axes": reduced, "keepdims": bool(op.opt("keepDims", False)),
            "qmin": int(qmin), "qmax": int(qmax),
            "input_scale": float(si), "input_zero_point": zi,
            "inverse_scale": float(inverse), "zero_point": float(zero_point),
            "output_zero_point": zo, "output_scale": float(so)}


def _xnnpack_quantize(op: Op) -> dict | None:
    """XNNPACK's f32 -> qs8 / qu8 QUANTIZE (microparams-init.c / f32-qs8-vcvt: times the float32
    ``1 / scale``, rounded half to even), or None."""
    x, out = op.inputs[0], op.outputs[0]
    if x is None or x.is_quantized or x.type_name != "FLOAT32" or not _per_tensor_integer(out):
        return None
    scale, zero_point = scale_and_zero_point(out)
    qmin, qmax = integer_range(out.type_name)
    return {"inverse_scale": float(np.float32(1.0) / scale), "qmin": int(qmin),
            "qmax": int(qmax),
            "output_zero_point": zero_point, "output_scale": float(scale)}


def _xnnpack_mul(op: Op) -> dict | None:
    """XNNPACK's qs8 MUL (qs8-vmul fp32: the int32 product of the stored integers less their
    zero points, times the float32 ``(a_scale * b_scale) / output_scale``, rounded half to
    even, plus the output zero point, clamped), or None when its delegate declines the op
    (that scale outside ``[2**-16, 256)``)."""
    # int8 only: measured against XNNPACK's qs8 MUL (its qu8 twin is not checked here)
    if len(op.inputs) != 2 or not all(_per_tensor_integer(t) and t.type_name == "INT8"
                                      for t in [*op.inputs, *op.outputs]):
        return None
    (sa, za), (sb, zb), (so, zo) = (scale_and_zero_point(t) for t in (*op.inputs, op.outputs[0]))
    scale = np.float32(sa * sb) / so  # float32 arithmetic, in the delegate's order
    if not np.float32(2.0 ** -16) <= scale < np.float32(256.0):
        return None
    low, high = _activation_bounds(op, op.outputs[0])
    return {"a_scale": float(sa), "a_zero_point": za, "b_scale": float(sb), "b_zero_point": zb,
            "scale": float(scale), "output_zero_point": zo, "output_scale": float(so),
            "low": low, "high": high}


_XNNPACK_INTEGER_OPS = {"ADD": (2, _xnnpack_add), "MUL": (2, _xnnpack_mul),
                        "MEAN": (1, _xnnpack_mean),
                        "QUANTIZE": (1, _xnnpack_quantize)}


def integer_arithmetic(ctx, op: Op) -> None:
    """Replace the float value of an op XNNPACK computes with other rounding (ADD, MUL, MEAN,
    QUANTIZE of a float tensor) by the kernel's value (:class:`IntegerArithmetic`,
    straight-through)."""
    if not op.outputs or op.type not in _XNNPACK_INTEGER_OPS:
        return
    n_operands, parameters = _XNNPACK_INTEGER_OPS[op.type]
    out = op.outputs[0]
    result = ctx.values.get(out.index)
    operands = [ctx.values.get(t.index) for t in op.inputs[:n_operands]]
    if not isinstance(result, keras.KerasTensor) or \
            not all(isinstance(v, keras.KerasTensor) for v in operands):
        return
    params = parameters(op)
    if params is None:
        return
    layer = IntegerArithmetic(op.type.lower(), params,
                              name=_unique(ctx, f"{_safe(out.name)}_integer"))
    ctx.values[out.index] = layer([result, *operands])


def integer_kernel(ctx, op: Op) -> None:
    """Replace the float value of an elementwise / pooling / resize op whose integer kernel
    rounds otherwise by the kernel's value (:mod:`~mlflow_tflite_keras.converter.integer_kernels`,
    :class:`IntegerKernel`, straight-through)."""
    if len(op.outputs) != 1 or not op.inputs or not op.outputs[0].is_quantized:
        return
    out = op.outputs[0]
    result = ctx.values.get(out.index)
    operands = [ctx.values.get(t.index) for t in op.inputs[:2]]
    if not all(isinstance(v, keras.KerasTensor) for v in (result, operands[0])):
        return
    found = kernel_params(op, _activation_bounds(op, out))
    if found is None:
        return
    operands = operands if found[0] == "squared_difference" else operands[:1]
    if not all(isinstance(v, keras.KerasTensor) for v in operands):
        return
    layer = IntegerKernel(*found, name=_unique(ctx, f"{_safe(out.name)}_kernel"))
    ctx.values[out.index] = layer([result, *operands])


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


def _int16_mean(ctx, op: Op) -> None:
    """An int16 MEAN over constant axes of static sizes: Int16Mean on its output."""
    x_t, out = op.inputs[0], op.outputs[0]
    x, y = ctx.values.get(x_t.index), ctx.values.get(out.index)
    axes = op.inputs[1].data if len(op.inputs) > 1 and op.inputs[1] is not None else None
    if not (isinstance(x, keras.KerasTensor) and isinstance(y, keras.KerasTensor)) or \
            axes is None or x_t.shape is None:
        return
    axes = sorted({int(a) % x_t.rank for a in np.asarray(axes).reshape(-1)})
    sizes = [int(x_t.shape[a]) for a in axes]
    if not axes or min(sizes) <= 0:
        return
    s_in = float(np.float32(x_t.quantization.scale.reshape(-1)[0]))
    s_out = float(np.float32(out.quantization.scale.reshape(-1)[0]))
    multiplier, shift = mean_multiplier(s_in, s_out, int(np.prod(sizes)))
    layer = Int16Mean(s_in, s_out, axes, bool(op.opt("keepDims", False)), multiplier, shift,
                      name=_unique(ctx, f"{_safe(out.name)}_int16"))
    ctx.values[out.index] = layer([x, y])


def _int16_arithmetic(ctx, op: Op) -> None:
    """An int16 ADD / MUL of two computed tensors (zero points 0, general scales; ADD's
    power-of-two-scale variant is not replayed): Int16Arithmetic on its output."""
    tensors = [*op.inputs, op.outputs[0]]
    if len(op.inputs) != 2 or any(t is None or not t.is_quantized or t.type_name != "INT16"
                                  or np.any(t.quantization.zero_point) for t in tensors):
        return
    if op.type == "ADD" and op.opt("potScaleInt16", True) and all(
            np.log2(float(t.quantization.scale.reshape(-1)[0])).is_integer() for t in tensors):
        return  # add.cc's power-of-two path
    a, b = (ctx.values.get(t.index) for t in op.inputs)
    out = op.outputs[0]
    y = ctx.values.get(out.index)
    if not all(isinstance(v, keras.KerasTensor) for v in (a, b, y)):
        return
    scales = [float(np.float32(t.quantization.scale.reshape(-1)[0])) for t in op.inputs]
    s_out = float(np.float32(out.quantization.scale.reshape(-1)[0]))
    rescale = (add_multipliers if op.type == "ADD" else mul_multipliers)(*scales, s_out)
    activation = FUSED_ACTIVATIONS.get(op.opt("fusedActivationFunction", 0))
    act_min, act_max = activation_range(activation, s_out, 0, *integer_range("INT16"))
    layer = Int16Arithmetic(op.type.lower(), scales, s_out, rescale["multipliers"],
                            rescale["shifts"], act_min, act_max,
                            name=_unique(ctx, f"{_safe(out.name)}_int16"))
    ctx.values[out.index] = layer([a, b, y])


def _int16_activations(op: Op) -> bool:
    return bool(op.inputs) and op.inputs[0] is not None and op.inputs[0].is_quantized and \
        op.inputs[0].type_name == "INT16" and all(
            t.is_quantized and t.type_name == "INT16" for t in op.outputs)


#: the int16x8 kernels whose integer requantization Int16x8Weights replays
_INT16X8_KERNELS = {"CONV_2D": keras.layers.Conv2D,
                    "DEPTHWISE_CONV_2D": keras.layers.DepthwiseConv2D,
                    "FULLY_CONNECTED": keras.layers.Dense}


def _int16x8_requantization(op: Op, layer, entries) -> dict | None:
    """Int16x8Weights' ``requantize`` for an int16x8 convolution / dense op (int16 input and
    output, int8 kernel, every weight of ``layer`` on the source grid), else None: each output
    channel's scale as the kernel computes it (in double: ``input_scale * filter_scale /
    output_scale``), as a fixed-point multiplier for the convolutions (kernel_util.cc), as
    it is for fully connected (reference_integer_ops::FullyConnected[PerChannel])."""
    kinds = _INT16X8_KERNELS.get(op.type)
    if kinds is None or not isinstance(layer, kinds) or not _int16_activations(op) or \
            len(op.inputs) < 2 or op.inputs[1] is None or op.inputs[1].type_name != "INT8" or \
            sorted(e["weight"] for e in entries) != list(range(len(layer.weights))):
        return None
    x, w, out = op.inputs[0], op.inputs[1], op.outputs[0]
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    filter_scales = np.asarray(w.quantization.scale, np.float32).reshape(-1)
    s_in = float(np.float32(x.quantization.scale.reshape(-1)[0]))
    s_out = float(np.float32(out.quantization.scale.reshape(-1)[0]))
    scales = [s_in * float(s) / s_out for s in filter_scales]
    pairs = [quantize_multiplier(s) for s in scales]
    zero_point = int(out.quantization.zero_point.reshape(-1)[0])
    activation = FUSED_ACTIVATIONS.get(op.opt("fusedActivationFunction", 0))
    act_min, act_max = activation_range(activation, s_out, zero_point, *integer_range("INT16"))
    return {"input_scale": s_in, "input_zero_point": int(x.quantization.zero_point.reshape(-1)[0]),
            "output_scale": s_out, "output_zero_point": zero_point,
            "multipliers": [m for m, _ in pairs], "shifts": [s for _, s in pairs],
            "scales": scales,
            # an int64 bias (the converter's default): the 15-bit requantization
            "rescale": "double" if op.type == "FULLY_CONNECTED" else
            "int32" if bias is not None and bias.type_name == "INT32" else "int64",
            "act_min": act_min, "act_max": act_max}


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
    if not (isinstance(value, keras.KerasTensor) and is_hybrid(op)) or \
            integer_hybrid(op) is not None:  # its QuantizedWeights quantizes the input
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
