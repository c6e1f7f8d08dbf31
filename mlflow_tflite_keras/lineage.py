"""Register reconstructed Keras versions next to ``.tflite`` versions, linked both ways."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS
from mlflow.tracking.artifact_utils import _download_artifact_from_uri

from mlflow_tflite_keras import __version__
from mlflow_tflite_keras.errors import ActionableError, ParityCheckError
from mlflow_tflite_keras.keras_logging import (
    keras_pip_requirements,
    log_keras_model,
    source_input_example,
)
from mlflow_tflite_keras.noise import keras_noise_silenced
from mlflow_tflite_keras.tracking import failed_run_on_error, start_run

__all__ = ["CHAIN", "FAILURE", "KERAS_VERSIONS", "METHOD", "PARENT", "PARITY_PASSED", "ROLE",
           "ROLE_KERAS", "ROLE_SOURCE", "SOURCE_SHA256", "SOURCE_URI", "LoadedSource",
           "SourceModel", "keras_pip_requirements", "keras_versions_of", "load_source",
           "model_id_of", "register_keras_version", "resolve_source", "verify_keras_version"]

_logger = logging.getLogger(__name__)

TAG_PREFIX = "tflite_keras."
ROLE = TAG_PREFIX + "role"
ROLE_SOURCE = "source-tflite"
ROLE_KERAS = "reconstructed-keras"
SOURCE_URI = TAG_PREFIX + "source_model_uri"
SOURCE_SHA256 = TAG_PREFIX + "source_sha256"
METHOD = TAG_PREFIX + "method"
KERAS_VERSIONS = TAG_PREFIX + "keras_versions"  # on the source: "name/3,name/5"
PARENT = TAG_PREFIX + "parent"  # the version (or URI) this one was made from
CHAIN = TAG_PREFIX + "lineage"  # the whole path: "name/1 -> name/2 -> ..."
PARITY_PASSED = TAG_PREFIX + "parity_passed"  # "1" or "0"
FAILURE = TAG_PREFIX + "failure"  # on a FAILED run: why nothing was registered


@dataclass
class SourceModel:
    """Where a ``.tflite`` model came from, resolved from any model URI."""

    uri: str
    registered_name: str | None
    version: str | None
    run_id: str | None
    model_id: str | None
    experiment_id: str | None


def resolve_source(model_uri: str, client: MlflowClient) -> SourceModel:
    """``models:/name/3``, ``models:/name@alias``, ``models:/m-...``, ``runs:/...`` or a path."""
    name = version = run_id = model_id = None
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", model_uri)
    if match and not match.group(1).startswith("m-"):
        name = match.group(1)
        mv = (client.get_model_version(name, match.group(2)) if match.group(2)
              else client.get_model_version_by_alias(name, match.group(3)))
        version, run_id, model_id = mv.version, mv.run_id, model_id_of(mv)
    elif (m := re.fullmatch(r"models:/(m-[0-9a-f]+)", model_uri)):
        model_id = m.group(1)
        run_id = client.get_logged_model(model_id).source_run_id
    elif (m := re.fullmatch(r"runs:/([^/]+)/.+", model_uri)):
        run_id = m.group(1)
    if name is None and (model_id or run_id):
        # Not given as a registered version: find one registered from the same model/run.
        found = client.search_model_versions(f"run_id = '{run_id}'") if run_id else []
        found = [mv for mv in found if not model_id or model_id_of(mv) == model_id]
        found = [mv for mv in found if mv.tags.get(ROLE) != ROLE_KERAS]
        if len(found) == 1:
            name, version = found[0].name, found[0].version
            model_id = model_id or model_id_of(found[0])
    experiment_id = client.get_run(run_id).info.experiment_id if run_id else None
    return SourceModel(model_uri, name, version, run_id, model_id, experiment_id)


def model_id_of(mv) -> str | None:
    """The logged model behind a version (stores fill ``model_id`` or only ``source``)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", mv.source or "")
    return match.group(1) if match else None


@dataclass
class LoadedSource:
    """A ``.tflite`` flavor model downloaded once and parsed once: its ``TFLiteModel``
    (``model``) travels through conversion, parity and export; ``info`` is its MLmodel."""

    uri: str
    local_path: str
    loaded: object  # LoadedTFLiteModel
    info: Model
    input_example: object  # the saved input example as arrays, or None

    @property
    def model(self):
        return self.loaded.model


