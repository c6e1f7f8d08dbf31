"""LiteRT's int16-activation (int16x8) integer kernels replayed exactly, for emulated
reconstructions (``to_keras(emulate_quantization=True)``).

A float computation snapped to the output grid (:class:`..quantization.FakeQuant`) is what an
int8 kernel computes; an int16x8 kernel is not: CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED accumulate int16 x int8 products in int64 and requantize with a 15-bit
multiplier (``MultiplyByQuantizedMultiplier(int64_t, ...)``, kernels/internal/common.cc), and
SOFTMAX is built from two interpolated 513-entry lookup tables (``SoftmaxInt16``,
reference/softmax.h, tables from ``LUTPopulate<int16_t>``, common.h). These layers compute
those integers: accumulators in float64 (sums of integer products, exact below 2**53),
rescaling in int64. The forward value is the kernel's; the gradient is the float
computation's (straight-through), so ``fit`` trains through them.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.fixed_point import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    quantized_multiplier,
)
from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE
from mlflow_tflite_keras.converter.layers.quantization import (
    QuantizedWeights,
    round_half_away,
    straight_through,
)


def round_half_away_scalar(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)


def rescale_int64(x, multiplier, shift):
    """``MultiplyByQuantizedMultiplier(int64_t x, ...)`` (common.cc) on an int64 tensor: the
    multiplier reduced to 15 bits, one rounding half up (multiplier / shift: ints or int64
    arrays broadcast against ``x``). The ``int32_t`` overload is
    :func:`..fixed_point.multiply_by_quantized_multiplier`."""
    multiplier = np.asarray(multiplier, np.int64)
    shift = np.asarray(shift, np.int64)
    reduced = np.where(multiplier < 0x7FFF0000, (multiplier + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - shift
    return ops.floor_divide(x * reduced + (np.int64(1) << (total - 1)), np.int64(1) << total)


def activation_range(activation, scale: float, zero_point: int, qmin: int, qmax: int):
    """``CalculateActivationRangeQuantized`` (kernels/kernel_util.cc): the fused activation
    as a clamp of the quantized output."""
    def quantize(f):
        return zero_point + int(round_half_away_scalar(float(np.float32(f) / np.float32(scale))))

    if activation == "relu":
        return max(qmin, quantize(0.0)), qmax
    if activation == "relu6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if activation == "relu_n1_to_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    return qmin, qmax


@keras.saving.register_keras_serializable(package=PACKAGE)
class Int16x8Weights(QuantizedWeights):
    """A :class:`..quantization.QuantizedWeights` convolution / depthwise convolution / dense
    layer of an int16x8 kernel: its forward value is the kernel's requantized integer output
    (``reference_integer_ops::ConvPerChannel`` / ``DepthwiseConvPerChannel`` /
    ``FullyConnected[PerChannel]`` with int16 input): the integer accumulator of the int16
    input, the int8 kernel and the bias integers (float64, exact), rescaled per output
    channel, offset by the output zero point, clamped to ``[act_min, act_max]``, dequantized.

    ``int16_requantize``: ``{"input_scale", "input_zero_point", "output_scale",
    "output_zero_point", "rescale", "multipliers", "shifts", "scales", "act_min",
    "act_max"}``. ``rescale``: ``"int64"`` (convolutions with an int64 bias: the 15-bit
    ``MultiplyByQuantizedMultiplier(int64_t)`` by ``multipliers`` / ``shifts``), ``"int32"``
    (an int32 bias: the ``int32_t`` one) or ``"double"`` (fully connected: ``round(acc *
    scale)`` in double, ``scales`` per channel). The kernel is the ``quantization`` entry of
    weight 0, the bias that of weight 1."""

    def __init__(self, layer, quantization, float_weights=(), int16_requantize=None, **kwargs):
        super().__init__(layer, quantization, float_weights=float_weights, **kwargs)
        r = dict(int16_requantize or {})
        self.int16_requantize = {
            "input_scale": float(r["input_scale"]), "input_zero_point": int(r["input_zero_point"]),
            "output_scale": float(r["output_scale"]),
            "output_zero_point": int(r["output_zero_point"]),
            "rescale": str(r["rescale"]),
            "multipliers": [int(m) for m in r.get("multipliers", ())],
            "shifts": [int(s) for s in r.get("shifts", ())],
            "scales": [float(s) for s in r.get("scales", ())],
            "act_min": int(r["act_min"]), "act_max": int(r["act_max"])}

    def _steps(self, q, w):
        """Weight ``w`` of entry ``q`` as integers on its grid, offset by the zero point
        (float64: an int64 bias of the accumulator's scale has more digits than float32, and
        a compiled graph may divide by the scale as a multiplication by its inverse, which in
        float32 rounds a trained, off-grid weight near a half step the other way)."""
        scale, zero_point = self.grid(q, tuple(w.shape))
        steps = ops.cast(ops.convert_to_tensor(w), "float64") / scale.astype(np.float64)
        integers = ops.clip(round_half_away(steps) + zero_point, q["qmin"], q["qmax"])
        return integers - zero_point, scale.astype(np.float64)

    def quantized_weights(self) -> list:
        """[(variable, its fake-quantized value)], on the integers the kernel replay uses."""
        pairs = []
        for q in self.quantization:
            w = self.layer.weights[q["weight"]]
            steps, scale = self._steps(q, w)
            pairs.append((w, straight_through(ops.convert_to_tensor(w),
                                              ops.cast(steps * scale, w.dtype))))
        return pairs

    def integer_weights(self) -> list:
        """[(entry, the weight's integers on its grid, numpy, Keras layout)], as replayed."""
        result = []
        for q in self.quantization:
            steps, _ = self._steps(q, self.layer.weights[q["weight"]])
            steps = np.asarray(ops.convert_to_numpy(steps))
            zero_point = self.grid(q, steps.shape)[1].astype(np.float64)
            result.append((q, (steps + zero_point).astype(np.int64)))
        return result

    def _integers(self, index):
        """Weight ``index`` as integers (float64) minus its zero point, or None."""
        for q in self.quantization:
            if q["weight"] == index:
                return self._steps(q, self.layer.weights[index])[0]
        return None

    def _accumulator(self, x):
        layer = self.layer
        kernel = self._integers(0)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            acc = ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                     data_format=layer.data_format,
                                     dilation_rate=layer.dilation_rate)
        elif isinstance(layer, keras.layers.Dense):
            acc = ops.matmul(x, kernel)
        else:
            acc = layer.convolution_op(x, kernel)
        if len(layer.weights) > 1:
            acc = acc + self._integers(1)
        return acc

    def call(self, inputs, *args, **kwargs):
        y = super().call(inputs, *args, **kwargs)
        r = self.int16_requantize
        x = round_half_away(ops.cast(inputs, "float64") / r["input_scale"]) \
            - r["input_zero_point"]
        acc = self._accumulator(x)
        if r["rescale"] == "double":
            q = ops.cast(round_half_away(acc * np.asarray(r["scales"], np.float64)), "int64")
        elif r["rescale"] == "int64":
            q = rescale_int64(ops.cast(acc, "int64"), r["multipliers"], r["shifts"])
        else:  # an int32 bias: the int32 accumulator, the int32_t overload
            q = ops.cast(multiply_by_quantized_multiplier(ops.cast(acc, "int32"), (
                quantized_multiplier(r["multipliers"], r["shifts"]))), "int64")
        q = ops.clip(q + r["output_zero_point"], r["act_min"], r["act_max"])
        value = ops.cast(q - r["output_zero_point"], "float32") * np.float32(r["output_scale"])
        return straight_through(y, ops.cast(value, y.dtype))

    def get_config(self):
        return {**super().get_config(), "int16_requantize": self.int16_requantize}


#: int16's max - min: the softmax tables' scales are ranges over it (activations.cc)
_INT16_RANGE = 65535


def int16_lut(transform, input_scale: float, input_zero_point: int, output_scale: float,
              output_zero_point: int) -> np.ndarray:
    """``LUTPopulate<int16_t>`` with double arithmetic (common.h): 512 samples of
    ``transform`` on the input range plus the end point, biased so that the interpolation
    halfway between two samples errs least."""
    def rnd(v):
        return np.sign(v) * np.floor(np.abs(v) + 0.5)

    input_min = input_scale * (-32768 - input_zero_point)
    input_max = input_scale * (32767 - input_zero_point)
    output_min = output_scale * (-32768 - output_zero_point)
    output_max = output_scale * (32767 - output_zero_point)
    steps = 512
    step = (input_max - input_min) / steps
    half_step = step / 2
    inverse = 65536.0 / (output_max - output_min)
    lut = np.zeros(steps + 1, np.float64)
    for i in range(steps):
        val = transform(input_min + i * step)
        val_midpoint = transform(input_min + i * step + half_step)
        val_next = transform(input_min + (i + 1) * step)
        sample = rnd(val * inverse)
        interpolated = rnd((val_next * inverse + rnd(val * inverse)) / 2)
        midpoint = rnd(val_midpoint * inverse)
        bias = rnd((interpolated - midpoint) / 2)
        lut[i] = min(max(sample - bias, -32768.0), 32767.0)
    lut[steps] = min(max(rnd(transform(input_max) * inverse), -32768.0), 32767.0)
    return lut


def lut_lookup(value, lut):
    """``LUTLookup(int16_t, const int16_t*)``: the table at the high 9 bits of ``value``,
    interpolated linearly by the low 7 (float64 integers in, float64 integers out)."""
    high = ops.floor(value / 128.0)
    offset = value - high * 128.0
    index = ops.cast(high + 256.0, "int32")
    base = ops.take(lut, index)
    slope = ops.take(lut, index + 1) - base
    return base + ops.floor((slope * offset + 64.0) / 128.0)


@functools.lru_cache(maxsize=1)
def _softmax_tables() -> tuple[np.ndarray, np.ndarray]:
    """SoftmaxInt16's tables (activations.cc): exp on ``[-10, 0]`` and 1 / (1 + x) on
    ``[0, 1]``, both to a symmetric ``[-1, 1]`` output range."""
    return (int16_lut(math.exp, 10.0 / _INT16_RANGE, 32767, 2.0 / _INT16_RANGE, 0),
            int16_lut(lambda v: 1.0 / (1.0 + v), 1.0 / _INT16_RANGE, -32768,
                      2.0 / _INT16_RANGE, 0))


def softmax_int16(x, multiplier: int, shift: int):
    """``reference_ops::SoftmaxInt16`` over the last axis of ``x`` (int16 integers, float64)."""
    exp_lut, reciprocal_lut = (ops.convert_to_tensor(t) for t in _softmax_tables())
    diff = x - ops.max(x, axis=-1, keepdims=True)
    scaled = ops.cast(multiply_by_quantized_multiplier(
        ops.cast(diff, "int32"), quantized_multiplier(multiplier, shift)), "float64")
    exps = lut_lookup(ops.clip(scaled + 32767.0, -32768.0, 32767.0), exp_lut)
    total = ops.sum(exps, axis=-1, keepdims=True)  # Q16.15
    # 1 + the leading zeros of the sum: the sum normalized to Q1.30 then rounded to Q1.15
    bits = ops.floor(ops.log2(total)) + 1.0
    bits = bits + ops.cast(total >= ops.power(2.0, bits), "float64") \
        - ops.cast(total < ops.power(2.0, bits - 1.0), "float64")  # log2's last-bit error
    headroom_plus_one = 32.0 - bits
    shifted = ops.floor((total * ops.power(2.0, headroom_plus_one - 1.0) + 8192.0) / 16384.0)
    reciprocal = lut_lookup(ops.clip(shifted - 98304.0, -32768.0, 32767.0), reciprocal_lut)
    right_shift = 31.0 - headroom_plus_one
    result = ops.floor((exps * reciprocal + ops.power(2.0, right_shift - 1.0))
                       / ops.power(2.0, right_shift))
    return ops.clip(result, 0.0, 32767.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Int16Softmax(keras.layers.Layer):
    """An int16 SOFTMAX kernel (:func:`softmax_int16`) on ``[x, softmax(x)]``: ``x`` on the
    input grid (``input_scale``, zero point 0), the float softmax for the gradient; the
    output on the kernel's grid ``1 / 32768`` (zero point 0)."""

    def __init__(self, input_scale: float, beta: float = 1.0, output_scale: float = 1 / 32768,
                 **kwargs):
        super().__init__(**kwargs)
        self.input_scale = float(input_scale)
        self.beta = float(beta)
        self.output_scale = float(output_scale)
        self.trainable = False

    def call(self, inputs):
        x, y = inputs
        # the input difference rescaled so that [-65535, 0] is [-10, 0] (activations.cc)
        multiplier, shift = quantize_multiplier(
            self.input_scale * self.beta / (10.0 / 65535.0))
        q = round_half_away(ops.cast(x, "float64") / self.input_scale)
        out = softmax_int16(q, multiplier, shift)
        value = ops.cast(out, "float32") * np.float32(self.output_scale)
        return straight_through(y, ops.cast(value, y.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "input_scale": self.input_scale, "beta": self.beta,
                "output_scale": self.output_scale}


def mean_multiplier(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """The multiplier / shift of an integer MEAN over ``count`` values (reduce.cc's
    ``QuantizeMultiplier(input_scale / output_scale)``, then reference_ops::QuantizedMeanOrSum
    folding ``1 / count`` in)."""
    multiplier, shift = quantize_multiplier(float(input_scale) / float(output_scale))
    bits = min(count.bit_length() - 1, 32, 31 + shift)
    return int((multiplier << bits) // count), shift - bits


@keras.saving.register_keras_serializable(package=PACKAGE)
class Int16Mean(keras.layers.Layer):
    """An int16 MEAN kernel (reference_ops::QuantizedMeanOrSum) on ``[x, mean(x)]``: the
    integer sum of ``x`` (zero point 0) over ``axis``, rescaled by ``multiplier`` / ``shift``
    (:func:`mean_multiplier`, the ``int32_t`` MultiplyByQuantizedMultiplier), saturated to
    int16; the float mean for the gradient."""

    def __init__(self, input_scale: float, output_scale: float, axis, keepdims: bool,
                 multiplier: int, shift: int, **kwargs):
        super().__init__(**kwargs)
        self.input_scale = float(input_scale)
        self.output_scale = float(output_scale)
        self.axis = [int(a) for a in axis]
        self.keepdims = bool(keepdims)
        self.multiplier, self.shift = int(multiplier), int(shift)
        self.trainable = False

    def call(self, inputs):
        x, y = inputs
        q = round_half_away(ops.cast(x, "float64") / self.input_scale)
        total = ops.sum(q, axis=self.axis, keepdims=self.keepdims)  # exact integers
        out = multiply_by_quantized_multiplier(ops.cast(total, "int32"), quantized_multiplier(
            self.multiplier, self.shift))
        out = ops.clip(out, -32768, 32767)
        value = ops.reshape(ops.cast(out, "float32") * np.float32(self.output_scale),
                            ops.shape(y))
        return straight_through(y, ops.cast(value, y.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "input_scale": self.input_scale,
                "output_scale": self.output_scale, "axis": self.axis,
                "keepdims": self.keepdims, "multiplier": self.multiplier, "shift": self.shift}


def add_multipliers(scale1: float, scale2: float, output_scale: float) -> dict:
    """The int16 ADD kernel's rescaling (add.cc, general scales): both inputs shifted left 15
    bits and brought to twice the larger scale, the sum to the output's."""
    twice_max = float(2 * max(np.float32(scale1), np.float32(scale2)))
    m1, s1 = quantize_multiplier(float(np.float32(scale1)) / twice_max)
    m2, s2 = quantize_multiplier(float(np.float32(scale2)) / twice_max)
    # (1 << 15) * output_scale in float32, as the kernel computes it
    out, shift = quantize_multiplier(
        twice_max / float(np.float32(32768) * np.float32(output_scale)))
    return {"multipliers": [m1, m2, out], "shifts": [s1, s2, shift]}


def mul_multipliers(scale1: float, scale2: float, output_scale: float) -> dict:
    """The int16 MUL kernel's rescaling (mul.cc: the scales multiplied in float32)."""
    real = np.float32(np.float32(scale1) * np.float32(scale2)) / np.float32(output_scale)
    m, s = quantize_multiplier(float(np.float32(real)))
    return {"multipliers": [m], "shifts": [s]}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Int16Arithmetic(keras.layers.Layer):
    """An int16 ADD (``operation="add"``: reference_ops::Add's general-scale int16 path) or MUL
    (``"mul"``: reference_integer_ops::Mul) kernel on ``[a, b, a op b]`` (inputs on their int16
    grids, zero point 0; the float result for the gradient), in int64 with the ``int32_t``
    MultiplyByQuantizedMultiplier, clamped to ``[act_min, act_max]``."""

    def __init__(self, operation: str, scales, output_scale: float, multipliers, shifts,
                 act_min: int, act_max: int, **kwargs):
        super().__init__(**kwargs)
        self.operation = str(operation)
        self.scales = [float(s) for s in scales]
        self.output_scale = float(output_scale)
        self.multipliers = [int(m) for m in multipliers]
        self.shifts = [int(s) for s in shifts]
        self.act_min, self.act_max = int(act_min), int(act_max)
        self.trainable = False

    def call(self, inputs):
        a, b, y = inputs
        qa, qb = (ops.cast(round_half_away(ops.cast(v, "float64") / s), "int32")
                  for v, s in zip((a, b), self.scales))
        m = [quantized_multiplier(*pair) for pair in zip(self.multipliers, self.shifts)]
        if self.operation == "add":  # int16 values shifted left 15 bits: below 2**31
            total = multiply_by_quantized_multiplier(qa * 32768, m[0]) + \
                multiply_by_quantized_multiplier(qb * 32768, m[1])
            out = multiply_by_quantized_multiplier(total, m[2])
        else:
            out = multiply_by_quantized_multiplier(qa * qb, m[0])
        out = ops.clip(out, self.act_min, self.act_max)
        value = ops.cast(out, "float32") * np.float32(self.output_scale)
        return straight_through(y, ops.cast(ops.broadcast_to(value, ops.shape(y)), y.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape[2]

    def get_config(self):
        return {**super().get_config(), "operation": self.operation, "scales": self.scales,
                "output_scale": self.output_scale, "multipliers": self.multipliers,
                "shifts": self.shifts, "act_min": self.act_min, "act_max": self.act_max}
