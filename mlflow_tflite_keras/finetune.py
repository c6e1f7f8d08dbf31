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
from mlflow_tflite_keras.errors import ActionableError, ParityCheckError
from mlflow_tflite_keras.keras_logging import log_keras_model
from mlflow_tflite_keras.noise import keras_noise_silenced
from mlflow_tflite_keras.tflite_model import TFLiteModel
from mlflow_tflite_keras.tracking import failed_run_on_error, start_run

__all__ = ["ExportParityError", "FinetuneResult", "ROLE_EXPORTED", "ROLE_FINETUNED", "finetune",
           "load_training_data"]

_logger = logging.getLogger(__name__)

ROLE_FINETUNED = "finetuned-keras"
ROLE_EXPORTED = "exported-tflite"
RECIPE_SOURCE = lineage.TAG_PREFIX + "recipe_source"  # the .tflite whose recipe is reused


@dataclass
class FinetuneResult:
    keras_version: ModelVersion
    tflite_version: ModelVersion
    history: dict
    parity: object  # ParityReport of the exported .tflite against the fine-tuned model
    interface: object  # InterfaceReport of the exported .tflite against the source
    run_id: str


def load_training_data(path: str, *, target: str | None = None, input_shape=None):
    """``(x, y)`` from ``.npz`` or CSV.

    ``.npz``: array ``x`` (the inputs) and either ``y`` (the targets of a single-output
    model) or one array ``y_<output name>`` per output to train (``y`` is then a dict by
    output name). CSV: the ``target`` column (by default ``y`` or the last column) is y; the
    other columns, reshaped to ``input_shape``, are x.
    """
    if not os.path.isfile(path):
        raise MlflowException(f"No training data at '{path}'.", error_code=INVALID_PARAMETER_VALUE)
    if path.endswith(".npz"):
        with np.load(path) as data:
            per_output = {k[2:]: data[k] for k in data.files if k.startswith("y_")}
            if "x" not in data.files or not ("y" in data.files or per_output):
                raise MlflowException(
                    f"'{path}' lacks array(s): it needs 'x' and either 'y' or one "
                    f"'y_<output name>' per output; it has {data.files}.",
                    error_code=INVALID_PARAMETER_VALUE)
            if "y" in data.files and per_output:
                raise MlflowException(f"'{path}' has both 'y' and per-output targets "
                                      f"{sorted(per_output)}: keep one form.",
                                      error_code=INVALID_PARAMETER_VALUE)
            return data["x"], (data["y"] if "y" in data.files else per_output)
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


class ExportParityError(ParityCheckError):
    """The exported ``.tflite`` does not answer like the fine-tuned Keras model (the CLI
    exits 1, as for any failed parity check)."""


def _output_tensors(keras_model) -> dict:
    """Keras output name -> output KerasTensor, in the model's output order."""
    from mlflow_tflite_keras.export import _keras_io_names

    names = _keras_io_names(keras_model)
    if names is None:
        raise MlflowException("finetune needs a functional Keras model (with inputs and "
                              "outputs); got an unbuilt or subclassed model.",
                              error_code=INVALID_PARAMETER_VALUE)
    out = keras_model.output
    if isinstance(out, dict):
        return {k: out[k] for k in names[1]}
    return dict(zip(names[1], keras_model.outputs))


def _targets(keras_model, y, source_outputs: list) -> dict:
    """Targets by Keras output name, from a dict by output name (the source signature's
    names, or the Keras model's), a list / tuple in output order (None skips an output) or
    one array (single-output models). Outputs without targets are left out."""
    from mlflow_tflite_keras.export import match_name

    outputs = list(_output_tensors(keras_model))
    source_outputs = source_outputs if len(source_outputs) == len(outputs) else outputs
    to_keras = _pair_names_safe(outputs, source_outputs)
    described = ", ".join(f"'{n}'" for n in source_outputs)
    if isinstance(y, dict):
        names = {key: match_name(key, outputs, to_keras) for key in y}
        unknown = [key for key, name in names.items() if name is None]
        if unknown:
            raise MlflowException(
                f"Targets for '{unknown[0]}', which is not an output of the model; its "
                f"outputs are {described}.", error_code=INVALID_PARAMETER_VALUE)
        found = {names[key]: value for key, value in y.items() if value is not None}
    elif isinstance(y, (list, tuple)):
        if len(y) != len(outputs):
            raise MlflowException(
                f"{len(y)} target arrays for {len(outputs)} outputs ({described}): give one "
                "per output in this order (None for an output not to train), or a dict by "
                "output name.", error_code=INVALID_PARAMETER_VALUE)
        found = {to_keras[s]: v for s, v in zip(source_outputs, y) if v is not None}
    else:
        if len(outputs) != 1:
            raise MlflowException(
                f"The model has {len(outputs)} outputs ({described}): give targets as a dict "
                "by output name, or a list in this order.", error_code=INVALID_PARAMETER_VALUE)
        found = {outputs[0]: y}
    if not found:
        raise MlflowException(f"No targets for any output ({described}).",
                              error_code=INVALID_PARAMETER_VALUE)
    return {k: np.asarray(v) for k, v in found.items()}