def load_source(model_uri: str, local_path: str) -> LoadedSource:
    """The ``.tflite`` flavor model at ``model_uri``, already downloaded to ``local_path``
    (a kept Keras source is loaded from there: keep it while that may be needed)."""
    info = Model.load(local_path)
    return LoadedSource(model_uri, local_path, mlflow.tflite_keras.load_model(local_path), info,
                        source_input_example(info, local_path))


@keras_noise_silenced()
def register_keras_version(
    model_uri: str,
    *,
    registered_model_name: str | None = None,
    alias: str | None = None,
    parity_inputs=None,
    tolerances: dict | None = None,
    experiment_id: str | None = None,
    await_registration_for: int = DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
    method: str = "auto",
    unsupported: str = "error",
    wrap_ops=(),
    progress=None,
    emulate_quantization: bool = False,
) -> ModelVersion:
    """Reconstruct the ``.tflite`` model at ``model_uri`` as Keras and register it.

    A new run (in the source run's experiment unless ``experiment_id`` is given) logs the Keras
    model with ``mlflow.keras`` (the source's signature and input example), the parity report
    (metrics and ``parity_report.json``) and the conversion report. The new version (under
    the source's registered model by default, so it sits next to the ``.tflite`` version)
    gets lineage tags and a Markdown description; the source version gets a tag listing its
    Keras versions. Converting the same source again creates (and links) another version.

    ``method``: ``"kept-source"`` registers the Keras model stored with the ``.tflite`` when it
    was logged from Keras (``keep_source=True``); ``"reconstructed"`` rebuilds it from the
    flatbuffer; ``"auto"`` (default) uses the kept source when there is one. Parity against
    the ``.tflite`` is measured and logged either way; the ``tflite_keras.method`` tag says
    which was registered. ``unsupported="wrap"`` / ``wrap_ops`` are passed to the converter:
    regions it cannot rebuild are embedded as frozen ``TFLiteLayer``s (listed in the
    conversion report) instead of failing. ``emulate_quantization=True`` reconstructs
    (never the kept float source) a model computing what the integer kernels compute
    (``to_keras(emulate_quantization=True)``), judged by the strict emulated tolerances; the
    version description says so.

    A streaming (stateful) source becomes a recurrent Keras model over frame sequences
    (:mod:`mlflow_tflite_keras.converter.streaming`); parity then compares sequences fed to
    the interpreter one frame per invoke (``parity_inputs``: ``[n, time, *frame]``; random
    sequences by default, ``tolerances={"time_steps": T}`` sets their length).

    Atomic: if conversion or parity fails, no version is created, the source is untouched,
    and the run ends FAILED with the reason logged (tag ``tflite_keras.failure``).
    """
    if method not in ("auto", "kept-source", "reconstructed"):
        raise MlflowException(f"method must be auto, kept-source or reconstructed; got "
                              f"'{method}'.", error_code=INVALID_PARAMETER_VALUE)
    if emulate_quantization and method == "kept-source":
        raise MlflowException("emulate_quantization needs a reconstruction (method "
                              "'reconstructed' or 'auto'): the kept Keras source computes in "
                              "float.", error_code=INVALID_PARAMETER_VALUE)
    say = progress or (lambda message: _logger.info(message))
    client = MlflowClient()
    source = resolve_source(model_uri, client)
    target_name = registered_model_name or source.registered_name
    if not target_name:
        raise ActionableError(f"'{model_uri}' is not a registered model version.",
                              {"registered_model_name": None},
                              "to choose the registered model of the Keras version")

    say(f"Loading {model_uri} ...")
    # The download stays until the end: a kept Keras source is loaded from it.
    with tempfile.TemporaryDirectory() as tmp:
        tflite = load_source(model_uri, _download_artifact_from_uri(model_uri, output_path=tmp))
        run_name = f"convert-{target_name}" + (f"-v{source.version}" if source.version else "")
        with start_run(experiment_id=experiment_id or source.experiment_id,
                       run_name=run_name) as run:
            with failed_run_on_error(FAILURE):
                mlflow.set_tags({ROLE: ROLE_KERAS, SOURCE_URI: model_uri,
                                 SOURCE_SHA256: tflite.model.sha256})
                mlflow.log_params({"source_model_uri": model_uri,
                                   "source_quantization": tflite.model.quantization_kind,
                                   "converter_version": __version__})
                chosen, keras_model, conversion = _keras_model_for(
                    tflite.loaded, method, unsupported, wrap_ops, emulate_quantization, say)
                mlflow.set_tag(METHOD, chosen)
                mlflow.log_dict({"method": chosen, **conversion.to_dict()},
                                "conversion_report.json")
                report = _parity_against_source(tflite, keras_model, conversion, parity_inputs,
                                                tolerances, say)
                say("Logging the Keras model ...")
                info = log_keras_model(keras_model, tflite.info,
                                       input_example=tflite.input_example,
                                       streaming=_is_streaming(tflite.model))
                tags = _lineage_tags(source, model_uri, tflite.model.sha256, report, chosen)
                mlflow.set_logged_model_tags(info.model_id, tags)
                say(f"Registering under '{target_name}' ...")
                version = mlflow.register_model(info.model_uri, target_name,
                                                await_registration_for=await_registration_for,
                                                tags=tags)
            _link_version(client, source, version, tags[PARENT], alias, _description(
                source, model_uri, report, conversion, run.info.run_id, chosen))
        return client.get_model_version(target_name, version.version)


