"""Streaming (stateful) models: to_keras gives a recurrent model over sequences, a stateful
one-frame-per-call mode, sequence parity against the interpreter fed one frame per invoke,
training through time, .keras reload, and export back to a streaming .tflite."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from converter.streaming_models import (
    FEATURES,
    calibration_frames,
    frames,
    streaming_conv,
    streaming_multi_state,
)
from mlflow_tflite_keras.converter import convert, reset_streaming_state, to_keras
from mlflow_tflite_keras.converter.parity import (
    DEFAULT_TIME_STEPS,
    check_parity,
    check_sequence_parity,
    streaming_reference,
)
from mlflow_tflite_keras.converter.streaming import StreamingCell, StreamingRNN
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel

MODELS = {"conv": streaming_conv, "multi-state": streaming_multi_state}
CASES = [(name, recipe) for name in MODELS for recipe in ("float32", "full-int8")]
# Full-int8: a float model cannot reproduce integer rounding (and the state carries it from
# frame to frame); judged in output quantization steps on frames like the calibration data.
TOLERANCES = {"float32": {"max_rel_error": 1e-5}, "full-int8": {"max_steps": 4.0}}


def _source(name, recipe):
    return MODELS[name](recipe)


def _on_input_grid(data, x):
    """Frames as the interpreter sees them: quantized to the input's grid when it is int8."""
    spec = TFLiteRunner(TFLiteModel(data)).signature().inputs[0]
    return spec.dequantize(spec.quantize(x)) if spec.quantized else x


def _sequences(data, n=4, time=32, seed=5):
    return _on_input_grid(data, frames(n, time, seed=seed))


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("name,recipe", CASES)
def test_sequence_parity_over_32_frames(name, recipe):
    data = _source(name, recipe)
    result = convert(data)
    model = result.model
    layer = model.get_layer("scores")
    assert isinstance(layer, StreamingRNN) and isinstance(layer.cell, StreamingCell)
    n_states = {"conv": 1, "multi-state": 3}[name]
    assert len(layer.cell.state_shapes) == n_states
    assert any("Streaming model" in note for note in result.report.notes)
    x = _sequences(data)
    outputs = {"conv": 4, "multi-state": 5}[name]
    assert tuple(model.input.shape) == (None, None, 1, FEATURES)
    assert _numpy(model(x)).shape == (4, 32, outputs)
    report = check_sequence_parity(data, model, x, **TOLERANCES[recipe])
    assert report.passed, str(report)
    assert report.n_samples == 4 * 32
    # The output depends on the past frames: the same frames in another order differ.
    reversed_ = _numpy(model(x[:, ::-1].copy()))[:, ::-1]
    assert np.abs(reversed_ - _numpy(model(x))).max() > 0.1


def test_multi_state_model_has_states_of_different_shapes_and_initial_values():
    data = streaming_multi_state()
    cell = to_keras(data).get_layer("scores").cell
    shapes = sorted(cell.state_shapes)
    assert shapes == [(2, FEATURES), (4, 12), (12,)]
    average = cell.initial_weights[cell.state_shapes.index((12,))]
    assert np.all(_numpy(average) >= 0.1)  # the CALL_ONCE values, not zeros


def test_check_parity_dispatches_to_sequences_and_rejects_a_perturbed_kernel():
    data = streaming_multi_state()
    model = to_keras(data)
    report = check_parity(data, model, max_rel_error=1e-5)  # random frames, default T
    assert report.passed, str(report)
    assert report.n_samples == 8 * DEFAULT_TIME_STEPS and DEFAULT_TIME_STEPS >= 16
    assert check_parity(data, model, time_steps=16, n_samples=2).n_samples == 32
    kernel = next(w for w in model.trainable_weights if len(w.shape) == 4)
    kernel.assign(_numpy(kernel) * 1.05)
    report = check_parity(data, model, max_rel_error=1e-5)
    assert not report.passed, str(report)


