"""Deep graphs: op chains of thousands of ops and CALL_ONCE chains thousands of subgraphs deep
convert (Keras' recursive graph mapping gets a deep-stack thread), agree with ``inspect``, and
compute what LiteRT computes. The models are written with the schema's object API."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import hostile_models as hm
from ai_edge_litert.interpreter import Interpreter
from mlflow_tflite_keras.cli import cli
from mlflow_tflite_keras.converter import convert, to_keras
from mlflow_tflite_keras.converter.deep import DEEP_OPS, run_deep
from mlflow_tflite_keras.converter.parity import check_parity


def litert(data: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_3000_op_chain_converts_and_matches_litert():
    data = hm.op_chain(3000, "TANH")
    limit = sys.getrecursionlimit()
    result = convert(data)
    assert sys.getrecursionlimit() == limit  # raised only while building
    assert sum(len(v) for v in result.report.layers.values()) >= 3000
    x = np.random.default_rng(0).normal(0, 3, (1, 4)).astype(np.float32)
    expected = litert(data, x)
    np.testing.assert_allclose(np.asarray(result.model(x)), expected, rtol=1e-5, atol=1e-6)
    # A wrong answer is noticed: the same chain one op shorter differs.
    shorter = litert(hm.op_chain(2999, "TANH"), x)
    assert not np.allclose(shorter, expected, rtol=1e-5, atol=1e-6)
    report = check_parity(data, result.model, x)
    assert report.passed, str(report)


def test_inspect_and_to_keras_agree_on_a_deep_chain(tmp_path):
    path = tmp_path / "deep.tflite"
    path.write_bytes(hm.op_chain(1500, "RELU"))
    result = CliRunner().invoke(cli, ["inspect", "--json", str(path)])
    assert result.exit_code == 0, result.output[-2000:]
    assert "Traceback" not in result.output
    assert "RELU" in result.output
    model = to_keras(str(path))
    x = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(np.asarray(model(x)), np.maximum(x, 0))


def test_call_once_chain_1500_deep_converts():
    data = hm.call_once_chain(1500)
    x = -np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(litert(data, x), np.abs(x))  # LiteRT runs it
    model = to_keras(data)
    np.testing.assert_array_equal(np.asarray(model(x)), np.abs(x))


def test_run_deep_is_scoped_and_reraises():
    assert run_deep(lambda: threading.current_thread().name, 1) == \
        threading.current_thread().name  # shallow: the calling thread

    def recurse(n):
        return 0 if n == 0 else 1 + recurse(n - 1)

    limit = sys.getrecursionlimit()
    assert run_deep(recurse, 20_000, 20_000) == 20_000
    assert sys.getrecursionlimit() == limit
    with pytest.raises(ZeroDivisionError):
        run_deep(lambda: 1 / 0, DEEP_OPS * 2)
    assert sys.getrecursionlimit() == limit


@pytest.mark.slow
def test_cli_convert_registers_a_deep_chain(tmp_path):
    """``mlflow-tflite-keras convert`` on a 1200-op chain: registered, no traceback."""
    import subprocess

    from servers import clean_env

    cli_path = str(Path(sys.executable).with_name("mlflow-tflite-keras"))
    path = tmp_path / "deep.tflite"
    path.write_bytes(hm.op_chain(1200, "TANH"))
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for args in (["log", str(path), "--registered-model-name", "deep"],
                 ["convert", "models:/deep/1"]):
        proc = subprocess.run([cli_path, *args], capture_output=True, text=True, env=env,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        version = mlflow.MlflowClient().get_model_version("deep", "2")
        assert version.tags["tflite_keras.parity_passed"] == "1"
    finally:
        mlflow.set_tracking_uri(None)
