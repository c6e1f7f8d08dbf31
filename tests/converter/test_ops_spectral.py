"""Spectral ops: RFFT2D, COMPLEX_ABS, REAL, IMAG (tf.signal.rfft lowers to RESHAPE + RFFT2D)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op


@pytest.mark.parametrize("shape", [(None, 4, 8), (2, 3, 8, 16)])
def test_rfft2d_abs(shape):
    model, _ = check_op("RFFT2D", lambda x: tf.abs(tf.signal.rfft2d(x)), [(shape, "float")],
                        expect_ops=["RFFT2D", "COMPLEX_ABS"])
    assert any(type(layer).__name__ == "RFFT2D" for layer in model.layers)


def test_rfft2d_fft_length_pads_and_crops():
    from mlflow_tflite_keras.converter import supported_operators

    # TF pads / slices the input itself before RFFT2D.
    if not {"PAD", "STRIDED_SLICE"} <= set(supported_operators()):
        pytest.skip("PAD / STRIDED_SLICE are not registered yet")
    check_op("RFFT2D", lambda x: tf.abs(tf.signal.rfft2d(x, fft_length=[8, 4])),
             [((None, 4, 8), "float")], expect_ops=["RFFT2D", "COMPLEX_ABS"])


def test_rfft_real():
    check_op("REAL", lambda x: tf.math.real(tf.signal.rfft(x)), [((2, 16), "float")],
             expect_ops=["RFFT2D", "REAL"])


def test_rfft_imag():
    # The imaginary parts of the DC and Nyquist bins are exactly 0: compare absolutely.
    check_op("IMAG", lambda x: tf.math.imag(tf.signal.rfft(x)), [((2, 16), "float")],
             expect_ops=["RFFT2D", "IMAG"])


def test_spectrogram_stft_abs():
    from mlflow_tflite_keras.converter import supported_operators

    if "GATHER" not in supported_operators():
        pytest.skip("GATHER is not registered yet (tf.signal.frame lowers to GATHER)")
    # A fixed batch: with a dynamic one tf.signal.frame computes its shapes at run time
    # (SHAPE, RANGE, FLOOR_DIV, ...).
    check_op("COMPLEX_ABS",
             lambda x: tf.abs(tf.signal.stft(x, frame_length=16, frame_step=8, fft_length=16)),
             [((2, 64), "float")], expect_ops=["RFFT2D", "COMPLEX_ABS"])


def test_complex_part_layers_roundtrip_config():
    from mlflow_tflite_keras.converter.layers.spectral import RFFT2D, ComplexPart

    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 6)).astype(np.float32)
    c = RFFT2D([4, 8])(x)  # W padded 6 -> 8
    ref = np.fft.rfft2(np.pad(x, [(0, 0), (0, 0), (0, 2)]))
    np.testing.assert_allclose(np.asarray(c), ref, rtol=1e-4, atol=1e-5)
    for part, fn in (("abs", np.abs), ("real", np.real), ("imag", np.imag)):
        layer = ComplexPart.from_config(ComplexPart(part).get_config())
        np.testing.assert_allclose(np.asarray(layer(c)), fn(ref), rtol=1e-4, atol=1e-5)


EXPORT_CASES = {
    "rfft2d-abs": ("COMPLEX_ABS", lambda x: tf.abs(tf.signal.rfft2d(x)), [((None, 4, 8), "float")]),
    "rfft-real": ("REAL", lambda x: tf.math.real(tf.signal.rfft(x)), [((2, 16), "float")]),
    "rfft-imag": ("IMAG", lambda x: tf.math.imag(tf.signal.rfft(x)), [((2, 16), "float")]),
    "stft-abs": ("COMPLEX_ABS", lambda x: tf.abs(tf.signal.stft(x, frame_length=16, frame_step=8,
                                                                fft_length=16)),
                 [((2, 64), "float")]),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_reconstructed_spectral_ops_export_with_builtins_only(case):
    """to_keras -> export_tflite(like=): RFFT2D and COMPLEX_ABS / REAL / IMAG again, no Flex
    op (keras.ops.fft2 would export as FFT2D + tf.Complex, which need the Flex runtime)."""
    from converter.op_harness import _feeds, check_export, op_tflite
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    op_type, fn, inputs = EXPORT_CASES[case]
    source = op_tflite(case, fn, inputs)
    model = to_keras(source)
    feeds = _feeds(TFLiteModel(source), inputs, np.random.default_rng(3))
    exported = check_export(source, model, feeds)
    assert {"RFFT2D", op_type} <= set(exported.operator_names), exported.operator_names