def test_int8_parity_rejects_a_perturbed_kernel():
    data = streaming_conv("full-int8")
    model = to_keras(data)
    x = _sequences(data)
    # Within a few output steps (about 1 here); the perturbed kernel is more than 5 off.
    assert check_sequence_parity(data, model, x, **TOLERANCES["full-int8"]).passed
    kernel = next(w for w in model.trainable_weights if len(w.shape) == 4)
    kernel.assign(_numpy(kernel) * 1.05)
    assert not check_sequence_parity(data, model, x, **TOLERANCES["full-int8"]).passed


def test_gradients_through_time_and_fit_on_sequences():
    import tensorflow as tf

    data = streaming_multi_state()
    model = to_keras(data)
    x = _sequences(data, n=8, time=24)
    with tf.GradientTape() as tape:
        # Only the last step's output: every gradient reaches the weights through the state.
        loss = tf.reduce_sum(tf.square(model(x)[:, -1]))
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(model.trainable_weights) >= 5
    for w, g in zip(model.trainable_weights, grads):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, w.path
    # The first conv's kernel gets a gradient from frames before the last one (BPTT): its
    # gradient changes when only the earlier frames change.
    x2 = x.copy()
    x2[:, :-1] += 0.3
    with tf.GradientTape() as tape:
        loss2 = tf.reduce_sum(tf.square(model(x2)[:, -1]))
    g2 = tape.gradient(loss2, model.trainable_weights)
    assert np.abs(_numpy(g2[0]) - _numpy(grads[0])).max() > 1e-4
    # fit (compiled), per-step targets: the loss goes down.
    target = np.roll(_numpy(model(x)), 1, axis=-1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    history = model.fit(x, target, epochs=5, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_keras_reload_safe_mode_and_predict(tmp_path):
    data = streaming_multi_state("full-int8")
    model = to_keras(data)
    x = _sequences(data, n=3, time=20)
    path = tmp_path / "streaming.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), _numpy(model(x)), atol=1e-6)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in
                   loaded.get_layer("scores").cell.step_model.layers)
    np.testing.assert_array_equal(_numpy(loaded.get_layer("scores").cell.initial_weights[2]),
                                  _numpy(model.get_layer("scores").cell.initial_weights[2]))


@pytest.mark.parametrize("recipe", ["float32", "full-int8"])
def test_stateful_mode_equals_the_sequence_model_frame_by_frame(recipe, tmp_path):
    data = streaming_multi_state(recipe)
    sequence_model = to_keras(data)
    streaming = to_keras(data, stateful=True)
    assert tuple(streaming.input.shape) == (1, 1, FEATURES)
    x = _sequences(data, n=2, time=16)
    expected = _numpy(sequence_model(x))
    for s in range(2):
        reset_streaming_state(streaming)
        got = np.stack([_numpy(streaming(frame[None]))[0] for frame in x[s]])
        np.testing.assert_allclose(got, expected[s], rtol=1e-5, atol=1e-6)
    # State persists across calls: the same frame answers differently later in the stream...
    first = _numpy(streaming(x[0, :1]))
    # ... and a reset starts a new stream from the initial state.
    reset_streaming_state(streaming)
    np.testing.assert_allclose(_numpy(streaming(x[0, :1]))[0], expected[0, 0], rtol=1e-5,
                               atol=1e-6)
    assert np.abs(first[0] - expected[0, 0]).max() > 1e-3
    # predict keeps the state too, and the stateful model checks parity frame by frame.
    reset_streaming_state(streaming)
    got = np.concatenate([streaming.predict(frame[None], verbose=0) for frame in x[1]])
    np.testing.assert_allclose(got, expected[1], rtol=1e-5, atol=1e-6)
    assert check_sequence_parity(data, streaming, x, **TOLERANCES[recipe]).passed
    # The stateful model saves and reloads too.
    streaming.save(tmp_path / "stream.keras")
    loaded = keras.models.load_model(tmp_path / "stream.keras", safe_mode=True)
    reset_streaming_state(loaded)
    np.testing.assert_allclose(_numpy(loaded(x[0, :1]))[0], expected[0, 0], rtol=1e-5,
                               atol=1e-6)


def test_reference_is_one_invoke_per_frame_from_the_initial_state():
    data = streaming_conv()
    x = _sequences(data, n=2, time=6)
    expected = streaming_reference(data, {"frame": x})["scores"]
    assert expected.shape == (2, 6, 4)
    runner = TFLiteRunner(TFLiteModel(data))
    np.testing.assert_array_equal(expected[1], runner.predict(x[1])["scores"])


def test_stateful_option_on_a_model_without_state_is_refused():
    import flavor_models as fm

    with pytest.raises(MlflowException, match="stateful=True applies to streaming models"):
        to_keras(fm.tabular(), stateful=True)


@pytest.mark.parametrize("name,recipe", CASES)
def test_export_like_a_streaming_source(name, recipe):
    from mlflow_tflite_keras.export import export_tflite

    data = _source(name, recipe)
    model = to_keras(data)
    # Fine-tune a little first, so the export carries new weights.
    x = _sequences(data, n=8, time=24, seed=7)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, _numpy(model(x)) * 0.9, epochs=1, verbose=0)
    new, report = export_tflite(model, like=data, representative_data=calibration_frames(),
                                return_report=True)
    assert report.ok, str(report)
    source, exported = TFLiteModel(data), TFLiteModel(new)
    assert exported.quantization_kind == source.quantization_kind
    assert exported.is_stateful
    ops = exported.operator_counts()
    assert ops["VAR_HANDLE"] >= 1 and ops.get("ASSIGN_VARIABLE", 0) >= 1 and "CALL_ONCE" in ops
    src_sig, new_sig = source.signature(), exported.signature()
    assert list(new_sig.inputs) == list(src_sig.inputs) == ["frame"]
    assert list(new_sig.outputs) == list(src_sig.outputs) == ["scores"]
    for which in ("inputs", "outputs"):
        s_t = source.subgraphs[src_sig.subgraph_index].tensors[
            next(iter(getattr(src_sig, which).values()))]
        n_t = exported.subgraphs[new_sig.subgraph_index].tensors[
            next(iter(getattr(new_sig, which).values()))]
        assert (s_t.type_name, tuple(s_t.shape)) == (n_t.type_name, tuple(n_t.shape))
    # The same number of state variables, with the same shapes; quantized like the source's.
    from mlflow_tflite_keras.converter.streaming import state_variables
    from mlflow_tflite_keras.converter.ir import build_graph

    def states(m):
        return sorted(s.initial.shape for s in state_variables(m, build_graph(m, 0)))

    assert states(exported) == states(source)
    # The exported model, run frame by frame on LiteRT, answers like the Keras model.
    # (int8: the export quantizes the fine-tuned weights and state afresh; its own rounding
    # accumulates over the frames: up to about 4.3 steps here, so 5.)
    x = _sequences(new, n=4, time=32, seed=5)
    limits = {"max_steps": 5.0} if recipe == "full-int8" else TOLERANCES[recipe]
    report = check_sequence_parity(new, model, x, **limits)
    assert report.passed, str(report)
    # and differs from the source (the weights changed).
    assert not check_sequence_parity(data, model, x, max_rel_error=1e-5).passed


