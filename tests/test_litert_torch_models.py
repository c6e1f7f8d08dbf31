"""Models exported from PyTorch with litert-torch: a CNN (convolution, batch norm, ReLU,
pooling, linear), a transformer encoder block (multi-head self-attention, GELU MLP, layer norm)
and an LSTM, trained a few epochs on sklearn's digits, each also with int8 weights
(ai-edge-quantizer's dynamic-range recipe, hybrid kernels). The ``.tflite`` files are committed
fixtures (tests/data/litert_torch/, made by tools/export_litert_torch_models.py in a separate
environment; ``manifest.json`` records torch / litert-torch versions and input shapes): these
tests need neither torch nor litert-torch.

litert-torch lowers through StableHLO, and its converter legalizes what it can to TFLite
builtins: these models carry TFLite builtins only (GELU for ``aten.gelu``, the layer norm and
the attention decomposed into MEAN / SQUARED_DIFFERENCE / RSQRT / BATCH_MATMUL / SOFTMAX, the
LSTM unrolled into FULLY_CONNECTED and gates), in PyTorch's layouts (NCHW inputs, transposes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails

DATA = Path(__file__).resolve().parent / "data" / "litert_torch"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
MODELS = sorted(MANIFEST["models"])


def fixture(name):
    entry = MANIFEST["models"][name]
    return (DATA / entry["file"]).read_bytes(), tuple(entry["input_shape"])


def digit_batches(shape, n_batches=2):
    """Consecutive digits (8x8 in [0, 1], as the models were trained on) in the input shape."""
    from model_factory import digits

    x, y = digits()
    batch = shape[0]
    images = x[:batch * n_batches].reshape((n_batches,) + shape)
    return list(images), y[:batch * n_batches].reshape(n_batches, batch)


@pytest.fixture(scope="module")
def converted():
    """name -> (tflite bytes, input shape, ConversionResult), converted once per module."""
    from mlflow_tflite_keras.converter import convert

    cache = {}

    def get(name):
        if name not in cache:
            data, shape = fixture(name)
            cache[name] = data, shape, convert(data)
        return cache[name]

    return get


def test_manifest_names_the_exporter():
    assert MANIFEST["torch"].startswith("2.") and MANIFEST["litert_torch"]
    float_models = {"cnn", "transformer", "lstm"}
    assert set(MODELS) == float_models | {f"{n}-dynamic-int8" for n in float_models}
    for name in MODELS:
        assert (DATA / MANIFEST["models"][name]["file"]).stat().st_size < 1 << 20


@pytest.mark.parametrize("name", MODELS)
def test_parity_eager_and_compiled(name, converted):
    from mlflow_tflite_keras.converter.parity import check_parity

    data, shape, result = converted(name)
    model = result.model
    assert tuple(model.inputs[0].shape) == shape
    batches, _ = digit_batches(shape)
    for x in batches:
        report = check_parity(data, model, x, tensor_map=result.report.tensor_map)
        assert report.passed, f"{name}\n{report}"
        assert report.compiled is not None and report.compiled.passed, str(report)
        assert report.compiled_outputs is None or all(o.passed for o in
                                                     report.compiled_outputs), str(report)
        out = np.asarray(model(x))
        assert out.shape == (shape[0], 10)
        # The outputs depend on the input (a constant model would prove nothing).
        assert float(np.std(out, axis=0).max()) > 1e-2 * float(np.abs(out).max())


@pytest.mark.parametrize("name", MODELS)
def test_a_five_percent_kernel_change_fails_parity(name, converted):
    from mlflow_tflite_keras.converter.parity import check_parity

    data, shape, result = converted(name)
    x = digit_batches(shape)[0][0]
    assert_kernel_change_fails(data, result.model, x, tensor_map=result.report.tensor_map)
    assert check_parity(data, result.model, x, compiled=False).passed


# TensorFlow's dynamic-range recipe (the export's) quantizes only weights of 1024 elements or
# more; the transformer's are all smaller (ai-edge-quantizer quantized them anyway), so an
# export like that source would keep float weights: refused, saying so.
EXPORT_REFUSED = {"transformer-dynamic-int8": "quantization kind: source 'dynamic-range-int8'"}


@pytest.mark.parametrize("name", MODELS)
def test_trainable_fit_compiled_and_export_like_the_source(name):
    """The weights are trainable variables; one compiled ``fit`` step changes every one of
    them (a fresh conversion: the step must not disturb the other tests' model); the
    fine-tuned model exports back to a ``.tflite`` with the source's interface that answers
    like it."""
    import keras

    from converter.op_harness import check_export
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data, shape = fixture(name)
    model = to_keras(data)
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert len(kernels) >= 3, [w.path for w in model.trainable_weights]
    before = [np.array(w.numpy()) for w in model.trainable_weights]
    batches, labels = digit_batches(shape)
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    assert not model.run_eagerly
    history = model.fit(np.concatenate(batches), labels.reshape(-1), batch_size=shape[0],
                        epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    unchanged = [w.path for w, c in zip(model.trainable_weights, changed) if not c]
    assert not unchanged, f"fit left these weights unchanged: {unchanged}"
    if name in EXPORT_REFUSED:
        from mlflow_tflite_keras.errors import InterfaceChangedError

        with pytest.raises(InterfaceChangedError, match=EXPORT_REFUSED[name]):
            check_export(TFLiteModel(data), model, batches[1])
        return
    exported = check_export(TFLiteModel(data), model, batches[1])
    assert exported.subgraphs[0].inputs and tuple(
        exported.subgraphs[0].tensors[exported.subgraphs[0].inputs[0]].shape) == shape


@pytest.mark.parametrize("name", MODELS)
def test_keras_file_reloads_in_safe_mode(name, converted, tmp_path):
    import keras

    from mlflow_tflite_keras.converter.parity import check_parity

    data, shape, result = converted(name)
    path = os.path.join(tmp_path, f"{name}.keras")
    result.model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    x = digit_batches(shape)[0][1]
    report = check_parity(data, reloaded, x, compiled=False)
    assert report.passed, f"after .keras reload: {report}"
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(result.model(x)))


@pytest.mark.parametrize("name", MODELS)
def test_a_weight_read_by_several_ops_is_one_variable(name, converted):
    """One Dense layer per FULLY_CONNECTED weight tensor of the source: litert-torch unrolls
    the LSTM over its 8 rows, and the 7 steps after the first read one recurrent kernel; one
    layer called 7 times keeps it tied through training, as in the PyTorch model."""
    import keras

    from mlflow_tflite_keras.tflite_model import TFLiteModel

    data, _, result = converted(name)
    graph = TFLiteModel(data).subgraphs[0]
    readers = {}
    for op in graph.operators:
        if op.opcode == "FULLY_CONNECTED":
            readers[op.inputs[1]] = readers.get(op.inputs[1], 0) + 1
    dense = [layer for layer in result.model.layers if isinstance(layer, keras.layers.Dense)]
    assert sorted(len(layer._inbound_nodes) for layer in dense) == sorted(readers.values())
    if name.startswith("lstm"):
        assert sorted(readers.values()) == [1, 1, 7]
