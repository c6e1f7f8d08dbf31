"""TFLite's and gemmlowp's fixed-point arithmetic, in one place, for the layers that replay
integer kernels (``emulate_quantization=True``).

Two kinds of functions:

* numpy / Python integers, for parameters and lookup tables computed once at build time
  (``QuantizeMultiplier``, gemmlowp's int16 primitives; int64 arithmetic with int16
  wrap-around where the C++ wraps);
* ``keras.ops`` on int32 tensors, for what runs in the model: exact without 64-bit integers,
  so on every Keras backend (JAX has no int64 unless told to).

Sources: ``tensorflow/lite/kernels/internal/common.h`` / ``common.cc``
(``MultiplyByQuantizedMultiplier``, ``TFLITE_SINGLE_ROUNDING=0``, the default build),
``quantization_util.cc`` (``QuantizeMultiplier``), gemmlowp ``fixedpoint.h``.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

# ---- numpy / Python integers -------------------------------------------------------------


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``QuantizeMultiplier``: ``real = multiplier * 2**(shift - 31)``, the multiplier a Q31
    integer (``frexp`` of the double, rounded half away from zero); ``(0, 0)`` below 2**-31."""
    real = float(real)
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    fixed = int(math.copysign(math.floor(abs(fraction) * (1 << 31) + 0.5), fraction))
    if fixed == 1 << 31:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    return fixed, int(shift)


def wrap16(v):
    """int16 two's-complement wrap-around (gemmlowp's plain Add / Sub / Neg on int16)."""
    return ((np.asarray(v, np.int64) + 32768) & 0xFFFF) - 32768


def saturate16(v):
    """int16 saturation."""
    return np.clip(np.asarray(v, np.int64), -32768, 32767)


def rounding_divide_by_pot(x, exponent: int):
    """gemmlowp::RoundingDivideByPOT: ``x / 2**exponent`` rounded half away from zero."""
    x = np.asarray(x, np.int64)
    if exponent == 0:
        return x
    mask = (1 << exponent) - 1
    return (x >> exponent) + ((x & mask) > (mask >> 1) + (x < 0))


def _high16(product, nudge):
    s = product + nudge
    return np.sign(s) * (np.abs(s) // (1 << 15))  # C division truncates


def saturating_rounding_doubling_high_mul16(a, b):
    """gemmlowp::SaturatingRoundingDoublingHighMul on int16."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    high = _high16(ab, np.where(ab >= 0, 1 << 14, 1 - (1 << 14)))
    return np.where((a == b) & (a == -32768), 32767, wrap16(high))


def saturating_doubling_high_mul16(a, b):
    """gemmlowp::SaturatingDoublingHighMul on int16 (no rounding: the product truncated)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.where((a == b) & (a == -32768), 32767, wrap16(_high16(a * b, 0)))


def saturating_rounding_multiply_by_pot16(x, exponent: int):
    """gemmlowp::SaturatingRoundingMultiplyByPOT on int16 (``Rescale``)."""
    x = np.asarray(x, np.int64)
    if exponent > 0:
        limit = (1 << (15 - exponent)) - 1
        return np.where(x > limit, 32767, np.where(x < -limit, -32768, wrap16(x << exponent)))
    return rounding_divide_by_pot(x, -exponent)


# ---- keras.ops on int32 tensors -----------------------------------------------------------


def int32(values):
    """``values`` (numpy) as an int32 array: the constants the tensor functions take."""
    return np.asarray(values, np.int64).astype(np.int32)


def divide_by_pot(x, pot):
    """gemmlowp::RoundingDivideByPOT on int32 tensors, ``pot = 2**exponent`` (broadcast):
    the floor quotient, plus one when the remainder is above half (at half for x >= 0)."""
    pot = int32(pot)
    quotient = ops.floor_divide(x, pot)
    threshold = int32(np.maximum(pot // 2 - 1, 0)) + ops.cast(x < 0, "int32") * int32(pot > 1)
    return quotient + ops.cast(x - quotient * pot > threshold, "int32")


def quantized_multiplier(multiplier, shift) -> tuple:
    """A Q31 ``multiplier`` and its ``shift`` (ints, or arrays per channel) in the form
    :func:`multiply_by_quantized_multiplier` takes: the multiplier in base-2**11 digits, the
    left and right powers of two."""
    m = np.asarray(multiplier, np.int64)
    shift = np.asarray(shift, np.int64)
    return ((int32(m & 2047), int32((m >> 11) & 2047), int32(m >> 22)),
            int32(2 ** np.maximum(shift, 0)), int32(2 ** np.maximum(-shift, 0)))


def multiply_by_quantized_multiplier(x, quantized):
    """``MultiplyByQuantizedMultiplier(int32_t x, ...)`` (double rounding) on an int32 tensor,
    ``quantized`` from :func:`quantized_multiplier`: ``x`` shifted left, gemmlowp's saturating
    rounding doubling high multiply ``floor((x * m + 2**30) / 2**31)`` as a schoolbook product
    of base-2**11 digits (every partial product below 2**24), then RoundingDivideByPOT."""
    (m0, m1, m2), left_pot, right_pot = quantized
    x = x * left_pot
    x0 = x - ops.floor_divide(x, 2048) * 2048
    rest = ops.floor_divide(x, 2048)
    x1 = rest - ops.floor_divide(rest, 2048) * 2048
    x2 = ops.floor_divide(rest, 2048)  # signed, |x2| <= 2**9
    carry = ops.floor_divide(x0 * m1 + x1 * m0 + ops.floor_divide(x0 * m0, 2048), 2048)
    middle = x0 * m2 + x1 * m1 + x2 * m0 + carry + 256
    high = (x2 * m2) * 8192 + (x1 * m2 + x2 * m1) * 4 + ops.floor_divide(middle, 512)
    return divide_by_pot(high, right_pot)
