"""
The ``mlflow.tflite_keras`` module provides APIs for logging and loading TensorFlow Lite models
in the MLflow Model format. It exports MLflow Models with the following flavors:

TFLite (native) format
    The ``.tflite`` flatbuffer, loadable with :py:func:`load_model` as a
    :py:class:`LoadedTFLiteModel` (bytes, parsed description, fresh interpreters).
:py:mod:`mlflow.pyfunc`
    Runs the model on the LiteRT interpreter (``ai-edge-litert``) with no TensorFlow import,
    for ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and ``spark_udf``.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

import mlflow
from mlflow import pyfunc
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import Model, ModelInputExample, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example
from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS
from mlflow.tracking.artifact_utils import _download_artifact_from_uri
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.utils.docstring_utils import LOG_MODEL_PARAM_DOCS, format_docstring
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _CONSTRAINTS_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _mlflow_conda_env,
    _process_conda_env,
    _process_pip_requirements,
    _PythonEnv,
    _validate_env_arguments,
)
from mlflow.utils.file_utils import get_total_file_size, write_to
from mlflow.utils.model_utils import (
    _add_code_from_conf_to_system_path,
    _copy_extra_files,
    _get_flavor_configuration,
    _validate_and_copy_code_paths,
    _validate_and_prepare_target_save_path,
)
from mlflow.utils.requirements_utils import _get_pinned_requirement

from mlflow_tflite_keras import __version__
from mlflow_tflite_keras.errors import reject_unknown_keywords
from mlflow_tflite_keras.runtime import RuntimeModel, TFLiteRunner, string_outputs_as_text
from mlflow_tflite_keras.tflite_model import TFLiteModel, describe_path

__all__ = ["FLAVOR_NAME", "LoadedTFLiteModel", "get_default_conda_env",
           "get_default_pip_requirements", "infer_signature", "load_like", "load_model",
           "log_model", "save_model"]

FLAVOR_NAME = "tflite_keras"
RUNTIME_PACKAGE = "ai-edge-litert"

_MODEL_DATA_SUBPATH = "model.tflite"
_METADATA_SUBPATH = "tflite_metadata"
_PACKAGE_DIR = Path(__file__).resolve().parent

_logger = logging.getLogger(__name__)


def get_default_pip_requirements():
    """
    Returns:
        A list of default pip requirements for MLflow Models produced by this flavor: the LiteRT
        interpreter, numpy and mlflow. This package's own code travels with each model (in its
        ``code`` directory), so no requirement on ``mlflow-tflite-keras`` is needed to serve.
    """
    return [_get_pinned_requirement(p) for p in (RUNTIME_PACKAGE, "numpy", "mlflow")]


def get_default_conda_env():
    """
    Returns:
        The default Conda environment for MLflow Models produced by calls to
        :func:`save_model()` and :func:`log_model()`.
    """
    return _mlflow_conda_env(additional_pip_deps=get_default_pip_requirements())


# Keywords of ``Model.log`` that ``log_model`` passes through (``artifact_path`` is MLflow's
# deprecated spelling of ``name``).
_MODEL_LOG_KEYWORDS = ("artifact_path", "run_id", "resources", "auth_policy", "prompts")


def _parameters(function) -> list[str]:
    import inspect

    return [name for name, p in inspect.signature(function).parameters.items()
            if p.kind is not p.VAR_KEYWORD]


def _runtime_version() -> str:
    from importlib.metadata import version

    return version(RUNTIME_PACKAGE)


_KERAS_SOURCE_SUBPATH = "source.keras"


@dataclass
class _KerasSource:
    """A Keras model converted once (in ``log_model``) and carried to ``save_model``."""

    model: object
    tflite: TFLiteModel
    recipe: str


def _is_keras_model(obj) -> bool:
    return type(obj).__module__.startswith(("keras", "tf_keras", "tensorflow")) or any(
        c.__module__.startswith("keras") for c in type(obj).__mro__)


def _prepare(tflite_model, recipe=None, representative_data=None,
             keep_source=True) -> tuple[TFLiteModel, _KerasSource | None]:
    """The parsed ``.tflite`` (a :class:`TFLiteModel` is taken as it is, a path or bytes
    parsed, a Keras model converted with ``recipe``), and the Keras source to keep alongside,
    if any. Invalid flatbuffers are refused here, before anything is written."""
    if isinstance(tflite_model, _KerasSource):
        return tflite_model.tflite, (tflite_model if keep_source else None)
    if isinstance(tflite_model, (TFLiteModel, str, os.PathLike, bytes, bytearray, memoryview)):
        if recipe is not None or representative_data is not None:
            raise MlflowException("recipe and representative_data apply to Keras models only; "
                                  "a .tflite file is stored as it is.",
                                  error_code=INVALID_PARAMETER_VALUE)
        return TFLiteModel.load(tflite_model), None
    if _is_keras_model(tflite_model):
        from mlflow_tflite_keras.keras_export import keras_to_tflite
        from mlflow_tflite_keras.recipes import normalize_recipe

        recipe = normalize_recipe(recipe or "float32")
        model = TFLiteModel(keras_to_tflite(tflite_model, recipe,
                                            representative_data=representative_data))
        return model, (_KerasSource(tflite_model, model, recipe) if keep_source else None)
    raise MlflowException(
        "tflite_model must be a path to a .tflite file, its bytes, a TFLiteModel or a Keras "
        f"model; got {type(tflite_model).__name__}.",
        error_code=INVALID_PARAMETER_VALUE,
    )


def infer_signature(model: TFLiteModel, signature_key: str | None = None) -> ModelSignature:
    """The MLflow signature of one signature key (default: the first).

    Quantized inputs and outputs appear as float32 (the pyfunc quantizes and dequantizes);
    -1 marks dynamic dimensions and the batch dimension wherever the pyfunc can batch.
    """
    spec = TFLiteRunner(model).signature(signature_key)

    def tensor_spec(s, is_output):
        shape = [-1 if d == -1 else d for d in s.shape_signature]
        if spec.batched and shape:
            shape[0] = -1
        dtype = s.logical_dtype if (is_output or s.quantized) else s.dtype
        if dtype == object:  # STRING: text in and out of the pyfunc
            dtype = str
        return TensorSpec(np.dtype(dtype), tuple(shape), s.name)

    keys = [sig.key for sig in model.signatures]
    params = ParamSchema([
        ParamSpec("signature_key", "string", keys[0] if keys else ""),
        ParamSpec("dequantize", "boolean", True),
    ])
    return ModelSignature(
        inputs=Schema([tensor_spec(s, False) for s in spec.inputs]),
        outputs=Schema([tensor_spec(s, True) for s in spec.outputs]),
        params=params,
    )


@format_docstring(LOG_MODEL_PARAM_DOCS.format(package_name=FLAVOR_NAME))
def save_model(
    tflite_model,
    path,
    conda_env=None,
    code_paths=None,
    mlflow_model=None,
    signature: ModelSignature = None,
    input_example: ModelInputExample = None,
    pip_requirements=None,
    extra_pip_requirements=None,
    metadata=None,
    extra_files=None,
    num_threads: int | None = None,
    recipe: str | None = None,
    representative_data=None,
    keep_source: bool = True,
    **kwargs,
):
    """
    Save a TFLite model to a path on the local file system.

    Args:
        tflite_model: Path (str or PathLike) to a ``.tflite`` file, its bytes, a parsed
            :class:`~mlflow_tflite_keras.tflite_model.TFLiteModel` (used as it is, not parsed
            again), or a Keras model (converted with ``TFLiteConverter``, float32). Anything
            that is not a valid TFLite flatbuffer is refused before anything is written.
        path: Local path where the model is to be saved.
        conda_env: {{ conda_env }}
        code_paths: {{ code_paths }}
        mlflow_model: :py:mod:`mlflow.models.Model` this flavor is being added to.
        signature: :py:class:`ModelSignature <mlflow.models.ModelSignature>`. When None, it is
            inferred from the model's own tensors (names from its SignatureDef, else tensor
            names). Pass ``False`` to store no signature.
        input_example: {{ input_example }}
        pip_requirements: {{ pip_requirements }}
        extra_pip_requirements: {{ extra_pip_requirements }}
        metadata: {{ metadata }}
        extra_files: {{ extra_files }}
        num_threads: Default number of interpreter threads for the pyfunc (None: LiteRT's
            default). Overridable at load time with ``model_config={"num_threads": N}``.
        recipe: For a Keras model: ``float32`` (default), ``float16``, ``dynamic``
            (dynamic-range), ``int8`` (full integer, needs ``representative_data``),
            ``uint8`` or ``int16x8``.
        representative_data: Calibration inputs for full-integer recipes (an array, a list of
            arrays, a dict by input name, or a callable yielding samples).
        keep_source: For a Keras model: also store it as ``source.keras`` in the same MLflow
            model (recorded under ``keras_source`` in the flavor), so the original, not a
            reconstruction, can be registered as its Keras version.
        kwargs: None are accepted: an unknown keyword (e.g. a typo) is a ``TypeError``
            naming the closest valid parameter.
    """
    reject_unknown_keywords("save_model", kwargs, _parameters(save_model))
    model, keras_source = _prepare(tflite_model, recipe, representative_data, keep_source)
    _check_saveable(model)  # before anything is written
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise MlflowException(f"num_threads must be a positive integer, got {num_threads!r}.",
                              error_code=INVALID_PARAMETER_VALUE)
    _validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    if signature is None:
        signature = infer_signature(model)
    path = os.path.abspath(path)
    _validate_and_prepare_target_save_path(path)
    try:
        _write_model(model, path, conda_env, code_paths, mlflow_model, signature, input_example,
                     pip_requirements, extra_pip_requirements, metadata, extra_files, num_threads,
                     keras_source)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # never leave a half-written model behind
        raise


def _write_model(model, path, conda_env, code_paths, mlflow_model, signature, input_example,
                 pip_requirements, extra_pip_requirements, metadata, extra_files, num_threads,
                 keras_source):
    _check_runs_on_litert(model)
    # This package's code travels with the model so any environment with the default
    # requirements (virtualenv, uv, conda) can load the pyfunc.
    code_dir_subpath = _validate_and_copy_code_paths([*(code_paths or []), str(_PACKAGE_DIR)], path)
    if mlflow_model is None:
        mlflow_model = Model()
    if signature is not False and signature is not None:
        mlflow_model.signature = signature
    if input_example is not None:
        _save_example(mlflow_model, input_example, path)
    if metadata is not None:
        mlflow_model.metadata = metadata

    with open(os.path.join(path, _MODEL_DATA_SUBPATH), "wb") as f:
        f.write(model.model_bytes)
    metadata_files = _write_tflite_metadata(model, path)
    source_conf = None
    if keras_source is not None:
        import keras

        keras_source.model.save(os.path.join(path, _KERAS_SOURCE_SUBPATH))
        source_conf = {"path": _KERAS_SOURCE_SUBPATH, "recipe": keras_source.recipe,
                       "keras_version": keras.__version__}

    pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_tflite_keras.flavor",
        data=_MODEL_DATA_SUBPATH,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=code_dir_subpath,
        # Declared so that load_model(..., model_config={...}) may override them.
        model_config={"num_threads": num_threads, "max_batch_rows": None},
    )
    extra_files_config = _copy_extra_files(extra_files, path)
    description = model.describe()
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        data=_MODEL_DATA_SUBPATH,
        sha256=model.sha256,
        size_bytes=len(model.model_bytes),
        runtime={"package": RUNTIME_PACKAGE, "version": _runtime_version()},
        flavor_version=__version__,
        num_threads=num_threads,
        tflite_metadata=metadata_files,
        keras_source=source_conf,
        code=code_dir_subpath,
        **description,
        **extra_files_config,
    )
    if size := get_total_file_size(path):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))

    if conda_env is None:
        default_reqs = get_default_pip_requirements() if pip_requirements is None else None
        conda_env, pip_requirements, pip_constraints = _process_pip_requirements(
            default_reqs, pip_requirements, extra_pip_requirements
        )
    else:
        conda_env, pip_requirements, pip_constraints = _process_conda_env(conda_env)
    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
        yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
    if pip_constraints:
        write_to(os.path.join(path, _CONSTRAINTS_FILE_NAME), "\n".join(pip_constraints))
    write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(pip_requirements))
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def _check_saveable(model: TFLiteModel) -> TFLiteModel:
    """Refuse, before anything is written or logged, a model with STRING tensors that LiteRT
    cannot run: its pyfunc (the only way to use one: the converter takes no strings) would
    never load. Models LiteRT runs exchange strings through the pyfunc."""
    if any(t.type_name == "STRING" for sg in model.subgraphs for t in sg.tensors):
        try:
            TFLiteRunner(model).new_interpreter()
        except MlflowException as e:
            raise MlflowException(f"The model has STRING tensors and LiteRT cannot run it: "
                                  f"{e.message}", error_code=INVALID_PARAMETER_VALUE) from None
    return model


def _check_runs_on_litert(model: TFLiteModel):
    """Warn (not fail) when LiteRT cannot run the model, e.g. an unregistered custom op.

    Such a model is still worth tracking and converting; only its pyfunc will not load.
    """
    try:
        TFLiteRunner(model).new_interpreter()
    except MlflowException as e:
        _logger.warning("The model is saved, but its pyfunc will not load here: %s", e.message)


def _write_tflite_metadata(model: TFLiteModel, path: str) -> list[str]:
    """Extract TFLite metadata (label files, normalization, ...) as readable artifacts."""
    from mlflow_tflite_keras.model_metadata import extract_metadata

    files = extract_metadata(model)
    if not files:
        return []
    target = os.path.join(path, _METADATA_SUBPATH)
    os.makedirs(target, exist_ok=True)
    written = []
    for name, data in sorted(files.items()):
        safe = os.path.basename(name) or "unnamed"
        with open(os.path.join(target, safe), "wb") as f:
            f.write(data)
        written.append(f"{_METADATA_SUBPATH}/{safe}")
    return written


@format_docstring(LOG_MODEL_PARAM_DOCS.format(package_name=FLAVOR_NAME))
def log_model(
    tflite_model,
    name: str | None = None,
    conda_env=None,
    code_paths=None,
    registered_model_name=None,
    signature: ModelSignature = None,
    input_example: ModelInputExample = None,
    await_registration_for=DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
    pip_requirements=None,
    extra_pip_requirements=None,
    metadata=None,
    extra_files=None,
    num_threads: int | None = None,
    recipe: str | None = None,
    representative_data=None,
    keep_source: bool = True,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    **kwargs,
):
    """
    Log a TFLite model as an MLflow model of the current run (a run is started if none is).

    Args:
        tflite_model: Path to a ``.tflite`` file, its bytes, a ``TFLiteModel``, or a Keras
            model. It is parsed (or converted) once, before a run or a model is created.
        name: {{ name }}
        conda_env: {{ conda_env }}
        code_paths: {{ code_paths }}
        registered_model_name: If given, create a model version under this name, creating the
            registered model if it does not exist.
        signature: Model signature; inferred from the model when None, none stored when False.
        input_example: {{ input_example }}
        await_registration_for: Seconds to wait for the model version to become READY.
        pip_requirements: {{ pip_requirements }}
        extra_pip_requirements: {{ extra_pip_requirements }}
        metadata: {{ metadata }}
        extra_files: {{ extra_files }}
        num_threads: Default interpreter threads for the pyfunc.
        recipe: For a Keras model, the quantization recipe (see :func:`save_model`).
        representative_data: Calibration inputs for full-integer recipes.
        keep_source: For a Keras model, keep it as ``source.keras`` in the logged model.
        params: {{ params }}
        tags: {{ tags }}
        model_type: {{ model_type }}
        step: {{ step }}
        model_id: {{ model_id }}
        kwargs: Passed to :py:meth:`mlflow.models.Model.log` (``run_id``, ``resources``,
            ``auth_policy``, ``prompts``); any other keyword is a ``TypeError`` naming the
            closest valid parameter.

    Returns:
        A :py:class:`ModelInfo <mlflow.models.model.ModelInfo>` of the logged model.
    """
    import mlflow_tflite_keras.flavor as this_flavor

    reject_unknown_keywords("log_model", kwargs, {*_parameters(log_model), *_MODEL_LOG_KEYWORDS})
    # Validate (and convert a Keras model, once) before a run or a logged model is created.
    # The model is parsed (and a Keras model converted) once, here, and handed to save_model.
    model, keras_source = _prepare(tflite_model, recipe, representative_data, keep_source)
    _check_saveable(model)
    return Model.log(
        artifact_path=kwargs.pop("artifact_path", None),
        name=name,
        flavor=this_flavor,
        tflite_model=keras_source or model,
        keep_source=keep_source,
        conda_env=conda_env,
        code_paths=code_paths,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=input_example,
        await_registration_for=await_registration_for,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        extra_files=extra_files,
        num_threads=num_threads,
        params=params,
        tags=tags,
        model_type=model_type,
        step=step,
        model_id=model_id,
        **kwargs,
    )


class LoadedTFLiteModel:
    """A ``.tflite`` model loaded from MLflow: its bytes, its description, fresh interpreters."""

    def __init__(self, model_bytes: bytes | None, flavor_conf: dict | None = None,
                 num_threads: int | None = None, local_path: str | None = None,
                 max_batch_rows: int | None = None, model_file: str | None = None):
        self.flavor_conf = flavor_conf or {}
        self.num_threads = num_threads
        self.local_path = local_path
        if model_file is None:  # bytes from the caller: validated here, parsed whole
            runtime_model = self.__dict__["model"] = TFLiteModel(model_bytes)
        else:
            # A saved model, validated when it was saved: the runner reads only the tensors
            # it exchanges from the memory-mapped file; the whole file is parsed (``model``)
            # only when asked for.
            runtime_model = RuntimeModel(path=model_file,
                                         stateful=self.flavor_conf.get("stateful"))
        # Large batches run in chunks (at most this many rows, and ~64 MiB of input).
        self._runner = TFLiteRunner(runtime_model, num_threads=num_threads,
                                    max_batch_rows=max_batch_rows)

    @cached_property
    def model(self) -> TFLiteModel:
        """The parsed and validated :class:`TFLiteModel`."""
        return TFLiteModel(self.model_bytes)

    @property
    def model_bytes(self) -> bytes:
        return self._runner.model.model_bytes

    @property
    def description(self) -> dict:
        return self.model.describe()

    @property
    def signature_keys(self) -> list[str]:
        return [s.key for s in self._runner.model.signatures]

    def interpreter(self, **options):
        """A new, allocated ``ai_edge_litert.interpreter.Interpreter`` for this model."""
        from ai_edge_litert.interpreter import Interpreter

        options.setdefault("num_threads", self.num_threads)
        self._runner.model.check_litert_support()
        interpreter = Interpreter(**self._runner.interpreter_source(), **options)
        interpreter.allocate_tensors()
        return interpreter

    def predict(self, data, signature_key: str | None = None, dequantize: bool = True):
        """Run the model with the pyfunc's rules (no schema enforcement): integer arrays for
        quantized inputs pass through unchanged, float arrays are quantized."""
        feeds = data if type(data) is np.ndarray else _feeds_from(data, self._runner,
                                                                  signature_key)
        outputs = self._runner.predict(feeds, signature_key=signature_key, dequantize=dequantize)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    @property
    def has_keras_source(self) -> bool:
        return bool(self.flavor_conf.get("keras_source")) and self.local_path is not None

    def load_keras_source(self):
        """The Keras model kept when this ``.tflite`` was logged from Keras (``safe_mode``)."""
        if not self.has_keras_source:
            raise MlflowException("This model was not logged from a Keras model with "
                                  "keep_source=True: it has no Keras source.",
                                  error_code=INVALID_PARAMETER_VALUE)
        import keras

        path = os.path.join(self.local_path, self.flavor_conf["keras_source"]["path"])
        return keras.saving.load_model(path, safe_mode=True)

    def save(self, path) -> None:
        """Write the ``.tflite`` file."""
        Path(path).write_bytes(self.model_bytes)

    def __repr__(self):
        return (f"LoadedTFLiteModel(sha256={self.model.sha256[:12]}…, "
                f"quantization={self.model.quantization_kind}, ops={len(self.model.operator_names)})")


def _feeds_from(data, runner: TFLiteRunner, signature_key):
    """ndarray / dict / DataFrame -> what the runner takes."""
    if isinstance(data, pd.DataFrame):
        spec = runner.signature(signature_key)
        names = [s.name for s in spec.inputs]
        if len(names) == 1 and list(data.columns) != names:
            # Tabular single-input model: the row's columns are the input's values.
            values = data.to_numpy()
            if values.dtype == object:
                values = _stack_cells(data.iloc[:, 0]) if data.shape[1] == 1 else values
            return _unflatten(values, spec.inputs[0], spec.batched)
        missing = [n for n in names if n not in data.columns]
        if missing:
            raise MlflowException(f"The DataFrame lacks column(s) {missing} for the model's "
                                  f"inputs {names}.", error_code=INVALID_PARAMETER_VALUE)
        return {s.name: _unflatten(_stack_cells(data[s.name]), s, spec.batched)
                for s in spec.inputs}
    if isinstance(data, dict):
        return {k: np.asarray(v) if isinstance(v, list) else v for k, v in data.items()}
    if isinstance(data, (np.ndarray, list)):
        return np.asarray(data)
    raise MlflowException(
        f"Input must be a numpy array, a dict of arrays or a pandas DataFrame, got "
        f"{type(data).__name__}.", error_code=INVALID_PARAMETER_VALUE)


def _unflatten(values: np.ndarray, tensor, batched: bool) -> np.ndarray:
    """Rows given flat ([N, prod(row shape)], e.g. a Spark array column) -> the input's row
    shape, in C order. Anything else is left to the runner's shape check."""
    row_shape = tuple(tensor.shape[1:])
    if (batched and values.ndim == 2 and len(row_shape) > 1
            and int(np.prod(row_shape)) == values.shape[1]):
        return values.reshape((values.shape[0], *row_shape))
    return values


