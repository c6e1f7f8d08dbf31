"""Command line: ``mlflow-tflite-keras``.

Exit codes: 0 success; 1 a check failed (parity, verification); 2 bad usage or input;
3 the model has operators the converter cannot rebuild. Errors name this CLI's flags (never
Python parameters), and exit codes follow the exception's type, never its text.

TensorFlow's and absl's C++ logs are silenced unless ``--verbose`` is given.
"""

from __future__ import annotations

import json
import os
import re
import sys

import click

__all__ = ["cli"]

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # models:/, runs:/, s3://, file:...


def _progress(message: str):
    click.echo(f"[{click.style('..', fg='cyan')}] {message}", err=True)


def _tracking():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow_tflite_keras.tracking import use_default_tracking

    return use_default_tracking()


def _unset_if_empty(ctx, param, value):
    """MLproject passes unset string parameters as ''."""
    return value or None


def _verbose_option(command):
    return click.option("--verbose", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbosity,
                        help="Show TensorFlow's and absl's C++ logs (hidden by default).")(command)


def _set_verbosity(ctx, param, verbose):
    # Runs while the command line is parsed, before anything imports TensorFlow.
    if not verbose:
        from mlflow_tflite_keras.noise import quiet_native_logs

        quiet_native_logs()


def _flag(name: str, value) -> str:
    """A Python parameter as this CLI's flag: ``registered_model_name`` ->
    ``--registered-model-name NAME``, ``unsupported="wrap"`` -> ``--unsupported wrap``."""
    flag = "--" + name.replace("_", "-")
    if value is True:
        return flag
    return f"{flag} {name.rsplit('_', 1)[-1].upper() if value is None else value}"


def _fail(e, code=None):
    """Print an error (flags, not Python parameters) and exit with the code of its type."""
    from mlflow_tflite_keras.errors import (
        ActionableError,
        ParityCheckError,
        UnsupportedOperatorsError,
    )

    if isinstance(e, ActionableError):
        message = f"{e.reason}\n{e.advice(_flag)}"
    else:
        message = getattr(e, "message", None) or str(e)
    if code is None:
        code = (EXIT_CHECK_FAILED if isinstance(e, ParityCheckError) else
                EXIT_UNSUPPORTED if isinstance(e, UnsupportedOperatorsError) else EXIT_USAGE)
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _local_file_or_uri(value: str) -> tuple[str, str]:
    """``("file", path)`` for an existing file, ``("uri", value)`` for an MLflow model URI or
    model directory; a missing path is a usage error saying so."""
    if os.path.isfile(value):
        return "file", value
    if os.path.isdir(value) or _URI_SCHEME.match(value):
        return "uri", value
    click.echo(f"Error: no such file: '{value}'. Pass a .tflite file or an MLflow model URI "
               "(models:/name/1, models:/name@alias, runs:/<run_id>/model).", err=True)
    sys.exit(EXIT_USAGE)


def _log_tflite(path, name, registered_model_name, experiment_name, num_threads=None):
    """Log (and register) a local .tflite file; returns (ModelInfo, Run)."""
    from mlflow.exceptions import MlflowException

    import mlflow
    from mlflow_tflite_keras.tflite_model import TFLiteModel
    from mlflow_tflite_keras.tracking import experiment, start_run

    try:
        TFLiteModel.load(path)  # refuse a bad file before a run exists
    except MlflowException as e:
        _fail(e)
    uri = _tracking()
    try:
        with start_run(experiment(experiment_name), f"log-{os.path.basename(path)}") as run:
            _progress(f"Logging {path} to {uri} ...")
            info = mlflow.tflite_keras.log_model(path, name=name, num_threads=num_threads,
                                                 registered_model_name=registered_model_name)
    except MlflowException as e:
        _fail(e)
    return info, run


def _registered_local_file(path, registered_model_name, command) -> str:
    """Log and register a local .tflite for ``convert``/``finetune``: its ``models:/`` URI."""
    if not registered_model_name:
        click.echo(f"Error: '{path}' is a local file. Pass --registered-model-name NAME to log "
                   f"and register it first (then {command} continues from that version), or "
                   "pass the URI of a logged .tflite model (models:/name/1, "
                   "runs:/<run_id>/model).", err=True)
        sys.exit(EXIT_USAGE)
    info, _ = _log_tflite(path, "model", registered_model_name, "tflite-keras")
    uri = f"models:/{registered_model_name}/{info.registered_model_version}"
    click.echo(f"registered: {uri} (the .tflite)")
    return uri


