"""Layers of the spectral family (``converter/ops/spectral.py``): complex tensors travel as
``complex64``; the layers state their output dtype, since Keras's symbolic dtype inference keeps
``complex64`` for ``abs``/``real``/``imag``."""

from __future__ import annotations

import keras
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE


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
