"""What the package silences, shown on the real sources of the noise: Keras's input-structure
warning, TensorFlow's complex-cast log, and TensorFlow's/absl's C++ log lines on stderr."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import warnings

import numpy as np

import flavor_models as fm
from servers import clean_env


def test_keras_input_structure_warning_silenced_only_inside():
    from mlflow_tflite_keras import to_keras
    from mlflow_tflite_keras.noise import keras_noise_silenced

    model = to_keras(fm.cnn("float32"))
    feed = {model.inputs[0].name: fm.images(2)}  # what MLflow's Keras pyfunc passes

    def structure_warnings(silenced: bool):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with keras_noise_silenced() if silenced else contextlib.nullcontext():
                model(feed)  # eager: Keras checks the structure on every call
        return [w for w in caught if "structure of `inputs`" in str(w.message)]

    assert structure_warnings(silenced=False)  # Keras does warn here ...
    assert not structure_warnings(silenced=True)  # ... not inside the package's calls ...
    assert structure_warnings(silenced=False)  # ... and the filter is gone afterwards


def test_complex_cast_log_silenced_only_inside():
    """In a fresh process: TensorFlow's logger state is process-wide (other tests touch it)."""
    code = """
import logging
import numpy as np
import tensorflow as tf
from mlflow_tflite_keras.noise import keras_noise_silenced

records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("tensorflow").addHandler(handler)
z = tf.complex(np.ones(3, np.float32), np.ones(3, np.float32))
with keras_noise_silenced():
    tf.cast(z, tf.float32)
assert not records, records
tf.cast(z, tf.float32)
assert any("imaginary part" in r.getMessage() for r in records), records
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_native_log_lines_are_dropped_from_stderr():
    code = """
import os, sys
from mlflow_tflite_keras.noise import quiet_native_logs
quiet_native_logs()
os.write(2, b"I0000 00:00:1796167679.098987   20790 port.cc:153] oneDNN custom operations\\n")
os.write(2, b"E0000 00:00:1796167747.589364   21106 cuda_platform.cc:52] failed call to cuInit\\n")
os.write(2, b"kept: a line of our own\\n")
print("python stderr kept", file=sys.stderr)
import tensorflow as tf
tf.constant(1.0) + 1.0  # runs an op: device initialization logs
"""
    env = {k: v for k, v in clean_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert "kept: a line of our own" in lines and "python stderr kept" in lines
    assert not [line for line in lines if line.startswith(("E0000", "W0000", "I0000"))], lines
    assert not [line for line in lines if "absl::InitializeLog" in line], lines
