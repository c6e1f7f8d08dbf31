"""Fine-tune a Keras version and ship it back as a ``.tflite`` with the source's recipe.

Lineage chain, one tag per version (``tflite_keras.parent``) plus the whole path
(``tflite_keras.lineage``): source ``.tflite`` → reconstructed Keras → fine-tuned Keras →
new ``.tflite``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.tracking.artifact_utils import _download_artifact_from_uri

from mlflow_tflite_keras import __version__, lineage
from mlflow_tflite_keras.errors import ActionableError
from mlflow_tflite_keras.noise import keras_noise_silenced
from mlflow_tflite_keras.tracking import start_run

__all__ = ["FinetuneResult", "ROLE_EXPORTED", "ROLE_FINETUNED", "finetune", "load_training_data"]

_logger = logging.getLogger(__name__)

ROLE_FINETUNED = "finetuned-keras"
ROLE_EXPORTED = "exported-tflite"


@dataclass
class FinetuneResult:
    keras_version: ModelVersion
    tflite_version: ModelVersion
    history: dict
    parity: object  # ParityReport of the exported .tflite against the fine-tuned model
    interface: object  # InterfaceReport of the exported .tflite against the source
    run_id: str


def load_training_data(path: str, *, target: str | None = None, input_shape=None):
    """``(x, y)`` from ``.npz`` (arrays ``x`` and ``y``) or CSV (the ``target`` column, by
    default ``y`` or the last column, is y; the other columns, reshaped to ``input_shape``,
    are x)."""
    if not os.path.isfile(path):
        raise MlflowException(f"No training data at '{path}'.", error_code=INVALID_PARAMETER_VALUE)
    if path.endswith(".npz"):
        with np.load(path) as data:
            missing = {"x", "y"} - set(data.files)
            if missing:
                raise MlflowException(f"'{path}' lacks array(s) {sorted(missing)}; it has "
                                      f"{data.files}.", error_code=INVALID_PARAMETER_VALUE)
            return data["x"], data["y"]
    if path.endswith(".csv"):
        import pandas as pd

        frame = pd.read_csv(path)
        column = target or ("y" if "y" in frame.columns else frame.columns[-1])
        if column not in frame.columns:
            raise MlflowException(f"'{path}' has no column '{column}'.",
                                  error_code=INVALID_PARAMETER_VALUE)
        y = frame.pop(column).to_numpy()
        x = frame.to_numpy(dtype=np.float32)
        if input_shape is not None:
            x = x.reshape((len(x), *input_shape))
        return x, y
    raise MlflowException(f"Training data must be .npz (x, y) or .csv, got '{path}'.",
                          error_code=INVALID_PARAMETER_VALUE)


def _ref(mv) -> str:
    return f"{mv.name}/{mv.version}"


def _chain(client: MlflowClient, name: str | None, version: str | None) -> list[str]:
    """The lineage path ending at a registered version (from its tags), or []."""
    if not name:
        return []
    mv = client.get_model_version(name, version)
    recorded = mv.tags.get(lineage.CHAIN)
    if recorded:
        return recorded.split(" -> ")
    parent = mv.tags.get(lineage.PARENT)
    return [parent, _ref(mv)] if parent else [_ref(mv)]


def _default_loss(model, y, head=None):
    """Sparse categorical cross-entropy for integer labels on a multi-class output (on
    probabilities when the model ends in softmax), mean squared error otherwise."""
    import keras

    out_dim = model.outputs[0].shape[-1]
    # One integer label per output row: [N] for [N, C] outputs, [N, T] for [N, T, C].
    if np.issubdtype(np.asarray(y).dtype, np.integer) and \
            np.asarray(y).ndim == len(model.outputs[0].shape) - 1 and out_dim and out_dim > 1:
        last = (head or model).layers[-1]
        if hasattr(last, "cell") and hasattr(last.cell, "step_model"):  # streaming model
            last = last.cell.step_model.layers[-1]
        probabilities = getattr(last, "__class__", None).__name__ == "Softmax" or \
            getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
        return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    return keras.losses.MeanSquaredError()


def _training_view(keras_model, y, streaming: bool):
    """The model ``fit`` trains: ``keras_model`` itself, or for a streaming model with one
    target per sequence (``y`` without the time axis) a view of it answering with the last
    step's output (same weights, so training it trains ``keras_model``)."""
    import keras

    if not streaming:
        return keras_model
    per_step_rank = len(keras_model.outputs[0].shape)  # [N, T, *out]
    y = np.asarray(y)
    integer = np.issubdtype(y.dtype, np.integer)
    if y.ndim == per_step_rank - (2 if integer else 1):  # no time axis: one per sequence
        from mlflow_tflite_keras.converter.layers import KerasOp

        last = KerasOp("getitem", fn_kwargs={"index": [[None, None, None], -1]},
                       name="last_step")(keras_model.outputs[0])
        return keras.Model(keras_model.inputs, last, name=f"{keras_model.name}_last_step")
    return keras_model


