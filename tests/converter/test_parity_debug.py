"""Parity debug mode: the first intermediate tensor where the Keras model departs from LiteRT."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.parity import check_parity, locate_divergence
from model_factory import digits, keras_model_tflite


def make_small_cnn():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a"),
        keras.layers.Conv2D(8, 3, padding="same", name="conv_b"),
        keras.layers.ReLU(max_value=6.0),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_c"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


def small_cnn(recipe):
    return keras_model_tflite("parity-debug-cnn", make_small_cnn, recipe,
                              representative=lambda: digits()[0][:64])


@pytest.fixture(scope="module")
def cnn_float():
    return small_cnn("float32")


def _conv_ops(result):
    """(op index, layer names) of each CONV_2D, in execution order."""
    return [(int(key.split(":")[0]), names) for key, names in result.report.layers.items()
            if key.endswith(":CONV_2D")]


def test_tensor_map_points_at_layers(cnn_float):
    result = convert(cnn_float)
    names = {layer.name for layer in result.model.layers}
    assert result.report.tensor_map
    for index, (layer, node, out) in result.report.tensor_map.items():
        assert layer in names, (index, layer)
        assert (node, out) == (0, 0)
    # Each CONV_2D output tensor maps to a layer that op created (Conv2D or its activation).
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    ops = TFLiteModel.load(cnn_float).subgraphs[0].operators
    for index, layers in _conv_ops(result):
        assert result.report.tensor_map[ops[index].outputs[0]][0] in layers


def test_correct_model_has_no_divergence(cnn_float, tmp_path):
    import keras

    result = convert(cnn_float)
    x = digits()[0][:8]
    report = locate_divergence(cnn_float, result.model, x, tensor_map=result.report.tensor_map)
    assert not report.diverged, str(report)
    assert report.first is None
    assert len(report.tensors) == len(result.report.tensor_map) and not report.skipped
    assert "no divergence" in str(report)
    # A reloaded .keras model, without the map: the .tflite is converted again and layers
    # are matched by name.
    path = os.path.join(tmp_path, "m.keras")
    result.model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    again = locate_divergence(cnn_float, reloaded, x)
    assert not again.diverged and len(again.tensors) == len(report.tensors), str(again)


def test_corrupted_conv_is_localised(cnn_float):
    result = convert(cnn_float)
    model = result.model
    convs = _conv_ops(result)
    assert len(convs) == 3
    op_index, layer_names = convs[1]  # the middle convolution
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    tensor = TFLiteModel.load(cnn_float).subgraphs[0].operators[op_index].outputs[0]
    conv = next(model.get_layer(n) for n in layer_names
                if type(model.get_layer(n)).__name__ == "Conv2D")
    kernel, bias = conv.get_weights()
    kernel = kernel.copy()
    kernel[1, 1, :, 3] += 0.5  # one output channel of the middle layer
    conv.set_weights([kernel, bias])

    x = digits()[0][:8]
    parity = check_parity(cnn_float, model, x, debug=True, tensor_map=result.report.tensor_map)
    div = parity.divergence
    assert div is not None and div.diverged, str(parity)
    first = div.first
    assert (first.op_index, first.op_type, first.tensor) == (op_index, "CONV_2D", tensor), \
        str(div)
    assert first.layer in layer_names
    assert first.max_rel_error > 1e-2 and first.failures
    # Everything before it still matches.
    before = [t for t in div.tensors if t.op_index < op_index]
    assert before and all(t.passed for t in before)
    text = str(parity)
    assert f"first divergence at op {op_index} (CONV_2D)" in text and "worst tensors" in text
    assert div.to_dict()["first"]["tensor"] == tensor


def test_quantized_model_without_divergence():
    data = small_cnn("full-int8")
    result = convert(data)
    x = digits()[0][:16]
    report = locate_divergence(data, result.model, x, tensor_map=result.report.tensor_map)
    assert not report.diverged, str(report)
    # Quantized intermediates are compared in their own quantization steps.
    assert any(t.max_steps is not None for t in report.tensors)


def test_foreign_model_is_refused(cnn_float):
    import keras

    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="No intermediate tensor"):
        locate_divergence(cnn_float, other, np.zeros((2, 8, 8, 1), np.float32))


def test_one_step_is_judged_as_one_step():
    """Outputs are compared dequantized in float32, so a difference of exactly one step
    measures a little over 1: a limit of 1 step accepts it, a limit of half a step does not."""
    import keras

    from converter.test_emulation import _inputs, _source
    from mlflow_tflite_keras.converter import convert
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data = _source("full-int8-float-io")
    model = convert(data, emulate_quantization=True).model
    parsed = TFLiteModel(data)
    # the float output is dequantized from the last integer tensor, whose step this is
    main = parsed.main
    dequantize = next(op for op in main.operators if op.name == "DEQUANTIZE")
    step = float(main.tensors[dequantize.inputs[0]].quantization.scale[0])
    # one step as float32 arithmetic on other scales measures it (seen: 1.0000038)
    shifted = keras.Model(model.input, model.output + step * (1 + 4e-6))
    x = _inputs(16)
    one = check_parity(data, shifted, x, compiled=False, max_steps=1.0)
    assert 1.0 < one.outputs[0].max_steps < 1.0 + 1e-5, str(one)
    assert one.passed, str(one)
    assert not check_parity(data, shifted, x, compiled=False, max_steps=0.5).passed
