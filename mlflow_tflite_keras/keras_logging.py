"""Logging a Keras model made from a ``.tflite`` (reconstructed, or fine-tuned) with
``mlflow.keras``: pinned requirements, the source's signature and input example where
``mlflow.keras`` accepts them. Shared by :mod:`~mlflow_tflite_keras.lineage` and
:mod:`~mlflow_tflite_keras.finetune`; imports neither TensorFlow nor Keras."""

from __future__ import annotations

import os
import types

import numpy as np

import mlflow
from mlflow.models import Model, ModelSignature

from mlflow_tflite_keras import __version__

__all__ = ["KERAS_FLAVOR", "keras_input_example", "keras_pip_requirements", "keras_signature",
           "log_keras_model", "save_keras_model", "source_input_example"]


def keras_pip_requirements() -> list[str]:
    """What a reconstructed Keras model needs, pinned to this environment. Given explicitly,
    so mlflow.keras does not load the model in a subprocess to infer them (slow)."""
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    return [*(_get_pinned_requirement(p) for p in ("mlflow", "keras", "tensorflow", "numpy")),
            f"mlflow-tflite-keras=={__version__}"]


def save_keras_model(path, **kwargs):
    """``mlflow.keras.save_model`` with pinned requirements by default."""
    # mlflow.keras.save_model (3.17) writes the input example before creating the directory.
    os.makedirs(path, exist_ok=True)
    if kwargs.get("pip_requirements") is None and kwargs.get("conda_env") is None:
        kwargs["pip_requirements"] = keras_pip_requirements()
    mlflow.keras.save_model(path=path, **kwargs)


# mlflow.keras for Model.log, with the directory created first (see save_keras_model).
KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_keras_model)


def keras_signature(source_info: Model):
    """The source's signature, when mlflow.keras accepts it (tensors, dynamic batch)."""
    signature = source_info.signature
    if signature is None or not signature.inputs.is_tensor_spec():
        return None
    if any(not spec.shape or spec.shape[0] != -1 for spec in signature.inputs.inputs):
        return None
    return ModelSignature(inputs=signature.inputs, outputs=signature.outputs)


def source_input_example(source_info: Model, local_path: str):
    """The source's saved input example as arrays, or None."""
    try:
        example = source_info.load_input_example(local_path)
    except Exception:
        return None
    if example is None:
        return None
    if isinstance(example, dict):
        return {k: np.asarray(v) for k, v in example.items()}
    return np.asarray(example)


def keras_input_example(example, source_info: Model, streaming: bool = False):
    """The source's input example as the Keras model takes it (the signature's dtype; one
    sequence of frames for a streaming source)."""
    if example is None or isinstance(example, dict):
        return example
    schema = source_info.get_input_schema()
    if schema is not None and schema.is_tensor_spec():
        example = np.asarray(example, dtype=schema.numpy_types()[0])
    if streaming:  # the source's rows are frames of one stream: one sequence for the RNN
        example = np.asarray(example, dtype=np.float32)[None]
    return example


def log_keras_model(keras_model, source_info: Model, *, input_example=None,
                    streaming: bool = False):
    """Log ``keras_model`` as ``keras_model`` in the active run with the signature (and input
    example) of the ``.tflite`` it was made from (a streaming model takes sequences: no
    signature). Returns the ``ModelInfo``."""
    return Model.log(
        artifact_path=None, name="keras_model", flavor=KERAS_FLAVOR, model=keras_model,
        signature=None if streaming else keras_signature(source_info),
        input_example=keras_input_example(input_example, source_info, streaming),
    )