def _keras_model_for(loaded, method: str, unsupported: str, wrap_ops,
                     emulate_quantization: bool, say):
    """``(method, Keras model, ConversionReport)``: the Keras model kept with the ``.tflite``
    (``kept-source``) or one reconstructed from its parsed flatbuffer (with the quantization
    emulated: always reconstructed)."""
    from mlflow_tflite_keras.converter import ConversionReport, convert

    model = loaded.model
    if not emulate_quantization and (
            method == "kept-source" or (method == "auto" and loaded.has_keras_source)):
        say("Loading the Keras model kept with the .tflite ...")
        keras_model = loaded.load_keras_source()
        conversion = ConversionReport(
            model.sha256, model.quantization_kind, model.operator_counts(),
            notes=["The Keras model kept when the .tflite was logged from it "
                   f"(recipe {loaded.flavor_conf['keras_source'].get('recipe')}); "
                   "nothing was reconstructed."])
        return "kept-source", keras_model, conversion
    say("Reconstructing the Keras model ...")
    result = convert(model, unsupported=unsupported, wrap_ops=wrap_ops,
                     emulate_quantization=emulate_quantization)
    return "reconstructed", result.model, result.report


def _is_streaming(model) -> bool:
    from mlflow_tflite_keras.converter.streaming import is_streaming

    return is_streaming(model)


def _parity_against_source(tflite: LoadedSource, keras_model, conversion, parity_inputs,
                           tolerances, say):
    """The parity report of ``keras_model`` against the source (logged to the run); a
    :class:`ParityCheckError` when it fails."""
    from mlflow_tflite_keras.converter.parity import check_parity

    say("Checking parity against the LiteRT interpreter (eager, and compiled in a "
        "separate process) ...")
    # A streaming source is compared on frame sequences (check_parity does it); its input
    # example is a handful of frames, so random sequences by default.
    inputs = parity_inputs if parity_inputs is not None else \
        (None if _is_streaming(tflite.model) else tflite.input_example)
    # Compiled in a child process: a graph that crashes TensorFlow's runtime is reported as
    # a failed check, and never registered.
    report = check_parity(tflite.model, keras_model, inputs, compiled="isolated",
                          tensor_map=conversion.tensor_map, **(tolerances or {}))
    mlflow.log_metrics(report.metrics())
    mlflow.log_dict(report.to_dict(), "parity_report.json")
    if not report.passed:
        raise ParityCheckError(report)
    return report


