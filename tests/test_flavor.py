"""The tflite_keras flavor: save/log/load, signature inference, pyfunc on LiteRT."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import mlflow
import flavor_models as fm
from mlflow.exceptions import MlflowException
from mlflow_tflite_keras import flavor


def raw_interpreter_predict(model_bytes, x, resize=True):
    """The reference: LiteRT's interpreter driven by hand (quantized I/O included)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    if resize:
        interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    scale, zp = inp["quantization"]
    if scale:
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    y = interp.get_tensor(out["index"])
    scale, zp = out["quantization"]
    return ((y.astype(np.float32) - zp) * np.float32(scale)) if scale else y


@pytest.fixture(scope="module")
def images():
    return fm.digits()[0][:7]


def test_save_load_round_trip(tmp_path, images):
    data = fm.cnn()
    path = tmp_path / "model"
    flavor.save_model(data, path, input_example=images[:2], num_threads=2)
    conf = yaml.safe_load((path / "MLmodel").read_text())["flavors"]
    tk = conf["tflite_keras"]
    assert (path / tk["data"]).read_bytes() == data
    import hashlib

    assert tk["sha256"] == hashlib.sha256(data).hexdigest()
    assert tk["size_bytes"] == len(data)
    assert tk["schema_version"] == 3
    assert {"CONV_2D", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX"} <= set(tk["operators"])
    assert tk["quantization"] == "none" and tk["custom_ops"] == []
    assert tk["runtime"]["package"] == "ai-edge-litert" and tk["runtime"]["version"] == "2.3.0"
    assert tk["inputs"][0]["shape_signature"] == [-1, 8, 8, 1]
    assert tk["signature_keys"] == ["serving_default"]
    assert tk["num_threads"] == 2
    assert conf["python_function"]["loader_module"] == "mlflow_tflite_keras.flavor"
    # The package's code travels with the model for virtualenv/uv serving.
    assert (path / "code" / "mlflow_tflite_keras" / "runtime.py").exists()
    reqs = (path / "requirements.txt").read_text()
    assert "ai-edge-litert==2.3.0" in reqs and "tensorflow" not in reqs
    loaded = flavor.load_model(str(path))
    assert loaded.model_bytes == data
    assert loaded.description["quantization"] == "none"
    interp = loaded.interpreter()
    assert interp.get_input_details()[0]["shape"].tolist() == [1, 8, 8, 1]
    np.testing.assert_array_equal(loaded.predict(images), raw_interpreter_predict(data, images))


@pytest.mark.parametrize("recipe", fm.RECIPES)
def test_signature_inference(tmp_path, recipe):
    data = fm.cnn(recipe)
    flavor.save_model(data, tmp_path / "m")
    model = mlflow.models.Model.load(str(tmp_path / "m"))
    (inp,) = model.signature.inputs.inputs
    (out,) = model.signature.outputs.inputs
    # Quantized I/O is exchanged as float32; the batch dimension is dynamic.
    assert (inp.type, inp.shape) == (np.dtype("float32"), (-1, 8, 8, 1))
    assert (out.type, out.shape) == (np.dtype("float32"), (-1, 10))
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    assert inp.name == next(iter(TFLiteModel(data).signatures[0].inputs))  # SignatureDef name
    params = {p.name: p.default for p in model.signature.params.params}
    assert params == {"signature_key": "serving_default", "dequantize": True}
    expected = {"float32": "none", "float16": "float16", "dynamic-range": "dynamic-range-int8",
                "full-int8": "full-int8"}[recipe]
    tk = model.flavors["tflite_keras"]
    assert tk["quantization"] == expected
    if recipe == "full-int8":
        assert tk["inputs"][0]["dtype"] == "int8"
        assert tk["inputs"][0]["quantization"]["scale"][0] > 0


@pytest.mark.parametrize("recipe", fm.RECIPES)
@pytest.mark.parametrize("n", [1, 5])
def test_pyfunc_equals_raw_interpreter_dynamic_batch(tmp_path, images, recipe, n):
    data = fm.cnn(recipe)
    flavor.save_model(data, tmp_path / "m")
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    got = pyfunc.predict(images[:n])
    assert got.shape == (n, 10) and got.dtype == np.float32
    np.testing.assert_array_equal(got, raw_interpreter_predict(data, images[:n]))


def test_fixed_batch_model_runs_row_by_row(tmp_path, images):
    data = fm.fixed_batch_cnn()
    flavor.save_model(data, tmp_path / "m")
    model = mlflow.models.Model.load(str(tmp_path / "m"))
    assert model.flavors["tflite_keras"]["inputs"][0]["shape_signature"] == [1, 8, 8, 1]
    assert model.signature.inputs.inputs[0].shape == (-1, 8, 8, 1)  # the pyfunc batches it
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    got = pyfunc.predict(images)
    rows = [raw_interpreter_predict(data, images[i:i + 1], resize=False) for i in range(7)]
    np.testing.assert_array_equal(got, np.concatenate(rows))


@pytest.mark.parametrize("recipe", ["float32", "full-int8"])
def test_multi_input_multi_output(tmp_path, recipe):
    data = fm.multi_io(recipe)
    flavor.save_model(data, tmp_path / "m")
    model = mlflow.models.Model.load(str(tmp_path / "m"))
    assert sorted(model.signature.inputs.input_names()) == ["extra", "image"]
    assert sorted(model.signature.outputs.input_names()) == ["scores", "value"]
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    rng = np.random.default_rng(0)
    feeds = {"image": rng.uniform(0, 1, (4, 8, 8, 1)).astype(np.float32),
             "extra": rng.uniform(0, 1, (4, 4)).astype(np.float32)}
    out = pyfunc.predict(feeds)
    assert set(out) == {"scores", "value"}
    assert out["scores"].shape == (4, 3) and out["value"].shape == (4, 1)
    # Same numbers through the signature runner by hand.
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=data).get_signature_runner("serving_default")
    details = runner.get_input_details()
    raw_feeds = {}
    for name, x in feeds.items():
        scale, zp = details[name]["quantization"]
        if scale:
            x = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
        raw_feeds[name] = x
    raw = runner(**raw_feeds)
    for name, details_out in runner.get_output_details().items():
        scale, zp = details_out["quantization"]
        expected = (raw[name].astype(np.float32) - zp) * np.float32(scale) if scale else raw[name]
        np.testing.assert_array_equal(out[name], expected)
    # A DataFrame with one tensor column per input works too.
    frame = pd.DataFrame({"image": list(feeds["image"]), "extra": list(feeds["extra"])})
    out_df = pyfunc.get_raw_model().predict(frame)
    np.testing.assert_array_equal(out_df["scores"], out["scores"])