def _activation(tensor) -> str | None:
    """'softmax' / 'sigmoid' when the output comes from such an activation (through layout
    layers such as Reshape), else None."""
    import keras

    for _ in range(4):
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer = history.operation
        if isinstance(layer, keras.layers.Softmax):
            return "softmax"
        name = getattr(getattr(layer, "activation", None), "__name__", "")
        if name in ("softmax", "sigmoid"):
            return name
        if isinstance(layer, (keras.layers.Reshape, keras.layers.Flatten,
                              keras.layers.Identity)) and layer._inbound_nodes:
            tensor = layer._inbound_nodes[0].input_tensors[0]
            continue
        return None
    return None


def _output_loss(tensor, y: np.ndarray):
    """By output kind: integer class labels -> sparse categorical cross-entropy (on
    probabilities after a softmax, else on logits), softmax outputs with one-hot targets ->
    categorical, sigmoid outputs -> binary cross-entropy; mean squared error otherwise."""
    import keras

    activation = _activation(tensor)
    out_dim = tensor.shape[-1]
    labels = np.issubdtype(y.dtype, np.integer) and y.ndim == len(tensor.shape) - 1 and \
        bool(out_dim and out_dim > 1)
    if labels:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=activation != "softmax")
    if activation == "softmax":
        return keras.losses.CategoricalCrossentropy()
    if activation == "sigmoid":
        return keras.losses.BinaryCrossentropy()
    return keras.losses.MeanSquaredError()


def _losses(tensors: dict, targets: dict, loss, source_names: dict) -> dict:
    """A loss per trained output: ``loss`` (one loss for all, or a dict by output name,
    source or Keras) overrides the defaults."""
    if loss is None or isinstance(loss, dict):
        given = {}
        for key, value in (loss or {}).items():
            name = key if key in tensors else source_names.get(key)
            if name is None:
                raise MlflowException(f"A loss for '{key}', which is not an output of the "
                                      f"model ({sorted(source_names)}).",
                                      error_code=INVALID_PARAMETER_VALUE)
            given[name] = value
        return {k: given.get(k) or _output_loss(tensors[k], targets[k]) for k in targets}
    return {k: loss for k in targets}


def _loss_name(loss) -> str:
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or str(loss)


