"""Layers of the recurrent family (``converter/ops/recurrent.py``)."""

from __future__ import annotations

from functools import lru_cache

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.fixed_point import (
    divide_by_pot,
    int32,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    quantized_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul16,
    saturating_rounding_multiply_by_pot16,
    wrap16,
)
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
# gemmlowp's int16 exp / logistic / tanh (fixedpoint.h) on the primitives of fixed_point.py
# build the sigmoid / tanh lookup tables of IntegerLSTMCell; the cell replays the rest of the
# kernel on int32 keras.ops. On x86 and ARM the
# builtin kernel runs these portable routines (sse_tensor_utils forwards the int16 ones to
# portable_tensor_utils; XNNPACK does not take the LSTM), double rounding
# (TFLITE_SINGLE_ROUNDING=0, the default build).


def _constant16(raw32: int) -> int:
    """GEMMLOWP_CHECKED_FIXEDPOINT_CONSTANT for int16: the int32 constant shifted by 16."""
    return int(rounding_divide_by_pot(np.int64(raw32), 16))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    constant_term, one_third = _constant16(1895147668), _constant16(715827883)
    x = wrap16(a + (1 << 12))  # + 1/8 in Q0.15
    x2 = saturating_rounding_doubling_high_mul16(x, x)
    x3 = saturating_rounding_doubling_high_mul16(x2, x)
    x4_over_4 = saturating_rounding_multiply_by_pot16(saturating_rounding_doubling_high_mul16(x2, x2), -2)
    poly = saturating_rounding_multiply_by_pot16(
        wrap16(saturating_rounding_doubling_high_mul16(wrap16(x4_over_4 + x3), one_third) + x2), -1)
    return np.clip(constant_term + saturating_rounding_doubling_high_mul16(constant_term, wrap16(x + poly)),
                   -32768, 32767)  # AddSaturatingIf16Bit