def test_int8_quantize_and_dequantize(tmp_path, images):
    data = fm.cnn("full-int8")
    flavor.save_model(data, tmp_path / "m")
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    as_float = pyfunc.predict(images)
    raw = pyfunc.predict(images, params={"dequantize": False})
    assert as_float.dtype == np.float32 and raw.dtype == np.int8
    loaded = pyfunc.get_raw_model()
    q = loaded.description["outputs"][0]["quantization"]
    np.testing.assert_array_equal(
        as_float, (raw.astype(np.float32) - q["zero_point"][0]) * np.float32(q["scale"][0]))
    # Integer inputs pass through unchanged (no second quantization).
    qi = loaded.description["inputs"][0]["quantization"]
    quantized = np.clip(np.round(images / qi["scale"][0]) + qi["zero_point"][0], -128, 127)
    np.testing.assert_array_equal(loaded.predict(quantized.astype(np.int8)), as_float)


def test_multi_signature_selects_key(tmp_path):
    data = fm.multi_signature()
    flavor.save_model(data, tmp_path / "m")
    conf = mlflow.models.Model.load(str(tmp_path / "m")).flavors["tflite_keras"]
    assert sorted(conf["signature_keys"]) == ["affine", "double"]
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = conf["signature_keys"][0]
    expected = {"double": x * 2, "affine": x * 3 + 1}
    np.testing.assert_allclose(pyfunc.predict(x), expected[first])
    for key in ("double", "affine"):
        np.testing.assert_allclose(pyfunc.predict(x, params={"signature_key": key}),
                                   expected[key])
    with pytest.raises(MlflowException, match="Unknown signature_key 'nope'"):
        pyfunc.predict(x, params={"signature_key": "nope"})


