"""Parameters of the integer kernels LiteRT runs for full-integer ops whose float layer plus
rounding lands a step away, replayed by
:class:`~mlflow_tflite_keras.converter.layers.integer_kernels.IntegerKernel`.

Which kernel runs is LiteRT's default: XNNPACK where its delegate takes the op
(``xnnpack_delegate.cc``: int8 LEAKY_RELU and RESIZE_BILINEAR), else TFLite's builtin kernel
(int8 HARD_SWISH, SQRT, AVERAGE_POOL_2D and SQUARED_DIFFERENCE, which it leaves to them).
An elementwise op of one int8 operand is a function of its 256 stored integers: its kernel's
arithmetic is replayed here in numpy (integer / float32, as the C++ does) into a table.
Only per-tensor int8 tensors are handled (AVERAGE_POOL_2D: uint8 too, TFLite's uint8 kernel
rounding the same sums the same way); anything else keeps the float layer and rounding.
"""

from __future__ import annotations

import numpy as np

from mlflow_tflite_keras.converter.ir import Op
from mlflow_tflite_keras.converter.layers.fixed_point import (
    quantize_multiplier,
    rounding_divide_by_pot,
    saturate16,
    saturating_doubling_high_mul16,
    saturating_rounding_doubling_high_mul16,
)

INT8_MIN, INT8_MAX = -128, 127


def per_tensor_quantized(t, types=("INT8",)) -> bool:
    """A quantized tensor of one of ``types`` with one scale and zero point."""
    return t is not None and t.is_quantized and t.type_name in types and \
        t.quantization.scale.size == 1 and t.quantization.block_shape is None


#: Ops whose replayed kernel also takes uint8 tensors: TFLite's uint8 AveragePool
#: (optimized_ops / reference_ops pooling.h) rounds ``(sum + count / 2) / count`` on the
#: non-negative stored integers, which is the int8 kernel's rounding there.
_UINT8_KERNELS = frozenset({"AVERAGE_POOL_2D"})


def scale_and_zero_point(t) -> tuple:
    """A per-tensor quantized tensor's (float32 scale, int zero point)."""
    return np.float32(t.quantization.scale.reshape(-1)[0]), \
        int(t.quantization.zero_point.reshape(-1)[0])


# ---- elementwise kernels as tables over the 256 stored integers ------------------------------

def hard_swish_table(s_in, z_in, s_out, z_out) -> np.ndarray:
    """TFLite's int8 HardSwish (reference_ops::HardSwish, parameters of HardSwishPrepare)."""
    hires_input_scale = np.float32(1.0 / 128.0) * np.float32(s_in)
    out_fixed, out_exponent = quantize_multiplier(float(np.float32(hires_input_scale / s_out)))
    relu_fixed, relu_exponent = quantize_multiplier(
        float(np.float32(hires_input_scale / np.float32(3.0 / 32768.0))))

    def down16(m):  # DownScaleInt32ToInt16Multiplier
        return 32767 if m >= 2**31 - 1 - (1 << 15) else (m + (1 << 15)) >> 16

    out16, relu16 = down16(out_fixed), down16(relu_fixed)
    table = []
    for q in range(INT8_MIN, INT8_MAX + 1):
        hires = saturate16((q - z_in) * (1 << 7))
        preshift = saturating_rounding_doubling_high_mul16(hires, out16)
        reluish = hires
        if relu_exponent > 0:
            reluish = saturate16(reluish * (1 << (relu_exponent - 1)))
        reluish = saturating_rounding_doubling_high_mul16(reluish, relu16)
        if relu_exponent > 0:
            reluish = saturate16(reluish * 2)
        if relu_exponent < 0:
            reluish = rounding_divide_by_pot(reluish, -relu_exponent)
        reluish = (reluish + (1 << 15)) >> 1
        value = rounding_divide_by_pot(saturating_doubling_high_mul16(reluish, preshift),
                                       -out_exponent)
        table.append(min(INT8_MAX, max(INT8_MIN, value + z_out)))
    return np.asarray(table, np.int32)