def _stack_cells(column: pd.Series) -> np.ndarray:
    """A tensor column (one array per cell, as MLflow sends them) -> one batched array.

    Cells may be flat or nested: Spark hands an ``array<array<...>>`` cell to pandas as an
    object array of arrays, which is densified level by level.
    """
    values = column.to_numpy()
    if values.dtype != object:
        return values
    try:
        return np.stack([_dense(v) for v in values])
    except ValueError as e:
        raise MlflowException(f"Column '{column.name}' has cells of different shapes: {e}",
                              error_code=INVALID_PARAMETER_VALUE) from None


def _dense(cell) -> np.ndarray:
    """One cell (list, array, or object array of arrays as Spark's nested arrays) -> an array."""
    a = np.asarray(cell)
    if a.dtype == object and a.ndim > 0 and a.size and isinstance(a.flat[0], (np.ndarray, list)):
        return np.stack([_dense(v) for v in a])
    return a


class _TFLitePyfuncWrapper:
    """``python_function`` implementation: LiteRT interpreter, no TensorFlow."""

    def __init__(self, loaded: LoadedTFLiteModel):
        self.loaded = loaded

    def get_raw_model(self) -> LoadedTFLiteModel:
        return self.loaded

    def predict(self, data, params: dict[str, Any] | None = None):
        """
        Args:
            data: ``np.ndarray`` (single-input models), ``dict[str, np.ndarray]`` (named inputs)
                or ``pandas.DataFrame`` (tabular single-input models, or one tensor column per
                input).
            params: ``signature_key`` (default: the first SignatureDef), ``dequantize``
                (default True: integer outputs are returned as float32).

        Returns:
            ``np.ndarray`` for single-output models, else ``dict[name, np.ndarray]``.
        """
        if not params:  # the common call: checked once, not parsed
            outputs = self.loaded.predict(data)
            key = None
        else:
            key = params.get("signature_key") or None
            dequantize = params.get("dequantize", True)
            if isinstance(dequantize, str):
                dequantize = dequantize.strip().lower() not in ("false", "0", "no")
            outputs = self.loaded.predict(data, signature_key=key, dequantize=bool(dequantize))
        if key is None and not self._default_string_outputs:
            return outputs
        if self.loaded._runner.signature(key).string_outputs:
            return string_outputs_as_text(outputs)
        return outputs

    @cached_property
    def _default_string_outputs(self) -> bool:
        return self.loaded._runner.signature(None).string_outputs