def _link_version(client: MlflowClient, source: SourceModel, version: ModelVersion,
                  parent: str, alias: str | None, description: str):
    """Describe the new version, chain it to ``parent``, set ``alias`` and list it on the
    source. Never leaves a half-linked version behind, nor a source naming a deleted one."""
    name, ref = version.name, f"{version.name}/{version.version}"
    with failed_run_on_error(FAILURE, "linking failed: "):
        try:
            client.update_model_version(name, version.version, description=description)
            client.set_model_version_tag(name, version.version, CHAIN, f"{parent} -> {ref}")
            if alias:
                client.set_registered_model_alias(name, alias, version.version)
            _link_source(client, source, ref)
        except BaseException:
            _unlink_source(client, source, ref)
            _discard_version(client, source, name, version.version)
            raise


def _lineage_tags(source: SourceModel, model_uri, sha256, report, method: str) -> dict[str, str]:
    """The few tags people filter on (the registry's versions table shows every tag, so each
    must earn its place; ``lineage`` is added once the version number is known). The rest
    (source run and model ids, converter version, every parity figure) is in the conversion
    run (params, metrics, ``parity_report.json``) and the version's Markdown description."""
    return {
        ROLE: ROLE_KERAS,
        METHOD: method,
        SOURCE_URI: model_uri,
        SOURCE_SHA256: sha256,
        PARENT: (f"{source.registered_name}/{source.version}" if source.registered_name
                 else model_uri),
        PARITY_PASSED: str(int(report.passed)),
    }


# The list tags (KERAS_VERSIONS) are derived data. MLflow has no compare-and-set, so two
# registrations doing read-modify-write on one list tag can lose one another's entry. Each
# Keras version is therefore recorded under a tag of its own (KERAS_VERSION_PREFIX + a hash
# of its ref: distinct keys never collide), and the list is rebuilt from those tags and
# re-read until it equals them. The last writer of the list re-reads after writing; any
# registration whose own tag it missed writes the list again after that (see
# _sync_version_list), so once every registration returns the list names all of them.
KERAS_VERSION_PREFIX = TAG_PREFIX + "keras_version."
_SYNC_ATTEMPTS = 60


def _ref_key(keras_ref: str) -> str:
    import hashlib

    return KERAS_VERSION_PREFIX + hashlib.sha256(keras_ref.encode()).hexdigest()[:16]


def _ref_order(ref: str):
    name, _, version = ref.rpartition("/")
    return (name, int(version) if version.isdigit() else 0, ref)


def _listed(tags: dict) -> list[str]:
    return [r for r in tags.get(KERAS_VERSIONS, "").split(",") if r]


def _recorded(tags: dict) -> list[str]:
    return sorted({v for k, v in tags.items() if k.startswith(KERAS_VERSION_PREFIX)},
                  key=_ref_order)


def _legacy_refs(tags: dict) -> dict[str, str]:
    """Per-version tags for a list written before they existed (none recorded yet)."""
    if _recorded(tags):
        return {}
    return {_ref_key(r): r for r in _listed(tags)}


def _sync_version_list(read_tags, write_list, delete_list, removed: str | None = None):
    """Rewrite the list tag from the per-version tags until a re-read after the write shows
    it equal to them (``removed``: a ref whose per-version tag was just deleted)."""
    import random
    import time

    for attempt in range(_SYNC_ATTEMPTS):
        tags = read_tags()
        wanted = [r for r in _recorded(tags) if r != removed]
        if _listed(tags) == wanted and attempt:
            return
        try:
            if wanted:
                write_list(",".join(wanted))
            elif KERAS_VERSIONS in tags:
                delete_list()
            elif attempt:
                return
        except MlflowException as e:
            # Two first writes of the same tag can collide in the store (PostgreSQL: a
            # unique-key violation on the insert); the next round re-reads and rewrites.
            _logger.debug("Concurrent update of %s: %s", KERAS_VERSIONS, e)
        time.sleep(random.uniform(0.0, 0.05) * min(attempt + 1, 5))
    raise MlflowException(f"Could not update the '{KERAS_VERSIONS}' tag: it kept changing "
                          f"under {_SYNC_ATTEMPTS} concurrent updates.")


def _source_version_tags(client: MlflowClient, source: SourceModel, keras_ref: str) -> dict:
    """The source version's tags, after checking it is still the version converted: its
    registered model may have been deleted (and re-created by register_model) meanwhile."""
    try:
        mv = client.get_model_version(source.registered_name, source.version)
    except MlflowException:
        mv = None
    if mv is None or f"{mv.name}/{mv.version}" == keras_ref or \
            mv.tags.get(ROLE) == ROLE_KERAS or \
            (source.model_id and model_id_of(mv) not in (None, source.model_id)):
        raise MlflowException(
            f"The source version {source.registered_name}/{source.version} was deleted while "
            "it was being converted; the Keras version is not registered.",
            error_code=RESOURCE_DOES_NOT_EXIST)
    return mv.tags