def sqrt_table(s_in, z_in, s_out, z_out) -> np.ndarray:
    """TFLite's int8 SQRT (elementwise.cc SqrtEvalQuantized): float32 ``sqrt(scale * (q -
    zero_point)) / output_scale`` truncated toward zero (a negative input, which the kernel
    refuses, maps to 0 here)."""
    q = np.arange(INT8_MIN, INT8_MAX + 1)
    dequantized = np.maximum(np.float32(s_in) * (q - z_in).astype(np.float32), np.float32(0))
    steps = np.trunc(np.sqrt(dequantized) / np.float32(s_out)).astype(np.int64)
    return np.clip(steps + z_out, INT8_MIN, INT8_MAX).astype(np.int32)


def xnnpack_leaky_relu_table(alpha, s_in, z_in, s_out, z_out) -> np.ndarray | None:
    """XNNPACK's qs8 leaky ReLU (xnn_init_qs8_lrelu_scalar_params, qs8-vlrelu): 8-bit
    fixed-point multipliers ``lrintf(256 * scale ratio)`` per sign, ``(bias + x * m) >> 8``
    with ``bias = (output_zero_point << 8) + 128``; None where its delegate refuses the
    scales (the builtin kernel runs then)."""
    positive = np.float32(np.float32(s_in) / np.float32(s_out))
    negative = np.float32(positive * np.float32(alpha))
    if not (np.isfinite(positive) and 1.0 / 256.0 <= positive <= 128.0) or \
            not (-127.99609375 <= negative <= 128.0) or abs(negative) < 1.0 / 256.0:
        return None
    m_pos, m_neg = (int(np.rint(np.float32(256.0) * r)) for r in (positive, negative))
    x = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int64) - z_in
    acc = ((z_out << 8) + 0x80) + x * np.where(x >= 0, m_pos, m_neg)
    return np.clip(acc >> 8, INT8_MIN, INT8_MAX).astype(np.int32)


def _lookup(op: Op, bounds) -> dict | None:
    x, out = op.inputs[0], op.outputs[0]
    (s_in, z_in), (s_out, z_out) = scale_and_zero_point(x), scale_and_zero_point(out)
    if op.type == "HARD_SWISH":
        table = hard_swish_table(s_in, z_in, s_out, z_out)
    elif op.type == "SQRT":
        table = sqrt_table(s_in, z_in, s_out, z_out)
    else:
        table = xnnpack_leaky_relu_table(np.float32(op.opt("alpha", 0.2)), s_in, z_in, s_out,
                                         z_out)
    if table is None:
        return None
    return {"input_scale": float(s_in), "input_zero_point": z_in, "qmin": INT8_MIN,
            "table": [int(v) for v in table], "output_scale": float(s_out),
            "output_zero_point": z_out}


# ---- window ops ------------------------------------------------------------------------------

def _same_pad_before(size: int, window: int, stride: int, out: int) -> int:
    return max((out - 1) * stride + window - size, 0) // 2


