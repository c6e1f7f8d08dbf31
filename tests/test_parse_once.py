"""One parse per flatbuffer and call chain: the ``TFLiteModel`` parsed when a source is loaded
travels through ``register_keras_version`` and ``finetune`` (conversion, parity, export),
and the exported ``.tflite`` is parsed once by finetune after the export checked it.

Counted by wrapping the real parse (``TFLiteModel.__init__``) and recording the sha256 of
every flatbuffer parsed in this process (fault-injection style: nothing is replaced)."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import sys

import pytest

import flavor_models as fm
import mlflow
from mlflow_tflite_keras import flavor, lineage
from mlflow_tflite_keras.finetune import finetune
from mlflow_tflite_keras.tflite_model import TFLiteModel


@contextlib.contextmanager
def count_parses(exclude=()):
    """A Counter of sha256 -> times a flatbuffer with that content was parsed, except by
    calls (at any depth) of the functions in ``exclude``."""
    counts = collections.Counter()
    real_init = TFLiteModel.__init__
    excluded = {f.__code__ for f in exclude}

    def counting_init(self, model_bytes):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code not in excluded:
            frame = frame.f_back
        if frame is None:
            counts[hashlib.sha256(bytes(model_bytes)).hexdigest()] += 1
        real_init(self, model_bytes)

    TFLiteModel.__init__ = counting_init
    try:
        yield counts
    finally:
        TFLiteModel.__init__ = real_init


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tracking(tmp_path):
    from mlflow_tflite_keras.tracking import experiment, use_default_tracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    use_default_tracking(tmp_path / ".mlflow")
    mlflow.set_experiment(experiment_id=experiment("parse-once"))
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_counter_sees_every_parse():
    """The counter is not blind: two parses of one flatbuffer count two, and a parse inside
    an excluded function does not count."""
    data = fm.cnn("float32")

    def parse_again(model_bytes):
        return TFLiteModel(model_bytes)

    with count_parses(exclude=[parse_again]) as counts:
        TFLiteModel(data)
        TFLiteModel.load(data)
        parse_again(data)
    assert counts == {_sha256(data): 2}


@pytest.fixture
def logged(tracking):
    """A full-int8 .tflite registered as digits/1; (x, y, its bytes)."""
    x, y = fm.digits()
    source = fm.cnn("full-int8")
    with mlflow.start_run():
        mlflow.tflite_keras.log_model(source, name="model", input_example=x[:4],
                                      registered_model_name="digits")
    return x, y, source


def test_register_parses_the_source_once(logged):
    x, _, source = logged
    with count_parses() as counts:
        lineage.register_keras_version("models:/digits/1", parity_inputs=x[:64])
    assert dict(counts) == {_sha256(source): 1}


def test_finetune_parses_the_source_once(logged):
    """The source .tflite once (the TFLiteModel then goes to the converter, the export and
    its interface check); the exported one once by finetune (parity and logging) besides
    the parse in export_tflite's own interface check. Logging it is log_model's chain,
    counted by that chain's test."""
    x, y, source = logged
    keras_version = lineage.register_keras_version("models:/digits/1", parity_inputs=x[:64])
    with count_parses(exclude=[flavor.log_model]) as counts:
        result = finetune(f"models:/digits/{keras_version.version}", (x[:200], y[:200]),
                          epochs=1, learning_rate=1e-3, verbose=False)
    exported = mlflow.tflite_keras.load_model(
        f"models:/digits/{result.tflite_version.version}").model_bytes
    assert dict(counts) == {_sha256(source): 1, _sha256(exported): 2}
