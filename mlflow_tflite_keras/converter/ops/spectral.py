"""Spectral family: RFFT2D, COMPLEX_ABS, REAL, IMAG.

Complex tensors travel through the Keras graph as ``complex64`` tensors (the TensorFlow
backend carries them; RESHAPE and other layout ops pass them through). ``tf.signal.rfft`` and
``tf.signal.stft`` lower to RFFT2D over a length-1 axis in TFLite, so there is no separate RFFT.
The layers here state their output dtype, since Keras's symbolic dtype inference keeps
``complex64`` for ``abs``/``real``/``imag``.
"""

from __future__ import annotations

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers.spectral import RFFT2D, ComplexPart
from mlflow_tflite_keras.converter.registry import register


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