# MLflow's PyFuncModel reads predict's signature on every call (does it take params?);
# declared once, inspect returns it instead of rebuilding it (~35 us a call after an invoke
# of a real model has evicted the caches).
_TFLitePyfuncWrapper.predict.__signature__ = inspect.signature(_TFLitePyfuncWrapper.predict)


def _flavor_conf_and_root(path: str):
    root = path if os.path.isdir(path) else os.path.dirname(path)
    # MLmodel read with libyaml when PyYAML has it: the pure-Python parser takes most of a
    # load's own time (MLflow's pyfunc.load_model has parsed it once already).
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            with open(os.path.join(root, MLMODEL_FILE_NAME)) as f:
                conf = (yaml.load(f, Loader=loader) or {}).get("flavors", {}).get(FLAVOR_NAME)
            if isinstance(conf, dict):
                return conf, root
        except (OSError, yaml.YAMLError, AttributeError):
            pass  # MLflow's reader below says what is wrong
    return _get_flavor_configuration(model_path=root, flavor_name=FLAVOR_NAME), root


def _load_pyfunc(path, model_config: dict | None = None):
    """Load the pyfunc implementation; called by ``mlflow.pyfunc.load_model``.

    ``model_config={"num_threads": N}`` overrides the save-time default;
    ``model_config={"max_batch_rows": N}`` bounds how many rows one invoke takes (bigger
    batches run in chunks; by default chunks hold about 64 MiB of input).
    """
    conf, root = _flavor_conf_and_root(path)
    config = model_config or {}
    num_threads = config.get("num_threads", conf.get("num_threads"))
    max_rows = config.get("max_batch_rows")
    model_file = _model_file(root, conf)
    return _TFLitePyfuncWrapper(LoadedTFLiteModel(
        None, conf, None if num_threads is None else int(num_threads), root,
        None if max_rows is None else int(max_rows), model_file=model_file))


