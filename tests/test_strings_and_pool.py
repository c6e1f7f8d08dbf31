"""STRING-tensor models through the pyfunc (and a clear refusal when LiteRT cannot run
them), error messages that never echo model bytes, and the bounded interpreter pool."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import requests

import hostile_models as hm
import mlflow
from mlflow.exceptions import MlflowException
from mlflow_tflite_keras import flavor
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel
from servers import model_server


def test_string_model_is_saved_and_predicts_through_the_pyfunc(tmp_path):
    flavor.save_model(hm.string_tile(), tmp_path / "m")
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    inputs = model.metadata.get_input_schema().inputs
    assert inputs[0].type == np.dtype(str) and inputs[0].shape == (-1, 2)
    out = model.predict(np.array([["a", "bb"], ["é", b"raw".decode()]]))
    np.testing.assert_array_equal(out, np.array([["a", "bb", "a", "bb"],
                                                 ["é", "raw", "é", "raw"]]))
    raw = flavor.load_model(str(tmp_path / "m")).predict(
        np.array([[b"\xff", b"x"]], dtype=object))  # bytes pass through the raw API
    assert raw[0, 2] == b"\xff"
    with pytest.raises(MlflowException, match="STRING tensor") as e:
        flavor.load_model(str(tmp_path / "m")).predict(np.ones((1, 2), np.float32))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_string_model_is_served(tmp_path):
    flavor.save_model(hm.string_tile(), tmp_path / "m")
    with model_server(str(tmp_path / "m"), tmp_path / "serve.log") as url:
        response = requests.post(url + "/invocations",
                                 data=json.dumps({"inputs": [["x", "y"], ["ü", "v"]]}),
                                 headers={"Content-Type": "application/json"}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == [["x", "y", "x", "y"], ["ü", "v", "ü", "v"]]
        bad = requests.post(url + "/invocations", data=json.dumps({"inputs": [["a", "b", "c"]]}),
                            headers={"Content-Type": "application/json"}, timeout=120)
        assert 400 <= bad.status_code < 500, bad.text  # wrong shape: a client error


def test_string_model_litert_refuses_is_a_clear_error_and_leaves_nothing(tmp_path):
    data = hm.string_unsupported()
    TFLiteModel(data)  # structurally valid
    with pytest.raises(MlflowException, match="STRING tensors and LiteRT cannot run it") as e:
        flavor.save_model(data, tmp_path / "m")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert not (tmp_path / "m").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        experiment = mlflow.set_experiment("strings")
        with pytest.raises(MlflowException, match="STRING"):
            with mlflow.start_run():
                flavor.log_model(data, name="model")
        assert mlflow.MlflowClient().search_logged_models([experiment.experiment_id]) == []
    finally:
        mlflow.set_tracking_uri(None)


def test_model_bytes_given_as_text_are_not_echoed(tmp_path):
    data = hm.op_chain(2, "ABS")
    text = data.decode("latin-1")
    for call in (lambda: flavor.save_model(text, tmp_path / "m"), lambda: TFLiteModel.load(text)):
        with pytest.raises(MlflowException) as e:
            call()
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
        assert len(e.value.message) < 300, e.value.message
        assert "TFL3" not in e.value.message and "\x00" not in e.value.message
        assert f"{len(text)} characters" in e.value.message


class CountingRunner(TFLiteRunner):
    """Counts the interpreters the real runner creates (around the real call)."""

    created = 0

    def new_interpreter(self, **options):
        type(self).created += 1
        return super().new_interpreter(**options)


def test_interpreter_pool_is_bounded_and_releases_idle_interpreters():
    model = TFLiteModel(hm.op_chain(50, "TANH"))
    assert TFLiteRunner(model).max_interpreters == (os.cpu_count() or 1)
    CountingRunner.created = 0
    runner = CountingRunner(model, max_interpreters=2, idle_seconds=0.2)
    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    expected = runner.predict(x)["t50"]
    inside, peak, errors = [0], [0], []
    lock = threading.Lock()
    real_run = runner._run

    def watched_run(*args, **kwargs):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            time.sleep(0.01)
            return real_run(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    runner._run = watched_run

    def client():
        try:
            for _ in range(10):
                np.testing.assert_array_equal(runner.predict(x)["t50"], expected)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert peak[0] == 2  # 16 concurrent clients, two interpreters at work
    assert CountingRunner.created <= 2
    assert runner.pooled_interpreters == 2
    time.sleep(0.3)
    runner.predict(x)
    assert runner.pooled_interpreters == 1  # the idle one was released