def _epoch_callback(say, epochs: int):
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            values = ", ".join(f"{k}={logs[k]:.4g}" for k in sorted(
                logs, key=lambda k: (k not in ("loss", "val_loss"), k))
                if isinstance(logs[k], (int, float)))
            say(f"epoch {epoch + 1}/{epochs}: {values}")

    return EpochProgress()


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
    verbose: bool = True,
    representative_data=None,
    allow_interface_changes: bool = False,
    parity_tolerances: dict | None = None,
    registered_model_name: str | None = None,
    tflite_registered_model_name: str | None = None,
    experiment_id: str | None = None,
    await_registration_for: int = 300,
    progress=None,
    quantization_aware: bool = False,
) -> FinetuneResult:
    """Train a Keras version (or a reconstructed ``.tflite`` flavor model) on ``data``,
    register the fine-tuned Keras model, export a ``.tflite`` with the source's recipe and
    interface, and register that too.

    Args:
        data: ``(x, y)`` or a ``.npz`` / CSV path (see :func:`load_training_data`). ``y`` is
            one array for a single-output model; for several outputs a dict by output name
            (the names of the source ``.tflite``'s signature, or the Keras model's) or a list
            in the source's output order. Outputs without targets (missing from the dict, or
            None in the list) are left out of the loss and keep training only through the
            layers they share.
        loss: one loss for every trained output, or a dict by output name. By default per
            output: integer labels get sparse categorical cross-entropy, softmax outputs
            categorical and sigmoid outputs binary cross-entropy, others mean squared error.
        verbose: report every epoch's metrics through ``progress`` (default: printed).
        representative_data: calibration data for a full-integer recipe; by default the
            first 200 training inputs.
        parity_tolerances: overrides for :func:`~mlflow_tflite_keras.converter.parity.check_parity`.
        progress: a callable receiving progress messages (default: the logger).
        quantization_aware: train through the source's integer arithmetic (a ``.tflite``
            source is rebuilt with ``emulate_quantization=True``; a Keras version must have
            been registered so): weights stay on the source's grid, and the export writes
            them into the source, keeping every activation scale / zero point (no
            calibration; ``representative_data`` is not used).

    Both new versions go next to their parents by default (the Keras version's registered
    model, the source ``.tflite``'s registered model). Per-epoch metrics are logged with
    ``mlflow.keras.MlflowCallback``. Nothing is registered, and the run ends FAILED with the
    reason, if the training data, the interface check, the export, or the exported model's
    parity against the fine-tuned Keras model fail (:class:`ExportParityError`).
    """
    say = progress or _logger.info
    client = MlflowClient()
    source = lineage.resolve_source(model_uri, client)
    keras_model, tflite = _load(model_uri, source, client, say, quantization_aware)
    tflite_source = lineage.resolve_source(tflite.uri, client)
    plan = _plan_training(keras_model, data, loss, list(tflite.model.signature().outputs))
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
        with failed_run_on_error(lineage.FAILURE):
            mlflow.set_tags({lineage.ROLE: ROLE_FINETUNED, lineage.SOURCE_URI: model_uri})
            mlflow.log_params({"source_model_uri": model_uri, "epochs": epochs,
                               "batch_size": batch_size, "learning_rate": learning_rate,
                               "loss": ", ".join(f"{k}: {_loss_name(v)}"
                                                 for k, v in plan.losses.items()),
                               "trained_outputs": ", ".join(plan.targets),
                               "train_rows": len(plan.x), "quantization_aware": quantization_aware,
                               "converter_version": __version__})
            epoch_say = progress or (lambda message: print(message, flush=True))
            history = _fit(keras_model, plan, epochs, batch_size, learning_rate,
                           validation_data, epoch_say if verbose else None, say)
            exported, interface, parity = _export(
                keras_model, tflite.model, plan.x, representative_data,
                allow_interface_changes, parity_tolerances, say)
            keras_version, tflite_version = _register_versions(
                client, keras_model, exported, tflite, plan, parity, model_uri,
                (keras_name, tflite_name), parent_chain, run.info.run_id,
                await_registration_for, say)
    return FinetuneResult(
        keras_version=client.get_model_version(keras_name, keras_version.version),
        tflite_version=client.get_model_version(tflite_name, tflite_version.version),
        history=history.history, parity=parity, interface=interface, run_id=run.info.run_id)


