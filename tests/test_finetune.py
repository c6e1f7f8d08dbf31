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
    assert len(result.history["loss"]) == 3 and "accuracy" in result.history


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


# ---- a two-head detector: dict targets, parity failure -----------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import roundtrip_models as rm  # noqa: E402

from mlflow_tflite_keras.finetune import ExportParityError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def detector_data(n=160):
    """Images and targets a little off the source's own outputs (so training has something
    to learn): dict by the source signature's output names."""
    from mlflow_tflite_keras.runtime import TFLiteRunner

    x = rm.inputs("detector", n, seed=7)
    runner = TFLiteRunner(TFLiteModel(rm.model("detector", "float32")))
    rows = [runner.predict({"input": x[i:i + 1]}) for i in range(n)]
    teacher = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    return x, {"regressors": teacher["regressors"] * 0.8 + 0.3,
               "classificators": teacher["classificators"] * 0.5 - 0.2}


@pytest.fixture
def detector(tmp_path):
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    home = tmp_path / ".mlflow"
    use_default_tracking(home)
    mlflow.set_experiment(experiment_id=experiment("finetune"))
    x, targets = detector_data()
    with mlflow.start_run():
        mlflow.tflite_keras.log_model(rm.model("detector", "float32"), name="model",
                                      input_example=x[:1], registered_model_name="detector")
    version = lineage.register_keras_version("models:/detector/1", parity_inputs=x[:16])
    yield x, targets, version, home
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def interface_of(model_bytes):
    model = TFLiteModel(model_bytes)
    sig = model.signature()
    sg = model.subgraphs[sig.subgraph_index]
    return [sig.key] + [[(n, sg.tensors[i].name, sg.tensors[i].type_name,
                          list(sg.tensors[i].shape_signature)) for n, i in side.items()]
                        for side in (sig.inputs, sig.outputs)] + \
        [[sg.tensors[i].name for i in sg.outputs]]


def test_finetune_detector_with_dict_targets(detector, capsys):
    x, targets, keras_version, _ = detector
    result = finetune(f"models:/detector/{keras_version.version}", (x, targets), epochs=4,
                      learning_rate=2e-3, batch_size=16)
    losses = result.history["loss"]
    assert losses[-1] < losses[0], losses
    assert set(result.history) >= {"regressors_loss", "classificators_loss"}
    out = capsys.readouterr().out
    assert "epoch 1/4: " in out and "epoch 4/4: " in out and "regressors_loss=" in out
    k, t = result.keras_version, result.tflite_version
    assert t.tags[lineage.CHAIN] == "detector/1 -> detector/2 -> detector/3 -> detector/4"
    assert k.tags[lineage.PARENT] == "detector/2" and t.tags[lineage.PARENT] == "detector/3"
    source = mlflow.tflite_keras.load_model("models:/detector/1").model_bytes
    new = mlflow.tflite_keras.load_model("models:/detector/4").model_bytes
    assert result.interface.ok, str(result.interface)
    assert interface_of(new) == interface_of(source)
    assert result.parity.passed, str(result.parity)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["loss"] == ("regressors: mean_squared_error, "
                                       "classificators: mean_squared_error")


def test_finetune_trains_only_outputs_with_targets(detector):
    x, targets, keras_version, _ = detector
    result = finetune(f"models:/detector/{keras_version.version}",
                      (x, {"regressors": targets["regressors"]}), epochs=1, verbose=False)
    assert "classificators_loss" not in result.history
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["trained_outputs"] == "regressors"
    # A list in the source's output order; None leaves an output out.
    result = finetune(f"models:/detector/{keras_version.version}",
                      (x, [None, targets["classificators"]]), epochs=1, verbose=False)
    assert MlflowClient().get_run(result.run_id).data.params["trained_outputs"] == \
        "classificators"


