"""The structural validation pass: every subgraph reference in either options union (and a
custom op's options) and every other index is checked before LiteRT sees the bytes.

The hostile files are written here with the schema's object API (``hostile_models``)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import hostile_models as hm
import mlflow
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers
from mlflow.exceptions import MlflowException
from mlflow_tflite_keras import flavor
from mlflow_tflite_keras.tflite_model import TFLiteModel


def refused(data, match):
    with pytest.raises(MlflowException, match=match) as e:
        TFLiteModel(data)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    return e.value


def test_composite_cycle_behind_a_decoy_is_refused():
    data = hm.composite_cycle(decoy=True)
    assert len(data) < 1024
    refused(data, r"cycle: 1 -> 1")
    refused(hm.composite_cycle(decoy=False), r"cycle: 1 -> 1")


def test_composite_cycle_refused_by_every_entry_point(tmp_path):
    data = hm.composite_cycle()
    # save_model: refused, nothing written.
    target = tmp_path / "saved"
    with pytest.raises(MlflowException, match="cycle"):
        flavor.save_model(data, target)
    assert not target.exists()
    # log_model: the run ends FAILED and no logged model is left PENDING.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.set_experiment("hostile")
    with pytest.raises(MlflowException, match="cycle"):
        with mlflow.start_run() as run:
            flavor.log_model(data, name="model")
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert [m.status for m in client.search_logged_models([experiment.experiment_id])] == []
    # pyfunc and load_model of a saved model whose model.tflite was replaced.
    good = hm.op_chain(2, "ABS", shape=(1,))
    flavor.save_model(good, tmp_path / "replaced")
    (tmp_path / "replaced" / "model.tflite").write_bytes(data)
    with pytest.raises(MlflowException, match="cycle"):
        mlflow.pyfunc.load_model(str(tmp_path / "replaced"))
    with pytest.raises(MlflowException, match="cycle"):
        flavor.load_model(str(tmp_path / "replaced"))


def test_composite_cycle_inside_a_keras_file_is_refused(tmp_path):
    """A ``.keras`` file whose TFLiteLayer asset (and recorded sha256) was swapped for the
    hostile bytes fails to load with safe_mode=True, in a fresh process that must not crash."""
    import hashlib

    import keras

    from mlflow_tflite_keras.tflite_layer import TFLiteLayer

    good = hm.op_chain(2, "ABS", shape=(1, 4))
    inputs = keras.Input((4,), batch_size=1)
    model = keras.Model(inputs, TFLiteLayer(good, name="backbone")(inputs))
    path = tmp_path / "good.keras"
    model.save(path)
    hostile = hm.composite_cycle()
    bad_path = tmp_path / "hostile.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad_path, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename.endswith("model.tflite"):
                content = hostile
            elif item.filename == "config.json":
                content = content.replace(hashlib.sha256(good).hexdigest().encode(),
                                          hashlib.sha256(hostile).hexdigest().encode())
            dst.writestr(item, content)
    script = f"""
import mlflow, keras
try:
    keras.saving.load_model({str(bad_path)!r}, safe_mode=True)
except Exception as e:
    print("REFUSED", type(e).__name__, e)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and "cycle" in proc.stdout, proc.stdout[-2000:]


def _flexbuffer(mapping) -> np.ndarray:
    return np.frombuffer(flexbuffers.Dumps(mapping), np.uint8)


def _stablehlo_while(cond, body):
    options = schema.StablehloWhileOptionsT()
    options.condSubgraphIndex, options.bodySubgraphIndex = cond, body
    return options


def _case(*branches):
    options = schema.StablehloCaseOptionsT()
    options.branchSubgraphIndices = np.asarray(branches, np.int32)
    return options


def _composite(index):
    options = schema.StableHLOCompositeOptionsT()
    options.name, options.decompositionSubgraphIndex = "c", index
    return options


def _model_with(change):
    m = schema.ModelT.InitFromPackedBuf(bytearray(hm.op_chain(2, "ABS", shape=(1,))), 0)
    change(m)
    return hm.pack(m)


def _custom_op_naming(index):
    def change(m):
        code = schema.OperatorCodeT()
        code.builtinCode, code.customCode, code.version = 32, "MyCaller", 1
        m.operatorCodes.append(code)
        op = m.subgraphs[0].operators[1]
        op.opcodeIndex = len(m.operatorCodes) - 1
        op.customOptions = _flexbuffer({"then_subgraph_index": index, "alpha": 2})
    return change


def _set_op(**values):
    def change(m):
        for k, v in values.items():
            setattr(m.subgraphs[0].operators[0], k, v)
    return change


def _buffer_past_end(m):
    buf = schema.BufferT()
    buf.offset, buf.size = 10 ** 9, 16
    m.buffers.append(buf)


