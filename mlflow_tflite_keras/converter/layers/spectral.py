"""Layers of the spectral family (``converter/ops/spectral.py``): complex tensors travel as
``complex64``; the layers state their output dtype, since Keras's symbolic dtype inference keeps
``complex64`` for ``abs``/``real``/``imag``."""

from __future__ import annotations

import keras
import numpy as np
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class AudioSpectrogram(keras.layers.Layer):
    """TensorFlow's ``AudioSpectrogram`` (TFLite custom op, ``kernels/audio_spectrogram.cc``):
    audio ``[samples, channels]`` -> ``[channels, frames, fft_length // 2 + 1]``. Frames of
    ``window_size`` samples every ``stride``, a periodic Hann window, zero-padded to the next
    power of two, squared magnitude of the real FFT (its square root unless
    ``magnitude_squared``). Built on ``keras.ops`` (gather, rfft): it exports as builtins."""

    def __init__(self, window_size, stride, magnitude_squared, **kwargs):
        super().__init__(**kwargs)
        self.window_size, self.stride = int(window_size), int(stride)
        self.magnitude_squared = bool(magnitude_squared)
        self.fft_length = 1 << max(self.window_size - 1, 1).bit_length()
        i = np.arange(self.window_size)
        self.window = (0.5 - 0.5 * np.cos(2.0 * np.pi * i / self.window_size)).astype("float32")

    def frames(self, samples: int) -> int:
        return 0 if samples < self.window_size else 1 + (samples - self.window_size) // self.stride

    def call(self, x):
        x = ops.transpose(ops.cast(x, "float32"))  # [channels, samples]
        starts = self.stride * np.arange(self.frames(x.shape[-1]))
        index = (starts[:, None] + np.arange(self.window_size)[None, :]).astype("int32")
        windows = ops.take(x, index, axis=-1) * self.window  # [channels, frames, window]
        real, imag = ops.rfft(windows, fft_length=self.fft_length)
        power = real * real + imag * imag
        return power if self.magnitude_squared else ops.sqrt(power)

    def compute_output_spec(self, x):
        return keras.KerasTensor((x.shape[1], self.frames(x.shape[0]), self.fft_length // 2 + 1),
                                 dtype="float32")

    def get_config(self):
        return {**super().get_config(), "window_size": self.window_size, "stride": self.stride,
                "magnitude_squared": self.magnitude_squared}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mfcc(keras.layers.Layer):
    """TensorFlow's ``Mfcc`` (TFLite custom op, ``kernels/mfcc.cc`` and
    ``kernels/internal/mfcc*.cc``): a squared-magnitude spectrogram ``[channels, frames, bins]``
    -> ``[channels, frames, dct_coefficient_count]``. Magnitudes summed under HTK-style
    triangular mel filters (DC excluded, each bin split between two neighbouring filters),
    ``log(max(x, 1e-12))``, then the first coefficients of an orthonormal-scaled DCT-II. The
    filter bank depends on the bin count and sample rate, so it is built with the layer."""

    FLOOR = 1e-12

    def __init__(self, sample_rate, lower_frequency_limit, upper_frequency_limit,
                 filterbank_channel_count, dct_coefficient_count, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate = int(sample_rate)
        self.lower_frequency_limit = float(lower_frequency_limit)
        self.upper_frequency_limit = float(upper_frequency_limit)
        self.filterbank_channel_count = int(filterbank_channel_count)
        self.dct_coefficient_count = int(dct_coefficient_count)

    def build(self, input_shape):
        self.filterbank = mel_filterbank(int(input_shape[-1]), self.sample_rate,
                                         self.filterbank_channel_count,
                                         self.lower_frequency_limit, self.upper_frequency_limit)
        n = self.filterbank_channel_count
        i, j = np.arange(self.dct_coefficient_count)[None, :], np.arange(n)[:, None]
        self.dct = (np.sqrt(2.0 / n) * np.cos(i * (np.pi / n) * (j + 0.5))).astype("float32")

    def call(self, spectrogram):
        if self.filterbank is None:  # the kernel computes nothing: its output stays zero
            return ops.zeros(self.compute_output_spec(spectrogram).shape, "float32")
        magnitude = ops.sqrt(ops.cast(spectrogram, "float32"))
        mel = ops.log(ops.maximum(ops.matmul(magnitude, self.filterbank), self.FLOOR))
        return ops.matmul(mel, self.dct)

    def compute_output_spec(self, spectrogram):
        return keras.KerasTensor(tuple(spectrogram.shape[:-1]) + (self.dct_coefficient_count,),
                                 dtype="float32")

    def get_config(self):
        return {**super().get_config(), "sample_rate": self.sample_rate,
                "lower_frequency_limit": self.lower_frequency_limit,
                "upper_frequency_limit": self.upper_frequency_limit,
                "filterbank_channel_count": self.filterbank_channel_count,
                "dct_coefficient_count": self.dct_coefficient_count}


def mel_filterbank(bins, sample_rate, channels, lower, upper):
    """The ``[bins, channels]`` matrix of TFLite's ``MfccMelFilterbank`` (double precision, as
    there), or None where its ``Compute`` returns early (the upper limit at or past the last
    bin)."""
    def mel(freq):
        return 1127.0 * np.log1p(freq / 700.0)

    mel_low = mel(lower)
    centers = mel_low + (mel(upper) - mel_low) / (channels + 1) * np.arange(1, channels + 2)
    hz_per_bin = 0.5 * sample_rate / (bins - 1)
    start, end = int(1.5 + lower / hz_per_bin), int(upper / hz_per_bin)
    if bins <= end:
        return None
    matrix = np.zeros((bins, channels))
    channel = 0
    for i in range(start, end + 1):
        melf = mel(i * hz_per_bin)
        while channel < channels and centers[channel] < melf:
            channel += 1
        band = channel - 1  # this bin's right-side filter; it feeds `band + 1`'s left side
        if band >= 0:
            weight = (centers[band + 1] - melf) / (centers[band + 1] - centers[band])
            matrix[i, band] += weight
        else:
            weight = (centers[0] - melf) / (centers[0] - mel_low)
        if band + 1 < channels:
            matrix[i, band + 1] += 1.0 - weight
    return matrix.astype("float32")
