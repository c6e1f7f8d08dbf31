"""TensorFlow's audio front-end custom operators (converter/ops/audio.py): AudioSpectrogram
and Mfcc, made by TFLiteConverter from ``tf.raw_ops`` (``allow_custom_ops``) and run by
LiteRT's own kernels; option variants, the kernel's corner cases, and a speech-commands
keyword spotter (waveform in, trained CNN on the MFCCs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from converter import real_models
from converter.op_harness import case_fn, check_export, check_op, five_percent_off
import mlflow

from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.parity import check_parity


def front_end(x, window, stride, squared, channels, coefficients, lower, upper, rate):
    spectrogram = tf.raw_ops.AudioSpectrogram(input=x, window_size=window, stride=stride,
                                              magnitude_squared=squared)
    mfcc = tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=rate,
                           lower_frequency_limit=lower, upper_frequency_limit=upper,
                           filterbank_channel_count=channels, dct_coefficient_count=coefficients)
    return {"spectrogram": spectrogram, "mfcc": mfcc}


FRONT_ENDS = {
    # the speech-commands defaults: 30 ms windows every 10 ms at 16 kHz, 40 mel channels
    "speech-commands": dict(window=480, stride=160, squared=True, channels=40, coefficients=13,
                            lower=20.0, upper=4000.0, rate=16000),
    # a power-of-two window (no zero padding), magnitudes, stereo
    "magnitude-stereo": dict(window=256, stride=100, squared=False, channels=20,
                             coefficients=20, lower=0.0, upper=7000.0, rate=16000),
    # limits with fractions: the kernel reads them as integers (truncated)
    "fractional-limits": dict(window=200, stride=200, squared=True, channels=26,
                              coefficients=12, lower=300.9, upper=3400.7, rate=8000),
}
SAMPLES = {"speech-commands": (4000, 1), "magnitude-stereo": (3000, 2),
           "fractional-limits": (2000, 1)}


@pytest.mark.parametrize("variant", FRONT_ENDS)
def test_audio_front_end(variant):
    fn = case_fn(front_end, **FRONT_ENDS[variant])
    model, report = check_op("AudioSpectrogram", fn, [(SAMPLES[variant], "float")],
                             expect_ops=["AudioSpectrogram", "Mfcc"], custom_ops=True)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"AudioSpectrogram", "Mfcc"} <= kinds
    window, stride = FRONT_ENDS[variant]["window"], FRONT_ENDS[variant]["stride"]
    frames = 1 + (SAMPLES[variant][0] - window) // stride
    shapes = {tuple(o.shape) for o in model.outputs}
    bins = 1 + (1 << (window - 1).bit_length()) // 2
    assert shapes == {(SAMPLES[variant][1], frames, bins),
                      (SAMPLES[variant][1], frames, FRONT_ENDS[variant]["coefficients"])}
    # the check rejects a 5% error on these weightless layers
    data_inputs = np.random.default_rng(3).uniform(-1, 1, SAMPLES[variant]).astype(np.float32)
    wrong = five_percent_off(model)
    from converter.op_harness import op_tflite

    data = op_tflite("audiospectrogram", fn, [(SAMPLES[variant], "float")], custom_ops=True)
    assert not check_parity(data, wrong, data_inputs, compiled=False).passed


def test_mfcc_upper_limit_past_nyquist_gives_zeros():
    # Mfcc's filter bank returns early when the upper limit reaches the last bin: LiteRT's
    # output is all zeros, and so is the reconstruction's.
    fn = case_fn(front_end, window=256, stride=128, squared=True, channels=20, coefficients=10,
                 lower=20.0, upper=4100.0, rate=8000)
    model, _ = check_op("Mfcc", fn, [((2048, 1), "float")],
                        expect_ops=["AudioSpectrogram", "Mfcc"], custom_ops=True)
    outputs = model(np.random.default_rng(0).uniform(-1, 1, (2048, 1)).astype(np.float32))
    mfcc, = [np.asarray(o) for o in outputs.values() if o.shape[-1] == 10]
    assert mfcc.shape == (1, 15, 10) and not np.any(mfcc)


def test_mfcc_needs_a_constant_sample_rate():
    def fn(x, rate):
        spectrogram = tf.raw_ops.AudioSpectrogram(input=x, window_size=64, stride=32,
                                                  magnitude_squared=True)
        return tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=rate)

    from converter.op_harness import op_tflite

    data = op_tflite("mfcc-rate", fn, [((512, 1), "float"), ((), "int")], custom_ops=True)
    with pytest.raises(mlflow.exceptions.MlflowException, match="sample rate.*must be a constant"):
        to_keras(data)


def test_speech_commands_keyword_spotter(tmp_path):
    data = real_models.speech_commands()
    model = to_keras(data)
    assert model.count_params() > 0 and model.trainable_weights
    audio, labels = real_models.tones(12, seed=7)
    predicted = []
    for clip in audio:
        report = check_parity(data, model, clip)
        assert report.passed and report.compiled.passed, str(report)
        scores, = [np.asarray(o) for o in keras.tree.flatten(model(clip))]
        assert scores.shape == (1, real_models.SPEECH_CLASSES)
        predicted.append(int(scores.argmax()))
    # the classifier learned the tones: its answers depend on the clip
    assert np.mean(np.array(predicted) == labels) >= 0.75, (predicted, labels)
    wrong = five_percent_off(model)
    assert not check_parity(data, wrong, audio[0], compiled=False).passed
    from converter.op_harness import _restore

    _restore(model)
    # back to .tflite with builtins only (GATHER, RFFT2D, ...), same interface and answers
    check_export(data, model, audio[0])