@click.group()
@click.version_option(package_name="mlflow-tflite-keras")
def cli():
    """TensorFlow Lite models in MLflow: inspect, log, convert to Keras, verify.

    Commands that talk to MLflow use MLFLOW_TRACKING_URI when it is set, else the embedded
    default: a SQLite store and local artifacts in ./.mlflow.
    """


@cli.command()
@click.argument("path_or_uri")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--no-converter", is_flag=True,
              help="Skip the converter-support column (avoids importing TensorFlow).")
@_verbose_option
def inspect(path_or_uri, as_json, no_converter):
    """Describe a .tflite file or any MLflow model URI. A .tflite: operators, tensors,
    quantization, signatures, and which operators the converter supports. Any other model
    (e.g. a Keras version): its flavors and signature; a registered version also shows its
    lineage tags and the parity figures of the run that made it."""
    from mlflow.exceptions import MlflowException

    kind, where = _local_file_or_uri(path_or_uri)
    try:
        if kind == "file":
            from mlflow_tflite_keras.tflite_model import TFLiteModel

            model, description = TFLiteModel.load(where), {}
        else:
            _tracking()
            model, description = _describe_model_uri(where)
    except MlflowException as e:
        _fail(e)
    if model is not None:
        description = {**model.describe(), "sha256": model.sha256,
                       "size_bytes": len(model.model_bytes), **description}
    supported = None
    if model is not None and not no_converter:
        from mlflow_tflite_keras.converter import (
            supported_custom_operators,
            supported_operators,
        )

        # operator names: builtin names, and custom codes for custom operators
        supported = set(supported_operators()) | set(supported_custom_operators())
        description["unsupported_operators"] = [op for op in description["operators"]
                                                if op not in supported]
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
        return
    if "model_uri" in description:
        click.echo(f"model         {description['model_uri']}")
        click.echo(f"flavors       {', '.join(description['flavors'])}")
    if model is not None:
        _echo_tflite(description, supported)
    elif description.get("signature"):
        click.echo("signature")
        for kind_, specs in description["signature"].items():
            for spec in specs:
                click.echo(f"  {kind_[:-1]:<7} {spec}")
    registry = description.get("registry")
    if registry:
        click.echo(f"registered    {registry['version']}")
        for key, value in registry["tags"].items():
            click.echo(f"  {key:<32} {value}")
    parity = description.get("parity")
    if parity:
        verdict = "PASSED" if parity.get("parity_passed", 1) else "FAILED"
        click.echo(f"parity        {verdict} (run {description['run_id']})")
        for key, value in parity.items():
            click.echo(f"  {key:<32} {value:.6g}")


def _echo_tflite(description, supported):
    click.echo(f"sha256        {description['sha256']}")
    click.echo(f"size          {description['size_bytes']} bytes")
    click.echo(f"schema        version {description['schema_version']}, "
               f"{description['subgraphs']} subgraph(s)")
    click.echo(f"quantization  {description['quantization']}")
    breakdown = description.get("quantization_breakdown", {})
    for scheme in sorted(set(breakdown.values())):  # mixed: how many weights each way
        count = sum(1 for s in breakdown.values() if s == scheme)
        click.echo(f"  {scheme:<36} {count} weight tensor(s)")
    click.echo(f"stateful      {description['stateful']}")
    for key, sig in description["signatures"].items():
        click.echo(f"signature     {key}")
        for kind in ("inputs", "outputs"):
            for name, t in sig[kind].items():
                q = t.get("quantization")
                qtext = f"  q(scale={q['scale'][0]:.4g}, zp={q['zero_point'][0]}" \
                        f"{', per-channel' if len(q['scale']) > 1 else ''})" if q else ""
                click.echo(f"  {kind[:-1]:<7} {name}: {t['dtype']} {t['shape_signature']}{qtext}")
    click.echo("operators")
    for op, count in description["operator_counts"].items():
        mark = "" if supported is None else ("  ok" if op in supported else "  UNSUPPORTED")
        click.echo(f"  {op:<32} x{count}{mark}")
    if description["metadata_entries"]:
        click.echo(f"metadata      {', '.join(description['metadata_entries'])}")


