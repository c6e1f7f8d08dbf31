"""Integer kernels of full-integer ops whose float layer plus rounding lands a step away from
what LiteRT computes (``to_keras(emulate_quantization=True)``): elementwise ops replayed as
the kernel's 256-entry table over the stored integers, TFLite's int8 average pooling and
XNNPACK's qs8 bilinear resize on the stored integers.

Each layer is called on ``[float result, *quantized operands]`` and returns the kernel's value
(dequantized) with the float result's gradient (straight-through), so ``fit`` trains through
the integer arithmetic. No weights; registered serializable (package ``mlflow_tflite_keras``).
The parameters come from :mod:`mlflow_tflite_keras.converter.integer_kernels`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.fixed_point import (
    multiply_by_quantized_multiplier,
    quantized_multiplier,
)
from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE
from mlflow_tflite_keras.converter.layers.quantization import round_half_away, straight_through


def stored_integers(x, scale, zero_point):
    """The stored integers (float32, exact) of a value on the grid ``(q - zero_point) * scale``."""
    return round_half_away(ops.cast(x, "float32") / np.float32(scale)) + np.float32(zero_point)


def pool_counts(size: int, window: int, stride: int, out: int, pad_before: int) -> np.ndarray:
    """How many in-bounds elements each output position of a 1-D pooling window covers."""
    starts = np.arange(out) * stride - pad_before
    return (np.minimum(starts + window, size) - np.maximum(starts, 0)).astype(np.float32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntegerKernel(keras.layers.Layer):
    """The value of an op's integer kernel, straight-through (see the module docstring).

    ``kind="lookup"``: ``params`` ``{"input_scale", "input_zero_point", "qmin", "table",
    "output_scale", "output_zero_point"}``; the output's stored integer is
    ``table[stored input - qmin]`` (the kernel's result for every input integer).
    ``kind="average_pool"``: ``{"scale", "zero_point", "pool", "strides", "padding" ("same"
    / "valid"), "pads" (top, left), "low", "high"}``; TFLite's int8 AveragePool: the int32
    sum of the stored integers in the window divided by the number of in-bounds elements,
    rounded half away from zero, clamped.
    ``kind="resize_bilinear"``: ``{"scale", "zero_point", "top", "bottom", "alpha_y", "left",
    "right", "alpha_x"}``; XNNPACK's s8 ibilinear: 11-bit fixed-point weights per output
    row / column, ``(tl << 22 + ... + 2**21) >> 22`` on the stored integers.
    ``kind="squared_difference"``: ``{"a_scale", "b_scale", "a_multiplier", "a_shift",
    "b_multiplier", "b_shift", "output_multiplier", "output_shift", "output_zero_point",
    "output_scale"}``; TFLite's int8 SquaredDifference:
    both operands less their zero points, shifted left 7 bits, rescaled by q31 multipliers
    (gemmlowp's rounding doubling high multiply, then a rounding right shift), the
    difference squared and rescaled the same way (int32 arithmetic, as fixed_point.py)."""

    KINDS = ("lookup", "average_pool", "resize_bilinear", "squared_difference")

    def __init__(self, kind: str, params: dict, **kwargs):
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"unknown integer kernel {kind!r}")
        self.kind = kind
        self.params = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in params.items()}
        self.trainable = False

    def call(self, inputs):
        result, p = inputs[0], self.params
        if self.kind == "lookup":
            stored = stored_integers(inputs[1], p["input_scale"], p["input_zero_point"])
            index = ops.cast(stored, "int32") - int(p["qmin"])
            q = ops.cast(ops.take(np.asarray(p["table"], np.int32), index), "float32")
            scale, zero_point = p["output_scale"], p["output_zero_point"]
        elif self.kind == "average_pool":
            q = self._average_pool(inputs[1], p)
            scale, zero_point = p["scale"], p["zero_point"]
        elif self.kind == "resize_bilinear":
            q = self._resize_bilinear(inputs[1], p)
            scale, zero_point = p["scale"], p["zero_point"]
        else:
            q = self._squared_difference(inputs[1], inputs[2], p)
            scale, zero_point = p["output_scale"], p["output_zero_point"]
        exact = (q - np.float32(zero_point)) * np.float32(scale)
        return straight_through(result, ops.reshape(ops.cast(exact, result.dtype),
                                                    ops.shape(result)))

    @staticmethod
    def _average_pool(x, p):
        stored = stored_integers(x, p["scale"], p["zero_point"])
        (fh, fw), (sh, sw), (top, left) = p["pool"], p["strides"], p["pads"]
        mean = ops.average_pool(stored, (fh, fw), (sh, sw), padding=p["padding"])
        counts = np.outer(pool_counts(int(x.shape[1]), fh, sh, int(mean.shape[1]), top),
                          pool_counts(int(x.shape[2]), fw, sw, int(mean.shape[2]), left))
        counts = counts[None, :, :, None]
        # the exact int32 sum (the pooled mean is within float32 rounding of sum / count),
        # divided in integers as the kernel does: a compiled float division may be off an
        # ulp (x.5 turning into x.4999998)
        total = ops.cast(ops.round(mean * counts), "int32")
        counts = counts.astype(np.int32)
        magnitude = ops.floor_divide(ops.abs(total) + counts // 2, counts)
        q = ops.cast(ops.where(total > 0, magnitude, -magnitude), "float32")
        return ops.clip(q, float(p["low"]), float(p["high"]))

    @staticmethod
    def _resize_bilinear(x, p):
        stored = ops.cast(stored_integers(x, p["scale"], p["zero_point"]), "int32")
        top = ops.take(stored, np.asarray(p["top"], np.int32), axis=1)
        bottom = ops.take(stored, np.asarray(p["bottom"], np.int32), axis=1)
        left, right = np.asarray(p["left"], np.int32), np.asarray(p["right"], np.int32)
        alpha_x = np.asarray(p["alpha_x"], np.int32)[None, None, :, None]
        alpha_y = np.asarray(p["alpha_y"], np.int32)[None, :, None, None]

        def horizontal(rows):
            tl, tr = ops.take(rows, left, axis=2), ops.take(rows, right, axis=2)
            return tl * 2048 + (tr - tl) * alpha_x

        upper, lower = horizontal(top), horizontal(bottom)
        acc = upper * 2048 + (lower - upper) * alpha_y
        return ops.cast(ops.floor_divide(acc + (1 << 21), 1 << 22), "float32")

    @staticmethod
    def _squared_difference(a, b, p):
        def scaled(x, name):
            # the stored integers less the zero point: the operand's value in steps
            shifted = ops.cast(stored_integers(x, p[f"{name}_scale"], 0.0), "int32") * 128
            return multiply_by_quantized_multiplier(shifted, quantized_multiplier(
                p[f"{name}_multiplier"], p[f"{name}_shift"]))

        # |difference| < 2**15 (255 * 128 scaled by at most 1): its square fits int32
        difference = scaled(a, "a") - scaled(b, "b")
        q = multiply_by_quantized_multiplier(difference * difference, quantized_multiplier(
            p["output_multiplier"], p["output_shift"])) + int(p["output_zero_point"])
        return ops.cast(ops.clip(q, -128, 127), "float32")

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "params": self.params}