def _average_pool(op: Op, bounds) -> dict | None:
    """TFLite's int8 / uint8 AveragePool (optimized_integer_ops / reference_integer_ops /
    optimized_ops pooling.h)."""
    x, out = op.inputs[0], op.outputs[0]
    if scale_and_zero_point(x) != scale_and_zero_point(out) or len(x.shape) != 4 or \
            any(int(d) <= 0 for d in (*x.shape[1:3], *out.shape[1:3])):
        return None
    scale, zero_point = scale_and_zero_point(out)
    pool = (int(op.opt("filterHeight", 1)), int(op.opt("filterWidth", 1)))
    strides = (int(op.opt("strideH", 1)), int(op.opt("strideW", 1)))
    # TFLite's padding (SAME: half the total before, VALID: none) from the sizes alone: a
    # VALID output needs no padding, so both give the padding TFLite computes
    totals = [max((int(out.shape[1 + i]) - 1) * strides[i] + pool[i] - int(x.shape[1 + i]), 0)
              for i in range(2)]
    return {"scale": float(scale), "zero_point": zero_point, "pool": list(pool),
            "strides": list(strides), "padding": "same" if any(totals) else "valid",
            "pads": [t // 2 for t in totals], "low": int(bounds[0]), "high": int(bounds[1])}


def _resize_coordinates(size_in: int, size_out: int, align_corners: bool,
                        half_pixel_centers: bool):
    """XNNPACK's xnn_indirection_init_resize_bilinear2d_hwc_q11 along one axis (float32):
    the lower / upper source index and the 11-bit weight of the upper one per output index."""
    adjust = int(align_corners and size_out != 1)
    scale = np.float32(np.float32(size_in - adjust) / np.float32(size_out - adjust))
    last = size_in - 1
    position = np.arange(size_out, dtype=np.int32).astype(np.float32) * scale
    if align_corners or not half_pixel_centers:
        position = np.minimum(position, np.float32(last))
    else:
        offset = np.float32(np.float32(0.5) * scale - np.float32(0.5))
        position = np.minimum(np.maximum(np.float32(position + offset), np.float32(0)),
                              np.float32(last))
    lower = position.astype(np.int32)
    upper = np.minimum(lower + 1, last)
    alpha = np.float32(position - lower.astype(np.float32))
    weight = np.rint(alpha * np.float32(2048.0)).astype(np.int32)
    return lower.tolist(), upper.tolist(), weight.tolist()


def _resize_bilinear(op: Op, bounds) -> dict | None:
    """XNNPACK's qs8 RESIZE_BILINEAR (its delegate takes it with a constant size; XNNPACK
    needs equal input / output quantization)."""
    x, out = op.inputs[0], op.outputs[0]
    size = op.inputs[1] if len(op.inputs) > 1 else None
    if size is None or not size.is_constant or \
            scale_and_zero_point(x) != scale_and_zero_point(out) or len(x.shape) != 4 or \
            any(int(d) <= 0 for d in (*x.shape[1:3], *out.shape[1:3])):
        return None
    align, half = bool(op.opt("alignCorners", False)), bool(op.opt("halfPixelCenters", False))
    top, bottom, alpha_y = _resize_coordinates(int(x.shape[1]), int(out.shape[1]), align, half)
    left, right, alpha_x = _resize_coordinates(int(x.shape[2]), int(out.shape[2]), align, half)
    scale, zero_point = scale_and_zero_point(out)
    return {"scale": float(scale), "zero_point": zero_point, "top": top, "bottom": bottom,
            "alpha_y": alpha_y, "left": left, "right": right, "alpha_x": alpha_x}


def _squared_difference(op: Op, bounds) -> dict | None:
    """TFLite's int8 SQUARED_DIFFERENCE (squared_difference.cc: parameters of Prepare)."""
    if len(op.inputs) != 2 or not per_tensor_quantized(op.inputs[1]):
        return None
    (sa, _), (sb, _) = (scale_and_zero_point(t) for t in op.inputs)
    s_out, z_out = scale_and_zero_point(op.outputs[0])
    twice_max = 2.0 * float(max(sa, sb))
    multipliers = [quantize_multiplier(float(s) / twice_max) for s in (sa, sb)]
    output = quantize_multiplier(twice_max * twice_max / ((1 << 14) * float(s_out)))
    if any(shift > 0 for _, shift in (*multipliers, output)):
        return None
    (ma, sha), (mb, shb) = multipliers
    return {"a_scale": float(sa), "b_scale": float(sb), "a_multiplier": ma, "a_shift": sha,
            "b_multiplier": mb, "b_shift": shb, "output_multiplier": output[0],
            "output_shift": output[1], "output_zero_point": z_out,
            "output_scale": float(s_out)}


_KERNELS = {"HARD_SWISH": ("lookup", _lookup), "SQRT": ("lookup", _lookup),
            "LEAKY_RELU": ("lookup", _lookup), "AVERAGE_POOL_2D": ("average_pool", _average_pool),
            "RESIZE_BILINEAR": ("resize_bilinear", _resize_bilinear),
            "SQUARED_DIFFERENCE": ("squared_difference", _squared_difference)}


def kernel_params(op: Op, bounds: tuple[int, int]) -> tuple[str, dict] | None:
    """``(IntegerKernel kind, params)`` replaying ``op``'s integer kernel, or None (another
    op, other types, or a case its kernel does not take); ``bounds``: the fused activation's
    clamp on the output's stored integers."""
    types = ("INT8", "UINT8") if op.type in _UINT8_KERNELS else ("INT8",)
    if op.type not in _KERNELS or not op.inputs or len(op.outputs) != 1 or \
            not (per_tensor_quantized(op.inputs[0], types) and per_tensor_quantized(op.outputs[0], types)) \
            or op.inputs[0].type_name != op.outputs[0].type_name:
        return None
    kind, parameters = _KERNELS[op.type]
    params = parameters(op, bounds)
    return None if params is None else (kind, params)
