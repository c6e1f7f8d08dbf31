"""Spectral family: RFFT2D, COMPLEX_ABS, REAL, IMAG.

Complex tensors travel through the Keras graph as ``complex64`` tensors (the TensorFlow
backend carries them; RESHAPE and other layout ops pass them through). ``tf.signal.rfft`` and
``tf.signal.stft`` lower to RFFT2D over a length-1 axis in TFLite, so there is no separate RFFT.
The layers here state their output dtype, since Keras's symbolic dtype inference keeps
``complex64`` for ``abs``/``real``/``imag``.
"""

from __future__ import annotations

import keras
from keras import ops

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers import PACKAGE
from mlflow_tflite_keras.converter.registry import register


@keras.saving.register_keras_serializable(package=PACKAGE)
class RFFT2D(keras.layers.Layer):
    """Real 2-D FFT over the last two axes, like ``tf.signal.rfft2d(x, fft_length)``: the
    input is cropped / zero-padded to ``fft_length``; the output is complex64
    ``[..., fft_length[0], fft_length[1] // 2 + 1]``."""

    def __init__(self, fft_length, **kwargs):
        super().__init__(**kwargs)
        self.fft_length = tuple(int(n) for n in fft_length)

    def call(self, x):
        fh, fw = self.fft_length
        x = ops.cast(x, "float32")
        h, w = x.shape[-2], x.shape[-1]
        x = x[..., :min(h, fh), :min(w, fw)]
        if h < fh or w < fw:
            pad = [[0, 0]] * (len(x.shape) - 2) + [[0, max(fh - h, 0)], [0, max(fw - w, 0)]]
            x = ops.pad(x, pad)
        if keras.backend.backend() == "tensorflow":
            # The op itself: it exports back to the builtin RFFT2D. keras.ops.fft2 would
            # export as FFT2D and tf.Complex, which TFLite only runs as Flex ops.
            import tensorflow as tf

            return tf.signal.rfft2d(x, fft_length=self.fft_length)
        real, imag = ops.fft2((x, ops.zeros_like(x)))
        n = fw // 2 + 1
        return ops.view_as_complex(ops.stack([real[..., :n], imag[..., :n]], axis=-1))

    def compute_output_spec(self, x):
        fh, fw = self.fft_length
        return keras.KerasTensor(tuple(x.shape[:-2]) + (fh, fw // 2 + 1), dtype="complex64")

    def get_config(self):
        return {**super().get_config(), "fft_length": list(self.fft_length)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ComplexPart(keras.layers.Layer):
    """``abs``, ``real`` or ``imag`` of a complex tensor, as float32."""

    PARTS = ("abs", "real", "imag")

    def __init__(self, part: str, **kwargs):
        super().__init__(**kwargs)
        if part not in self.PARTS:
            raise ValueError(f"ComplexPart: part must be one of {self.PARTS}, not {part!r}.")
        self.part = part

    def call(self, x):
        y = {"abs": ops.abs, "real": ops.real, "imag": ops.imag}[self.part](x)
        return ops.cast(y, "float32")

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "part": self.part}


@register("RFFT2D", layer="RFFT2D (package layer, complex64 output)")
def rfft2d(op, ctx):
    x = ctx.value(op.inputs[0])
    fft_length = ctx.const(op.input(1), "fft_length")
    if fft_length is None or fft_length.size != 2:
        raise ConversionError("RFFT2D: fft_length must hold 2 values.")
    if op.inputs[0].rank < 2:
        raise ConversionError(f"RFFT2D: input of rank {op.inputs[0].rank}, expected >= 2.")
    return [ctx.apply(RFFT2D(fft_length.tolist(), name=ctx.name(op)), x)]


def _part(part):
    def convert(op, ctx):
        if op.inputs[0].type_name not in ("COMPLEX64", "COMPLEX128"):
            raise ConversionError(f"{op.type}: input of type {op.inputs[0].type_name}, "
                                  "expected complex.")
        return [ctx.apply(ComplexPart(part, name=ctx.name(op)), ctx.value(op.inputs[0]))]
    return convert


register("COMPLEX_ABS", layer="ComplexPart(abs)")(_part("abs"))
register("REAL", layer="ComplexPart(real)")(_part("real"))
register("IMAG", layer="ComplexPart(imag)")(_part("imag"))
