"""The public API: one lazy namespace, reachable as `mlflow_tflite_keras` and
`mlflow.tflite_keras`, and keyword typos refused like Python refuses them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import flavor_models as fm
import mlflow
from servers import clean_env

PUBLIC = {
    # the flavor
    "FLAVOR_NAME", "save_model", "log_model", "load_model", "LoadedTFLiteModel",
    "get_default_pip_requirements", "get_default_conda_env", "TFLiteModel",
    # back to Keras
    "to_keras", "convert", "supported_operators", "supported_custom_operators",
    "check_parity", "check_ops", "check_compiled", "locate_divergence", "TFLiteLayer",
    # registry and round trip
    "register_keras_version", "finetune", "export_tflite", "keras_to_tflite",
    "compare_interfaces",
    # errors
    "UnsupportedOperatorsError", "InterfaceChangedError", "ParityCheckError",
}
# Resolving these must not import TensorFlow or Keras.
LIGHT = {"FLAVOR_NAME", "save_model", "log_model", "load_model", "LoadedTFLiteModel",
         "get_default_pip_requirements", "get_default_conda_env", "TFLiteModel",
         "register_keras_version", "UnsupportedOperatorsError", "InterfaceChangedError",
         "ParityCheckError"}


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_public_name_from_both_namespaces_lazily():
    out = _run_python(f"""
import inspect, sys
import mlflow
import mlflow_tflite_keras
import mlflow.tflite_keras as flavor
from mlflow.exceptions import MlflowException

assert flavor is mlflow_tflite_keras is mlflow.tflite_keras
assert sorted(mlflow_tflite_keras.__all__) == sorted({sorted(PUBLIC)!r})
stray = [n for n in dir(flavor) if not n.startswith("__")]
assert sorted(stray) == sorted(flavor.__all__), sorted(set(stray) - set(flavor.__all__))

heavy = ("tensorflow", "keras")
for name in {sorted(LIGHT)!r}:
    exec(f"from mlflow.tflite_keras import {{name}}")
    exec(f"from mlflow_tflite_keras import {{name}}")
    assert not [m for m in heavy if m in sys.modules], (name, "imported TensorFlow/Keras")
for name in flavor.__all__:
    value = getattr(flavor, name)
    assert getattr(mlflow_tflite_keras, name) is value
    exec(f"from mlflow.tflite_keras import {{name}} as a; from mlflow_tflite_keras import {{name}} as b; assert a is b is value")
    if name != "FLAVOR_NAME":
        assert inspect.getdoc(value), f"{{name}} has no docstring"
for error in ("UnsupportedOperatorsError", "InterfaceChangedError", "ParityCheckError"):
    assert issubclass(getattr(flavor, error), MlflowException)
# `finetune` stays the function even once its module is imported by its own name.
import mlflow_tflite_keras.finetune
from mlflow_tflite_keras.finetune import FinetuneResult
assert inspect.isfunction(flavor.finetune) and flavor.finetune.__name__ == "finetune"
print("ok")
""")
    assert out.strip() == "ok"


def test_import_mlflow_imports_no_tensorflow():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mlflow"],
                            capture_output=True, text=True, timeout=120, env=clean_env())
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:")}
    assert "mlflow_tflite_keras._mlflow_plugin" in modules
    assert not {m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")}


def test_keyword_typo_is_a_type_error_naming_the_right_one(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(fm.cnn("float32"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'db.sqlite'}")
    experiment = mlflow.set_experiment("typo")  # not an id left active by another test
    try:
        with pytest.raises(TypeError, match=r"'registred_model_name' \(did you mean "
                                            r"'registered_model_name'\?\)"):
            mlflow.tflite_keras.log_model(str(path), name="m", registred_model_name="x")
        # Refused before anything was logged: no run, no logged model, no registered model.
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
        assert mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                           output_format="list") == []
        assert mlflow.search_registered_models() == []
        with pytest.raises(TypeError, match="did you mean 'input_example'"):
            mlflow.tflite_keras.save_model(str(path), tmp_path / "saved", input_exmple=None)
        assert not (tmp_path / "saved").exists()
        with pytest.raises(TypeError, match="did you mean 'min_cosine'"):
            mlflow.tflite_keras.check_parity(str(path), None, min_cosin=0.9)
        # Model.log's own keywords still pass through.
        with mlflow.start_run() as run:
            info = mlflow.tflite_keras.log_model(str(path), name="m", run_id=run.info.run_id)
        assert mlflow.pyfunc.load_model(info.model_uri).predict(fm.images(2)).shape == (2, 10)
    finally:
        mlflow.set_tracking_uri(None)


def test_parity_failure_is_a_parity_check_error():
    from mlflow_tflite_keras import ParityCheckError, check_parity, to_keras

    data = fm.cnn("float32")
    model = to_keras(data)
    layer = next(layer for layer in model.layers if layer.get_weights())
    layer.set_weights([w * 1.05 for w in layer.get_weights()])  # a kernel perturbed 5%
    report = check_parity(data, model, fm.images(8))
    assert not report.passed
    error = ParityCheckError(report)
    assert "Parity check failed" in error.message and error.report is report
    assert np.isfinite(report.metrics()["parity_cosine"])