def _load(model_uri: str, source, client: MlflowClient, say, quantization_aware: bool):
    """``(Keras model, LoadedSource)``: the model to train and the ``.tflite`` whose recipe
    and interface the export reproduces (for a ``.tflite`` flavor model, itself: downloaded
    and parsed once, then reconstructed, with its quantization emulated when
    ``quantization_aware``)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = _download_artifact_from_uri(model_uri, output_path=_subdirectory(tmp, "model"))
        flavors = Model.load(local).flavors
        if "keras" in flavors:
            from mlflow_tflite_keras.converter.layers.quantization import is_emulated

            say(f"Loading Keras model {model_uri} ...")
            keras_model = mlflow.keras.load_model(local)
            if quantization_aware and not is_emulated(keras_model):
                raise MlflowException(
                    f"'{model_uri}' was not registered with emulate_quantization=True: "
                    "quantization-aware fine-tuning needs the emulated reconstruction (pass "
                    "the .tflite version, or register_keras_version(emulate_quantization="
                    "True)).", error_code=INVALID_PARAMETER_VALUE)
            tflite_uri = _recipe_source(model_uri, source, client)
            local = _download_artifact_from_uri(tflite_uri,
                                                output_path=_subdirectory(tmp, "tflite"))
            return keras_model, lineage.load_source(tflite_uri, local)
        if "tflite_keras" in flavors:
            from mlflow_tflite_keras.converter import to_keras

            say(f"Reconstructing {model_uri} as Keras ...")
            tflite = lineage.load_source(model_uri, local)
            return to_keras(tflite.model, emulate_quantization=quantization_aware), tflite
    raise MlflowException(f"'{model_uri}' is neither a Keras nor a tflite_keras model.",
                          error_code=INVALID_PARAMETER_VALUE)


def _subdirectory(parent: str, name: str) -> str:
    path = os.path.join(parent, name)
    os.makedirs(path)
    return path


def _recipe_source(model_uri: str, source, client: MlflowClient) -> str:
    """The ``.tflite`` a Keras version takes its recipe from: a fine-tuned version names
    it; a reconstructed one, its source."""
    tags = client.get_model_version(source.registered_name, source.version).tags \
        if source.registered_name else {}
    tflite_uri = tags.get(RECIPE_SOURCE) or tags.get(lineage.SOURCE_URI)
    if not tflite_uri:
        raise MlflowException(f"'{model_uri}' has no {lineage.SOURCE_URI} tag: cannot "
                              "tell which .tflite to take the recipe from.",
                              error_code=INVALID_PARAMETER_VALUE)
    return tflite_uri


@dataclass
class _TrainingPlan:
    """What ``fit`` gets, checked before any run exists: inputs, targets and a loss per
    trained output (a streaming model: one ``"output"``, trained through ``view``)."""

    x: np.ndarray
    targets: dict
    losses: dict
    streaming: bool
    outputs: dict  # Keras output name -> output tensor (not streaming)
    view: object = None  # streaming: the model fit trains (see _training_view)


def _plan_training(keras_model, data, loss, source_outputs: list) -> _TrainingPlan:
    from mlflow_tflite_keras.export import _streaming_layer

    input_shape = tuple(keras_model.inputs[0].shape[1:])
    x, y = (load_training_data(data, input_shape=input_shape) if isinstance(data, str)
            else data)
    x = np.asarray(x, dtype=keras_model.inputs[0].dtype or "float32")
    # A streaming model trains on sequences [N, time, *frame], with targets per step or per
    # sequence; its .tflite takes frames, one per invoke.
    if _streaming_layer(keras_model) is not None:
        view = _training_view(keras_model, y, True)
        return _TrainingPlan(x, {"output": y},
                             {"output": loss or _default_loss(view, y, head=keras_model)},
                             True, {}, view)
    outputs = _output_tensors(keras_model)
    targets = _targets(keras_model, y, source_outputs)
    for name, values in targets.items():
        _check_target_shape(name, values, tuple(outputs[name].shape[1:]), len(x))
    losses = _losses(outputs, targets, loss, _pair_names_safe(list(outputs), source_outputs))
    return _TrainingPlan(x, targets, losses, False, outputs)


def _check_target_shape(name: str, values: np.ndarray, shape: tuple, rows: int):
    """Targets for an output of per-row ``shape``: ``[N, *shape]``, or integer class labels
    ``[N, *shape[:-1]]``, with one row per input row."""
    if len(values) != rows:
        raise MlflowException(f"Output '{name}' has {len(values)} target rows for "
                              f"{rows} input rows.", error_code=INVALID_PARAMETER_VALUE)
    labels = np.issubdtype(values.dtype, np.integer) and values.ndim == len(shape)
    if not labels and (values.ndim != len(shape) + 1 or any(
            d is not None and d != v for d, v in zip(shape, values.shape[1:]))):
        raise MlflowException(
            f"Targets for output '{name}' have shape {list(values.shape)}; the output "
            f"is [N, {', '.join(str(d) for d in shape)}] (or integer class labels "
            f"[N{', ' if len(shape) > 1 else ''}{', '.join(str(d) for d in shape[:-1])}]).",
            error_code=INVALID_PARAMETER_VALUE)


def _fit(keras_model, plan: _TrainingPlan, epochs: int, batch_size: int,
         learning_rate: float, validation_data, epoch_say, say):
    """Train a model of the trained outputs only, sharing ``keras_model``'s layers (and
    weights): outputs without targets are not in the loss. Returns the ``History``."""
    import keras

    metrics = {k: ["accuracy"] for k, v in plan.losses.items()
               if isinstance(v, keras.losses.SparseCategoricalCrossentropy)}
    optimizer = keras.optimizers.Adam(learning_rate)
    if plan.streaming:
        trainer, y_train = plan.view, plan.targets["output"]
        trainer.compile(optimizer, loss=plan.losses["output"], metrics=metrics.get("output", []))
    elif len(plan.targets) == 1:  # plain metric names ("loss", "accuracy")
        (name, y_train), = plan.targets.items()
        trainer = keras.Model(keras_model.input, plan.outputs[name])
        trainer.compile(optimizer, loss=plan.losses[name], metrics=metrics.get(name))
    else:
        y_train = plan.targets
        trainer = keras.Model(keras_model.input, {k: plan.outputs[k] for k in plan.targets})
        trainer.compile(optimizer, loss=plan.losses, metrics=metrics or None)
    say(f"Fine-tuning {', '.join(plan.targets)} for {epochs} epoch(s) on {len(plan.x)} "
        "rows ...")
    callbacks = [mlflow.keras.MlflowCallback()]
    if epoch_say is not None:
        callbacks.append(_epoch_callback(epoch_say, epochs))
    return trainer.fit(plan.x, y_train, epochs=epochs, batch_size=batch_size, verbose=0,
                       validation_data=validation_data, callbacks=callbacks)


def _export(keras_model, source: TFLiteModel, x, representative_data,
            allow_interface_changes: bool, parity_tolerances, say):
    """``(exported TFLiteModel, InterfaceReport, ParityReport)``: the fine-tuned model exported
    like ``source`` (its interface compared by the export), parsed once and checked against
    the Keras model; both reports logged. An :class:`ExportParityError` when parity fails."""
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.export import export_tflite

    say("Exporting a .tflite with the source's recipe and interface ...")
    _, interface = export_tflite(
        keras_model, like=source, return_report=True,
        representative_data=representative_data if representative_data is not None
        else x[:200], allow_interface_changes=allow_interface_changes)
    mlflow.log_dict(interface.to_dict(), "interface_report.json")
    exported = interface.new_model  # parsed once, by the export's interface check
    parity = check_parity(exported, keras_model, x[:32], compiled="isolated",
                          **(parity_tolerances or {}))
    mlflow.log_metrics(parity.metrics(prefix="export_parity_"))
    mlflow.log_dict(parity.to_dict(), "export_parity_report.json")
    if not parity.passed:
        raise ExportParityError(parity,
            "The exported .tflite does not answer like the fine-tuned Keras model; "
            f"nothing was registered.\n{parity}")
    return exported, interface, parity


def _register_versions(client: MlflowClient, keras_model, exported: TFLiteModel, tflite,
                       plan: _TrainingPlan, parity, model_uri: str, names: tuple[str, str],
                       parent_chain: list[str], run_id: str, await_registration_for: int,
                       say) -> tuple[ModelVersion, ModelVersion]:
    """Log and register the fine-tuned Keras model (under ``names[0]``, child of the end of
    ``parent_chain``) and the exported ``.tflite`` (under ``names[1]``, its child)."""
    keras_name, tflite_name = names
    finetune_tags = {RECIPE_SOURCE: tflite.uri, lineage.TAG_PREFIX + "finetune_run_id": run_id}
    say(f"Registering the fine-tuned Keras model under '{keras_name}' ...")
    keras_info = log_keras_model(keras_model, tflite.info, streaming=plan.streaming)
    keras_version = _register(
        client, keras_info.model_uri, keras_name, parent_chain, await_registration_for,
        {lineage.ROLE: ROLE_FINETUNED, lineage.PARENT: parent_chain[-1],
         lineage.SOURCE_URI: model_uri, **finetune_tags})
    say(f"Registering the exported .tflite under '{tflite_name}' ...")
    tflite_info = mlflow.tflite_keras.log_model(
        exported, name="tflite_model",
        input_example=plan.x[0, :8] if plan.streaming else plan.x[:2])
    tflite_version = _register(
        client, tflite_info.model_uri, tflite_name, [*parent_chain, _ref(keras_version)],
        await_registration_for,
        {lineage.ROLE: ROLE_EXPORTED, lineage.PARENT: _ref(keras_version), **finetune_tags,
         lineage.PARITY_PASSED: str(int(parity.passed))})
    return keras_version, tflite_version


def _register(client: MlflowClient, model_uri: str, name: str, parent_chain: list[str],
              await_registration_for: int, tags: dict) -> ModelVersion:
    """Register a logged model with ``tags`` and its lineage path (``parent_chain`` and
    itself)."""
    version = mlflow.register_model(model_uri, name, await_registration_for, tags=tags)
    client.set_model_version_tag(name, version.version, lineage.CHAIN,
                                 " -> ".join([*parent_chain, _ref(version)]))
    return version


def _pair_names_safe(keras_names: list, source_names: list) -> dict:
    """source output name -> Keras output name (identity when they cannot be paired)."""
    from mlflow_tflite_keras.export import _pair_names

    return _pair_names(keras_names, source_names) or {n: n for n in keras_names}
