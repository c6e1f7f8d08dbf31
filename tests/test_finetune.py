"""Round trip: fine-tune a registered Keras version and export a .tflite with the source's
recipe and interface; the registry shows the whole lineage chain."""

from __future__ import annotations

import os

import numpy as np
import pytest

import flavor_models as fm
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage
from mlflow_tflite_keras.finetune import finetune, load_training_data
from mlflow_tflite_keras.tflite_model import TFLiteModel


@pytest.fixture
def registered(tmp_path):
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(tmp_path / ".mlflow")
    mlflow.set_experiment(experiment_id=experiment("finetune"))
    x, y = fm.digits()
    with mlflow.start_run():
        mlflow.tflite_keras.log_model(fm.cnn("full-int8"), name="model", input_example=x[:4],
                                      registered_model_name="digits")
    version = lineage.register_keras_version("models:/digits/1", parity_inputs=x[:64])
    yield x, y, version
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_finetune_registers_keras_and_tflite_with_chain(registered):
    x, y, keras_version = registered
    result = finetune(f"models:/digits/{keras_version.version}", (x[:300], y[:300]),
                      epochs=3, learning_rate=1e-3)
    client = MlflowClient()
    k, t = result.keras_version, result.tflite_version
    assert (str(k.version), str(t.version)) == ("3", "4")
    assert k.tags[lineage.ROLE] == "finetuned-keras" and t.tags[lineage.ROLE] == "exported-tflite"
    assert k.tags[lineage.PARENT] == "digits/2" and t.tags[lineage.PARENT] == "digits/3"
    assert t.tags[lineage.CHAIN] == "digits/1 -> digits/2 -> digits/3 -> digits/4"
    # Same recipe and interface as the source.
    source = TFLiteModel(mlflow.tflite_keras.load_model("models:/digits/1").model_bytes)
    new = TFLiteModel(mlflow.tflite_keras.load_model("models:/digits/4").model_bytes)
    assert new.quantization_kind == source.quantization_kind == "full-int8"
    assert result.interface.ok, str(result.interface)
    assert [(t.type_name, t.shape_signature) for t in (new.main.tensors[i] for i in new.main.inputs)] \
        == [(t.type_name, t.shape_signature) for t in (source.main.tensors[i] for i in source.main.inputs)]
    # The training run: per-epoch metrics and the export parity.
    run = client.get_run(result.run_id)
    assert len(client.get_metric_history(result.run_id, "loss")) == 3
    assert run.data.metrics["export_parity_passed"] == 1.0
    assert run.data.params["epochs"] == "3"
    assert len(result.history["loss"]) == 3


def test_export_refuses_changed_interface(registered):
    """A Keras model whose output size changed cannot ship as the source's drop-in."""
    x, y, keras_version = registered
    before = len(MlflowClient().search_model_versions("name = 'digits'"))
    import keras

    from mlflow_tflite_keras.export import export_tflite

    model = mlflow.keras.load_model(f"models:/digits/{keras_version.version}")
    head = keras.layers.Dense(3)(model.layers[-2].output)
    changed = keras.Model(model.inputs, head)
    with pytest.raises(MlflowException, match=r"shape.*\[-1, 10\].*\[-1, 3\]"):
        export_tflite(changed, like=mlflow.tflite_keras.load_model("models:/digits/1").model_bytes,
                      representative_data=x[:50])
    assert len(MlflowClient().search_model_versions("name = 'digits'")) == before


def test_training_data_files(tmp_path):
    x, y = fm.digits()
    np.savez(tmp_path / "d.npz", x=x[:10], y=y[:10])
    got_x, got_y = load_training_data(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(got_x, x[:10])
    import pandas as pd

    frame = pd.DataFrame(x[:10].reshape(10, -1), columns=[f"p{i}" for i in range(64)])
    frame["label"] = y[:10]
    frame.to_csv(tmp_path / "d.csv", index=False)
    got_x, got_y = load_training_data(str(tmp_path / "d.csv"), target="label",
                                      input_shape=(8, 8, 1))
    np.testing.assert_allclose(got_x, x[:10], rtol=1e-6)
    np.testing.assert_array_equal(got_y, y[:10])
    with pytest.raises(MlflowException, match="lacks array"):
        np.savez(tmp_path / "bad.npz", a=x[:2])
        load_training_data(str(tmp_path / "bad.npz"))