def test_export_refuses_layers_added_around_the_streaming_layer():
    from mlflow_tflite_keras.export import export_tflite

    data = streaming_conv()
    model = to_keras(data)
    head = keras.layers.Dense(2)(model.output)
    with pytest.raises(MlflowException, match="Only the streaming model itself"):
        export_tflite(keras.Model(model.input, head), like=data)


def test_hybrid_wraps_stateless_ops_of_the_step_and_refuses_the_state():
    data = streaming_multi_state()
    result = convert(data, wrap_ops=("FULLY_CONNECTED",))
    assert [r["ops"] for r in result.report.wrapped_regions] == [["20:FULLY_CONNECTED"]]
    x = _sequences(data, n=2, time=16)
    assert check_sequence_parity(data, result.model, x, max_rel_error=1e-5).passed
    np.testing.assert_allclose(result.model.predict(x, verbose=0), _numpy(result.model(x)),
                               atol=1e-6)
    # The state cannot be wrapped: a region cutting a variable is refused by the region
    # planner, one holding it whole (a TFLiteLayer would keep it across sequences) here.
    with pytest.raises(MlflowException, match="resource/variant"):
        convert(data, wrap_ops=("READ_VARIABLE",))
    everything = list(TFLiteModel(streaming_conv()).operator_counts())
    with pytest.raises(MlflowException, match="wrapped region holds the streaming state"):
        convert(streaming_conv(), wrap_ops=everything)


