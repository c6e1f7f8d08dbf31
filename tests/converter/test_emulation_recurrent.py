"""to_keras(emulate_quantization=True) on a small LSTM quantized by TFLiteConverter.

A Keras 3 LSTM converts to a WHILE loop: under the dynamic-range recipe its body holds two
hybrid FULLY_CONNECTED ops (input and recurrent matmuls), which LiteRT's default CPU path
(XNNPACK) runs with per-row int8 input quantization; the emulation reaches into the loop body
and replays it (float noise). TF 2.21's converter crashes calibrating that loop for the
full-integer recipes, so the full-int8 model is the fused UNIDIRECTIONAL_SEQUENCE_LSTM (TF's
fusable LSTM function with the same trained weights): TFLite's integer LSTM kernel
(lstm_eval.cc, 8x8_16). Emulated, IntegerLSTMCell replays its fixed-point arithmetic (the
quantized multipliers of each gate's matmuls into Q3.12, gemmlowp's int16 sigmoid / tanh,
the cell's rounding shifts, the hidden multiplier): bit-exact at the output, 0 steps on all
640 elements (100% at 0) for int8 and float I/O, eagerly and compiled (the approximation it
replaces, the float functions rounded onto the same grids, was 5 steps off, 90.8% at 0). A 5%
change on one middle kernel fails parity in each case.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails, perturbed
from model_factory import digits, digits_fused_lstm_tflite, keras_model_tflite, make_digits_lstm
from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.layers.quantization import (
    HybridInputQuant,
    QuantizedWeights,
    is_emulated,
)
from mlflow_tflite_keras.converter.layers.control_flow import WhileLoop
from mlflow_tflite_keras.converter.parity import check_parity


def _rows(n=64):
    return digits()[0][-n:, ..., 0]  # 8 time steps of 8 features, held out from calibration


def _nested(model, cls):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, cls)]


def test_dynamic_range_lstm_loop_body_is_emulated(tmp_path):
    import keras

    data = keras_model_tflite("digits-lstm-emulation", make_digits_lstm, "dynamic-range")
    x = _rows()
    model = convert(data, emulate_quantization=True).model
    assert is_emulated(model)
    (loop,) = _nested(model, WhileLoop)
    body = loop.body_model
    # both hybrid matmuls of the body: their input quantized as the kernel does, their int8
    # per-channel weights kept on the source grid
    assert len(_nested(body, HybridInputQuant)) == 2
    assert len(_nested(body, QuantizedWeights)) == 2
    report = check_parity(data, model, x)
    print(f"\nemulated: {report}")
    assert report.passed, str(report)
    assert report.outputs[0].max_rel_error <= 1e-6, str(report)

    # the float reconstruction is within the dynamic-range default only; a 5% kernel change
    # hides under that default but fails the emulated model's float-noise limit
    float_model = convert(data).model
    undo = perturbed(float_model)
    try:
        assert check_parity(data, float_model, x, compiled=False).passed
    finally:
        undo()
    assert_kernel_change_fails(data, model, x)

    path = os.path.join(tmp_path, "lstm.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(again.predict(x, verbose=0)),
                                  np.asarray(model.predict(x, verbose=0)))


FUSED_VARIANTS = {
    "full-int8": {},  # int8 I/O
    "full-int8-float-io": {"inference_input_type": np.float32,
                           "inference_output_type": np.float32},
}


@pytest.mark.parametrize("variant", list(FUSED_VARIANTS))
def test_integer_lstm_is_full_int8_and_a_kernel_change_fails(variant, tmp_path):
    """TFLite's integer LSTM (INT16 cell state) is a full-int8 model; emulated, it replays the
    kernel's arithmetic (IntegerLSTMCell, a .keras round trip with safe_mode=True) and a 5%
    kernel change fails parity."""
    import keras

    from mlflow_tflite_keras.converter.layers.recurrent import IntegerLSTMCell
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data = digits_fused_lstm_tflite("full-int8", **FUSED_VARIANTS[variant])
    parsed = TFLiteModel(data)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in parsed.operator_names
    assert parsed.quantization_kind == "full-int8"
    model = convert(data, emulate_quantization=True).model
    assert len(_nested(model, IntegerLSTMCell)) == 1
    x = _rows()
    report = check_parity(data, model, x, compiled=False)
    print(f"\n{variant} emulated: {report}")
    path = os.path.join(tmp_path, "integer_lstm.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(again.predict(x, verbose=0)),
                                  np.asarray(model.predict(x, verbose=0)))
    assert_kernel_change_fails(data, model, x)


@pytest.mark.parametrize("variant", list(FUSED_VARIANTS))
def test_integer_lstm_emulated_within_one_step(variant):
    """The emulated integer LSTM replays the kernel's fixed-point arithmetic: eagerly and
    under a compiled ``model.predict``, every output element within one step (0 measured)."""
    data = digits_fused_lstm_tflite("full-int8", **FUSED_VARIANTS[variant])
    model = convert(data, emulate_quantization=True).model
    for compiled in (False, True):
        report = check_parity(data, model, _rows(), compiled=compiled)
        out = report.outputs[0]
        print(f"\n{variant} compiled={compiled}: max {out.max_steps} steps, "
              f"{out.share_exact:.1%} at 0 steps")
        assert out.max_steps <= 1.0, str(report)
        assert report.passed, str(report)


def test_integer_multiplier_is_exact_on_int32():
    """MultiplyByQuantizedMultiplier without 64-bit integers (fixed_point.py) agrees with
    the kernel's int64 arithmetic over the whole int32 range; a 1-off rounding would not."""
    from keras import ops

    from mlflow_tflite_keras.converter.layers.fixed_point import (
        multiply_by_quantized_multiplier,
        quantize_multiplier,
        quantized_multiplier,
    )

    def kernel(x, multiplier, shift):  # common.cc, TFLITE_SINGLE_ROUNDING=0, Python ints
        high = (x * 2 ** max(shift, 0) * multiplier + (1 << 30)) >> 31
        right = max(-shift, 0)
        mask = (1 << right) - 1
        return (high >> right) + int((high & mask) > (mask >> 1) + (high < 0))

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 3000), rng.integers(-70000, 70000, 3000),
                        [0, 1, -1, 2 ** 31 - 1, -2 ** 31]]).astype(np.int32)
    for real in (0.3, 0.0123, 1.7e-6, 0.9999, 2.0 ** -20):
        multiplier, shift = quantize_multiplier(real)
        got = np.asarray(multiply_by_quantized_multiplier(
            ops.convert_to_tensor(x), quantized_multiplier(multiplier, shift)))
        want = np.array([kernel(int(v), multiplier, shift) for v in x])
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, want + (x % 7 == 0))
