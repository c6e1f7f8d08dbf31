"""Reconstructions run the way they are used: compiled (``model.predict``) as well as eagerly,
checked in a child process where a crash must not take the caller down, and parity checks
that reject a wrong answer."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from converter.op_harness import assert_kernel_change_fails
from converter.real_models import blazeface, face_images
from mlflow_tflite_keras.converter import convert
from mlflow_tflite_keras.converter.compiled import check_compiled, compare_compiled
from mlflow_tflite_keras.converter.parity import check_parity, output_roles
from mlflow_tflite_keras.tflite_model import TFLiteModel

# TensorFlow 2.21's oneDNN graph rewrite crashes on a zero Pad feeding the Add fused into a
# biased 1x1 convolution (a channel-padded residual shortcut), under tf.function only.
UPSTREAM_REPRO = """
import numpy as np, keras
class Pad(keras.layers.Layer):
    def call(self, x): return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, 4]])
x = keras.Input((64, 64, 24)); a = keras.layers.ReLU()(x)
b = keras.layers.Conv2D(28, 1)(keras.layers.DepthwiseConv2D(3, padding="same")(a))
m = keras.Model(x, keras.layers.Add()([Pad()(a), b]))
m(np.zeros((1, 64, 64, 24), np.float32))  # eager: fine
m.predict(np.zeros((1, 64, 64, 24), np.float32), verbose=0)
print("no crash")
"""


def crashing_model():
    """The upstream repro built from this package's serializable layers, so that the child
    process of the compiled check can load it."""
    import keras

    from mlflow_tflite_keras.converter.layers import KerasOp

    keras.utils.set_random_seed(0)
    x = keras.Input((64, 64, 24))
    a = keras.layers.ReLU()(x)
    b = keras.layers.Conv2D(28, 1)(keras.layers.DepthwiseConv2D(3, padding="same")(a))
    padded = KerasOp("pad", fn_kwargs={"pad_width": [[0, 0], [0, 0], [0, 0], [0, 4]]})(a)
    return keras.Model(x, keras.layers.Add()([padded, b]))


def guard_input(n=1):
    return np.random.default_rng(0).normal(size=(n, 64, 64, 24)).astype(np.float32)


def test_upstream_onednn_crash_is_still_there():
    """Documents the TensorFlow bug the converter works around (layers.zero_pad_by_concat).
    If this starts passing without a crash, TensorFlow fixed it: the workaround may go."""
    proc = subprocess.run([sys.executable, "-c", UPSTREAM_REPRO], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr[-2000:])


def test_compiled_check_reports_a_crash_and_the_caller_survives():
    model = crashing_model()
    x = guard_input()
    eager = np.asarray(model(x))  # eager is fine
    check = check_compiled(model, x, isolated=True)
    assert not check.passed
    assert "SIGSEGV" in check.reason and "model.predict crashed" in check.reason, check.reason
    assert np.isfinite(eager).all()  # still alive


def test_isolated_runs_share_one_fork_server_that_survives_crashes_and_timeouts():
    """Isolated runs are forked from one server that imported Keras once: a crash or a
    timeout kills only that run's process, and the next run gets a correct answer."""
    import keras

    from mlflow_tflite_keras.converter import compiled

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    good = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    assert check_compiled(good, x, isolated=True).passed
    server = compiled._server.proc.pid
    assert not check_compiled(crashing_model(), guard_input(), isolated=True).passed
    with pytest.raises(compiled.CompiledInferenceError, match="did not finish in 0 s"):
        compiled.predict_compiled(good, x, isolated=True, timeout=0.01)
    (values,) = compiled.predict_compiled(good, x, isolated=True)
    np.testing.assert_allclose(values, np.asarray(good(x)), rtol=1e-5, atol=1e-6)
    assert compiled._server.proc.pid == server


def test_compiled_comparison_rejects_a_small_difference():
    eager = [np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)]
    assert compare_compiled(eager, [eager[0].copy()]).passed
    wrong = compare_compiled(eager, [eager[0] * 1.001])
    assert not wrong.passed and "differs from the eager call" in wrong.reason
    shape = compare_compiled(eager, [eager[0].reshape(4, 3)])
    assert not shape.passed and "[4, 3]" in shape.reason


@pytest.fixture(scope="module")
def detector():
    data = blazeface("float32")
    return data, convert(data)


def test_blazeface_runs_compiled_and_eager(detector):
    data, result = detector
    model = result.model
    ops = TFLiteModel(data).operator_counts()
    assert ops["PAD"] >= 5 and ops["ADD"] >= 10  # the channel-padded shortcuts are there
    x = face_images(2)
    report = check_parity(data, model, x)
    assert report.passed, str(report)
    assert report.compiled is not None and report.compiled.passed, str(report)
    assert report.compiled.max_rel_diff <= 1e-5
    out = model.predict(x, verbose=0)
    assert out["regressors"].shape == (2, 896, 16)
    assert out["classificators"].shape == (2, 896, 1)
    eager = model(x)
    for name in out:
        np.testing.assert_allclose(out[name], np.asarray(eager[name]), rtol=1e-5, atol=1e-5)
    # The outputs depend on the input (a constant model would prove nothing).
    other = model.predict(face_images(2, seed=5), verbose=0)
    assert np.abs(other["regressors"] - out["regressors"]).max() > 1e-2 * np.ptp(out["regressors"])
    # Isolated (child process) compiled inference agrees too.
    assert check_compiled(model, x, isolated=True).passed


def test_blazeface_regressors_are_not_judged_by_top1(detector):
    data, result = detector
    model = TFLiteModel(data)
    spec = __import__("mlflow_tflite_keras.runtime", fromlist=["TFLiteRunner"]) \
        .TFLiteRunner(model).signature()
    kinds = {o.name: output_roles(model, spec.subgraph_index, o)[1] for o in spec.outputs}
    assert kinds == {"regressors": "values", "classificators": "values"}
    report = check_parity(data, result.model, face_images(1), compiled=False)
    assert all(o.top1_agreement is None for o in report.outputs)


def test_blazeface_parity_rejects_a_5_percent_kernel_change(detector):
    data, result = detector
    assert_kernel_change_fails(data, result.model, face_images(1))


def test_output_shapes_must_match_exactly():
    """A Keras output with the same number of elements in another shape is a failure."""
    import keras

    from model_factory import keras_model_tflite

    def make():
        keras.utils.set_random_seed(3)
        x = keras.Input((3, 3))
        return keras.Model(x, keras.layers.Dense(1)(x))

    data = keras_model_tflite("parity-shape-3x3x1", make)
    model = convert(data).model
    x = np.random.default_rng(0).normal(size=(4, 3, 3)).astype(np.float32)
    assert check_parity(data, model, x).passed
    wrong = keras.Model(model.inputs, keras.layers.Permute((2, 1))(model.outputs[0]))
    report = check_parity(data, wrong, x)
    assert not report.passed
    assert "shape [4, 1, 3] (Keras) != [4, 3, 1] (interpreter)" in str(report)