def test_per_example_state_reloads_streams_and_exports(tmp_path):
    """A state without the batch's leading 1 (a running total [4]): the step runs once per
    example; reload, stateful mode and export keep working."""
    from converter.test_ops_control_flow import stateful_tflite
    from mlflow_tflite_keras.export import export_tflite

    data = stateful_tflite()
    model = to_keras(data)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 16, 4)).astype(np.float32)
    model.save(tmp_path / "total.keras")
    loaded = keras.models.load_model(tmp_path / "total.keras", safe_mode=True)
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))
    stream = to_keras(data, stateful=True)
    got = np.stack([_numpy(stream(frame[None]))[0] for frame in x[0]])
    np.testing.assert_allclose(got, _numpy(model(x))[0], rtol=1e-5, atol=1e-6)
    new, report = export_tflite(model, like=data, return_report=True)
    assert report.ok, str(report)
    assert check_sequence_parity(new, model, x, max_rel_error=1e-5).passed


def test_step_signature_of_a_model_with_reset_and_setter_signatures():
    """``reset`` and ``set_gain`` signatures assign variables too; the step signature
    converts (its read-only ``gain`` a constant), the others are named in the error."""
    from converter.streaming_models import streaming_with_controls
    from mlflow_tflite_keras.export import InterfaceChangedError, export_tflite

    data = streaming_with_controls()
    with pytest.raises(MlflowException, match=r"signature 'reset'.*pass signature_key"):
        to_keras(data)
    result = convert(data, signature_key="serving_default")
    assert any("other signatures also assign" in note for note in result.report.notes)
    assert result.model.get_layer("scores").cell.state_names == ["ring_buffer"]
    x = frames(3, 20)
    report = check_parity(data, result.model, x, signature_key="serving_default",
                          max_rel_error=1e-5)
    assert report.passed and report.n_samples == 60, str(report)
    # The export has the step only: the app's other signatures are missing, and said so.
    with pytest.raises(InterfaceChangedError, match="signature 'reset'"):
        export_tflite(result.model, like=data)


@pytest.mark.parametrize("recipe", ["float32", "full-int8"])
def test_several_outputs(recipe, tmp_path):
    """Two outputs of different shapes: the RNN carries them concatenated, split again after
    it; parity, stateful mode, reload and export keep both, in the source's order."""
    from converter.streaming_models import streaming_two_heads
    from mlflow_tflite_keras.export import export_tflite

    data = streaming_two_heads(recipe)
    names = list(TFLiteModel(data).signature().outputs)
    assert sorted(names) == ["activity", "scores"]
    model = to_keras(data)
    # Frames the int8 model was calibrated on: its `scores` saturate at the calibrated range
    # (test frames of other seeds reach beyond it), which a float model does not reproduce.
    x = _on_input_grid(data, calibration_frames()[:3])
    out = model(x)
    assert list(out) == names
    assert tuple(out["scores"].shape) == (3, 32, 4) and tuple(out["activity"].shape) == (3, 32, 1)
    report = check_sequence_parity(data, model, x, **TOLERANCES[recipe])
    assert report.passed and [o.name for o in report.outputs] == names, str(report)
    stream = to_keras(data, stateful=True)
    assert check_sequence_parity(data, stream, x[:1], **TOLERANCES[recipe]).passed
    model.save(tmp_path / "two.keras")
    loaded = keras.models.load_model(tmp_path / "two.keras", safe_mode=True)
    np.testing.assert_array_equal(_numpy(loaded(x)["activity"]), _numpy(out["activity"]))
    new, interface = export_tflite(model, like=data, representative_data=calibration_frames(),
                                   return_report=True)
    assert interface.ok, str(interface)
    assert list(TFLiteModel(new).signature().outputs) == names
    assert check_sequence_parity(new, model, _on_input_grid(new, calibration_frames()[:3]),
                                 **TOLERANCES[recipe]).passed
