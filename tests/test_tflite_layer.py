"""TFLiteLayer: a frozen, serializable Keras layer running a .tflite model on LiteRT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import flavor_models as fm
from model_factory import calibrate_batch_norm, concrete_functions_tflite, keras_model_tflite

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from mlflow_tflite_keras.tflite_layer import TFLiteLayer  # noqa: E402

IMAGE = (64, 64, 3)


# ---- models -------------------------------------------------------------------------------------

def make_mobilenet_backbone():
    import keras

    import numpy as np

    keras.utils.set_random_seed(7)
    # MobileNetV2 (weights=None, 64x64x3, 10 classes) without its top: the pooled features.
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), classes=10,
                                           include_top=False, pooling="avg")
    # With freshly initialized BatchNorm statistics the signal vanishes through the network
    # (features ~1e-12, all zeros once int8-quantized), so a head on top could learn nothing.
    calibrate_batch_norm(model, np.random.default_rng(11).uniform(-1, 1, (32, 64, 64, 3))
                         .astype(np.float32))
    return model


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + IMAGE).astype(np.float32)


def mobilenet(recipe: str) -> bytes:
    return keras_model_tflite("tflite-layer-mobilenet-v2", make_mobilenet_backbone, recipe,
                              representative=lambda: images(16, seed=123))


@pytest.fixture(scope="module", params=["float32", "full-int8"])
def backbone(request):
    return request.param, mobilenet(request.param)


# ---- reference: the raw LiteRT interpreter, with quantization done here -------------------------

def interpreter_predict(data: bytes, feeds: dict, signature_key=None, dequantize=True,
                        row_by_row=False) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    key = signature_key or next(iter(interpreter.get_signature_list()))
    runner = interpreter.get_signature_runner(key)
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()

    def quantize(name, x):
        d = in_details[name]
        scale, zero = d["quantization"]
        if not np.issubdtype(d["dtype"], np.integer) or scale == 0 or x.dtype == d["dtype"]:
            return x.astype(d["dtype"])
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(x.astype(np.float64) / scale) + zero, info.min, info.max
                       ).astype(d["dtype"])

    def run(batch):
        out = runner(**{k: quantize(k, v) for k, v in batch.items()})
        if dequantize:
            for name, d in out_details.items():
                scale, zero = d["quantization"]
                if np.issubdtype(d["dtype"], np.integer) and scale != 0:
                    out[name] = ((out[name].astype(np.float32) - np.float32(zero))
                                 * np.float32(scale)).astype(np.float32)
        return out

    if not row_by_row:
        return run(feeds)
    n = len(next(iter(feeds.values())))
    rows = [run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def only(outputs: dict) -> np.ndarray:
    (value,) = outputs.values()
    return value


def backbone_with_head(data, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE)
    layer = TFLiteLayer(data, name="backbone")
    features = layer(inputs)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(features)
    return keras.Model(inputs, outputs), layer


# ---- MobileNetV2 backbones ----------------------------------------------------------------------

def test_backbone_predictions_equal_interpreter(backbone):
    recipe, data = backbone
    layer = TFLiteLayer(data)
    assert layer.trainable_weights == [] and layer.weights == []
    x = images(7, seed=1)
    expected = only(interpreter_predict(data, {layer.input_names[0]: x}))
    assert expected.shape == (7, 1280)

    eager = layer(x)
    np.testing.assert_array_equal(eager.numpy(), expected)

    inputs = keras.Input(IMAGE)
    features = layer(inputs)
    assert tuple(features.shape) == (None, 1280) and features.dtype == "float32"
    model = keras.Model(inputs, features)
    # predict runs compiled graphs (batches 3, 3, 1): each batch equals the interpreter's.
    got = model.predict(x, batch_size=3, verbose=0)
    want = np.concatenate([only(interpreter_predict(data, {layer.input_names[0]: x[i:i + 3]}))
                           for i in (0, 3, 6)])
    np.testing.assert_array_equal(got, want)

    traced = tf.function(lambda t: layer(t))
    np.testing.assert_array_equal(traced(tf.constant(x)).numpy(), expected)


def test_trainable_head_on_frozen_backbone(backbone):
    recipe, data = backbone
    model, layer = backbone_with_head(data)
    x = images(32, seed=2)
    y = np.random.default_rng(3).integers(0, 10, 32)
    features_before = layer(x).numpy()

    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    assert not model.jit_compile  # a numpy_function layer is never XLA-compiled
    head_before = [w.numpy().copy() for w in model.get_layer("head").weights]
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses

    assert layer.trainable_weights == [] and layer.non_trainable_weights == []
    assert len(model.trainable_weights) == 2  # the head's kernel and bias, nothing else
    assert any(not np.array_equal(a, w.numpy())
               for a, w in zip(head_before, model.get_layer("head").weights))
    np.testing.assert_array_equal(layer(x).numpy(), features_before)


def test_no_gradient_through_the_layer():
    data = fm.cnn("float32")
    layer = TFLiteLayer(data)
    x = tf.constant(images(1)[:, :8, :8, :1])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x))
    assert tape.gradient(y, x) is None


# ---- batching, several inputs / outputs, quantized I/O ------------------------------------------

def test_batch_n_on_fixed_batch_one_model():
    data = fm.fixed_batch_cnn()
    layer = TFLiteLayer(data)
    spec = layer.runner().signature(layer.signature_key)
    assert spec.batched and not spec.resizable_batch  # really fixed at [1, 8, 8, 1]

    x = fm.digits()[0][:5]
    expected = only(interpreter_predict(data, {layer.input_names[0]: x}, row_by_row=True))
    np.testing.assert_array_equal(layer(x).numpy(), expected)

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, layer(inputs))
    assert model.output_shape == (None, 10)
    np.testing.assert_array_equal(model.predict(x, batch_size=2, verbose=0), expected)

    # A dynamic-batch model runs any batch in one resized invoke.
    dyn = fm.cnn()
    dyn_layer = TFLiteLayer(dyn)
    np.testing.assert_array_equal(
        dyn_layer(x).numpy(), only(interpreter_predict(dyn, {dyn_layer.input_names[0]: x})))


def test_multi_input_multi_output():
    data = fm.multi_io()
    layer = TFLiteLayer(data)
    assert layer.input_names == ["extra", "image"] and layer.output_names == ["scores", "value"]
    rng = np.random.default_rng(4)
    feeds = {"extra": rng.uniform(0, 1, (6, 4)).astype(np.float32),
             "image": rng.uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)}
    expected = interpreter_predict(data, feeds)

    by_dict = layer(feeds)
    by_list = layer([feeds["extra"], feeds["image"]])  # signature input order
    for out in (by_dict, by_list):
        assert list(out) == ["scores", "value"]  # several outputs: a dict by output name
        for k in expected:
            np.testing.assert_array_equal(out[k].numpy(), expected[k])

    extra = keras.Input((4,), name="extra")
    image = keras.Input((8, 8, 1), name="image")
    out = layer({"image": image, "extra": extra})
    assert tuple(out["scores"].shape) == (None, 3) and tuple(out["value"].shape) == (None, 1)
    head = keras.layers.Concatenate()([out["scores"], out["value"]])
    model = keras.Model({"extra": extra, "image": image}, {**out, "both": head})
    got = model.predict(feeds, batch_size=4, verbose=0)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    np.testing.assert_array_equal(got["both"], np.concatenate([expected["scores"],
                                                               expected["value"]], axis=1))


def test_quantized_io_dequantize_false_and_int_passthrough():
    data = fm.multi_io("full-int8")
    rng = np.random.default_rng(5)
    feeds = {"extra": rng.uniform(0, 1, (3, 4)).astype(np.float32),
             "image": rng.uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)}

    floats = TFLiteLayer(data)(feeds)
    expected = interpreter_predict(data, feeds)
    for k in expected:
        assert floats[k].dtype == "float32"
        np.testing.assert_array_equal(floats[k].numpy(), expected[k])

    raw_layer = TFLiteLayer(data, dequantize=False)
    raw = raw_layer(feeds)
    raw_expected = interpreter_predict(data, feeds, dequantize=False)
    for k in raw_expected:
        assert raw[k].dtype == "int8"
        np.testing.assert_array_equal(raw[k].numpy(), raw_expected[k])

    # Integer tensors of the input's own dtype are taken as already quantized.
    runner_spec = raw_layer.runner().signature(raw_layer.signature_key)
    q = {s.name: s.quantize(feeds[s.name]) for s in runner_spec.inputs}
    again = TFLiteLayer(data)(q)
    for k in expected:
        np.testing.assert_array_equal(again[k].numpy(), expected[k])


def test_signature_key_and_stateful_model():
    data = fm.multi_signature()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(TFLiteLayer(data, signature_key="double")(x).numpy(), x * 2)
    np.testing.assert_array_equal(TFLiteLayer(data, signature_key="affine")(x).numpy(),
                                  x * 3 + 1)

    # Stateful: each call starts from the initial state and feeds its rows in order.
    layer = TFLiteLayer(fm.stateful_accumulator())
    rows = np.ones((3, 3), np.float32)
    np.testing.assert_array_equal(layer(rows).numpy(), np.cumsum(rows, axis=0))
    np.testing.assert_array_equal(layer(rows).numpy(), np.cumsum(rows, axis=0))


# ---- threads ------------------------------------------------------------------------------------

def test_concurrent_predicts_from_8_threads():
    data = mobilenet("float32")
    model, layer = backbone_with_head(data)
    batches = [images(2, seed=100 + i) for i in range(8)]
    serve = tf.function(lambda t: model(t, training=False))
    expected = [serve(tf.constant(b)).numpy() for b in batches]  # traced once, serially

    errors, results = [], {}
    barrier = threading.Barrier(8)

    def work(i):
        try:
            barrier.wait()
            results[i] = [serve(tf.constant(batches[i])).numpy() for _ in range(3)]
            results[i].append(layer(batches[i]).numpy())  # eager calls share the pool too
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(8):
        for got in results[i][:3]:
            np.testing.assert_array_equal(got, expected[i])
        np.testing.assert_array_equal(
            results[i][3], only(interpreter_predict(data, {layer.input_names[0]: batches[i]})))


# ---- serialization ------------------------------------------------------------------------------

def test_keras_round_trip_in_fresh_process(tmp_path):
    data = mobilenet("full-int8")
    source = tmp_path / "backbone.tflite"
    source.write_bytes(data)
    model, layer = backbone_with_head(str(source), seed=1)
    x = images(5, seed=6)
    expected = model.predict(x, verbose=0)

    path = tmp_path / "model.keras"
    model.save(path)
    source.unlink()  # the .keras file must be self-contained

    with zipfile.ZipFile(path) as z:
        config = z.read("config.json").decode()
        assets = [n for n in z.namelist() if n.startswith("assets/")]
    assert str(tmp_path) not in config and "backbone.tflite" not in config
    layer_config = next(lc for lc in json.loads(config)["config"]["layers"]
                        if lc["class_name"] == "TFLiteLayer")
    assert layer_config["config"]["model_sha256"] == layer.model_sha256
    assert layer_config["config"]["signature_key"] == "serving_default"
    assert any(n.endswith("model.tflite") for n in assets), assets

    np.save(tmp_path / "x.npy", x)
    script = f"""
import numpy as np
import mlflow  # its entry point registers this package's Keras layers when keras is imported
import keras
model = keras.saving.load_model({str(path)!r}, safe_mode=True)
layer = model.get_layer("backbone")
assert type(layer).__name__ == "TFLiteLayer" and layer.trainable_weights == []
np.save({str(tmp_path / "y.npy")!r}, model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0))
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_from_config_uses_live_bytes_or_fails_clearly():
    data = fm.cnn("float32")
    layer = TFLiteLayer(data)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, layer(inputs))
    x = fm.digits()[0][:3]
    clone = keras.models.clone_model(model)  # from_config: bytes found by sha256 in-process
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))

    config = {**layer.get_config(), "model_sha256": "0" * 64, "name": "orphan"}
    orphan = TFLiteLayer.from_config(config)
    assert orphan.compute_output_shape((None, 8, 8, 1)) == (None, 10)
    with pytest.raises(ValueError, match="assets were not loaded"):
        orphan(x)
    with pytest.raises(ValueError, match="expects"):
        layer(np.zeros((2, 9, 9, 1), np.float32))