def _describe_model_uri(model_uri):
    """(TFLiteModel or None, description) of any MLflow model URI: flavors and signature,
    the registered version's tflite_keras.* tags and its run's parity metrics."""
    import mlflow
    from mlflow.models import Model

    from mlflow_tflite_keras.lineage import TAG_PREFIX, resolve_source

    info = Model.load(model_uri)  # only the MLmodel file
    description = {"model_uri": model_uri, "flavors": sorted(info.flavors)}
    model = None
    if "tflite_keras" in info.flavors:
        model = mlflow.tflite_keras.load_model(model_uri).model
    elif info.signature is not None:
        description["signature"] = {
            "inputs": [str(s) for s in info.signature.inputs.inputs],
            "outputs": [str(s) for s in (info.signature.outputs.inputs
                                         if info.signature.outputs else [])]}
    client = mlflow.MlflowClient()
    source = resolve_source(model_uri, client) if _URI_SCHEME.match(model_uri) else None
    run_id = info.run_id or (source.run_id if source else None)
    if source and source.registered_name:
        mv = client.get_model_version(source.registered_name, source.version)
        description["registry"] = {"version": f"{mv.name}/{mv.version}", "tags": {
            k: v for k, v in sorted(mv.tags.items()) if k.startswith(TAG_PREFIX)}}
        run_id = mv.run_id or run_id
    if run_id:
        metrics = client.get_run(run_id).data.metrics
        parity = {k: v for k, v in sorted(metrics.items()) if "parity_" in k}
        if parity:
            description["run_id"], description["parity"] = run_id, parity
    return model, description


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default="model", show_default=True, help="Name of the logged model.")
@click.option("--registered-model-name", callback=_unset_if_empty,
              help="Also register it under this name.")
@click.option("--experiment-name", default="tflite-keras", show_default=True)
@click.option("--num-threads", type=click.IntRange(min=1), help="Default interpreter threads.")
@_verbose_option
def log(path, name, registered_model_name, experiment_name, num_threads):
    """Log a .tflite file with the tflite_keras flavor (and register it)."""
    info, run = _log_tflite(path, name, registered_model_name, experiment_name, num_threads)
    click.echo(f"model_uri: {info.model_uri}")
    click.echo(f"run_id: {run.info.run_id}")
    if registered_model_name:
        click.echo(f"registered: models:/{registered_model_name}/{info.registered_model_version}")


@cli.command()
@click.argument("model_uri")
@click.option("--registered-model-name", callback=_unset_if_empty,
              help="Register under this name (default: the source's registered model). For a "
                   "local .tflite file: log and register the file under this name first.")
@click.option("--alias", callback=_unset_if_empty, help="Set this alias on the new Keras version.")
@click.option("--experiment-id", help="Log the conversion run here (default: the source's).")
@click.option("--method", type=click.Choice(["auto", "kept-source", "reconstructed"]),
              default="auto", show_default=True,
              help="Register the Keras model kept with the .tflite (when it was logged from "
                   "Keras), or reconstruct it from the flatbuffer; auto prefers the kept one.")
@click.option("--unsupported", type=click.Choice(["error", "wrap"]), default="error",
              show_default=True,
              help="wrap: embed the regions the converter cannot rebuild (e.g. custom ops) as "
                   "frozen TFLiteLayers instead of failing.")
@click.option("--wrap-op", "wrap_ops", multiple=True,
              help="Also wrap these operators (repeatable), e.g. to isolate a parity problem.")
@click.option("--emulate-quantization", is_flag=True,
              help="Reconstruct a quantized model computing what its integer kernels compute "
                   "(fake-quant steps with the source's scales; strict parity).")
@click.option("--max-rel-error", type=float, help="Parity tolerance override.")
@click.option("--min-cosine", type=float, help="Parity tolerance override.")
@click.option("--min-top1", type=float, help="Parity tolerance override.")
@click.option("--max-steps", type=float,
              help="Parity tolerance override (quantized outputs, in quantization steps).")
@click.option("--time-steps", type=click.IntRange(min=1),
              help="Streaming (stateful) models: frames per sequence compared (default 32).")
