"""Hybrid conversion: unsupported / chosen ops run as embedded TFLiteLayers, the rest is rebuilt."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from converter.app_models import SMALL, app_tflite, image_batch, small_tflite
from mlflow_tflite_keras.converter import UnsupportedOperatorsError, convert, to_keras
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_layer import TFLiteLayer
from mlflow_tflite_keras.tflite_model import TFLiteModel

CASES = {
    "mobilenet_v2-float32": (lambda: app_tflite("MobileNetV2", "float32"),
                             ("DEPTHWISE_CONV_2D", "ADD"), lambda: image_batch(4)),
    "mobilenet_v2-full-int8": (lambda: app_tflite("MobileNetV2", "full-int8"),
                               ("DEPTHWISE_CONV_2D", "ADD"), lambda: image_batch(4)),
    "transformer-float32": (lambda: small_tflite("transformer"), ("BATCH_MATMUL", "SOFTMAX"),
                            lambda: SMALL["transformer"][1](6)),
    # FULLY_CONNECTED after a run-time reshape: its input is stored as [1, 1] in the file.
    "transformer-dynamic-range": (lambda: small_tflite("transformer", "dynamic-range"),
                                  ("FULLY_CONNECTED", "MEAN"),
                                  lambda: SMALL["transformer"][1](6)),
}


def _reload(model, tmp_path):
    import keras

    path = os.path.join(tmp_path, "hybrid.keras")
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


def _predict(model, x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


@pytest.mark.parametrize("case", list(CASES))
def test_hybrid_wrap_ops(case, tmp_path):
    import keras

    make, wrap_ops, inputs = CASES[case]
    data, x = make(), inputs()
    present = set(TFLiteModel(data).operator_names)
    assert set(wrap_ops) <= present
    result = convert(data, unsupported="wrap", wrap_ops=wrap_ops)
    report = result.report

    # Every op of the chosen types is wrapped, nothing else; each region is reported.
    regions = report.wrapped_regions
    assert regions
    wrapped = [label for r in regions for label in r["ops"]]
    assert {label.split(":", 1)[1] for label in wrapped} == set(wrap_ops)
    graph_ops = TFLiteModel(data).operator_counts()
    assert len(wrapped) == sum(graph_ops[op] for op in wrap_ops)
    for r in regions:
        assert r["inputs"] and r["outputs"] and r["size_bytes"] > 0
        assert report.layers[r["ops"][0]] == [r["layer"]]
    json.dumps(report.to_dict()["wrapped_regions"])

    model = result.model
    layers = [layer for layer in model.layers if isinstance(layer, TFLiteLayer)]
    assert len(layers) == len(regions)
    assert all(not layer.weights and not layer.trainable for layer in layers)
    # Everything else is rebuilt with real trainable weights.
    weighted = [layer for layer in model.layers if layer.weights
                and type(layer).__name__ != "KerasOp"]
    assert weighted or "FULLY_CONNECTED" in wrap_ops
    assert all(w.trainable for layer in weighted for w in layer.weights)
    if "mobilenet" in case:
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert len(convs) == graph_ops["CONV_2D"]
        assert all(layer.kernel.trainable for layer in convs)
        assert not any(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers)
        if case.endswith("float32"):  # the int8 random-init net's head is dead (relu 0)
            _check_head_gradient(model, x)

    parity = check_parity(data, model, x)
    assert parity.passed, f"{case}\n{parity}"
    reloaded = _reload(model, tmp_path)
    np.testing.assert_allclose(_predict(reloaded, x), _predict(model, x), rtol=1e-6, atol=1e-6)
    assert check_parity(data, reloaded, x).passed


def _check_head_gradient(model, x):
    """Layers after the last wrapped region get gradients; a TFLiteLayer passes none back, so
    the first convolution (before the first region) gets none (a documented limit)."""
    import keras
    import tensorflow as tf

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    with tf.GradientTape() as tape:
        y = np.arange(len(x)) % 10
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            y, model(x, training=True)))
    last, first = tape.gradient(loss, [convs[-1].kernel, convs[0].kernel])
    assert last is not None and np.any(last.numpy())
    assert first is None


def test_non_convex_components_are_split():
    """MobileNetV2's residual ADDs chain (add -> add) around a block that leaves the region:
    such a component is split, one ADD per region, each convex."""
    from mlflow_tflite_keras.converter import regions
    from mlflow_tflite_keras.converter.ir import build_graph
    from mlflow_tflite_keras.converter.registry import load_handlers

    graph = build_graph(TFLiteModel(app_tflite("MobileNetV2", "float32")))
    selected = regions.select_ops(graph, load_handlers(), wrap_unsupported=True,
                                  wrap_ops=("ADD",))
    components = regions._components(graph, set(selected))
    assert any(len(c) > 1 for c in components)  # add -> add edges exist
    planned = regions.plan_regions(graph, selected)
    assert all(len(r.ops) == 1 for r in planned)
    steps = regions.schedule(graph, planned)
    assert sum(isinstance(s, regions.Region) for s in steps) == len(planned)
    assert len(steps) == len(graph.ops)


def test_unsupported_error_lists_and_wrap_converts(monkeypatch, tmp_path):
    from mlflow_tflite_keras.converter import registry

    data = small_tflite("transformer")
    x = SMALL["transformer"][1](4)
    handlers = dict(registry.HANDLERS)
    for op in ("SOFTMAX", "GELU"):
        handlers.pop(op)
    monkeypatch.setattr(registry, "HANDLERS", handlers)  # what load_handlers() returns

    with pytest.raises(UnsupportedOperatorsError) as e:
        to_keras(data)
    assert e.value.unsupported == {"GELU": 1, "SOFTMAX": 1}
    assert "unsupported='wrap'" in str(e.value)
    with pytest.raises(UnsupportedOperatorsError):
        to_keras(data, unsupported="error")

    result = convert(data, unsupported="wrap")
    regions = result.report.wrapped_regions
    assert sorted(label for r in regions for label in r["ops"]) == ["39:GELU", "9:SOFTMAX"]
    assert all(set(r["reasons"].values()) == {"unsupported"} for r in regions)
    parity = check_parity(data, result.model, x)
    assert parity.passed, str(parity)
    reloaded = _reload(result.model, tmp_path)
    np.testing.assert_allclose(_predict(reloaded, x), _predict(result.model, x),
                               rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    data = small_tflite("transformer")
    with pytest.raises(Exception, match="wrap_ops names"):
        convert(data, wrap_ops=("NOT_AN_OP",))
    with pytest.raises(Exception, match="unsupported must be"):
        convert(data, unsupported="skip")


def test_region_model_is_standalone():
    """The cut-out model is a valid .tflite with a serving_default signature and a dynamic
    batch, and LiteRT runs it on any batch size."""
    from mlflow_tflite_keras.runtime import TFLiteRunner

    data = app_tflite("MobileNetV2", "full-int8")
    model = convert(data, wrap_ops=("9:ADD",)).model
    (layer,) = [layer for layer in model.layers if isinstance(layer, TFLiteLayer)]
    region = TFLiteModel(layer.model_bytes)
    assert region.operator_names == ["ADD"]
    assert region.signatures[0].key == "serving_default"
    spec = TFLiteRunner(region).signature()
    assert spec.resizable_batch and all(s.quantized for s in spec.inputs + spec.outputs)
    out = TFLiteRunner(region).predict({s.name: np.zeros((3, *s.shape[1:]), np.float32)
                                        for s in spec.inputs})
    assert next(iter(out.values())).shape[0] == 3


def test_control_flow_op_is_wrapped_with_its_subgraphs(tmp_path):
    """A WHILE region carries the cond/body subgraphs it calls (copied and renumbered)."""
    data = small_tflite("lstm-text")
    x = SMALL["lstm-text"][1](3)
    result = convert(data, wrap_ops=("WHILE",))
    (region,) = result.report.wrapped_regions
    assert [label.split(":")[1] for label in region["ops"]] == ["WHILE", "WHILE"]
    (layer,) = [layer for layer in result.model._flatten_layers()
                if isinstance(layer, TFLiteLayer)]
    assert len(TFLiteModel(layer.model_bytes).subgraphs) == 5  # region + 2 x (cond, body)
    parity = check_parity(data, result.model, x)
    assert parity.passed, str(parity)
    reloaded = _reload(result.model, tmp_path)
    np.testing.assert_allclose(_predict(reloaded, x), _predict(result.model, x), atol=1e-6)


@pytest.mark.parametrize("recipe", ["float32", "full-int8"])
def test_build_time_constant_inputs_are_baked_in(recipe):
    """Region inputs known at build time become constant buffers (quantized for int8
    tensors); a region without run-time inputs runs once and folds to constants."""
    from mlflow_tflite_keras.converter import regions
    from mlflow_tflite_keras.converter.ir import build_graph

    graph = build_graph(TFLiteModel(app_tflite("MobileNetV2", recipe)))
    add = graph.ops[9]
    assert add.type == "ADD"
    rng = np.random.default_rng(0)
    # Within the tensors' quantized range (this random-init net's activations are tiny).
    bound = 1.0 if recipe == "float32" else 40 * float(add.inputs[0].quantization.scale[0])
    values = {t.index: rng.uniform(-bound, bound, t.shape).astype(np.float32)
              for t in add.inputs}
    data = regions.write_region_model(graph, [add], [], add.outputs, constants=values)
    (out,) = regions._run_once(data)
    expected = sum(values.values())
    tolerance = 1e-6 if recipe == "float32" else 2.5 * float(add.outputs[0].quantization.scale[0])
    np.testing.assert_allclose(out, expected, atol=tolerance)


def test_custom_op_wraps_and_needs_its_kernel():
    """A custom op has no handler: "error" names it by custom code, "wrap" embeds it and the
    report says LiteRT needs its kernel registered; without it the first call fails."""
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers

    from converter.handmade import FlatModel

    b = FlatModel()
    x = b.input((1, 4))
    h = b.intermediate((1, 4))
    y = b.output((1, 4))
    b.op("ABS", [x], [h])
    b.op("RELU", [h], [y])
    model = schema.ModelT.InitFromPackedBuf(bytearray(b.finish()), 0)
    code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "MyCustomOp"
    fb = flatbuffers.Builder(1024)
    fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
    data = bytes(fb.Output())

    with pytest.raises(UnsupportedOperatorsError) as e:
        to_keras(data)
    assert e.value.unsupported == {"CUSTOM:MyCustomOp": 1}
    result = convert(data, unsupported="wrap")
    (region,) = result.report.wrapped_regions
    assert region["ops"] == ["0:MyCustomOp"] and region["custom_ops"] == ["MyCustomOp"]
    assert any("registered" in note for note in result.report.notes)
    assert "1:RELU" in result.report.layers
    with pytest.raises(Exception, match="(?i)custom|MyCustomOp|LiteRT"):
        result.model(np.ones((1, 4), np.float32))
