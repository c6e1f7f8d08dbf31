"""``export_tflite``: Keras -> ``.tflite`` like a source model, with an interface check."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mlflow_tflite_keras.errors import InterfaceChangedError
from mlflow_tflite_keras.export import export_tflite
from mlflow_tflite_keras.interface import compare_interfaces
from mlflow_tflite_keras.keras_export import keras_to_tflite
from mlflow_tflite_keras.tflite_model import TFLiteModel

keras = pytest.importorskip("keras")

RECIPE_KIND = {"float32": "none", "float16": "float16", "dynamic-range": "dynamic-range-int8",
               "full-int8": "full-int8", "int16x8": "int16x8"}


def make_mlp(units: int = 3, seed: int = 0):
    """16 -> 64 -> units: the 16x64 kernel (1024 weights) is big enough for float16 and
    dynamic-range to quantize it."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,), name="features")
    x = keras.layers.Dense(64, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(units)(x), name="mlp")


def make_two_inputs():
    keras.utils.set_random_seed(1)
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((4,), name="meta")
    x = keras.layers.Conv2D(16, 3, activation="relu")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(8)(meta)])
    return keras.Model({"image": image, "meta": meta},
                       {"logits": keras.layers.Dense(3)(x), "embedding": x})


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).random((64, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def mlp():
    return make_mlp()


@pytest.fixture(scope="module")
def sources(mlp, data):
    cache = {}

    def get(recipe, **kwargs):
        key = (recipe, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = keras_to_tflite(mlp, recipe, representative_data=data, **kwargs)
        return cache[key]

    return get


def interface(model_bytes) -> dict:
    """What an app sees: signature keys, names, dtypes, shapes (signatures), quantization."""
    desc = TFLiteModel(model_bytes).describe()
    sigs = {key: {side: {name: (t["dtype"], t["shape_signature"]) for name, t in sig[side].items()}
                  for side in ("inputs", "outputs")} for key, sig in desc["signatures"].items()}
    return {"quantization": desc["quantization"], "signatures": sigs}


@pytest.mark.parametrize("recipe", list(RECIPE_KIND))
def test_export_like_source_keeps_recipe_and_interface(recipe, mlp, data, sources):
    source = sources(recipe)
    assert TFLiteModel(source).quantization_kind == RECIPE_KIND[recipe]

    new, report = export_tflite(copy_of(mlp), like=source, representative_data=data,
                                return_report=True)

    assert report.ok, str(report)
    assert TFLiteModel(new).quantization_kind == RECIPE_KIND[recipe]
    assert interface(new) == interface(source)
    if recipe == "full-int8":  # integer I/O kept
        sig = interface(new)["signatures"]["serving_default"]
        assert sig["inputs"]["features"][0] == "int8"
        assert sig["outputs"]["output_0"][0] == "int8"


@pytest.mark.parametrize("io_type", ["float32", "uint8"])
def test_full_int8_keeps_the_source_io_type(io_type, mlp, data, sources):
    source = sources("full-int8", inference_input_type=np.dtype(io_type),
                     inference_output_type=np.dtype(io_type))
    src = interface(source)
    assert src["quantization"] == "full-int8"
    assert src["signatures"]["serving_default"]["inputs"]["features"][0] == io_type
    assert src["signatures"]["serving_default"]["outputs"]["output_0"][0] == io_type

    new = export_tflite(copy_of(mlp), like=source, representative_data=data[:10])
    assert interface(new) == src


def test_changed_output_shape_is_refused_then_allowed(data, sources, caplog):
    source = sources("float32")
    changed = make_mlp(units=5)

    with pytest.raises(InterfaceChangedError) as info:
        export_tflite(changed, like=source)
    message = str(info.value)
    assert "output 'output_0' shape" in message
    assert "[-1, 3]" in message and "[-1, 5]" in message
    assert "allow_interface_changes=True" in message
    assert [d.what for d in info.value.report.differences] == ["shape"]

    with caplog.at_level("WARNING", logger="mlflow_tflite_keras.export"):
        new, report = export_tflite(changed, like=source, allow_interface_changes=True,
                                    return_report=True)
    assert not report.ok
    assert "output 'output_0' shape: source [-1, 3], new [-1, 5]" in caplog.text
    diff = report.differences[0]
    assert (diff.where, diff.source, diff.new) == ("output 'output_0'", [-1, 3], [-1, 5])
    assert TFLiteModel(new).signature().outputs == {"output_0": 4}


def test_missing_representative_data_for_full_int8(mlp, sources):
    with pytest.raises(MlflowException, match=r"full-int8.*needs representative_data"):
        export_tflite(copy_of(mlp), like=sources("full-int8", ))


def test_explicit_recipe_overrides_and_report_shows_the_change(mlp, sources):
    with pytest.raises(InterfaceChangedError, match=r"quantization kind: source 'none', "
                                                    r"new 'dynamic-range-int8'"):
        export_tflite(copy_of(mlp), like=sources("float32"), recipe="dynamic-range")


def test_like_mlflow_model_uri(tmp_path, mlp, data, sources):
    source = sources("full-int8")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/db")
    try:
        exp = mlflow.create_experiment("export", artifact_location=(tmp_path / "a").as_uri())
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.tflite_keras.log_model(source, name="model")
        new = export_tflite(copy_of(mlp), like=info.model_uri, representative_data=data)
        assert interface(new) == interface(source)
        assert compare_interfaces(info.model_uri, new).ok
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_like_as_path_and_tflite_model(tmp_path, mlp, sources):
    source = sources("float16")
    path = tmp_path / "source.tflite"
    path.write_bytes(source)
    for like in (path, str(path), TFLiteModel(source)):
        assert TFLiteModel(export_tflite(copy_of(mlp), like=like)).quantization_kind == "float16"
    with pytest.raises(MlflowException, match="No .tflite file"):
        export_tflite(copy_of(mlp), like=tmp_path / "missing.tflite")


def test_multi_input_representative_data_forms():
    model = make_two_inputs()
    rng = np.random.default_rng(2)
    image, meta = rng.random((20, 8, 8, 1), np.float32), rng.random((20, 4), np.float32)
    source = keras_to_tflite(model, "full-int8", representative_data=lambda: (
        {"image": image[i:i + 1], "meta": meta[i:i + 1]} for i in range(20)))
    assert TFLiteModel(source).quantization_kind == "full-int8"

    forms = [{"meta": meta, "image": image},  # dict by name
             [image, meta],  # list in the Keras model's input order
             lambda: ({"image": image[i:i + 1], "meta": meta[i:i + 1]} for i in range(5))]
    for rep in forms:
        new = export_tflite(copy_of(model), like=source, representative_data=rep,
                            num_samples=8)
        assert interface(new) == interface(source)
    with pytest.raises(MlflowException, match=r"single array but the model has 2 inputs"):
        export_tflite(copy_of(model), like=source, representative_data=image)


def test_names_are_aligned_with_the_source(mlp, sources):
    """A Keras model whose input is named differently still exports with the source's
    signature names (single input/output: unambiguous)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="x")
    x = keras.layers.Dense(64, activation="relu")(inputs)
    other = keras.Model(inputs, keras.layers.Dense(3)(x))
    new, report = export_tflite(other, like=sources("float32"), return_report=True)
    assert report.ok, str(report)
    assert list(TFLiteModel(new).signature().inputs) == ["features"]

    renamed_only = export_tflite(other, align_names=False, like=sources("float32"),
                                 allow_interface_changes=True, return_report=True)[1]
    assert [(d.what, d.source, d.new) for d in renamed_only.differences] == \
        [("name", "features", "x")]


def test_compare_interfaces_reports_every_difference():
    source = keras_to_tflite(make_two_inputs())
    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3)(image))
    fewer = keras.Model({"image": image}, {"logits": keras.layers.Dense(4)(x), "embedding": x})

    report = compare_interfaces(source, keras_to_tflite(fewer))
    found = {(d.what, d.where) for d in report.differences}
    assert ("input", "input 'meta'") in found
    assert ("shape", "output 'logits'") in found
    assert ("shape", "output 'embedding'") in found  # 24 -> 16 features
    assert report.to_dict()["ok"] is False
    assert compare_interfaces(source, source).ok


def test_source_without_signature_def_is_matched_by_order(mlp, sources):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(sources("float32")), 0)
    model.signatureDefs = []
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bare = bytes(builder.Output())
    assert TFLiteModel(bare).signatures == []

    new, report = export_tflite(copy_of(mlp), like=bare, return_report=True)
    assert report.ok and report.matched_by == "order", str(report)
    changed = compare_interfaces(bare, keras_to_tflite(make_mlp(units=5)))
    assert [d.where for d in changed.differences] == [
        "output #0 ('StatefulPartitionedCall_1:0')"]


@pytest.mark.parametrize("recipe", list(RECIPE_KIND))
def test_round_trip_through_the_converter(recipe, data, sources):
    converter = pytest.importorskip("mlflow_tflite_keras.converter.convert")
    source = sources(recipe)
    try:
        rebuilt = converter.to_keras(source)
    except converter.UnsupportedOperatorsError as e:
        pytest.skip(f"converter cannot rebuild this {recipe} model yet: {e}")

    new, report = export_tflite(rebuilt, like=source, representative_data=data,
                                return_report=True)
    assert report.ok, str(report)
    assert interface(new) == interface(source)


def test_round_trip_through_the_converter_two_inputs_two_outputs():
    converter = pytest.importorskip("mlflow_tflite_keras.converter.convert")
    rng = np.random.default_rng(4)
    rep = {"image": rng.random((16, 8, 8, 1), np.float32), "meta": rng.random((16, 4), np.float32)}
    source = keras_to_tflite(make_two_inputs(), "full-int8", representative_data=lambda: (
        {k: v[i:i + 1] for k, v in rep.items()} for i in range(16)))
    try:
        rebuilt = converter.to_keras(source)
    except converter.UnsupportedOperatorsError as e:
        pytest.skip(f"converter cannot rebuild this model yet: {e}")

    new, report = export_tflite(rebuilt, like=source, representative_data=rep,
                                return_report=True)
    assert report.ok, str(report)
    assert interface(new) == interface(source)


def test_single_named_output_is_kept():
    """A source whose only output is named (not Keras' 'output_0') keeps that name when the
    new model (e.g. rebuilt by the converter) has a plain single output."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((16,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    logits = keras.layers.Dense(3)(hidden)
    source = keras_to_tflite(keras.Model(inputs, {"logits": logits}))
    assert list(TFLiteModel(source).signature().outputs) == ["logits"]

    new, report = export_tflite(keras.Model(inputs, logits), like=source, return_report=True)
    assert report.ok, str(report)
    assert list(TFLiteModel(new).signature().outputs) == ["logits"]


# ---- models shaped like real ones: detector, landmarks, spectral audio -------------------------

import roundtrip_models as rm  # noqa: E402

from mlflow_tflite_keras.interface import _constant_types  # noqa: E402
from mlflow_tflite_keras.recipes import normalize_recipe  # noqa: E402

ROUND_TRIP_RECIPES = ["float32", "float16", "weight-only-int8", "dynamic-range-int8",
                      "weight-only-int4", "dynamic-range-int4", "full-int8"]
# The export against the Keras model it was made from (max error / output range, cosine).
# The Keras weights are the source's, dequantized: re-quantizing them gives the same integers,
# so what remains is activation rounding (dynamic range, full-integer).
AGAINST_KERAS = {"float32": (1e-4, 0.99999), "float16": (1e-2, 0.9999),
                 "weight-only-int8": (1e-3, 0.99999), "dynamic-range-int8": (5e-2, 0.999),
                 "weight-only-int4": (1e-3, 0.99999), "dynamic-range-int4": (5e-2, 0.999),
                 "dynamic-range-int4-blockwise-32": (5e-2, 0.999), "full-int8": (0.1, 0.99),
                 "int16x8": (0.1, 0.99)}


def ordered_interface(model_bytes) -> dict:
    """What an app sees, in order: signature key, signature and subgraph inputs / outputs
    (name, tensor name, dtype, shape signature), and the recipe as stored."""
    model = TFLiteModel(model_bytes)
    sig = model.signature()
    sg = model.subgraphs[sig.subgraph_index]

    def tensors(which):
        return [(name, sg.tensors[i].name, sg.tensors[i].type_name,
                 list(sg.tensors[i].shape_signature)) for name, i in getattr(sig, which).items()]

    return {"key": sig.key, "inputs": tensors("inputs"), "outputs": tensors("outputs"),
            "subgraph_inputs": [sg.tensors[i].name for i in sg.inputs],
            "subgraph_outputs": [sg.tensors[i].name for i in sg.outputs],
            "recipe": model.quantization_kind, "constants": _constant_types(model)}


def no_flex_ops(model_bytes):
    model = TFLiteModel(model_bytes)
    flex = [op for op in model.operator_names if op.startswith("Flex")]
    assert not flex and not model.custom_ops, (flex, model.custom_ops)


def run(model_bytes, x) -> dict:
    from mlflow_tflite_keras.runtime import TFLiteRunner

    runner = TFLiteRunner(TFLiteModel(model_bytes))
    name = runner.signature().inputs[0].name
    # Batch of 1 fixed: one row at a time, as the app runs it.
    rows = [runner.predict({name: x[i:i + 1]}) for i in range(len(x))]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def rebuilt(kind: str, recipe: str):
    """to_keras of the recipe's source (its weights dequantized)."""
    from mlflow_tflite_keras.converter import to_keras

    return to_keras(rm.model(kind, recipe))


@pytest.mark.parametrize("recipe", ROUND_TRIP_RECIPES)
@pytest.mark.parametrize("kind", ["detector", "landmarks", "spectral"])
def test_real_shaped_round_trip(kind, recipe):
    from mlflow_tflite_keras.converter.parity import check_parity

    source = rm.model(kind, recipe)
    assert normalize_recipe(TFLiteModel(source).quantization_kind) == recipe
    keras_model = rebuilt(kind, recipe)
    # Calibrated like the source was, so a full-integer export reproduces its scales.
    new, report = export_tflite(keras_model, like=source,
                                representative_data=rm.inputs(kind, 32, seed=1),
                                return_report=True)
    assert report.ok, str(report)
    assert ordered_interface(new) == ordered_interface(source)
    no_flex_ops(new)

    x = rm.inputs(kind, 8, seed=5)
    rel, cosine = AGAINST_KERAS[recipe]
    parity = check_parity(new, keras_model, x, max_rel_error=rel, min_cosine=cosine,
                          max_steps=1e9, min_top1=0.0)
    assert parity.passed, str(parity)
    # The same weights quantized the same way: the export answers like the source.
    got, want = run(new, x), run(source, x)
    assert list(got) == list(want)
    src = TFLiteModel(source)
    for name, expected in want.items():
        assert got[name].shape == expected.shape
        spread = float(expected.max() - expected.min()) or 1.0
        q = src.main.tensors[src.signature().outputs[name]].quantization
        # Recalibrated activations: within 2 quantization steps or 3% of the range.
        limit = max(3e-2 * spread, 2 * float(q.scale[0]) if q is not None else 0.0) \
            if recipe in ("full-int8", "int16x8") else 1e-4 * spread
        assert np.max(np.abs(got[name] - expected)) <= limit, name


@pytest.mark.parametrize("kind,recipe", [("landmarks", "dynamic-range-int4-blockwise-32"),
                                         ("detector", "int16x8")])
def test_real_shaped_round_trip_more_recipes(kind, recipe):
    test_real_shaped_round_trip(kind, recipe)


def test_blockwise_recipe_keeps_block_size_and_report_compares_it():
    float_source = rm.model("landmarks", "float32")
    blockwise = rm.model("landmarks", "dynamic-range-int4-blockwise-32")
    assert _constant_types(TFLiteModel(blockwise)) == {"types": ["INT4"], "block_sizes": [32]}
    keras_model = rebuilt("landmarks", "dynamic-range-int4")
    channelwise = export_tflite(keras_model, like=float_source, recipe="dynamic-range-int4",
                                allow_interface_changes=True)
    report = compare_interfaces(blockwise, channelwise)
    found = {(d.what, str(d.source), str(d.new)) for d in report.differences}
    assert ("quantization kind", "dynamic-range-int4-blockwise-32", "dynamic-range-int4") in found
    assert ("block sizes", "[32]", "[]") in found
    with pytest.raises(MlflowException, match="none of the model's ops supports it"):
        export_tflite(rebuilt("detector", "float32"), recipe="dynamic-range-int4-blockwise-32")


def test_batch_and_order_changes_are_reported():
    """The old export (dynamic batch, outputs sorted by name) is what the report catches."""
    source = rm.model("detector", "float32")
    plain = export_tflite(rebuilt("detector", "float32"), like=source, align_names=False,
                          allow_interface_changes=True)
    report = compare_interfaces(source, plain)
    found = {(d.what, d.where) for d in report.differences}
    assert ("shape", "input 'input'") in found  # [1, 16, 16, 3] -> [-1, 16, 16, 3]
    assert ("order", "subgraph outputs") in found or ("order", "signature outputs") in found


# ---- emulated models (to_keras(emulate_quantization=True)) exported like their source --------

def _litert_steps(model_bytes, keras_model, x):
    """(max |LiteRT - Keras| in output quantization steps, share at 0 steps, I/O dtypes)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zp), (out_scale, out_zp) = inp["quantization"], out["quantization"]
    results = []
    for row in x:
        value = row[None]
        if inp["dtype"] != np.float32:
            value = np.clip(np.round(value / in_scale) + in_zp, -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        results.append((interpreter.get_tensor(out["index"]).astype(np.float32) - out_zp)
                       * out_scale)
    diff = np.abs(np.concatenate(results) - keras_model.predict(x, verbose=0)) / out_scale
    return float(diff.max()), float(np.mean(diff < 1e-3)), (inp["dtype"], out["dtype"])


def _quantization_differences(source: bytes, exported: bytes) -> list:
    """Tensors (of every subgraph) whose type or quantization parameters differ."""
    a, b = TFLiteModel(source), TFLiteModel(exported)
    assert [len(sg.tensors) for sg in a.subgraphs] == [len(sg.tensors) for sg in b.subgraphs]
    differ = []
    for sa, sb in zip(a.subgraphs, b.subgraphs):
        for ta, tb in zip(sa.tensors, sb.tensors):
            qa, qb = ta.quantization, tb.quantization
            same = ta.type_name == tb.type_name and (qa is None) == (qb is None) and (
                qa is None or (np.array_equal(qa.scale, qb.scale)
                               and np.array_equal(qa.zero_point, qb.zero_point)
                               and qa.quantized_dimension == qb.quantized_dimension))
            if not same:
                differ.append(ta.name)
    return differ


def test_export_like_source_of_an_emulated_model_keeps_every_scale(tmp_path):
    """export_tflite(emulated, like=source): no calibration data; the trained weights go into
    the source's constants on its per-channel scheme; every tensor keeps its scale / zero
    point; int8 I/O kept; LiteRT computes what the emulated Keras model computes."""
    from converter.test_emulation import _inputs, _source

    from model_factory import digits
    from mlflow_tflite_keras.converter import convert

    source = _source("full-int8")
    model = convert(source, emulate_quantization=True).model
    # untouched: the source itself, byte for byte (also after a .keras round trip: the
    # weights' source tensors are in the layers' config)
    assert export_tflite(model, like=source) == source
    model.save(tmp_path / "emulated.keras")
    reloaded = keras.saving.load_model(tmp_path / "emulated.keras", safe_mode=True)
    assert export_tflite(reloaded, like=source) == source

    x, y = digits()
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    model.fit(x[:512], y[:512], epochs=1, batch_size=32, verbose=0)
    exported = export_tflite(model, like=source)
    assert _quantization_differences(source, exported) == []
    changed = [t.name for t, u in zip(TFLiteModel(source).subgraphs[0].tensors,
                                      TFLiteModel(exported).subgraphs[0].tensors)
               if TFLiteModel(source).constant(t) is not None
               and not np.array_equal(TFLiteModel(source).constant(t),
                                      TFLiteModel(exported).constant(u))]
    assert len(changed) >= 5, changed  # the fine-tuned kernels / biases were written
    steps, exact, io = _litert_steps(exported, model, _inputs())
    print(f"\nexported vs emulated Keras: max {steps} steps, {exact:.1%} at 0 steps")
    assert steps <= 1.0 and io == (np.int8, np.int8)

    # the check rejects a wrong answer: a fine-tuned model written into another model's
    # constants (int16x8 source: other bias scales) and a model with a layer added
    with pytest.raises(MlflowException, match="not built from this source"):
        export_tflite(model, like=_source("int16x8"))
    extended = keras.Model(model.inputs, keras.layers.Dense(3)(model.outputs[0]))
    with pytest.raises(MlflowException, match="no quantized constant"):
        export_tflite(extended, like=source)