def _set_once(write, attempts: int = 5):
    """A tag write that a concurrent registration may race (both inserting the same key):
    retried, since the other writer's value or ours is equally right."""
    import time

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _link_source(client: MlflowClient, source: SourceModel, keras_ref: str):
    """Tag the source version (and its logged model) with its Keras version(s)."""
    if source.registered_name:
        name, version = source.registered_name, source.version
        tags = _source_version_tags(client, source, keras_ref)
        for key, ref in {**_legacy_refs(tags), _ref_key(keras_ref): keras_ref}.items():
            client.set_model_version_tag(name, version, key, ref)
        if ROLE not in tags:
            _set_once(lambda: client.set_model_version_tag(name, version, ROLE, ROLE_SOURCE))
        _sync_version_list(
            lambda: _source_version_tags(client, source, keras_ref),
            lambda value: client.set_model_version_tag(name, version, KERAS_VERSIONS, value),
            lambda: client.delete_model_version_tag(name, version, KERAS_VERSIONS))
    if source.model_id:
        model_id = source.model_id
        legacy = _legacy_refs(client.get_logged_model(model_id).tags)
        _set_once(lambda: client.set_logged_model_tags(
            model_id, {**legacy, _ref_key(keras_ref): keras_ref, ROLE: ROLE_SOURCE}))
        _sync_version_list(
            lambda: client.get_logged_model(model_id).tags,
            lambda value: client.set_logged_model_tags(model_id, {KERAS_VERSIONS: value}),
            lambda: client.delete_logged_model_tag(model_id, KERAS_VERSIONS))


def _unlink_source(client: MlflowClient, source: SourceModel, keras_ref: str):
    """Undo what ``_link_source`` may have done for ``keras_ref`` (best effort)."""
    key = _ref_key(keras_ref)
    if source.registered_name:
        name, version = source.registered_name, source.version
        try:
            mv = client.get_model_version(name, version)
            if f"{mv.name}/{mv.version}" != keras_ref and (
                    key in mv.tags or keras_ref in _listed(mv.tags)):
                if key in mv.tags:
                    client.delete_model_version_tag(name, version, key)
                _sync_version_list(
                    lambda: client.get_model_version(name, version).tags,
                    lambda value: client.set_model_version_tag(name, version, KERAS_VERSIONS,
                                                               value),
                    lambda: client.delete_model_version_tag(name, version, KERAS_VERSIONS),
                    removed=keras_ref)
                tags = client.get_model_version(name, version).tags
                if not _recorded(tags) and tags.get(ROLE) == ROLE_SOURCE:
                    client.delete_model_version_tag(name, version, ROLE)
        except Exception as e:
            _logger.warning("Could not remove %s from the source's links: %s", keras_ref, e)
    if source.model_id:
        model_id = source.model_id
        try:
            tags = client.get_logged_model(model_id).tags
            if key in tags or keras_ref in _listed(tags):
                if key in tags:
                    client.delete_logged_model_tag(model_id, key)
                _sync_version_list(
                    lambda: client.get_logged_model(model_id).tags,
                    lambda value: client.set_logged_model_tags(model_id,
                                                               {KERAS_VERSIONS: value}),
                    lambda: client.delete_logged_model_tag(model_id, KERAS_VERSIONS),
                    removed=keras_ref)
                tags = client.get_logged_model(model_id).tags
                if not _recorded(tags) and tags.get(ROLE) == ROLE_SOURCE:
                    client.delete_logged_model_tag(model_id, ROLE)
        except Exception as e:
            _logger.warning("Could not remove %s from the source's links: %s", keras_ref, e)


def _discard_version(client: MlflowClient, source: SourceModel, name: str, version: str):
    """Delete a half-linked Keras version; and its registered model when register_model
    re-created it (the source's model was deleted meanwhile) and it holds nothing else."""
    client.delete_model_version(name, version)
    if name == source.registered_name:
        with contextlib.suppress(MlflowException):
            if not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)