def _model_file(root: str, conf: dict) -> str:
    """The saved ``.tflite``, checked against the size recorded at save time (a cheap guard
    against a truncated or swapped artifact; the file was validated when saved)."""
    path = os.path.join(root, conf.get("data", _MODEL_DATA_SUBPATH))
    recorded = conf.get("size_bytes")
    if recorded is not None and os.path.getsize(path) != int(recorded):
        raise MlflowException(f"{path} has {os.path.getsize(path)} bytes, but the model was "
                              f"saved with {recorded}: the artifact is damaged or replaced.",
                              error_code=INVALID_PARAMETER_VALUE)
    return path


def load_model(model_uri, dst_path=None) -> LoadedTFLiteModel:
    """
    Load a TFLite model logged with this flavor.

    Args:
        model_uri: The location, in URI format, of the MLflow model, for example
            ``runs:/<run_id>/model``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
            ``models:/<model_id>`` or a local path.
        dst_path: Local directory to download the model artifacts to (must exist).

    Returns:
        A :py:class:`LoadedTFLiteModel`.
    """
    local_path = _download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path)
    conf = _get_flavor_configuration(model_path=local_path, flavor_name=FLAVOR_NAME)
    _add_code_from_conf_to_system_path(local_path, conf)
    return LoadedTFLiteModel(None, conf, conf.get("num_threads"), local_path,
                             model_file=_model_file(local_path, conf))