def test_stateful_model_restarts_each_call(tmp_path):
    data = fm.stateful_accumulator()
    flavor.save_model(data, tmp_path / "m")
    conf = mlflow.models.Model.load(str(tmp_path / "m")).flavors["tflite_keras"]
    assert conf["stateful"] is True
    assert {"VAR_HANDLE", "ASSIGN_VARIABLE", "READ_VARIABLE"} & set(conf["operators"])
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    rows = np.array([[1, 2, 3], [10, 20, 30], [100, 200, 300]], dtype=np.float32)
    expected = np.cumsum(rows, axis=0)  # rows fed in order, state carried between rows
    np.testing.assert_allclose(pyfunc.predict(rows), expected)
    np.testing.assert_allclose(pyfunc.predict(rows), expected)  # a new call starts over


def test_concurrent_predicts(tmp_path):
    data = fm.cnn("full-int8")
    flavor.save_model(data, tmp_path / "m")
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, (int(rng.integers(1, 9)), 8, 8, 1)).astype(np.float32)
               for _ in range(48)]
    expected = [raw_interpreter_predict(data, b) for b in batches]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(pyfunc.predict, batches))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_dataframe_tabular_input(tmp_path):
    data = fm.tabular()
    flavor.save_model(data, tmp_path / "m")
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    got = pyfunc.get_raw_model().predict(pd.DataFrame(x, columns=list("abcde")))
    np.testing.assert_array_equal(got, pyfunc.predict(x))


def test_num_threads_model_config(tmp_path):
    flavor.save_model(fm.cnn(), tmp_path / "m", num_threads=1)
    assert mlflow.pyfunc.load_model(str(tmp_path / "m")).get_raw_model().num_threads == 1
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "m"), model_config={"num_threads": 2})
    assert loaded.get_raw_model().num_threads == 2


@pytest.mark.parametrize("bad, message", [
    ({"wrong": np.zeros((1, 8, 8, 1), np.float32)}, "missing input"),
    (np.zeros((2, 8, 9, 1), np.float32), r"has shape \[2, 8, 9, 1\]"),
    (np.zeros((2, 8, 8), np.float32), "has shape"),
    (np.array([["a"] * 8] * 8), "dtype"),
])
def test_bad_inputs_raise_clear_errors(tmp_path, bad, message):
    flavor.save_model(fm.cnn(), tmp_path / "m")
    loaded = flavor.load_model(str(tmp_path / "m"))
    with pytest.raises(MlflowException, match=message):
        loaded.predict(bad)


def test_multi_input_missing_and_extra(tmp_path):
    flavor.save_model(fm.multi_io(), tmp_path / "m")
    loaded = flavor.load_model(str(tmp_path / "m"))
    with pytest.raises(MlflowException, match=r"missing input\(s\) \['extra'\]"):
        loaded.predict({"image": np.zeros((1, 8, 8, 1), np.float32)})
    with pytest.raises(MlflowException, match="pass a dict"):
        loaded.predict(np.zeros((1, 8, 8, 1), np.float32))


def test_nan_into_quantized_input(tmp_path):
    flavor.save_model(fm.cnn("full-int8"), tmp_path / "m")
    x = np.full((1, 8, 8, 1), np.nan, np.float32)
    with pytest.raises(MlflowException, match="NaN"):
        flavor.load_model(str(tmp_path / "m")).predict(x)