def test_finetune_bad_targets_are_clear(detector):
    x, targets, keras_version, _ = detector
    uri = f"models:/detector/{keras_version.version}"
    with pytest.raises(MlflowException, match=r"has 2 outputs \('regressors', "
                                              r"'classificators'\): give targets as a dict"):
        finetune(uri, (x, targets["regressors"]))
    with pytest.raises(MlflowException, match=r"Targets for 'boxes', which is not an output"):
        finetune(uri, (x, {"boxes": targets["regressors"]}))
    with pytest.raises(MlflowException, match=r"1 target arrays for 2 outputs"):
        finetune(uri, (x, [targets["regressors"]]))
    with pytest.raises(MlflowException, match=r"Targets for output 'regressors' have shape "
                                              r"\[160, 160, 4\]; the output is \[N, 160, 8\]"):
        finetune(uri, (x, {"regressors": targets["regressors"][..., :4]}))
    assert len(MlflowClient().search_model_versions("name = 'detector'")) == 2


def test_finetune_full_int8_calibrates_on_the_training_inputs(detector):
    """A full-int8 source: the export is calibrated on the training inputs without being
    asked, and keeps the int8 interface."""
    x, targets, _, _ = detector
    with mlflow.start_run():
        mlflow.tflite_keras.log_model(rm.model("detector", "full-int8"), name="model",
                                      input_example=x[:1], registered_model_name="detector8")
    # Int8 rounding through three convolutions: ~20 output steps of a float reconstruction.
    loose = {"max_steps": 64.0}
    lineage.register_keras_version("models:/detector8/1", parity_inputs=x[:16],
                                   tolerances=loose)
    result = finetune("models:/detector8/2", (x, targets), epochs=1, verbose=False,
                      parity_tolerances=loose)
    assert result.interface.ok, str(result.interface)
    new = mlflow.tflite_keras.load_model("models:/detector8/4").model_bytes
    source = mlflow.tflite_keras.load_model("models:/detector8/1").model_bytes
    assert interface_of(new) == interface_of(source)
    assert interface_of(new)[1][0][2] == "INT8"


