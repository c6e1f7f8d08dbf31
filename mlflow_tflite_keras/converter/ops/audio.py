"""TensorFlow's audio front-end ops, which TFLite ships as custom operators in its default
resolver (``tf.raw_ops.AudioSpectrogram`` / ``tf.raw_ops.Mfcc`` convert to them, as in the
speech-commands keyword spotters). Options are flexbuffer maps read as the kernels read them:
``AudioSpectrogram``: ``window_size``, ``stride``, ``magnitude_squared``; ``Mfcc``: the
frequency limits (read as integers by the kernel: truncated here too), the filter-bank channel
count and the DCT coefficient count, with the sample rate as a second (constant) input.
"""

from __future__ import annotations

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers.spectral import AudioSpectrogram, Mfcc, mel_filterbank
from mlflow_tflite_keras.converter.ops.custom import flex_options
from mlflow_tflite_keras.converter.registry import register_custom


@register_custom("AudioSpectrogram", layer="AudioSpectrogram (package layer on keras.ops)")
def audio_spectrogram(op, ctx):
    options = flex_options(op, ("window_size", "stride", "magnitude_squared"))
    window, stride = int(options["window_size"]), int(options["stride"])
    if window < 2 or stride < 1:
        raise ConversionError(f"{op.type}: window_size={window}, stride={stride}; expected a "
                              "window of at least 2 samples and a positive stride.")
    audio = op.inputs[0]
    if audio.rank != 2 or audio.shape_signature[0] < 0:
        raise ConversionError(f"{op.type}: needs audio [samples, channels] with a static "
                              f"sample count, got shape {list(audio.shape_signature)}.")
    layer = AudioSpectrogram(window, stride, bool(options["magnitude_squared"]),
                             name=ctx.name(op))
    return [ctx.apply(layer, ctx.value(audio))]


@register_custom("Mfcc", layer="Mfcc (package layer on keras.ops)")
def mfcc(op, ctx):
    names = ("upper_frequency_limit", "lower_frequency_limit", "filterbank_channel_count",
             "dct_coefficient_count")
    options = {n: int(v) for n, v in flex_options(op, names).items() if n in names}
    rate = ctx.const(op.input(1), "the sample rate")
    spectrogram = op.inputs[0]
    channels, coefficients = options["filterbank_channel_count"], options["dct_coefficient_count"]
    lower, upper = options["lower_frequency_limit"], options["upper_frequency_limit"]
    rate = int(rate.reshape(-1)[0])
    if not (spectrogram.rank == 3 and spectrogram.shape_signature[-1] >= 2 and rate > 0
            and 0 <= lower < upper and 1 <= coefficients <= channels):
        raise ConversionError(
            f"{op.type}: the kernel cannot run this: spectrogram shape "
            f"{list(spectrogram.shape_signature)} (needs [channels, frames, bins >= 2]), "
            f"sample rate {rate}, limits {lower}..{upper} Hz, {channels} filter-bank channels, "
            f"{coefficients} DCT coefficients.")
    if mel_filterbank(int(spectrogram.shape_signature[-1]), rate, channels, lower, upper) is None:
        ctx.note(f"{op.type}: the upper frequency limit {upper} Hz reaches past the last "
                 "spectrogram bin; the kernel then computes nothing and outputs zeros.")
    layer = Mfcc(rate, lower, upper, channels, coefficients, name=ctx.name(op))
    return [ctx.apply(layer, ctx.value(spectrogram))]