def _string_constant(data: bytes) -> bytes:
    string = schema.TensorType.STRING
    x, y = hm.tensor("x", [2], type_=string), hm.tensor("y", [4], type_=string)
    c = hm.tensor("c", [2], buffer=1, type_=string)
    m = hm.model([hm.opcode("CONCATENATION")], [hm.subgraph("main", [x, c, y], [hm.operator(
        0, [0, 1], [2], schema.ConcatenationOptionsT(),
        schema.BuiltinOptions.ConcatenationOptions)], [0], [2])], n_buffers=2)
    m.buffers[1].data = np.frombuffer(data, np.uint8)
    return hm.pack(m)


def _string_table(strings, offsets=None) -> bytes:
    n = len(strings)
    if offsets is None:
        offsets = [4 * (n + 2)]
        for s in strings:
            offsets.append(offsets[-1] + len(s))
    return np.asarray([n, *offsets], np.int32).tobytes() + b"".join(strings)


def test_valid_string_constant_passes():
    TFLiteModel(_string_constant(_string_table([b"ab", b"c"])))


CASES = {
    # STRING constants: LiteRT follows their offset table unchecked.
    "string-offsets": (_string_constant(_string_table([b"ab", b"c"], [16, 1000, 1001])),
                       "string offsets outside"),
    "string-count": (_string_constant(_string_table([b"ab"])), "holds 1 strings"),
    # Subgraph references in builtin_options_2 (StableHLO ops): range and cycles.
    "stablehlo-while-out-of-range": (
        hm.options2_reference(_stablehlo_while(1, 5), "StablehloWhileOptions",
                              "STABLEHLO_WHILE"), "names subgraph 5"),
    "stablehlo-while-self": (
        hm.options2_reference(_stablehlo_while(1, 0), "StablehloWhileOptions",
                              "STABLEHLO_WHILE"), "cycle: 0 -> 0"),
    "stablehlo-case-branch": (
        hm.options2_reference(_case(1, -3), "StablehloCaseOptions", "STABLEHLO_CASE", 2),
        "names subgraph -3"),
    "composite-out-of-range": (
        hm.options2_reference(_composite(2 ** 31 - 1), "StableHLOCompositeOptions",
                              "STABLEHLO_COMPOSITE"), "names subgraph 2147483647"),
    "options2-of-another-op": (
        hm.options2_reference(_stablehlo_while(1, 1), "StablehloWhileOptions", "ABS"),
        "carries the options of STABLEHLO_WHILE"),
    # A custom op naming a subgraph in its flexbuffer options.
    "custom-op-subgraph": (_model_with(_custom_op_naming(9)), "names subgraph 9"),
    # Other indices the interpreter follows.
    "intermediates": (_model_with(_set_op(intermediates=np.asarray([7], np.int32))),
                      "intermediates names tensor 7"),
    "large-custom-options": (
        _model_with(_set_op(largeCustomOptionsOffset=10 ** 9, largeCustomOptionsSize=8)),
        "custom options past the end"),
    "buffer-past-end": (_model_with(_buffer_past_end), "Buffer 1 points past the end"),
    "metadata-buffer": (
        _model_with(lambda m: setattr(m, "metadataBuffer", np.asarray([3], np.int32))),
        "metadata_buffer names buffer 3"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_structural_pass_refuses(name):
    data, match = CASES[name]
    refused(data, match)


def test_valid_references_still_pass():
    model = TFLiteModel(hm.options2_reference(_stablehlo_while(1, 1), "StablehloWhileOptions",
                                              "STABLEHLO_WHILE"))
    assert model.main.operators[0].called_subgraphs == [1, 1]


def test_custom_op_naming_its_own_subgraph_is_a_cycle():
    refused(_model_with(_custom_op_naming(0)), "cycle: 0 -> 0")


def test_composite_reference_is_followed_and_recorded():
    model = TFLiteModel(hm.options2_reference(_composite(1), "StableHLOCompositeOptions",
                                              "STABLEHLO_COMPOSITE"))
    op = model.main.operators[0]
    assert op.called_subgraphs == [1]
    assert isinstance(op.options, schema.StableHLOCompositeOptionsT)


def test_call_once_chain_1500_deep_is_accepted_and_runs(tmp_path):
    """Validation is iterative: a chain LiteRT runs is not refused for Python's stack."""
    data = hm.call_once_chain(1500)
    model = TFLiteModel(data)
    assert len(model.subgraphs) == 1501
    flavor.save_model(data, tmp_path / "deep")
    x = -np.arange(4, dtype=np.float32).reshape(1, 4)
    out = mlflow.pyfunc.load_model(str(tmp_path / "deep")).predict(x)
    np.testing.assert_array_equal(np.asarray(out).reshape(1, 4), np.abs(x))


def test_long_cycle_is_reported_with_its_path():
    m = schema.ModelT.InitFromPackedBuf(bytearray(hm.call_once_chain(2000)), 0)
    last = m.subgraphs[-1]
    init = schema.CallOnceOptionsT()
    init.initSubgraphIndex = 1000
    last.operators = [hm.operator(0, [], [], init, schema.BuiltinOptions.CallOnceOptions)]
    error = refused(hm.pack(m), "cycle: 1000 -> 1001")
    assert str(error).rstrip(".").endswith("2000 -> 1000")