def _exp_on_negative_values(a, integer_bits: int):
    fractional_bits = 15 - integer_bits
    quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_quarter = wrap16((a & (quarter - 1)) - quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot16(a_mod_quarter_minus_quarter, integer_bits))
    remainder = wrap16(a_mod_quarter_minus_quarter - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084),
                                 (1, 290630308), (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:  # the barrel shifter
            bit = (remainder & wrap16(1 << (fractional_bits + exponent))) != 0
            result = np.where(bit, saturating_rounding_doubling_high_mul16(result, _constant16(multiplier)),
                              result)
    if integer_bits > 5:
        result = np.where(a < _constant16(-(1 << (36 - integer_bits))), 0, result)
    return np.where(a == 0, 32767, result)


def _newton_raphson_reciprocal(a):
    """``1 / (1 + a)`` of gemmlowp's one_over_one_plus_x_for_x_in_0_1, in Q2.13."""
    total = a + 32767
    rounded = total + np.where(total >= 0, 1, -1)
    half_denominator = wrap16(np.sign(rounded) * (np.abs(rounded) // 2))  # RoundingHalfSum
    x = wrap16(_constant16(1515870810)
                + saturating_rounding_doubling_high_mul16(half_denominator, _constant16(-1010580540)))
    for _ in range(3):
        one_minus = wrap16((1 << 13) - saturating_rounding_doubling_high_mul16(half_denominator, x))
        x = wrap16(x + saturating_rounding_multiply_by_pot16(saturating_rounding_doubling_high_mul16(x, one_minus), 2))
    return x


@lru_cache(maxsize=None)
def logistic_table(integer_bits: int) -> np.ndarray:
    """gemmlowp::logistic on int16 with ``integer_bits`` for every raw input -32768..32767
    (index ``raw + 32768``): the output raw values, Q0.15 (tensor_utils::ApplySigmoid)."""
    a = np.arange(-32768, 32768, dtype=np.int64)
    positive = a > 0
    magnitude = np.where(positive, a, wrap16(-a))
    on_positive = saturating_rounding_multiply_by_pot16(
        _newton_raphson_reciprocal(_exp_on_negative_values(wrap16(-magnitude),
                                                            integer_bits)), 1)
    out = np.where(a == 0, _constant16(1 << 30),
                   np.where(positive, on_positive, wrap16(32767 - on_positive)))
    return out.astype(np.int32)


@lru_cache(maxsize=None)
def tanh_table(integer_bits: int) -> np.ndarray:
    """gemmlowp::tanh on int16 with ``integer_bits`` (tensor_utils::ApplyTanh), as
    :func:`logistic_table`."""
    a = np.arange(-32768, 32768, dtype=np.int64)
    negative = a < 0
    n = np.where(negative, a, wrap16(-a))
    t = saturating_rounding_multiply_by_pot16(wrap16(_newton_raphson_reciprocal(
        _exp_on_negative_values(n, integer_bits + 1)) - (1 << 13)), 2)
    return np.where(a == 0, 0, np.where(negative, wrap16(-t), t)).astype(np.int32)


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
    ``float + stop_gradient(integer - float)``, so ``fit`` trains the float variables under
    the integer forward pass. The integer arithmetic is int8 x int8 -> int32 matmuls and
    int32 elementwise ops (no 64-bit types: exact on every Keras backend); the int32 bias is
    recovered from its float variable by rounding, exact below 2**21.

    Not used for projection / peephole / layer-norm LSTMs (the handler refuses them) nor for
    the bidirectional operator. Sequences start from real zeros, as LiteRT resets its
    variable tensors (an int8 state to its zero point, the int16 cell to 0)."""

    def __init__(self, units, input_scale: float, input_zero_point: int, kernel_scales,
                 recurrent_scales, bias_scales, cell_scale: float, hidden_scale: float,
                 hidden_zero_point: int, intermediate_hidden_scale: float | None = None,
                 intermediate_hidden_zero_point: int | None = None, cell_clip: float = 0.0,
                 **kwargs):
        super().__init__(units, **kwargs)
        self.input_scale = float(input_scale)
        self.input_zero_point = int(input_zero_point)
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

        def rescale(pairs):
            multiplier, shift = (np.asarray(v, np.int64) for v in zip(*pairs))
            return quantized_multiplier(columns(multiplier), columns(shift))

        hidden = quantize_multiplier(f32(2.0 ** -30 / np.float64(
            f32(self.intermediate_hidden_scale))))
        clip = 0
        if self.cell_clip > 0:
            clip = int(min(max(f32(self.cell_clip) / f32(self.cell_scale), -32768.0), 32767.0))
        return {
            "input": rescale([quantize_multiplier(f32(f32(s) * f32(self.input_scale)) / gate)
                              for s in self.kernel_scales]),
            "recurrent": rescale([quantize_multiplier(f32(f32(s) * f32(self.hidden_scale))
                                                      / gate)
                                  for s in self.recurrent_scales]),
            "hidden": quantized_multiplier(*hidden),
            "kernel_scales": columns(self.kernel_scales, f32),
            "recurrent_scales": columns(self.recurrent_scales, f32),
            "bias_scales": columns(self.bias_scales, f32),
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
        """One step of LstmStepInteger8x8_16 on int32 tensors: the raw int8 ``x`` and ``h``,
        the raw int16 ``c``; returns the new raw ``h`` and ``c``."""
        from mlflow_tflite_keras.converter.layers.quantization import round_half_away

        p = self._integer

        def integers(v, scale, low, high, dtype="int32"):
            return ops.cast(ops.clip(round_half_away(v / scale), low, high), dtype)

        kernel = integers(self.kernel, p["kernel_scales"], -128, 127, "int8")
        recurrent = integers(self.recurrent_kernel, p["recurrent_scales"], -128, 127, "int8")
        # the kernel's effective biases: the int32 bias less zero point times row sums
        bias = integers(self.bias, p["bias_scales"], -2.0 ** 31, 2.0 ** 31 - 128) \
            if self.use_bias else 0
        bias_x = bias - self.input_zero_point * ops.sum(ops.cast(kernel, "int32"), axis=0)
        bias_h = -self.hidden_zero_point * ops.sum(ops.cast(recurrent, "int32"), axis=0)
        # int8 x int8 -> int32 matmuls; the gate buffer starts at 0 and each part is
        # rescaled to Q3.12 and added saturating
        z = ops.clip(multiply_by_quantized_multiplier(ops.matmul(x, kernel) + bias_x,
                                                      p["input"]), -32768, 32767)
        z = ops.clip(multiply_by_quantized_multiplier(ops.matmul(h_tm1, recurrent) + bias_h,
                                                      p["recurrent"]) + z, -32768, 32767)
        zi, zf, zc, zo = ops.split(z + 32768, 4, axis=-1)
        sigmoid = int32(logistic_table(3))
        i, f, o = (ops.take(sigmoid, v) for v in (zi, zf, zo))
        g = ops.take(int32(tanh_table(3)), zc)
        c = divide_by_pot(f * c_tm1, 2 ** 15) + \
            divide_by_pot(i * g, 2 ** (30 + self.cell_scale_log2))
        c = ops.clip(c, -32768, 32767)
        if p["clip"] > 0:
            c = ops.clip(c, -p["clip"], p["clip"])
        tanh_c = ops.take(int32(tanh_table(15 + self.cell_scale_log2)), c + 32768)
        h = multiply_by_quantized_multiplier(o * tanh_c, p["hidden"]) + \
            self.intermediate_hidden_zero_point
        return ops.clip(h, -128, 127), c

    def call(self, inputs, states, training=False):
        from mlflow_tflite_keras.converter.layers.quantization import round_half_away

        h_tm1, c_tm1 = states[0], states[1]
        h_float, c_float = self._float_step(inputs, h_tm1, c_tm1)

        def raw(v, scale, zero_point, low, high, dtype):
            q = round_half_away(ops.stop_gradient(v) / np.float32(scale)) + zero_point
            return ops.cast(ops.clip(q, low, high), dtype)

        h_q, c_q = self._integer_step(
            raw(inputs, self.input_scale, self.input_zero_point, -128, 127, "int8"),
            raw(h_tm1, self.hidden_scale, self.hidden_zero_point, -128, 127, "int8"),
            raw(c_tm1, self.cell_scale, 0, -32768, 32767, "int32"))
        # the kernel writes the hidden state on the intermediate's grid and reads it back
        # as the output state's (the same grid in converted models)
        dtype = h_float.dtype
        h_int = ops.cast(h_q - self.hidden_zero_point, dtype) * np.float32(self.hidden_scale)
        c_int = ops.cast(c_q, dtype) * np.float32(self.cell_scale)
        h = h_float + ops.stop_gradient(h_int - h_float)
        c = c_float + ops.stop_gradient(c_int - c_float)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "input_scale": self.input_scale,
                "input_zero_point": self.input_zero_point,
                "kernel_scales": self.kernel_scales, "recurrent_scales": self.recurrent_scales,
                "bias_scales": self.bias_scales, "cell_scale": self.cell_scale,
                "hidden_scale": self.hidden_scale, "hidden_zero_point": self.hidden_zero_point,
                "intermediate_hidden_scale": self.intermediate_hidden_scale,
                "intermediate_hidden_zero_point": self.intermediate_hidden_zero_point,
                "cell_clip": self.cell_clip}
