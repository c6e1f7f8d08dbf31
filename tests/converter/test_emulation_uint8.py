"""Full-uint8 models (TF1 toco's kind, like SSD MobileNet's ``detect.tflite``: uint8
activations, uint8 per-tensor asymmetric weights, int32 biases), made by rewriting a
per-tensor full-int8 model (:mod:`converter.uint8_models`). LiteRT's default XNNPACK delegate
takes qu8 convolutions / depthwise / fully connected (fp32 requantization, the weights' zero
point in the accumulation) and ADD (20-bit multipliers, as qs8); TFLite's uint8 AVERAGE_POOL_2D
rounds its sums as the int8 one. Emulated, every output element is at 0 steps, eager and under
``model.predict`` (the builtin kernels alone differ from XNNPACK by up to 9 steps here), and a
5% change on a kernel is rejected."""

from __future__ import annotations

import numpy as np
import pytest

from converter.op_harness import perturbed
from converter.uint8_models import UINT8_MODELS, uint8_tflite
from model_factory import digits
from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.layers.quantization import QuantizedWeights
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_model import TFLiteModel


def _on_input_grid(data, x):
    """``x`` on the uint8 input's grid: the interpreter and the Keras model see the same
    integers."""
    from mlflow_tflite_keras.runtime import TFLiteRunner

    s = TFLiteRunner(TFLiteModel.load(data)).signature().inputs[0]
    return s.dequantize(s.quantize(x)).astype(np.float32)


def _interpreter_outputs(data, x):
    """The default interpreter's stored output integers for ``x`` (one image at a time)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    scale, zero_point = inp["quantization"]
    info = np.iinfo(inp["dtype"])
    outputs = []
    for row in x:
        q = np.clip(np.round(row[None] / scale + zero_point), info.min, info.max)
        it.set_tensor(inp["index"], q.astype(inp["dtype"]))
        it.invoke()
        outputs.append([it.get_tensor(o["index"]).astype(np.int32)
                        for o in it.get_output_details()])
    return [np.concatenate(o) for o in zip(*outputs)]


def test_uint8_twin_is_full_uint8_and_answers_like_its_int8_source():
    source, data = uint8_tflite("digits-cnn")
    model = TFLiteModel.load(data)
    assert model.quantization_kind == "full-uint8"
    from ai_edge_litert import schema_py_generated as schema

    flat = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))
    tensors = flat.subgraphs[0].tensors
    types = {t.type for t in tensors}
    assert schema.TensorType.INT8 not in types and schema.TensorType.UINT8 in types
    weights = [t for t in tensors if t.type == schema.TensorType.UINT8 and t.buffer
               and flat.buffers[t.buffer].data is not None]
    assert weights and all(int(t.quantization.zeroPoint[0]) != 0 for t in weights)
    assert any(t.type == schema.TensorType.INT32 and t.buffer for t in tensors)  # biases
    x = digits()[0][-64:]
    for a, b in zip(_interpreter_outputs(source, x), _interpreter_outputs(data, x)):
        # the same network on the integers +128: the qu8 kernels round otherwise on a few
        # elements, a step in the logits is up to 7 at the 1/256 scale of SOFTMAX / LOGISTIC
        assert np.mean(np.argmax(a, -1) == np.argmax(b, -1)) >= 0.95
        assert np.mean(a == b - 128) >= 0.7 and np.max(np.abs(a - (b - 128))) <= 16


@pytest.mark.parametrize("name", list(UINT8_MODELS))
def test_full_uint8_model_is_bit_exact(name):
    _, data = uint8_tflite(name)
    model = convert(data, emulate_quantization=True).model
    wrapped = [layer for layer in model.layers if isinstance(layer, QuantizedWeights)]
    assert wrapped and all(layer.requantize is not None for layer in wrapped)
    x = _on_input_grid(data, digits()[0][-64:])
    report = check_parity(data, model, x)  # eager and model.predict
    print(f"\n{name}: {report}")
    assert report.passed, str(report)
    for out in report.outputs:
        assert out.max_steps == 0 and out.share_exact == 1.0, str(report)
    undo = perturbed(model)
    try:
        wrong = check_parity(data, model, x, compiled=False, max_steps=0)
    finally:
        undo()
    assert not wrong.passed, f"a 5% kernel change passed\n{wrong}"


def test_uint8_emulation_saves_loads_and_trains(tmp_path):
    import keras
    import tensorflow as tf

    _, data = uint8_tflite("digits-cnn")
    model = convert(data, emulate_quantization=True).model
    x = _on_input_grid(data, digits()[0][-8:])
    path = tmp_path / "uint8.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(keras.tree.flatten(model(x)), keras.tree.flatten(loaded(x))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = next(w for w in model.trainable_weights if w.path.endswith("kernel"))
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.square(o))
                   for o in keras.tree.flatten(model(x, training=True)))
    gradient = tape.gradient(loss, kernel.value)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0
