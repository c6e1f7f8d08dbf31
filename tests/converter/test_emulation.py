"""to_keras(emulate_quantization=True): the integer kernels' arithmetic replayed in Keras.

Judged strictly: full-integer outputs within 1 quantization step on every element (the share
at 0 steps is reported), dynamic-range within float noise; a 5% change on one middle kernel
fails each. The emulated model runs under predict, loads with safe_mode=True and trains."""

from __future__ import annotations

import os

import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails, perturbed
from model_factory import digits, keras_model_tflite, make_audio_cnn, tones
from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.converter.layers.quantization import (
    FakeQuant,
    QuantizedWeights,
    is_emulated,
)


def _digits_cnn():
    import keras

    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = digits()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)
    return model


# test model -> (builder, representative rows, held-out inputs)
MODELS = {
    "digits-cnn": (_digits_cnn, lambda: digits()[0][:64], lambda n: digits()[0][-n:]),
    "audio-cnn": (make_audio_cnn, lambda: tones()[0][:64], lambda n: tones(n, seed=1)[0]),
}


# variant -> (recipe, extra conversion arguments)
VARIANTS = {
    "full-int8": ("full-int8", {}),  # int8 I/O
    "full-int8-float-io": ("full-int8", {"inference_input_type": np.float32,
                                         "inference_output_type": np.float32}),
    "dynamic-range": ("dynamic-range", {}),
    "int16x8": ("int16x8", {}),
}


def _source(variant, model="digits-cnn"):
    recipe, kwargs = VARIANTS[variant]
    make, representative, _ = MODELS[model]
    rep = representative if recipe in ("full-int8", "int16x8") else None
    return keras_model_tflite(f"{model}-emulation", make, recipe, representative=rep,
                              **kwargs)


def _inputs(n=64, model="digits-cnn"):
    return MODELS[model][2](n)  # held out from the representative rows


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_emulated_parity_is_strict(variant, model_name, tmp_path):
    import keras

    data = _source(variant, model_name)
    result = convert(data, emulate_quantization=True)
    model = result.model
    assert is_emulated(model)
    x = _inputs(64, model_name)
    report = check_parity(data, model, x)
    print(f"\n{model_name} {variant}: {report}")
    assert report.passed, str(report)
    assert report.compiled.passed, str(report)
    for out in report.outputs:
        if out.quantization_step is not None:
            assert out.max_steps <= 1.0, str(report)
            assert out.share_exact >= 0.9, str(report)
        else:
            assert out.max_rel_error <= 1e-3, str(report)
    # the float reconstruction is not held to this: emulation is what makes it strict
    if variant != "dynamic-range":
        assert any(isinstance(layer, FakeQuant) for layer in model._flatten_layers())

    # a 5% change on one middle kernel fails
    assert_kernel_change_fails(data, model, x)

    # predict, .keras with safe_mode=True
    predicted = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(again.predict(x, verbose=0)), predicted)
    assert check_parity(data, again, x, compiled=False).passed


