"""Each constant is materialised once: the IR decodes a weight when its op is built and lets
go of it once the layer holds it (and so of arrays folded from it, e.g. DEQUANTIZE of a
float16 weight), KerasOp layers keep only shapes and dtypes beside their variables, and a
model loaded with ``map_file=True`` reads its weights from the mapping. The memory target
itself is measured by ``benchmarks/convert.py --memory``, not here."""

from __future__ import annotations

import numpy as np
import pytest

from converter.app_models import app_tflite, image_batch
from mlflow_tflite_keras.converter.builder import Values
from mlflow_tflite_keras.converter.ir import build_graph
from mlflow_tflite_keras.converter.layers.keras_op import DeclaredConstant, StoredConstants
from mlflow_tflite_keras.converter.registry import load_handlers
from mlflow_tflite_keras.converter.subgraph import InputSpec, build_subgraph
from mlflow_tflite_keras.tflite_model import TFLiteModel


def _build(path):
    model = TFLiteModel.load(path, map_file=True)
    graph = build_graph(model, model.signature().subgraph_index)
    signature = model.signature()
    specs = [InputSpec(i, f"in_{i}", (None, *graph.tensors[i].shape[1:]), "float32")
             for i in signature.inputs.values()]
    built = build_subgraph(model, signature.subgraph_index, specs,
                           list(signature.outputs.values()), name="m",
                           handlers=load_handlers(), graph=graph)
    return model, graph, built


@pytest.mark.parametrize("recipe", ["float32", "float16"])
def test_each_constant_is_decoded_once_and_released(tmp_path, recipe):
    path = tmp_path / "model.tflite"
    path.write_bytes(app_tflite("MobileNetV2", recipe))
    model, graph, built = _build(path)
    constants = [t for t in graph.tensors if t.is_constant]
    weights = [t for t in constants if t.stored.type_name in ("FLOAT32", "FLOAT16")
               and np.prod(t.shape) > 1000]
    assert len(weights) > 40
    assert all(t.decodes == 1 for t in weights), [(t.name, t.decodes) for t in weights
                                                   if t.decodes != 1][:5]
    assert not [t.name for t in constants if t.holds_data]
    # Nor are arrays folded from them (DEQUANTIZE of the float16 weights) kept.
    kept = {i: v.shape for i, v in dict.items(built.ctx.values)
            if isinstance(v, np.ndarray) and v.size > 1000}
    assert not kept, kept
    for layer in built.model.layers:
        if isinstance(layer, StoredConstants):
            assert all(isinstance(v, DeclaredConstant) for v in layer._constant_values.values())
    # Every float constant became weights once (no variable made twice, none lost).
    assert sum(int(np.prod(w.shape)) for w in built.model.weights) == \
        sum(int(np.prod(t.shape)) for t in constants
            if t.stored.type_name in ("FLOAT32", "FLOAT16"))

    # The check sees a constant kept: asked for again, it is decoded again and held.
    weights[0].data
    assert weights[0].decodes == 2 and weights[0].holds_data


def test_released_values_come_back_on_demand(tmp_path):
    """A released constant, or a folded array let go of, is decoded / folded again when a
    later op asks for it (shape arithmetic looking back), equal to the first."""
    path = tmp_path / "model.tflite"
    path.write_bytes(app_tflite("MobileNetV2", "float16"))
    model, graph, built = _build(path)
    dequantized = [op for op in graph.ops if op.type == "DEQUANTIZE" and op.inputs[0].is_constant]
    assert dequantized
    out = dequantized[0].outputs[0]
    values: Values = built.ctx.values
    assert not dict.__contains__(values, out.index) and out.index in values
    again = values[out.index]
    expected = TFLiteModel.load(path).constant(
        model.subgraphs[graph.subgraph_index].tensors[dequantized[0].inputs[0].index])
    np.testing.assert_array_equal(again, expected.astype(np.float32))
    # The rebuilt model computes what the source computes (weights taken once, right).
    from ai_edge_litert.interpreter import Interpreter

    x = image_batch(2)
    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    expected = next(iter(runner(**{name: x}).values()))
    got = np.asarray(built.model(x))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(got[0], got[1])  # outputs depend on the input