def _description(source: SourceModel, model_uri, parity, conversion, run_id, method) -> str:
    rows = ["| output | max abs error | max rel error | cosine | top-1 | passed |",
            "|---|---|---|---|---|---|"]
    for o in parity.outputs:
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}"
        rows.append(f"| {o.name} | {o.max_abs_error:.3g} | {o.max_rel_error:.3g} | "
                    f"{o.cosine:.6f} | {top1} | {'yes' if o.passed else 'no'} |")
    origin = (f"version **{source.version}** of `{source.registered_name}`"
              if source.registered_name else f"`{model_uri}`")
    notes = "".join(f"\n- {n}" for n in conversion.notes) or "\n- none"
    wrapped = "".join(
        f"\n- {', '.join(str(op) for op in region['ops'])}" for region in conversion.wrapped_regions)
    if wrapped:
        notes += ("\n\n### Kept as frozen TFLiteLayers (not rebuilt, not trainable)" + wrapped)
    what = "Reconstructed Keras model" if method == "reconstructed" else \
        "Original Keras model (kept with the .tflite)"
    if getattr(conversion, "emulate_quantization", False):
        what += (", quantization emulated (fake-quant steps with the source's scales and zero "
                 "points: computes what the integer kernels compute)")
    return (
        f"**{what}** of the `.tflite` {origin}.\n\n"
        f"- Source URI: `{model_uri}`\n"
        f"- Source sha256: `{conversion.source_sha256}`\n"
        f"- Source quantization: `{conversion.quantization}`\n"
        + (f"- Source run: `{source.run_id}`\n" if source.run_id else "")
        + f"- Conversion run: `{run_id}`; converter {__version__}\n"
        f"- Operators: {sum(conversion.operators.values())} "
        f"({len(conversion.operators)} kinds), {len(conversion.folded_ops)} folded\n\n"
        f"### Parity against the LiteRT interpreter ({parity.n_samples} samples)\n\n"
        + "\n".join(rows)
        + "\n\nTolerances: " + (", ".join(f"`{k}={v}`" for k, v in parity.tolerances.items())
                                or "none")
        + f"\n\n### Not recovered from the flatbuffer{notes}\n"
    )


def verify_keras_version(model_uri: str, *, debug: bool = False, progress=None):
    """Re-check a registered Keras version (``models:/name/N``) against the ``.tflite`` it
    was made from (its ``tflite_keras.source_model_uri`` tag): the
    :class:`~mlflow_tflite_keras.converter.parity.ParityReport`, not raised when it fails.
    ``debug`` also compares every intermediate tensor (``report.divergence``); when they
    cannot be matched (e.g. layers renamed), ``report.notes`` says why."""
    from mlflow_tflite_keras.converter.parity import check_parity, locate_divergence

    say = progress or (lambda message: _logger.info(message))
    client = MlflowClient()
    source = resolve_source(model_uri, client)
    if not source.registered_name:
        raise MlflowException(f"'{model_uri}' is not a registered model version.",
                              error_code=INVALID_PARAMETER_VALUE)
    mv = client.get_model_version(source.registered_name, source.version)
    source_uri = mv.tags.get(SOURCE_URI)
    if not source_uri:
        raise MlflowException(f"'{model_uri}' has no {SOURCE_URI} tag: it is not a Keras "
                              "version registered by this package.",
                              error_code=INVALID_PARAMETER_VALUE)
    say(f"Loading {model_uri} and its source {source_uri} ...")
    keras_model = mlflow.keras.load_model(model_uri)
    tflite = mlflow.tflite_keras.load_model(source_uri).model
    report = check_parity(tflite, keras_model)
    if debug:
        say("Comparing intermediate tensors ...")
        try:
            report.divergence = locate_divergence(tflite, keras_model)
        except ValueError as e:  # e.g. layers renamed: nothing to match
            report.notes.append(f"debug: {e}")
    return report


def keras_versions_of(name: str, version: str | int) -> list[str]:
    """``["name/3", ...]``: the Keras versions registered from a ``.tflite`` version."""
    mv = MlflowClient().get_model_version(name, str(version))
    return _listed(mv.tags)
