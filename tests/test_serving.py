"""`mlflow models serve` as a real process answers like the pyfunc, and survives bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

import flavor_models as fm
import mlflow
from mlflow_tflite_keras import flavor
from servers import model_server


def invoke(base, payload, content_type="application/json"):
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return requests.post(base + "/invocations", data=body,
                         headers={"Content-Type": content_type}, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two models behind two real servers: full-int8 CNN and a multi-output float model."""
    root = tmp_path_factory.mktemp("serve")
    flavor.save_model(fm.cnn("full-int8"), root / "cnn")
    flavor.save_model(fm.multi_io(), root / "multi")
    with model_server(str(root / "cnn"), root / "cnn.log") as cnn_url, \
            model_server(str(root / "multi"), root / "multi.log") as multi_url:
        yield {"cnn": (cnn_url, root / "cnn"), "multi": (multi_url, root / "multi")}


def test_served_predictions_equal_pyfunc(served):
    url, path = served["cnn"]
    x = fm.digits()[0][:5]
    response = invoke(url, {"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(got, mlflow.pyfunc.load_model(str(path)).predict(x))
    # The tensor-column ("instances") format is accepted as well.
    response = invoke(url, {"instances": x[:2].tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(np.asarray(response.json()["predictions"], np.float32),
                                  got[:2])


def test_served_multi_output(served):
    url, path = served["multi"]
    rng = np.random.default_rng(0)
    feeds = {"image": rng.uniform(0, 1, (3, 8, 8, 1)).astype(np.float32),
             "extra": rng.uniform(0, 1, (3, 4)).astype(np.float32)}
    response = invoke(url, {"inputs": {k: v.tolist() for k, v in feeds.items()}})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = mlflow.pyfunc.load_model(str(path)).predict(feeds)
    for name in ("scores", "value"):
        np.testing.assert_allclose(np.asarray(predictions[name], np.float32), expected[name],
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("payload, content_type", [
    ('{"inputs": [[1, 2', "application/json"),                      # malformed JSON
    ({"inputs": [[0.0] * 8] * 8}, "application/json"),              # wrong rank
    ({"inputs": np.zeros((1, 8, 7, 1)).tolist()}, "application/json"),  # wrong shape
    ({"inputs": [[[["a"]] * 8] * 8]}, "application/json"),          # wrong dtype
    ({"wrong_key": [1]}, "application/json"),                       # no inputs field
    ("a,b\n1,2", "text/plain"),                                     # wrong content type
])
def test_bad_requests_get_4xx_and_server_keeps_serving(served, payload, content_type):
    url, _ = served["cnn"]
    response = invoke(url, payload, content_type)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    # A readable reason: MLflow answers JSON {"message": ...}, or plain text for 415.
    reason = response.json().get("message") if response.headers.get(
        "Content-Type", "").startswith("application/json") else response.text
    assert reason and len(reason) > 10, response.text
    ok = invoke(url, {"inputs": fm.digits()[0][:1].tolist()})
    assert ok.status_code == 200


def test_multi_input_missing_input_is_4xx(served):
    url, _ = served["multi"]
    response = invoke(url, {"inputs": {"image": np.zeros((1, 8, 8, 1)).tolist()}})
    assert 400 <= response.status_code < 500, response.text
    assert "extra" in response.json()["message"]