@_verbose_option
def convert(model_uri, registered_model_name, alias, experiment_id, method, unsupported,
            wrap_ops, emulate_quantization, max_rel_error, min_cosine, min_top1, max_steps,
            time_steps):
    """Reconstruct a logged .tflite model (a model URI, or a local .tflite file with
    --registered-model-name) as Keras, check parity, and register the Keras version next to
    the source version with lineage tags both ways."""
    from mlflow.exceptions import MlflowException

    import mlflow
    from mlflow_tflite_keras import register_keras_version

    kind, where = _local_file_or_uri(model_uri)
    if kind == "file":
        model_uri = _registered_local_file(where, registered_model_name, "convert")
        registered_model_name = None  # the Keras version goes next to the new .tflite version
    else:
        _tracking()
    tolerances = {k: v for k, v in (("max_rel_error", max_rel_error), ("min_cosine", min_cosine),
                                    ("min_top1", min_top1), ("max_steps", max_steps),
                                    ("time_steps", time_steps)) if v is not None}
    try:
        version = register_keras_version(model_uri, registered_model_name=registered_model_name,
                                         alias=alias, experiment_id=experiment_id,
                                         tolerances=tolerances or None, method=method,
                                         unsupported=unsupported, wrap_ops=wrap_ops,
                                         emulate_quantization=emulate_quantization,
                                         progress=_progress)
    except MlflowException as e:
        _fail(e)
    click.echo(f"registered: models:/{version.name}/{version.version}")
    metrics = mlflow.MlflowClient().get_run(version.run_id).data.metrics
    for key in sorted(metrics):
        if key.startswith("parity_"):
            click.echo(f"  {key}: {metrics[key]:.6g}")


@cli.command()
@click.argument("model_uri")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training data: .npz with array x and either y (one output) or one "
                   "y_<output name> per output to train; or CSV (target column y or last).")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--learning-rate", type=float, default=1e-4, show_default=True)
@click.option("--registered-model-name", callback=_unset_if_empty,
              help="Keras version's name (default: the source's). For a local .tflite file: "
                   "log and register the file under this name first.")
@click.option("--tflite-registered-model-name", callback=_unset_if_empty,
              help="Exported .tflite's name (default: the source .tflite's).")
@click.option("--allow-interface-changes", is_flag=True,
              help="Export even if inputs/outputs differ from the source .tflite.")
@click.option("--quantization-aware", is_flag=True,
              help="Train through the source's integer arithmetic and export with its scales "
                   "and zero points unchanged (a .tflite source is rebuilt with "
                   "--emulate-quantization).")
@click.option("--quiet", is_flag=True, help="Do not print each epoch's metrics.")
@_verbose_option
def finetune(model_uri, data_path, epochs, batch_size, learning_rate, registered_model_name,
             tflite_registered_model_name, allow_interface_changes, quantization_aware, quiet):
    """Fine-tune a Keras version (or a .tflite flavor model, reconstructed first; a local
    .tflite file is logged and registered under --registered-model-name first) on your data,
    then register the fine-tuned Keras model and a .tflite exported with the source's
    quantization recipe and interface, chained in the lineage tags.

    Exits 1, registering nothing, when the exported .tflite does not answer like the
    fine-tuned Keras model."""
    from mlflow.exceptions import MlflowException

    from mlflow_tflite_keras import finetune as run_finetune

    kind, where = _local_file_or_uri(model_uri)
    if kind == "file":
        model_uri = _registered_local_file(where, registered_model_name, "finetune")
    else:
        _tracking()
    try:
        result = run_finetune(model_uri, data_path, epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate,
                              registered_model_name=registered_model_name,
                              tflite_registered_model_name=tflite_registered_model_name,
                              allow_interface_changes=allow_interface_changes,
                              quantization_aware=quantization_aware,
                              progress=_progress, verbose=not quiet)
    except MlflowException as e:  # ExportParityError: a ParityCheckError, exit 1
        _fail(e)
    k, t = result.keras_version, result.tflite_version
    click.echo(f"keras: models:/{k.name}/{k.version}")
    click.echo(f"tflite: models:/{t.name}/{t.version}")
    click.echo(f"lineage: {t.tags.get('tflite_keras.lineage')}")
    click.echo(str(result.parity))


@cli.command()
@click.argument("model_uri")
@click.option("--debug", is_flag=True,
              help="Also compare every intermediate tensor and name the first one that "
                   "diverges, with the worst ones.")
@_verbose_option
def verify(model_uri, debug):
    """Re-check a registered Keras version (models:/name/N) against its .tflite source."""
    from mlflow.exceptions import MlflowException

    from mlflow_tflite_keras.lineage import verify_keras_version

    _tracking()
    try:
        report = verify_keras_version(model_uri, debug=debug, progress=_progress)
    except MlflowException as e:
        _fail(e)
    click.echo(str(report))
    sys.exit(0 if report.passed else EXIT_CHECK_FAILED)


if __name__ == "__main__":
    cli()