def _perturb_exported_weights(monkeypatch):
    """Fault injection around the real export: every convolution kernel of the exported
    model scaled by 5%."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from mlflow_tflite_keras import export

    real_export = export.export_tflite

    def export_then_perturb(*args, **kwargs):
        data, report = real_export(*args, **kwargs) if kwargs.get("return_report") else \
            (real_export(*args, **kwargs), None)
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        sg = model.subgraphs[0]
        for op in sg.operators:
            kernel = sg.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
            if kernel is not None and len(kernel.shape) == 4 and model.buffers[kernel.buffer].data is not None:
                buffer = model.buffers[kernel.buffer]
                values = np.frombuffer(bytes(buffer.data), np.float32) * 1.05
                buffer.data = np.frombuffer(values.astype(np.float32).tobytes(), np.uint8)
        builder = flatbuffers.Builder(len(data) + 1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        perturbed = bytes(builder.Output())
        if report is not None:  # the parsed model the export hands on is the perturbed one
            from mlflow_tflite_keras.tflite_model import TFLiteModel

            report.new_model = TFLiteModel(perturbed)
        return (perturbed, report) if kwargs.get("return_report") else perturbed

    monkeypatch.setattr(export, "export_tflite", export_then_perturb)


def test_export_failing_parity_registers_nothing(detector, monkeypatch):
    x, targets, keras_version, _ = detector
    _perturb_exported_weights(monkeypatch)
    with pytest.raises(ExportParityError, match="nothing was registered") as info:
        finetune(f"models:/detector/{keras_version.version}", (x, targets), epochs=1,
                 verbose=False)
    assert "parity FAILED" in str(info.value)
    client = MlflowClient()
    assert len(client.search_model_versions("name = 'detector'")) == 2
    runs = client.search_runs([mlflow.get_experiment_by_name("finetune").experiment_id],
                              "attributes.run_name LIKE 'finetune-%'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "does not answer like the fine-tuned Keras model" in \
        runs[0].data.tags["tflite_keras.failure"]


def test_cli_finetune_exit_code_on_failed_parity(detector, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from mlflow_tflite_keras.cli import cli

    x, targets, keras_version, home = detector
    np.savez(tmp_path / "train.npz", x=x, **{f"y_{k}": v for k, v in targets.items()})
    _perturb_exported_weights(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    result = CliRunner().invoke(cli, ["finetune", f"models:/detector/{keras_version.version}",
                                      "--data", str(tmp_path / "train.npz"), "--epochs", "1",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    assert "does not answer like the fine-tuned Keras model" in result.output
    assert "epoch 1/1" not in result.output
    assert len(MlflowClient().search_model_versions("name = 'detector'")) == 2


def test_cli_and_mlproject_finetune_detector(detector, tmp_path):
    from servers import clean_env

    x, targets, keras_version, home = detector
    data = tmp_path / "train.npz"
    np.savez(data, x=x, **{f"y_{k}": v for k, v in targets.items()})
    env = clean_env(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    cli = str(Path(sys.executable).with_name("mlflow-tflite-keras"))
    result = subprocess.run([cli, "finetune", "models:/detector/2", "--data", str(data),
                             "--epochs", "2", "--learning-rate", "0.002"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 2/2: loss=" in result.stderr, result.stderr[-3000:]
    assert "lineage: detector/1 -> detector/2 -> detector/3 -> detector/4" in result.stdout
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    project = subprocess.run([mlflow_bin, "run", str(REPO), "-e", "finetune",
                              "-P", "model_uri=models:/detector/3", "-P", f"data={data}",
                              "-P", "epochs=1", "--env-manager", "local"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert project.returncode == 0, project.stderr[-3000:]
    chain = MlflowClient().get_model_version("detector", "6").tags[lineage.CHAIN]
    assert chain == "detector/1 -> detector/2 -> detector/3 -> detector/5 -> detector/6"
    new = mlflow.tflite_keras.load_model("models:/detector/6").model_bytes
    source = mlflow.tflite_keras.load_model("models:/detector/1").model_bytes
    assert interface_of(new) == interface_of(source)


def _litert_accuracy(model_bytes, x, y):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    hits = 0
    for row, label in zip(x, y):
        interpreter.set_tensor(inp["index"], np.clip(np.round(row[None] / scale) + zero_point,
                                                     -128, 127).astype(inp["dtype"]))
        interpreter.invoke()
        hits += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
    return hits / len(y)


def test_finetune_quantization_aware_keeps_every_scale(tmp_path):
    """finetune(quantization_aware=True) on a shifted split (classes 0-3 relabelled) of a
    full-int8 digits CNN: accuracy measured on LiteRT improves, and the exported model keeps
    every tensor's scale / zero point and its int8 I/O."""
    from converter.test_emulation import _source
    from test_export import _quantization_differences

    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(tmp_path / ".mlflow")
    try:
        mlflow.set_experiment(experiment_id=experiment("qat"))
        x, y = fm.digits()
        shifted = np.where(y < 4, (y + 1) % 4, y)  # 0->1, 1->2, 2->3, 3->0
        source = _source("full-int8")
        with mlflow.start_run():
            mlflow.tflite_keras.log_model(source, name="model", input_example=x[:4],
                                          registered_model_name="digits-qat")
        before = _litert_accuracy(source, x[-300:], shifted[-300:])
        result = finetune("models:/digits-qat/1", (x[:1200], shifted[:1200]), epochs=6,
                          learning_rate=3e-3, verbose=False, quantization_aware=True)
        exported = mlflow.tflite_keras.load_model(
            f"models:/digits-qat/{result.tflite_version.version}").model_bytes
        after = _litert_accuracy(exported, x[-300:], shifted[-300:])
        print(f"\nLiteRT accuracy on the shifted split: {before:.3f} -> {after:.3f}; "
              f"export parity: {result.parity}")
        assert after >= before + 0.25, (before, after)
        assert _quantization_differences(source, exported) == []
        new = TFLiteModel(exported)
        assert [new.main.tensors[i].type_name for i in (*new.main.inputs, *new.main.outputs)] \
            == ["INT8", "INT8"]
        assert result.parity.passed and result.interface.ok
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_finetune_quantization_aware_needs_an_emulated_keras_version(registered):
    x, y, keras_version = registered
    with pytest.raises(MlflowException, match="emulate_quantization=True"):
        finetune(f"models:/digits/{keras_version.version}", (x[:32], y[:32]),
                 quantization_aware=True)