@keras_noise_silenced()
def finetune(
    model_uri: str,
    data,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    loss=None,
    validation_data=None,
    registered_model_name: str | None = None,
    tflite_registered_model_name: str | None = None,
    representative_data=None,
    allow_interface_changes: bool = False,
    experiment_id: str | None = None,
    await_registration_for: int = 300,
    progress=None,
) -> FinetuneResult:
    """Train a Keras version (or a reconstructed ``.tflite`` flavor model) on ``data``
    (``(x, y)`` arrays or a ``.npz``/CSV path), register the fine-tuned Keras model, export a
    ``.tflite`` with the source's recipe and interface, and register that too.

    Both new versions go next to their parents by default (the Keras version's registered
    model, the source ``.tflite``'s registered model). Per-epoch metrics are logged with
    ``mlflow.keras.MlflowCallback``; the exported model's parity against the fine-tuned Keras
    model is measured and logged. Fails before registering anything if training data, the
    interface check or the export fail.
    """
    import keras

    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.export import compare_interfaces, export_tflite

    say = progress or _logger.info
    client = MlflowClient()
    source = lineage.resolve_source(model_uri, client)
    with tempfile.TemporaryDirectory() as tmp:
        local = _download_artifact_from_uri(model_uri, output_path=tmp)
        info = Model.load(local)
        if "keras" in info.flavors:
            say(f"Loading Keras model {model_uri} ...")
            keras_model = mlflow.keras.load_model(local)
            tags = client.get_model_version(source.registered_name, source.version).tags \
                if source.registered_name else {}
            tflite_uri = tags.get(lineage.SOURCE_URI)
            if not tflite_uri:
                raise MlflowException(f"'{model_uri}' has no {lineage.SOURCE_URI} tag: cannot "
                                      "tell which .tflite to take the recipe from.",
                                      error_code=INVALID_PARAMETER_VALUE)
        elif "tflite_keras" in info.flavors:
            from mlflow_tflite_keras.converter import to_keras

            say(f"Reconstructing {model_uri} as Keras ...")
            keras_model = to_keras(mlflow.tflite_keras.load_model(local).model_bytes)
            tflite_uri = model_uri
        else:
            raise MlflowException(f"'{model_uri}' is neither a Keras nor a tflite_keras model.",
                                  error_code=INVALID_PARAMETER_VALUE)
    tflite_source = lineage.resolve_source(tflite_uri, client)
    tflite_bytes = mlflow.tflite_keras.load_model(tflite_uri).model_bytes
    input_shape = tuple(keras_model.inputs[0].shape[1:])
    x, y = (load_training_data(data, input_shape=input_shape) if isinstance(data, str)
            else data)
    x = np.asarray(x, dtype=keras_model.inputs[0].dtype or "float32")
    from mlflow_tflite_keras.export import _streaming_layer

    # A streaming model trains on sequences [N, time, *frame], with targets per step or per
    # sequence; its .tflite takes frames, one per invoke.
    streaming = _streaming_layer(keras_model) is not None
    trained = _training_view(keras_model, y, streaming)
    parent_chain = (_chain(client, source.registered_name, source.version)
                    if source.registered_name else [model_uri])
    keras_name = registered_model_name or source.registered_name
    tflite_name = tflite_registered_model_name or tflite_source.registered_name
    if not keras_name or not tflite_name:
        raise ActionableError(
            f"'{model_uri}' is not a registered model version.",
            {k: None for k, v in (("registered_model_name", keras_name),
                                  ("tflite_registered_model_name", tflite_name)) if not v},
            "to choose where the new versions are registered")

    with start_run(experiment_id=experiment_id or source.experiment_id,
                   run_name=f"finetune-{keras_name}") as run:
        try:
            mlflow.set_tags({lineage.ROLE: ROLE_FINETUNED, lineage.SOURCE_URI: model_uri})
            loss = loss or _default_loss(trained, y, head=keras_model)
            mlflow.log_params({"source_model_uri": model_uri, "epochs": epochs,
                               "batch_size": batch_size, "learning_rate": learning_rate,
                               "loss": getattr(loss, "name", str(loss)), "train_rows": len(x),
                               "converter_version": __version__})
            trained.compile(keras.optimizers.Adam(learning_rate), loss=loss,
                            metrics=["accuracy"] if isinstance(
                                loss, keras.losses.SparseCategoricalCrossentropy) else [])
            say(f"Fine-tuning for {epochs} epoch(s) on {len(x)} rows ...")
            history = trained.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                                      validation_data=validation_data,
                                      callbacks=[mlflow.keras.MlflowCallback()])
            say("Exporting a .tflite with the source's recipe and interface ...")
            rep = representative_data if representative_data is not None else x[:200]
            new_bytes = export_tflite(keras_model, like=tflite_bytes, representative_data=rep,
                                      allow_interface_changes=allow_interface_changes)
            interface = compare_interfaces(tflite_bytes, new_bytes)
            mlflow.log_dict(interface.to_dict(), "interface_report.json")
            parity = check_parity(new_bytes, keras_model, x[:32], compiled="isolated")
            mlflow.log_metrics(parity.metrics(prefix="export_parity_"))
            mlflow.log_dict(parity.to_dict(), "export_parity_report.json")

            say(f"Registering the fine-tuned Keras model under '{keras_name}' ...")
            keras_info = Model.log(artifact_path=None, name="keras_model",
                                   flavor=lineage._KERAS_FLAVOR, model=keras_model,
                                   signature=None if streaming else lineage._keras_signature(
                                       Model.load(tflite_uri)))
            keras_tags = {lineage.ROLE: ROLE_FINETUNED, lineage.PARENT: parent_chain[-1],
                          lineage.SOURCE_URI: model_uri,
                          lineage.TAG_PREFIX + "finetune_run_id": run.info.run_id}
            keras_version = mlflow.register_model(keras_info.model_uri, keras_name,
                                                  await_registration_for, tags=keras_tags)
            keras_chain = [*parent_chain, _ref(keras_version)]
            client.set_model_version_tag(keras_name, keras_version.version, lineage.CHAIN,
                                         " -> ".join(keras_chain))

            say(f"Registering the exported .tflite under '{tflite_name}' ...")
            tflite_info = mlflow.tflite_keras.log_model(new_bytes, name="tflite_model",
                                                        input_example=x[0, :8] if streaming
                                                        else x[:2])
            tflite_tags = {lineage.ROLE: ROLE_EXPORTED, lineage.PARENT: _ref(keras_version),
                           lineage.TAG_PREFIX + "recipe_source": tflite_uri,
                           lineage.TAG_PREFIX + "finetune_run_id": run.info.run_id,
                           lineage.PARITY_PASSED: str(int(parity.passed))}
            tflite_version = mlflow.register_model(tflite_info.model_uri, tflite_name,
                                                   await_registration_for, tags=tflite_tags)
            client.set_model_version_tag(tflite_name, tflite_version.version, lineage.CHAIN,
                                         " -> ".join([*keras_chain, _ref(tflite_version)]))
        except BaseException as e:
            mlflow.set_tag(lineage.TAG_PREFIX + "failure", str(e)[:5000])
            mlflow.end_run(status="FAILED")
            raise
    return FinetuneResult(
        keras_version=client.get_model_version(keras_name, keras_version.version),
        tflite_version=client.get_model_version(tflite_name, tflite_version.version),
        history=history.history, parity=parity, interface=interface, run_id=run.info.run_id)
