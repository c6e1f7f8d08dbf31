"""A ``.keras`` file whose KerasOp config declares constants other than its weights file
holds is refused before anything of the declared size is allocated."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import hostile_models as hm
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.layers import KerasOp


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    values = np.linspace(-1, 1, 8, dtype=np.float32)
    model = to_keras(hm.add_constant(values))
    path = tmp_path_factory.mktemp("keras-op") / "model.keras"
    model.save(path)
    return path, values


def test_round_trip_loads_the_constants_from_the_weights_file(saved):
    path, values = saved
    model = keras.saving.load_model(path, safe_mode=True)
    layer = next(layer for layer in model.layers if isinstance(layer, KerasOp))
    assert [w.shape for w in layer.constant_weights] == [(1, 8)]
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    np.testing.assert_allclose(np.asarray(model(x)), x + values, rtol=1e-6)
    # A wrong constant is noticed.
    assert not np.allclose(np.asarray(model(x)), x + values * 1.05, rtol=1e-6)
    # Saved again, it round-trips again.
    model.save(path.with_name("again.keras"))
    again = keras.saving.load_model(path.with_name("again.keras"), safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(x)), x + values, rtol=1e-6)


def tampered(path, tmp_path, change):
    out = tmp_path / "tampered.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(content)
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "KerasOp" and layer["config"]["constants"]:
                        change(layer["config"]["constants"])
                content = json.dumps(config).encode()
            dst.writestr(item, content)
    return out


@pytest.mark.parametrize("shape, message", [
    # Broadcasts with the input: refused by the check against the weights file.
    ([60000, 60000, 8], "weights file stores [1, 8]"),
    # Does not: refused while Keras infers the output shape (symbolically, nothing sized).
    ([60000, 60000], "[60000,60000]"),
])
def test_declared_huge_constant_is_refused_without_allocating(saved, tmp_path, shape,
                                                              message):
    path, _ = saved
    bad = tampered(path, tmp_path, lambda c: c["1"].update(shape=shape))
    script = f"""
import keras
import mlflow_tflite_keras.converter
def high_water_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
before = high_water_kb()
try:
    keras.saving.load_model({str(bad)!r}, safe_mode=True)
    print("LOADED")
except Exception as e:
    print("REFUSED", type(e).__name__, str(e)[:500].replace(chr(10), " "))
print("PEAK_KB", high_water_kb() - before)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED" in proc.stdout and message in proc.stdout, proc.stdout
    peak_kb = int(proc.stdout.split("PEAK_KB ")[1].split()[0])
    assert peak_kb < 1024 * 1024, proc.stdout  # the declared constant: 13.4 GiB or more


@pytest.mark.parametrize("spec, match", [
    ({"shape": [-5, 2], "dtype": "float32"}, "Invalid constant"),
    ({"shape": [1, 8], "dtype": "object"}, "Invalid constant"),
    ({"shape": "x", "dtype": "float32"}, "Invalid constant"),
    ({"shape": [1, 8], "dtype": "float64"}, "weights file stores"),
])
def test_inconsistent_declarations_are_clear_errors(saved, tmp_path, spec, match):
    path, _ = saved
    bad = tampered(path, tmp_path, lambda c: c.update({"1": spec}))
    with pytest.raises(Exception, match=match):
        keras.saving.load_model(bad, safe_mode=True)


def test_from_config_alone_cannot_be_called_eagerly():
    layer = KerasOp.from_config({"fn": "add", "constants": {"1": {"shape": [2],
                                                                   "dtype": "float32"}},
                                 "n_inputs": 1, "name": "lonely"})
    with pytest.raises(ValueError, match="constants are not loaded"):
        layer(np.ones(2, np.float32))


def test_loading_imports_the_layers_without_any_handler(saved, tmp_path):
    """The Keras loading hook imports ``converter.layers``: every layer and every KerasOp
    function of the package is registered, and no handler module (``converter.ops``) is
    imported, also while a saved reconstruction loads with ``safe_mode=True``."""
    path, values = saved
    # A KerasOp function of a handler family (REVERSE_SEQUENCE), saved with its constant.
    x_in = keras.Input((4, 2))
    lengths = np.array([3], np.int32)
    y = KerasOp("reverse_sequence", constants={1: lengths}, n_inputs=1,
                fn_kwargs={"seq_axis": 1, "batch_axis": 0})(x_in)
    reversing = tmp_path / "reverse.keras"
    keras.Model(x_in, y).save(reversing)
    script = f"""
import sys
import numpy as np
import keras
import mlflow_tflite_keras.converter.layers as layers

def handlers():
    return sorted(m for m in sys.modules if m.startswith("mlflow_tflite_keras.converter.ops"))

assert not handlers(), handlers()
for name in ("KerasOp", "WhileLoop", "IfElse", "PerExample", "RFFT2D", "ComplexPart",
             "ClippedLSTMCell", "LocalResponseNormalization", "DetectionPostProcess",
             "MaxUnpooling2D", "StreamingCell", "StreamingRNN", "TFLiteLayer"):
    assert keras.saving.get_registered_object("mlflow_tflite_keras>" + name), name
for fn in ("reverse_sequence", "unsorted_segment_reduce", "matrix_diag", "constant_like",
           "streaming_output", "resize_tflite"):
    assert fn in layers.EXTRA_OPS, fn
x = np.arange(8, dtype=np.float32).reshape(1, 8)
model = keras.saving.load_model({str(path)!r}, safe_mode=True)
np.testing.assert_allclose(np.asarray(model(x)), x + np.array({values.tolist()!r}, np.float32),
                           rtol=1e-6)
seq = np.arange(8, dtype=np.float32).reshape(1, 4, 2)
model = keras.saving.load_model({str(reversing)!r}, safe_mode=True)
np.testing.assert_array_equal(np.asarray(model(seq)), seq[:, [2, 1, 0, 3]])
assert not handlers(), handlers()
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout
