"""Operators ai-edge-quantizer inserts (converter/ops/quantizer.py): ``aeq.hadamard_rotation``
before the fully-connected ops whose int4 weights its HADAMARD_ROTATION algorithm rotated, on
a digits MLP; the layer against a NumPy copy of the kernel's butterflies; batches through the
runtime (the kernel keeps its stored output shape on resize)."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails
from model_factory import cached, digits, keras_model_tflite
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.layers.custom import HadamardRotation
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel

# End to end, LiteRT's int4 hybrid kernels quantize activations on the fly and the float
# reconstruction does not: measured 0.77% of the output range; a 5% kernel change 3%.
HADAMARD_MAX_REL = 1e-2


def digits_mlp() -> bytes:
    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(10)])
        x, y = digits()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x.reshape(-1, 64), y, epochs=5, batch_size=32, verbose=0, shuffle=False)
        return model

    return keras_model_tflite("hadamard-digits-mlp", make)


def hadamard_int4() -> bytes:
    """The MLP's fully-connected weights int4 per channel with Hadamard rotations, the
    rotation as the ``aeq.hadamard_rotation`` custom op."""
    float_data = digits_mlp()

    def build():
        from ai_edge_quantizer import qtyping, quantizer
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        quant = quantizer.Quantizer(bytearray(float_data))
        quant.add_dynamic_config(regex=".*",
                                 operation_name=qtyping.TFLOperationName.FULLY_CONNECTED,
                                 num_bits=4, algorithm_key=AlgorithmName.HADAMARD_ROTATION)
        return bytes(quant.quantize().quantized_model)

    from importlib.metadata import version

    return cached("hadamard-int4", build, hashlib.sha256(float_data).hexdigest(),
                  version("ai-edge-quantizer"))


def inputs(n=16):
    x, _ = digits()
    return x[:n].reshape(n, 64)


def fwht_reference(x, size):
    """The kernel's in-place butterflies on each block, then the 1/sqrt(size) scaling."""
    out = np.array(x, np.float32).reshape(-1, size)
    h = 1
    while h < size:
        for i in range(0, size, 2 * h):
            a, b = out[:, i:i + h].copy(), out[:, i + h:i + 2 * h].copy()
            out[:, i:i + h], out[:, i + h:i + 2 * h] = a + b, a - b
        h *= 2
    return (out * np.float32(1 / np.sqrt(size))).reshape(np.shape(x))


@pytest.mark.parametrize("size,shape", [(2, (3, 4)), (8, (2, 5, 16)), (32, (4, 64))])
def test_hadamard_layer_matches_the_kernel(size, shape):
    x = np.random.default_rng(size).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(HadamardRotation(size)(x)), fwht_reference(x, size),
                               rtol=1e-5, atol=1e-5)


def test_hadamard_rotated_int4_model():
    data = hadamard_int4()
    source = TFLiteModel(data)
    assert source.custom_ops == ["aeq.hadamard_rotation"]
    assert source.quantization_kind == "dynamic-range-int4"
    model = to_keras(data)
    assert sum(isinstance(layer, HadamardRotation) for layer in model.layers) == 3
    assert len(model.trainable_weights) == 6
    x = inputs()
    report = check_parity(data, model, x, max_rel_error=HADAMARD_MAX_REL)
    assert report.passed and report.compiled.passed, str(report)
    # the trained MLP's answers survive the rotation and int4 weights
    _, y = digits()
    assert np.mean(np.asarray(model(x)).argmax(-1) == y[:16]) >= 0.8
    assert_kernel_change_fails(data, model, x, max_rel_error=HADAMARD_MAX_REL)


def test_batches_run_row_by_row_where_a_kernel_keeps_its_output_shape():
    # The kernel's Prepare leaves its output [1, 64] when the input is resized: a batch would
    # overflow that buffer at Invoke. The runtime notices the batch did not reach the outputs
    # and runs the rows one by one: same answers as single rows.
    runner = TFLiteRunner(TFLiteModel(hadamard_int4()))
    x = inputs(8)
    batch = runner.predict(x)["output_0"]
    rows = np.concatenate([runner.predict(x[i:i + 1])["output_0"] for i in range(8)])
    assert batch.shape == (8, 10)
    np.testing.assert_array_equal(batch, rows)
