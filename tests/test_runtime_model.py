"""The pyfunc's runtime reads only what it needs of a saved ``.tflite`` (RuntimeModel): the
same signature specs and flags as the fully parsed TFLiteModel, and a full parse for anything
unexpected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

import flavor_models as fm
import hostile_models as hm
from mlflow_tflite_keras import flavor
from mlflow_tflite_keras.runtime import RuntimeModel, SignatureSpec
from mlflow_tflite_keras.tflite_model import TFLiteModel


def _spec_facts(spec: SignatureSpec):
    def tensor(t):
        q = t.quantization
        return (*dataclasses.astuple(dataclasses.replace(t, quantization=None)),
                None if q is None else (q.scale.tolist(), q.zero_point.tolist(),
                                        q.quantized_dimension))
    return (spec.key, spec.subgraph_index, [tensor(t) for t in spec.inputs],
            [tensor(t) for t in spec.outputs], spec.batched, spec.resizable_batch,
            spec.stateful, spec.reset_variables, spec.fast_input)


@pytest.mark.parametrize("make", [
    fm.cnn, lambda: fm.cnn("full-int8"), fm.multi_io, fm.multi_signature, fm.tabular,
    fm.fixed_batch_cnn, fm.stateful_accumulator, lambda: hm.op_chain(3), hm.string_tile,
], ids=["cnn", "int8", "multi_io", "multi_signature", "tabular", "fixed_batch", "stateful",
        "no_signature_def", "strings"])
def test_runtime_model_reads_the_same_specs_as_the_full_parse(make, tmp_path):
    data = make()
    full = TFLiteModel(data)
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    for lazy in (RuntimeModel(data), RuntimeModel(path=str(path))):
        assert lazy._full is None  # read lazily, not parsed whole
        assert [s.key for s in lazy.signatures] == [s.key for s in full.signatures]
        for key in [s.key for s in full.signatures] or [None]:
            assert _spec_facts(SignatureSpec(lazy, key)) == _spec_facts(SignatureSpec(full, key))
        assert (lazy.is_stateful, lazy.has_variable_tensors) == \
            (full.is_stateful, full.has_variable_tensors)
        assert lazy.model_bytes == data


def test_runtime_model_defers_to_the_full_parse(tmp_path):
    with pytest.raises(MlflowException, match="too short"):
        RuntimeModel(b"TFL3")
    with pytest.raises(MlflowException, match="Unknown signature_key"):
        RuntimeModel(fm.multi_signature()).signature("nope")


def test_damaged_artifact_is_a_clear_error(tmp_path):
    flavor.save_model(fm.cnn(), tmp_path / "m")
    loaded = flavor.load_model(str(tmp_path / "m"))
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
    # The lazy path answers as the fully validated one, and parses the file when asked.
    np.testing.assert_array_equal(loaded.predict(x), flavor.LoadedTFLiteModel(fm.cnn()).predict(x))
    assert loaded.model.sha256 == TFLiteModel(fm.cnn()).sha256
    data = (tmp_path / "m" / "model.tflite").read_bytes()
    (tmp_path / "m" / "model.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(MlflowException, match="damaged or replaced"):
        flavor.load_model(str(tmp_path / "m"))


def test_a_model_loaded_into_a_directory_that_is_gone_still_answers(tmp_path):
    """The runtime maps the saved file lazily; a model loaded into a temporary directory
    (``dst_path``) still parses, predicts and makes new interpreters after it is removed."""
    import shutil

    import mlflow

    data, (x, _) = fm.cnn(), fm.digits()
    mlflow.tflite_keras.save_model(data, tmp_path / "saved")
    local = tmp_path / "download"
    local.mkdir()
    loaded = mlflow.tflite_keras.load_model(str(tmp_path / "saved"), dst_path=str(local))
    expected = loaded.predict(x[:4])
    shutil.rmtree(local)
    shutil.rmtree(tmp_path / "saved")
    assert loaded.model.sha256 == TFLiteModel(data).sha256
    np.testing.assert_array_equal(loaded.predict(x[:4]), expected)
    interpreter = loaded.interpreter()  # a new one, from the mapping
    assert interpreter.get_signature_list()