def _residual_cnn():
    """Residual ADD, an elementwise MUL, global average pooling (MEAN), a softmax head."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same")(a)
    c = keras.layers.Add()([a, b])
    d = keras.layers.Multiply()([c, keras.layers.Conv2D(8, 1, activation="relu")(c)])
    pooled = keras.layers.GlobalAveragePooling2D()(d)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(pooled))
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = digits()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    return model


def test_int16x8_kernels_replayed_op_by_op():
    """Every int16x8 kernel (CONV_2D, ADD, MUL, MEAN, FULLY_CONNECTED, SOFTMAX), fed the
    interpreter's inputs, gives the interpreter's integers; a 5% kernel change shows."""
    from mlflow_tflite_keras.converter.parity import check_ops

    data = keras_model_tflite("residual-cnn-emulation", _residual_cnn, "int16x8",
                              representative=lambda: digits()[0][:64])
    result = convert(data, emulate_quantization=True)
    x = _inputs(32)
    report = check_ops(data, result.model, x, tensor_map=result.report.tensor_map,
                       max_steps=0.0)
    print(f"\n{report}")
    types = {t.op_type for t in report.tensors}
    assert {"CONV_2D", "ADD", "MUL", "MEAN", "FULLY_CONNECTED", "SOFTMAX"} <= types, types
    assert not report.diverged and not report.skipped, str(report)
    assert check_parity(data, result.model, x).outputs[0].max_steps == 0.0
    undo = perturbed(result.model)
    try:
        wrong = check_ops(data, result.model, x, tensor_map=result.report.tensor_map,
                          max_steps=0.0)
    finally:
        undo()
    assert wrong.diverged, str(wrong)


@pytest.mark.parametrize("variant", ["full-int8-float-io", "int16x8"])
def test_fit_trains_through_fake_quant(variant):
    """The straight-through estimator: gradients reach every kernel; a fit step moves them
    (int16x8: through the integer kernels' replay too)."""
    data = _source(variant)
    model = convert(data, emulate_quantization=True).model
    x, y = digits()
    wrapped = [layer for layer in model._flatten_layers() if isinstance(layer, QuantizedWeights)]
    # every kernel and bias of the digits CNN is kept on its source grid, and starts on it
    assert len(wrapped) == 5 and sum(len(layer.quantization) for layer in wrapped) == 10
    for layer in wrapped:
        for w, q in layer.quantized_weights():
            np.testing.assert_array_equal(w.numpy(), np.asarray(q))
    before = [np.array(w.numpy()) for w in model.trainable_weights]
    assert before, "no trainable weights"
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    moved = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(moved), [w.path for w, m in zip(model.trainable_weights, moved) if not m]
    # the forward pass stays on the grid: snapping the moved variables changes no output
    predicted = model.predict(x[:64], verbose=0)
    off_grid = 0
    for layer in wrapped:
        for w, q in layer.quantized_weights():
            off_grid += int(np.sum(w.numpy() != np.asarray(q)))
            w.assign(q)
    assert off_grid > 0
    np.testing.assert_array_equal(model.predict(x[:64], verbose=0), predicted)
    assert not any(w.trainable for layer in model._flatten_layers()
                   if isinstance(layer, FakeQuant) for w in layer.weights)


def test_register_keras_version_emulated(tmp_path):
    """register_keras_version(emulate_quantization=True): the registered Keras version is the
    emulated reconstruction, judged strictly, and its description says so."""
    import keras

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow_tflite_keras import lineage
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(tmp_path / ".mlflow")
    try:
        mlflow.set_experiment(experiment_id=experiment("emulation"))
        data = _source("full-int8-float-io")
        with mlflow.start_run():
            mlflow.tflite_keras.log_model(data, name="model", registered_model_name="digits-q",
                                          input_example=_inputs(4))
        with pytest.raises(MlflowException, match="emulate_quantization"):
            lineage.register_keras_version("models:/digits-q/1", method="kept-source",
                                           emulate_quantization=True)
        version = lineage.register_keras_version("models:/digits-q/1",
                                                 emulate_quantization=True)
        assert "quantization emulated" in version.description
        run = mlflow.MlflowClient().get_run(version.run_id)
        model = mlflow.keras.load_model(f"models:/digits-q/{version.version}")
        assert is_emulated(model) and isinstance(model, keras.Model)
        assert any(k.startswith("parity_") for k in run.data.metrics)
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_cli_convert_has_emulate_quantization_flag():
    from click.testing import CliRunner

    from mlflow_tflite_keras.cli import cli

    result = CliRunner().invoke(cli, ["convert", "--help"])
    assert result.exit_code == 0 and "--emulate-quantization" in result.output


@pytest.mark.parametrize("model_name", list(MODELS))
def test_dynamic_range_export_like_source(model_name):
    """export_tflite(emulated, like=dynamic-range source): the fine-tuned int8 kernels go back
    on the source's per-channel scales, its float biases / small kernels as float32; every
    tensor's type and quantization parameters are the source's, and LiteRT computes what the
    emulated Keras model computes (float noise)."""
    import keras

    from test_export import _quantization_differences
    from mlflow_tflite_keras.export import export_tflite
    from mlflow_tflite_keras.recipes import EMULATED_TOLERANCES
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    source = _source("dynamic-range", model_name)
    model = convert(source, emulate_quantization=True).model
    wrapped = [layer for layer in model._flatten_layers() if isinstance(layer, QuantizedWeights)]
    assert any(layer.quantization for layer in wrapped)  # hybrid kernels
    assert any(layer.float_weights for layer in wrapped)  # float biases
    x = _inputs(64, model_name)
    y = np.asarray(model.predict(x, verbose=0)).argmax(-1)  # its own answers, shifted below
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    model.fit(x, (y + 1) % y.max(initial=1), epochs=1, batch_size=16, verbose=0, shuffle=False)
    exported = export_tflite(model, like=source)
    assert _quantization_differences(source, exported) == []
    a, b = TFLiteModel(source), TFLiteModel(exported)
    changed = [t.name for sa, sb in zip(a.subgraphs, b.subgraphs)
               for t, u in zip(sa.tensors, sb.tensors) if a.constant(t) is not None
               and not np.array_equal(a.constant(t), b.constant(u))]
    assert len(changed) == len(model.trainable_weights), changed
    report = check_parity(exported, model, x, compiled=False)
    print(f"\n{model_name} dynamic-range export vs emulated Keras: {report}")
    assert report.passed and report.outputs[0].max_rel_error <= \
        EMULATED_TOLERANCES["dynamic-range"]["max_rel_error"], str(report)
    # the source is not what was trained: the fine-tuned model is judged off it
    assert not check_parity(source, model, x, compiled=False).passed