@pytest.mark.parametrize("make_bad, message", [
    (lambda data, p: p.write_bytes(b"definitely not a model" * 10), "file identifier"),
    (lambda data, p: p.write_bytes(data[: len(data) // 3]), "Not a valid TFLite"),
    (lambda data, p: p.write_bytes(b""), "too short"),
])
def test_invalid_files_rejected_before_writing(tmp_path, make_bad, message):
    bad = tmp_path / "bad.tflite"
    make_bad(fm.cnn(), bad)
    target = tmp_path / "m"
    with pytest.raises(MlflowException, match=message):
        flavor.save_model(str(bad), target)
    assert not target.exists()
    with pytest.raises(MlflowException, match="No .tflite file"):
        flavor.save_model(str(tmp_path / "missing.tflite"), target)
    with pytest.raises(MlflowException, match="path to a .tflite file"):
        flavor.save_model(12345, target)


def test_log_register_and_load(tracking, images):
    data = fm.cnn("full-int8")
    with mlflow.start_run():
        info = mlflow.tflite_keras.log_model(data, name="model", registered_model_name="digits",
                                             input_example=images[:2], params={"lr": 0.1},
                                             tags={"team": "mobile"})
    assert info.registered_model_version == 1
    for uri in (info.model_uri, "models:/digits/1", f"runs:/{info.run_id}/model"):
        loaded = mlflow.tflite_keras.load_model(uri)
        assert loaded.model_bytes == data
    pyfunc = mlflow.pyfunc.load_model("models:/digits/1")
    np.testing.assert_array_equal(pyfunc.predict(images), raw_interpreter_predict(data, images))
    logged = mlflow.get_logged_model(info.model_id)
    assert logged.params == {"lr": "0.1"} and logged.tags.get("team") == "mobile"


def test_log_model_rejects_bad_bytes_without_a_run(tracking):
    with pytest.raises(MlflowException, match="file identifier"):
        mlflow.tflite_keras.log_model(b"x" * 64, name="model", registered_model_name="bad")
    assert mlflow.active_run() is None
    assert mlflow.search_registered_models() == []


def test_log_keras_model_convenience(tracking, images):
    with mlflow.start_run():
        info = mlflow.tflite_keras.log_model(fm.make_cnn(), name="model")
    loaded = mlflow.tflite_keras.load_model(info.model_uri)
    assert loaded.description["quantization"] == "none"
    assert loaded.predict(images).shape == (7, 10)


def clean_env() -> dict:
    """This environment minus MLflow's run/experiment state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_paths_and_no_tensorflow_on_serving_path(tmp_path, images):
    data = fm.cnn("full-int8")
    (tmp_path / "m.tflite").write_bytes(data)
    np.save(tmp_path / "x.npy", images)
    out = _run_python(f"""
import sys, numpy as np, mlflow
assert "mlflow_tflite_keras.flavor" not in sys.modules  # lazy until used
mlflow.set_tracking_uri("sqlite:///{tmp_path}/db.sqlite")
with mlflow.start_run():
    info = mlflow.tflite_keras.log_model("{tmp_path}/m.tflite", name="model")
model = mlflow.pyfunc.load_model(info.model_uri)
y = model.predict(np.load("{tmp_path}/x.npy"))
import mlflow.tflite_keras, mlflow_tflite_keras
assert mlflow.tflite_keras.FLAVOR_NAME == "tflite_keras" == mlflow_tflite_keras.FLAVOR_NAME
print("tensorflow" in sys.modules, "keras" in sys.modules, y.shape)
""")
    assert out.strip() == "False False (7, 10)"


def test_plugin_import_cost_is_small():
    """The entry point MLflow loads during `import mlflow` must stay far below 50 ms."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mlflow"],
                            capture_output=True, text=True, timeout=120)
    rows = [line.split("|") for line in result.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2]
    names = {row[2].strip(): int(row[1]) for row in rows[1:]}
    ours = {name: us for name, us in names.items() if name.startswith("mlflow_tflite_keras")}
    assert ours, "the mlflow.run_context_provider entry point was not loaded"
    # Cumulative microseconds of our modules (the package and the plugin it imports).
    assert sum(ours.values()) < 50_000, ours
    assert not [name for name in names if name.split(".")[0] in ("tensorflow", "keras")]


def test_broken_package_does_not_break_import_mlflow(tmp_path):
    """The entry point survives a broken install: a plugin module that raises on import."""
    import shutil

    import mlflow_tflite_keras

    broken = tmp_path / "mlflow_tflite_keras"
    shutil.copytree(os.path.dirname(mlflow_tflite_keras.__file__), broken)
    (broken / "_mlflow_plugin.py").write_text("raise RuntimeError('broken install')\n")
    (broken / "flavor.py").write_text("this is not python\n")
    env = clean_env()
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import mlflow; print(mlflow.__version__)"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == mlflow.__version__


def test_keras_loads_registered_layers_after_import_mlflow(tmp_path):
    """Reconstructed models use this package's layers; after `import mlflow`, importing Keras
    registers them, so a .keras file using them loads with safe_mode=True."""
    out = _run_python("""
import mlflow, keras
from keras.src.saving import object_registration
names = object_registration.GLOBAL_CUSTOM_OBJECTS
# Layers of every op family: the generic op, loops (Keras 3 RNNs), spectral, the wrapper.
print(all(f"mlflow_tflite_keras>{n}" in names for n in
          ("KerasOp", "WhileLoop", "RFFT2D", "LocalResponseNormalization", "TFLiteLayer")))
""")
    assert out.strip().endswith("True")
