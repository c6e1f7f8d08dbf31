"""Layers of the recurrent family (``converter/ops/recurrent.py``)."""

from __future__ import annotations

from functools import lru_cache

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClippedLSTMCell(keras.layers.LSTMCell):
    """``keras.layers.LSTMCell`` whose cell state is clipped to ``[-cell_clip, cell_clip]``
    after each update, as TFLite's LSTM kernels do when ``cellClip > 0``."""

    def __init__(self, units, cell_clip: float = 0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.cell_clip = float(cell_clip)

    def _clip(self, c):
        return ops.clip(c, -self.cell_clip, self.cell_clip) if self.cell_clip > 0 else c

    def _compute_carry_and_output(self, x, h_tm1, c_tm1):
        c, o = super()._compute_carry_and_output(x, h_tm1, c_tm1)
        return self._clip(c), o

    def _compute_carry_and_output_fused(self, z, c_tm1):
        c, o = super()._compute_carry_and_output_fused(z, c_tm1)
        return self._clip(c), o

    def get_config(self):
        return {**super().get_config(), "cell_clip": self.cell_clip}


# ---- TFLite's integer LSTM (lstm_eval.cc, 8x8_16) -----------------------------------------
# The fixed-point helpers below follow gemmlowp (fixedpoint.h, int16 raw type) and TFLite's
# kernel utilities (common.h MultiplyByQuantizedMultiplier, quantization_util.cc
# QuantizeMultiplier) operation by operation, on numpy int64 with int16 wrap-around where the
# C++ wraps. They build the sigmoid / tanh lookup tables of IntegerLSTMCell and its
# multipliers; the cell replays the rest of the kernel on keras.ops.


def _wrap16(v):
    """int16 two's-complement wrap-around (gemmlowp's plain Add / Sub / Neg on int16)."""
    return ((np.asarray(v, np.int64) + 32768) & 0xFFFF) - 32768


def _rounding_divide_by_pot(x, exponent: int):
    """gemmlowp::RoundingDivideByPOT: ``x / 2**exponent`` rounded half away from zero."""
    x = np.asarray(x, np.int64)
    if exponent == 0:
        return x
    mask = (1 << exponent) - 1
    return (x >> exponent) + ((x & mask) > (mask >> 1) + (x < 0))


def _doubling_high_mul16(a, b):
    """gemmlowp::SaturatingRoundingDoublingHighMul on int16 (C division truncates)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    s = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    high = np.sign(s) * (np.abs(s) // (1 << 15))
    return np.where((a == b) & (a == -32768), 32767, _wrap16(high))


def _multiply_by_pot16(x, exponent: int):
    """gemmlowp::SaturatingRoundingMultiplyByPOT on int16 (Rescale)."""
    x = np.asarray(x, np.int64)
    if exponent > 0:
        limit = (1 << (15 - exponent)) - 1
        return np.where(x > limit, 32767, np.where(x < -limit, -32768, _wrap16(x << exponent)))
    return _rounding_divide_by_pot(x, -exponent)


def _constant16(raw32: int) -> int:
    """GEMMLOWP_CHECKED_FIXEDPOINT_CONSTANT for int16: the int32 constant shifted by 16."""
    return int(_rounding_divide_by_pot(np.int64(raw32), 16))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    constant_term, one_third = _constant16(1895147668), _constant16(715827883)
    x = _wrap16(a + (1 << 12))  # + 1/8 in Q0.15
    x2 = _doubling_high_mul16(x, x)
    x3 = _doubling_high_mul16(x2, x)
    x4_over_4 = _multiply_by_pot16(_doubling_high_mul16(x2, x2), -2)
    poly = _multiply_by_pot16(
        _wrap16(_doubling_high_mul16(_wrap16(x4_over_4 + x3), one_third) + x2), -1)
    return np.clip(constant_term + _doubling_high_mul16(constant_term, _wrap16(x + poly)),
                   -32768, 32767)  # AddSaturatingIf16Bit


def _exp_on_negative_values(a, integer_bits: int):
    fractional_bits = 15 - integer_bits
    quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_quarter = _wrap16((a & (quarter - 1)) - quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _multiply_by_pot16(a_mod_quarter_minus_quarter, integer_bits))
    remainder = _wrap16(a_mod_quarter_minus_quarter - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084),
                                 (1, 290630308), (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:  # the barrel shifter
            bit = (remainder & _wrap16(1 << (fractional_bits + exponent))) != 0
            result = np.where(bit, _doubling_high_mul16(result, _constant16(multiplier)),
                              result)
    if integer_bits > 5:
        result = np.where(a < _constant16(-(1 << (36 - integer_bits))), 0, result)
    return np.where(a == 0, 32767, result)


def _newton_raphson_reciprocal(a):
    """``1 / (1 + a)`` of gemmlowp's one_over_one_plus_x_for_x_in_0_1, in Q2.13."""
    total = a + 32767
    rounded = total + np.where(total >= 0, 1, -1)
    half_denominator = _wrap16(np.sign(rounded) * (np.abs(rounded) // 2))  # RoundingHalfSum
    x = _wrap16(_constant16(1515870810)
                + _doubling_high_mul16(half_denominator, _constant16(-1010580540)))
    for _ in range(3):
        one_minus = _wrap16((1 << 13) - _doubling_high_mul16(half_denominator, x))
        x = _wrap16(x + _multiply_by_pot16(_doubling_high_mul16(x, one_minus), 2))
    return x


@lru_cache(maxsize=None)
def logistic_table(integer_bits: int) -> np.ndarray:
    """gemmlowp::logistic on int16 with ``integer_bits`` for every raw input -32768..32767
    (index ``raw + 32768``): the output raw values, Q0.15 (tensor_utils::ApplySigmoid)."""
    a = np.arange(-32768, 32768, dtype=np.int64)
    positive = a > 0
    magnitude = np.where(positive, a, _wrap16(-a))
    on_positive = _multiply_by_pot16(
        _newton_raphson_reciprocal(_exp_on_negative_values(_wrap16(-magnitude),
                                                            integer_bits)), 1)
    out = np.where(a == 0, _constant16(1 << 30),
                   np.where(positive, on_positive, _wrap16(32767 - on_positive)))
    return out.astype(np.int32)


@lru_cache(maxsize=None)
def tanh_table(integer_bits: int) -> np.ndarray:
    """gemmlowp::tanh on int16 with ``integer_bits`` (tensor_utils::ApplyTanh), as
    :func:`logistic_table`."""
    a = np.arange(-32768, 32768, dtype=np.int64)
    negative = a < 0
    n = np.where(negative, a, _wrap16(-a))
    t = _multiply_by_pot16(_wrap16(_newton_raphson_reciprocal(
        _exp_on_negative_values(n, integer_bits + 1)) - (1 << 13)), 2)
    return np.where(a == 0, 0, np.where(negative, _wrap16(-t), t)).astype(np.int32)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: ``real = multiplier * 2**(shift - 31)``, the multiplier a
    Q31 integer (frexp, rounded half away from zero)."""
    if real == 0.0:
        return 0, 0
    q, shift = np.frexp(float(real))
    fixed = int(np.sign(q) * np.floor(abs(q) * 2.0 ** 31 + 0.5))
    if fixed == 1 << 31:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    return fixed, int(shift)


def _divide_by_pot(x, pot):
    """RoundingDivideByPOT on int64 tensors, ``pot = 2**exponent`` (broadcast)."""
    pot = np.asarray(pot, np.int64)
    return ops.sign(x) * ops.floor_divide(ops.abs(x) + pot // 2, pot)


def _multiply_by_quantized_multiplier(x, multiplier, left_pot, right_pot):
    """MultiplyByQuantizedMultiplier (double rounding) on int64 tensors: the saturating
    rounding doubling high multiply (round half up of ``x * m / 2**31``), then
    RoundingDivideByPOT."""
    high = ops.floor_divide(x * np.asarray(left_pot, np.int64) * np.asarray(multiplier, np.int64)
                            + np.int64(1 << 30), np.int64(1 << 31))
    return _divide_by_pot(high, right_pot)


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntegerLSTMCell(keras.layers.LSTMCell):
    """``keras.layers.LSTMCell`` computing what TFLite's integer LSTM kernel computes
    (lstm_eval.cc, 8x8_16 without layer norm, peephole or projection: int8 input and
    hidden state, int16 Q3.12 gate pre-activations, Q0.15 gates, int16 cell state of scale
    ``2**cell_scale_log2``), for emulated reconstructions. The forward pass replays the
    kernel's integer arithmetic exactly: per gate, the input and recurrent matmuls of the
    int8 weights (from the float weights on their per-tensor grids) with the zero points
    folded into the int32 bias, each rescaled to Q3.12 by its quantized multiplier and added
    saturating; gemmlowp's int16 fixed-point sigmoid / tanh (lookup tables of every int16
    input); ``f * c`` and ``i * g`` rounding-shifted to the cell's scale, added saturating
    and clipped to the quantized cell clip; the hidden state ``o * tanh(c)`` rescaled by its
    multiplier onto the int8 grid of the op's hidden intermediate. The integer gates are
    always sigmoid / tanh, as in the kernel.

    Gradients are the float LSTM's (straight through): each step's state is
    ``float + stop_gradient(integer - float)``. The integer arithmetic runs on int64 and
    float64 tensors (exact; the TensorFlow backend, or JAX with x64 enabled)."""

    def __init__(self, units, input_scale: float, kernel_scales,
                 recurrent_scales, bias_scales, cell_scale: float, hidden_scale: float,
                 hidden_zero_point: int, intermediate_hidden_scale: float | None = None,
                 intermediate_hidden_zero_point: int | None = None, cell_clip: float = 0.0,
                 **kwargs):
        super().__init__(units, **kwargs)
        self.input_scale = float(input_scale)
        self.kernel_scales = [float(v) for v in kernel_scales]
        self.recurrent_scales = [float(v) for v in recurrent_scales]
        self.bias_scales = [float(v) for v in bias_scales]
        self.cell_scale = float(cell_scale)
        self.hidden_scale = float(hidden_scale)
        self.hidden_zero_point = int(hidden_zero_point)
        self.intermediate_hidden_scale = float(
            hidden_scale if intermediate_hidden_scale is None else intermediate_hidden_scale)
        self.intermediate_hidden_zero_point = int(
            hidden_zero_point if intermediate_hidden_zero_point is None
            else intermediate_hidden_zero_point)
        self.cell_clip = float(cell_clip)
        if not all(len(v) == 4 for v in (self.kernel_scales, self.recurrent_scales,
                                         self.bias_scales)):
            raise ValueError("kernel, recurrent and bias scales: one per gate (i, f, c, o)")
        mantissa, exponent = np.frexp(self.cell_scale)
        if mantissa != 0.5 or not 0 <= 14 + int(exponent) <= 6:
            raise ValueError(f"cell_scale {self.cell_scale} is not a power of two 2**-9 .. "
                             "2**-15, which the integer LSTM kernel needs")
        self.cell_scale_log2 = int(exponent) - 1
        self._integer = self._integer_parameters()

    def _integer_parameters(self) -> dict:
        """The kernel's Prepare: multipliers (scales in float32, as lstm.cc), per column."""
        f32 = np.float32
        gate = f32(2.0 ** -12)  # Q3.12 pre-activations without layer norm

        def columns(values, dtype=np.int64):
            return np.repeat(np.asarray(values, dtype), self.units)

        def multipliers(scales, activation_scale):
            pairs = [quantize_multiplier(f32(f32(s) * f32(activation_scale)) / gate)
                     for s in scales]
            shifts = [shift for _, shift in pairs]
            return (columns([m for m, _ in pairs]), columns([2 ** max(s, 0) for s in shifts]),
                    columns([2 ** max(-s, 0) for s in shifts]))

        hidden = quantize_multiplier(f32(2.0 ** -30 / np.float64(
            f32(self.intermediate_hidden_scale))))
        clip = 0
        if self.cell_clip > 0:
            clip = int(min(max(f32(self.cell_clip) / f32(self.cell_scale), -32768.0), 32767.0))
        return {"input": multipliers(self.kernel_scales, self.input_scale),
                "recurrent": multipliers(self.recurrent_scales, self.hidden_scale),
                "hidden": (hidden[0], 2 ** max(hidden[1], 0), 2 ** max(-hidden[1], 0)),
                "kernel_scales": columns(self.kernel_scales, np.float32),
                "recurrent_scales": columns(self.recurrent_scales, np.float32),
                "bias_scales": columns(self.bias_scales, np.float32),
                "clip": clip}

    def _float_step(self, x, h_tm1, c_tm1):
        z = ops.matmul(x, self.kernel) + ops.matmul(h_tm1, self.recurrent_kernel)
        if self.use_bias:
            z = z + self.bias
        zi, zf, zc, zo = ops.split(z, 4, axis=-1)
        c = self.recurrent_activation(zf) * c_tm1 + \
            self.recurrent_activation(zi) * self.activation(zc)
        if self.cell_clip > 0:
            c = ops.clip(c, -self.cell_clip, self.cell_clip)
        return self.recurrent_activation(zo) * self.activation(c), c

    def _integer_step(self, x, h_tm1, c_tm1):
        """One step of LstmStepInteger8x8_16 on the integers of ``x``, ``h``, ``c``: returns
        the new hidden state (int8 values) and cell state (int16 values), int64."""
        from mlflow_tflite_keras.converter.layers.quantization import round_half_away

        p = self._integer

        def integers(v, scale, dtype="int64"):  # less the zero point
            q = round_half_away(ops.cast(v, "float64") / np.float64(np.float32(scale)))
            return ops.cast(q, dtype)

        def weight_integers(w, scales):
            q = round_half_away(ops.cast(ops.stop_gradient(w), "float64")
                                / scales.astype(np.float64))
            return ops.clip(q, -128.0, 127.0)

        # input and hidden state less their zero points (the kernel folds
        # ``-zero_point * row sums`` into its effective biases: the same int32 sums)
        x_q = integers(x, self.input_scale, dtype="float64")
        h_q = integers(h_tm1, self.hidden_scale, dtype="float64")
        c_q = integers(c_tm1, self.cell_scale)
        kernel = weight_integers(self.kernel, p["kernel_scales"])
        recurrent = weight_integers(self.recurrent_kernel, p["recurrent_scales"])
        bias = round_half_away(ops.cast(ops.stop_gradient(self.bias), "float64")
                               / p["bias_scales"].astype(np.float64)) if self.use_bias else 0.0
        # int32 accumulators (exact in float64); the gate buffer starts at 0 and each part
        # is added saturating
        acc_x = ops.cast(ops.matmul(x_q, kernel) + bias, "int64")
        acc_h = ops.cast(ops.matmul(h_q, recurrent), "int64")
        z = ops.clip(_multiply_by_quantized_multiplier(acc_x, *p["input"]), -32768, 32767)
        z = ops.clip(_multiply_by_quantized_multiplier(acc_h, *p["recurrent"]) + z,
                     -32768, 32767)
        zi, zf, zc, zo = ops.split(z + 32768, 4, axis=-1)
        sigmoid = ops.convert_to_tensor(logistic_table(3).astype(np.int64))
        i, f, o = (ops.take(sigmoid, v) for v in (zi, zf, zo))
        g = ops.take(ops.convert_to_tensor(tanh_table(3).astype(np.int64)), zc)
        c = _divide_by_pot(f * c_q, 2 ** 15) + \
            _divide_by_pot(i * g, 2 ** (30 + self.cell_scale_log2))
        c = ops.clip(c, -32768, 32767)
        if p["clip"] > 0:
            c = ops.clip(c, -p["clip"], p["clip"])
        tanh_c = ops.take(ops.convert_to_tensor(
            tanh_table(15 + self.cell_scale_log2).astype(np.int64)), c + 32768)
        h = _multiply_by_quantized_multiplier(o * tanh_c, *p["hidden"]) + \
            self.intermediate_hidden_zero_point
        return ops.clip(h, -128, 127), c

    def call(self, inputs, states, training=False):
        h_tm1, c_tm1 = states[0], states[1]
        h_float, c_float = self._float_step(inputs, h_tm1, c_tm1)
        h_q, c_q = self._integer_step(ops.stop_gradient(inputs), ops.stop_gradient(h_tm1),
                                      ops.stop_gradient(c_tm1))
        # the kernel writes the hidden state on the intermediate's grid and reads it back
        # as the output state (the same grid in converted models)
        dtype = h_float.dtype
        h_int = ops.cast((ops.cast(h_q, "float64") - self.hidden_zero_point)
                         * np.float64(np.float32(self.hidden_scale)), dtype)
        c_int = ops.cast(ops.cast(c_q, "float64") * self.cell_scale, dtype)
        h = h_float + ops.stop_gradient(h_int - h_float)
        c = c_float + ops.stop_gradient(c_int - c_float)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "input_scale": self.input_scale,
                "kernel_scales": self.kernel_scales, "recurrent_scales": self.recurrent_scales,
                "bias_scales": self.bias_scales, "cell_scale": self.cell_scale,
                "hidden_scale": self.hidden_scale, "hidden_zero_point": self.hidden_zero_point,
                "intermediate_hidden_scale": self.intermediate_hidden_scale,
                "intermediate_hidden_zero_point": self.intermediate_hidden_zero_point,
                "cell_clip": self.cell_clip}