def load_like(like):
    """A :class:`TFLiteModel` from a ``.tflite`` path or bytes, a TFLiteModel, a loaded
    flavor model, or any MLflow model URI (or local model directory) of the tflite_keras
    flavor."""
    if isinstance(like, TFLiteModel):
        return like
    if isinstance(like, (bytes, bytearray, memoryview)):
        return TFLiteModel(bytes(like))
    if hasattr(like, "model_bytes") and not isinstance(like, (str, os.PathLike)):
        return like.model if isinstance(like, LoadedTFLiteModel) else TFLiteModel(like.model_bytes)
    if isinstance(like, (str, os.PathLike)):
        path = os.fspath(like)
        if os.path.isfile(path) or (path.endswith(".tflite") and "://" not in path) or \
                not describe_path(path).startswith("'"):
            return TFLiteModel.load(path)  # (an unprintable "path" is refused, not echoed)
        try:  # an MLflow model URI or directory
            return load_model(path).model
        except MlflowException:
            raise
        except Exception as e:
            raise MlflowException(
                f"Cannot load the source model '{path}': it is neither a .tflite file nor an "
                f"MLflow model of the tflite_keras flavor ({type(e).__name__}: {e}).",
                error_code=INVALID_PARAMETER_VALUE) from e
    raise MlflowException(
        "like must be a .tflite path, its bytes, a TFLiteModel or an MLflow model URI of the "
        f"tflite_keras flavor; got {type(like).__name__}.", error_code=INVALID_PARAMETER_VALUE)
