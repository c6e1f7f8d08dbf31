"""Export a Keras model "like" a source ``.tflite`` (TensorFlow needed).

:func:`export_tflite` converts with the source's recipe and interface types, gives the result
the source's signature (key, names, order) and checks with
:func:`~mlflow_tflite_keras.interface.compare_interfaces` that the app sees the same interface.
Plain Keras -> ``.tflite`` with a recipe is :mod:`mlflow_tflite_keras.keras_export`; what the
recipes are, :mod:`mlflow_tflite_keras.recipes`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from dataclasses import dataclass

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.errors import InterfaceChangedError
from mlflow_tflite_keras.flavor import load_like
from mlflow_tflite_keras.interface import (
    comparable_name,
    signature_tensors,
    compare_interfaces,
    match_name,  # noqa: F401 (finetune imports it from here)
    match_names,
)
from mlflow_tflite_keras.keras_export import convert_with_recipe, export_saved_model
from mlflow_tflite_keras.keras_export import keras_to_tflite  # noqa: F401 (public here too)
from mlflow_tflite_keras.recipes import (
    FULL_INTEGER,
    MIXED,
    QUANTIZED_IO,
    RECIPES,
    normalize_recipe,
)
from mlflow_tflite_keras.tflite_model import FILE_IDENTIFIER

__all__ = ["export_emulated", "export_streaming_tflite", "export_tflite", "keras_to_tflite",
           "recipe_for"]


# ---- round trip: export like a source model, and check the interface ---------------------------

_log = logging.getLogger(__name__)


def recipe_for(model) -> str:
    """The recipe that reproduces a source model's quantization (a TFLiteModel or anything
    :func:`load_like` takes)."""
    model = load_like(model)
    kind = model.quantization_kind
    if kind == MIXED:
        raise MlflowException(
            "The source model mixes quantization recipes (weights of different types or "
            "modes); there is no single recipe to recreate it: pass recipe= explicitly.",
            error_code=INVALID_PARAMETER_VALUE)
    try:
        return normalize_recipe(kind)
    except MlflowException:
        raise MlflowException(
            f"No export recipe reproduces the source's quantization kind '{kind}'; pass "
            f"recipe= (one of {RECIPES}, or a blockwise one).",
            error_code=INVALID_PARAMETER_VALUE) from None


# ---- export ------------------------------------------------------------------------------------


def _recipe(source, recipe: str | None) -> str:
    """The recipe given, else the one that recreates the source's, else float32."""
    if recipe is None:
        recipe = recipe_for(source) if source is not None else "float32"
    return normalize_recipe(recipe)


def _full_integer_types(source, recipe: str, representative_data, input_type, output_type,
                        missing: str):
    """The interface types of a full-integer export (:func:`_interface_types`); without
    calibration data, an error saying ``missing``."""
    if representative_data is None:
        raise MlflowException(missing, error_code=INVALID_PARAMETER_VALUE)
    return _interface_types(source, recipe, input_type, output_type)


def _interface_types(source, recipe: str, input_type=None, output_type=None):
    """Interface types of a full-integer recipe: those given, else those that keep the
    source's I/O (a source whose float inputs were quantized (int8/uint8/int16) keeps that
    type, otherwise float32); without a source, those given (None: the recipe's default)."""
    if source is None:
        return input_type, output_type
    allowed = FULL_INTEGER[recipe].io_types
    sig = source.signature()
    types = []
    for which in ("inputs", "outputs"):
        found = {QUANTIZED_IO[t.type_name] for t in signature_tensors(source, sig, which).values()
                 if t.type_name in QUANTIZED_IO and t.quantization is not None}
        found = [t for t in found if t in allowed]
        types.append(np.dtype(found[0]) if len(found) == 1 else np.dtype(np.float32))
    return input_type or types[0], output_type or types[1]


def _align_names(keras_model, source):
    """Wrap a functional Keras model so that Keras' SavedModel export gives its inputs and
    outputs the source's signature names, where the correspondence is unambiguous (same name
    up to case and punctuation, or a single input / output on both sides).

    Returns ``(model, {original input name: new name})``.
    """
    import keras

    if not source.signatures:
        return keras_model, {}  # only tensor names, which the export cannot set anyway
    sig = source.signature()
    src_in, src_out = list(sig.inputs), list(sig.outputs)
    try:
        inputs = list(keras_model.inputs)
        outputs = list(keras_model.outputs)
    except (AttributeError, ValueError):
        return keras_model, {}  # subclassed / unbuilt: export as is
    if not inputs or not outputs:
        return keras_model, {}
    in_names = [t.name for t in inputs]
    in_map = _name_map(in_names, src_in)
    out_struct = getattr(keras_model, "_outputs_struct", None)
    out_keys = list(out_struct) if isinstance(out_struct, dict) else None
    out_map = {}
    if out_keys is not None:
        out_map = _name_map(out_keys, src_out)
    elif len(outputs) == 1 and len(src_out) == 1 and src_out[0] != "output_0":
        out_map = {None: src_out[0]}
    in_map = {k: v for k, v in in_map.items() if k != v}
    out_map = {k: v for k, v in out_map.items() if k != v}
    if not in_map and not out_map:
        return keras_model, {}
    new_inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=in_map.get(t.name, t.name))
                  for t in inputs]
    in_struct = getattr(keras_model, "_inputs_struct", None)
    if isinstance(in_struct, dict):
        by_name = dict(zip(in_names, new_inputs))
        call_args = {k: by_name[v.name] for k, v in in_struct.items()}
        model_inputs = {in_map.get(t.name, t.name): x for t, x in zip(inputs, new_inputs)}
    else:
        call_args = new_inputs[0] if len(new_inputs) == 1 else new_inputs
        model_inputs = call_args
    result = keras_model(call_args)
    if out_keys is not None:
        result = {out_map.get(k, k): result[k] for k in out_keys}
    elif out_map:
        result = {out_map[None]: result}
    wrapped = keras.Model(model_inputs, result, name=keras_model.name)
    return wrapped, in_map


def _name_map(names: list, target: list) -> dict:
    """name -> target name by exact, then normalised match, then a single leftover."""
    mapping = {n: n for n in names if n in target}
    left = [t for t in target if t not in mapping.values()]
    for n in names:
        if n in mapping:
            continue
        candidates = [t for t in left if comparable_name(t) == comparable_name(n)]
        if len(candidates) == 1:
            mapping[n] = candidates[0]
            left.remove(candidates[0])
    rest = [n for n in names if n not in mapping]
    if len(rest) == 1 and len(left) == 1:
        mapping[rest[0]] = left[0]
    return mapping


def _samples(data, specs: dict, order: list, aliases: dict, limit: int):
    """A representative dataset yielding dicts by signature input name, drawn from an array,
    a list of arrays (one per input, in the Keras model's input order), a dict by input
    name, or a callable returning an iterable of such samples (already batched)."""
    names = list(order)

    def as_dict(sample) -> dict:
        if isinstance(sample, dict):
            out = match_names(sample, specs, aliases, lambda key: (
                f"representative_data has an entry '{key}' that matches no input of the "
                f"model; its inputs are {names}."))
        elif isinstance(sample, (list, tuple)):
            out = dict(zip(names, sample))
            if len(sample) != len(names):
                raise MlflowException(
                    f"representative_data gives {len(sample)} arrays for {len(names)} inputs "
                    f"{names}.", error_code=INVALID_PARAMETER_VALUE)
        else:
            if len(names) != 1:
                raise MlflowException(
                    f"representative_data is a single array but the model has {len(names)} "
                    f"inputs {names}: give a list (in input order) or a dict by input name.",
                    error_code=INVALID_PARAMETER_VALUE)
            out = {names[0]: sample}
        missing = [n for n in names if n not in out]
        if missing:
            raise MlflowException(f"representative_data has nothing for input(s) {missing}.",
                                  error_code=INVALID_PARAMETER_VALUE)
        return out

    def shaped(name, value, batched: bool):
        shape, dtype = specs[name]
        value = np.asarray(value)
        value = value.astype(dtype) if value.dtype != dtype else value
        if not batched and value.ndim == len(shape) - 1:
            value = value[None]
        return value

    if callable(data):
        def generate():
            for count, sample in enumerate(data()):
                if count >= limit:
                    break
                yield {n: shaped(n, v, False) for n, v in as_dict(sample).items()}
        return generate

    columns = {n: np.asarray(v) for n, v in as_dict(data).items()}
    for n, v in columns.items():  # a single sample without its batch dimension
        if v.ndim == len(specs[n][0]) - 1:
            columns[n] = v[None]
    count = min(limit, min(len(v) for v in columns.values()))
    if count == 0:
        raise MlflowException("representative_data is empty.", error_code=INVALID_PARAMETER_VALUE)

    def generate():
        for i in range(count):
            yield {n: shaped(n, v[i:i + 1], True) for n, v in columns.items()}
    return generate


def export_tflite(keras_model, *, like=None, recipe: str | None = None, representative_data=None,
                  allow_interface_changes: bool = False, num_samples: int = 200,
                  inference_input_type=None, inference_output_type=None,
                  align_names: bool = True, return_report: bool = False):
    """Convert ``keras_model`` to ``.tflite`` the way ``like`` was converted, and check that
    the app sees the same interface.

    With ``like``, the export function is built from the source's signature: its input specs
    (shapes with a fixed batch of 1 kept, dtypes), its signature key, input / output names
    and order (in the SignatureDef and the subgraph) and its I/O tensor names. Keras inputs
    and outputs are matched to the source's by name (exactly, then up to case and
    punctuation), then by position.

    Args:
        keras_model: a Keras 3 model (e.g. retrained, or rebuilt with
            :func:`mlflow_tflite_keras.converter.to_keras`).
        like: the source model: a ``.tflite`` path or bytes, a TFLiteModel, or an MLflow model
            URI / directory of the tflite_keras flavor. Its quantization kind gives the recipe
            and its interface tensors the inference input/output types (a full-int8 source
            with int8 I/O keeps int8 I/O, one with float I/O keeps float I/O).
        recipe: overrides the inferred recipe (default ``float32`` without ``like``); one of
            :data:`RECIPES` or a blockwise one (see :func:`normalize_recipe`).
        representative_data: calibration data for the full-integer recipes: an array
            (single input), a list of arrays (one per input, in the model's input order), a
            dict by input name, or a callable returning an iterable of such samples. Up to
            ``num_samples`` samples are drawn.
        allow_interface_changes: accept (with a warning) a result whose interface differs;
            otherwise an :class:`InterfaceChangedError` lists every difference.
        align_names: build the export from the source's signature (the default). False
            exports the Keras model with its own signature (Keras' SavedModel export: a
            dynamic batch, outputs sorted by name) and only compares.
        return_report: return ``(bytes, InterfaceReport)`` instead of the bytes.

    Under another Keras backend (JAX, PyTorch) the export runs in a TensorFlow child process
    from the model saved to ``.keras`` (:mod:`mlflow_tflite_keras.backends`).
    """
    from mlflow_tflite_keras import backends

    if backends.keras_backend() != "tensorflow":
        return backends.export_in_tensorflow_process(
            keras_model, like=like, recipe=recipe, representative_data=representative_data,
            allow_interface_changes=allow_interface_changes, num_samples=num_samples,
            inference_input_type=inference_input_type,
            inference_output_type=inference_output_type, align_names=align_names,
            return_report=return_report)
    source = load_like(like) if like is not None else None
    if source is not None and _is_emulated(keras_model):
        if recipe is not None and normalize_recipe(recipe) != recipe_for(source):
            raise MlflowException(
                "A model built with emulate_quantization=True is exported like its source "
                f"('{recipe_for(source)}'); recipe '{recipe}' would change its quantization.",
                error_code=INVALID_PARAMETER_VALUE)
        result = export_emulated(keras_model, source)
        return _checked_against(source, result, allow_interface_changes, return_report)
    if _streaming_layer(keras_model) is not None:  # streaming: one frame per invoke
        return export_streaming_tflite(
            keras_model, source=source, recipe=recipe, representative_data=representative_data,
            allow_interface_changes=allow_interface_changes, num_samples=num_samples,
            inference_input_type=inference_input_type,
            inference_output_type=inference_output_type, return_report=return_report)
    recipe = _recipe(source, recipe)
    if recipe in FULL_INTEGER:
        origin = f"The source model is {source.quantization_kind}-quantized; recreating " \
                 "that recipe" if source is not None else f"Recipe '{recipe}'"
        inference_input_type, inference_output_type = _full_integer_types(
            source, recipe, representative_data, inference_input_type, inference_output_type,
            f"{origin} needs representative_data to calibrate activations: an array, a list "
            "of arrays (one per input), a dict by input name, or a callable yielding samples.")
    elif inference_input_type is not None or inference_output_type is not None:
        _log.warning("Recipe '%s' ignores inference_input_type / inference_output_type.", recipe)

    plan = _plan_like(keras_model, source) if source is not None and align_names else None
    with tempfile.TemporaryDirectory() as saved_model_dir:
        if plan is not None:
            plan.write_saved_model(saved_model_dir)
            aliases, order = plan.aliases, plan.input_order
        else:
            aliases = {}
            if source is not None and align_names:
                keras_model, aliases = _align_names(keras_model, source)
            export_saved_model(keras_model, saved_model_dir)
            order = [aliases.get(t.name, t.name) for t in getattr(keras_model, "inputs", [])]
        result = _convert_saved_model(saved_model_dir, recipe, representative_data, order,
                                      aliases, num_samples, inference_input_type,
                                      inference_output_type)
    if plan is not None:
        result = plan.restore_interface(result)
    return _checked_against(source, result, allow_interface_changes, return_report)


def _is_emulated(keras_model) -> bool:
    from mlflow_tflite_keras.converter.layers.quantization import is_emulated

    return hasattr(keras_model, "_flatten_layers") and is_emulated(keras_model)


def export_emulated(keras_model, source) -> bytes:
    """The source ``.tflite`` with the trained weights of ``keras_model`` (built from it with
    ``emulate_quantization=True``) written into its quantized constants, each on the source's
    own scheme (per-channel int8 kernels, int32 biases), and into its float constants (a
    dynamic-range model's float biases and small kernels) as float32: every op, every
    activation scale and zero point and the int8 / float interface stay the source's, so no
    calibration data is needed, and LiteRT computes what the emulated Keras model computes.

    Raises when a trainable weight has no source constant to go to (a layer added or
    replaced after conversion: export without emulation instead) or ``source`` is not the
    model it was built from."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from mlflow_tflite_keras.converter.layers.quantization import QuantizedWeights
    from mlflow_tflite_keras.tflite_model import FILE_IDENTIFIER, NUMPY_DTYPES

    source = load_like(source)
    model = schema.ModelT.InitFromPackedBuf(bytearray(source.model_bytes), 0)
    placed, written = set(), {}
    for layer in keras_model._flatten_layers():
        if not isinstance(layer, QuantizedWeights):
            continue
        for entry in layer.float_weights:  # float constants of a quantized source, as trained
            weight = layer.layer.weights[entry["weight"]]
            data = _float_constant(source, entry["source"], weight)
            written[(entry["source"]["subgraph"], entry["source"]["tensor"])] = data
            placed.add(id(weight))
        for entry, integers in layer.integer_weights():
            where = entry.get("source")
            weight = layer.layer.weights[entry["weight"]]
            if where is None or where["subgraph"] >= len(source.subgraphs) or \
                    where["tensor"] >= len(source.subgraphs[where["subgraph"]].tensors):
                continue
            t = source.subgraphs[where["subgraph"]].tensors[where["tensor"]]
            perm = where["perm"]
            laid_out = tuple(int(t.shape[a]) for a in perm) if len(perm) == len(t.shape) else None
            if t.sparsity is not None:
                raise MlflowException(f"Tensor '{t.name}' of the source is sparse: emulated "
                                      "models do not write sparse constants back.",
                                      error_code=INVALID_PARAMETER_VALUE)
            if t.quantization is None or laid_out is None or \
                    int(np.prod(laid_out)) != integers.size or \
                    not np.array_equal(np.asarray(t.quantization.scale, np.float32).reshape(-1),
                                       np.asarray(entry["scale"], np.float32)):
                raise MlflowException(
                    f"Weight '{weight.path}' was not built from this source (tensor "
                    f"'{t.name}' differs): export an emulated model like the .tflite it was "
                    "converted from.", error_code=INVALID_PARAMETER_VALUE)
            data = np.transpose(integers.reshape(laid_out), np.argsort(perm))
            written[(where["subgraph"], where["tensor"])] = data.astype(NUMPY_DTYPES[t.type_name])
            placed.add(id(weight))
    missing = [w.path for w in keras_model.trainable_weights if id(w) not in placed]
    if missing:
        raise MlflowException(
            f"{len(missing)} trainable weights of the emulated model have no quantized constant "
            f"of the source to go to (nor a float one: e.g. '{missing[0]}'): a layer was "
            "added or replaced. Export a reconstruction built without emulation instead.", error_code=INVALID_PARAMETER_VALUE)
    users: dict = {}
    for sg in model.subgraphs:
        for tensor in sg.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    for (sg_index, t_index), data in written.items():
        tensor = model.subgraphs[sg_index].tensors[t_index]
        buffer = model.buffers[tensor.buffer]
        if getattr(buffer, "offset", 0) and buffer.offset > 1:
            raise MlflowException("Sources with constants outside the flatbuffer (> 2 GB) are "
                                  "not exported from emulated models.")
        if users[tensor.buffer] > 1:  # a constant shared with another tensor: its own copy
            buffer = schema.BufferT()
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        buffer.data = np.frombuffer(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"))
                                    .tobytes(), np.uint8)
    builder = flatbuffers.Builder(len(source.model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _float_constant(source, where: dict, weight) -> np.ndarray:
    """``weight`` laid out as the float32 source constant ``where`` points to (the inverse
    of the handler's layout ``perm``); refused when that constant is not a float32 one of
    its size (``source`` is not the model it was built from)."""
    value = np.asarray(weight.numpy(), np.float32)
    sg, index, perm = where["subgraph"], where["tensor"], where["perm"]
    t = source.subgraphs[sg].tensors[index] \
        if sg < len(source.subgraphs) and index < len(source.subgraphs[sg].tensors) else None
    laid_out = tuple(int(t.shape[a]) for a in perm) \
        if t is not None and len(perm) == len(t.shape) else None
    if t is None or t.type_name != "FLOAT32" or laid_out is None or \
            int(np.prod(laid_out)) != value.size:
        raise MlflowException(
            f"Weight '{weight.path}' was not built from this source (tensor "
            f"{'#' + str(index) if t is None else repr(t.name)} differs): export an emulated "
            "model like the .tflite it was converted from.", error_code=INVALID_PARAMETER_VALUE)
    return np.transpose(value.reshape(laid_out), np.argsort(perm))


def _convert_saved_model(directory, recipe, representative_data, order, aliases, num_samples,
                         inference_input_type, inference_output_type) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(directory,
                                                         signature_keys=[_EXPORT_KEY])
    dataset = None
    if recipe in FULL_INTEGER:
        signature = tf.saved_model.load(directory).signatures[_EXPORT_KEY]
        specs = {name: (tuple(spec.shape), spec.dtype.as_numpy_dtype)
                 for name, spec in signature.structured_input_signature[1].items()}
        if sorted(order) != sorted(specs):
            order = list(specs)
        dataset = _samples(representative_data, specs, order, aliases, num_samples)
    return convert_with_recipe(converter, recipe, dataset, inference_input_type,
                               inference_output_type)


_EXPORT_KEY = "serving_default"  # the SavedModel key; the source's key is set afterwards


def _tf_name(name: str, taken: set) -> str:
    """A valid, unique TensorFlow name for a signature input / output."""
    base = re.sub(r"[^A-Za-z0-9_.]+", "_", str(name)).strip("_.") or "tensor"
    base = base if base[0].isalpha() else f"t_{base}"
    candidate, n = base, 1
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _pair_names(keras_names: list, source_names: list) -> dict | None:
    """source name -> Keras name: by name (exact, then normalised, see :func:`_name_map`),
    then the leftovers by position; None when the counts differ."""
    if len(keras_names) != len(source_names):
        return None
    to_source = _name_map(keras_names, source_names)
    left_keras = [n for n in keras_names if n not in to_source]
    left_source = [n for n in source_names if n not in to_source.values()]
    to_source.update(zip(left_keras, left_source))
    return {s: k for k, s in to_source.items()}


def _keras_io_names(keras_model):
    """(input names, output names) as the model takes / returns them, or None (a subclassed
    or unbuilt model)."""
    try:
        inputs, outputs = list(keras_model.inputs), list(keras_model.outputs)
    except (AttributeError, ValueError):
        return None
    if not inputs or not outputs:
        return None
    in_struct = getattr(keras_model, "_inputs_struct", None)
    in_names = list(in_struct) if isinstance(in_struct, dict) else [t.name for t in inputs]
    out_struct = getattr(keras_model, "_outputs_struct", None)
    out_names = list(out_struct) if isinstance(out_struct, dict) else \
        list(keras_model.output_names)
    return in_names, out_names


@dataclass
class _ExportPlan:
    """How a Keras model is exported like a source: the SavedModel function built with the
    source's input specs, returning the source's outputs; and, after conversion, the
    source's signature key, I/O order and tensor names put back into the flatbuffer."""

    keras_model: object
    source: object
    inputs: list  # [(source name, tf name, keras name, TensorSpec)] in the source's order
    outputs: list  # [(source name, tf name, keras name)]
    dict_inputs: bool

    @property
    def aliases(self) -> dict:
        names = {}
        for source_name, tf_name, keras_name, _ in self.inputs:
            names[source_name] = names[keras_name] = tf_name
        return names

    @property
    def input_order(self) -> list:
        by_keras = {k: tf for _, tf, k, _ in self.inputs}
        return [by_keras[k] for k in _keras_io_names(self.keras_model)[0]]

    def write_saved_model(self, directory: str) -> None:
        import keras

        model, specs = self.keras_model, [spec for *_, spec in self.inputs]
        keras_in = _keras_io_names(model)[0]
        keras_of = [k for _, _, k, _ in self.inputs]

        def serve(*args):
            by_keras = dict(zip(keras_of, args))
            if self.dict_inputs:
                feed = by_keras
            else:
                feed = [by_keras[k] for k in keras_in]
                feed = feed[0] if len(feed) == 1 else feed
            result = model(feed, training=False)
            if isinstance(result, dict):
                named = result
            else:
                flat = list(result) if isinstance(result, (list, tuple)) else [result]
                named = dict(zip(_keras_io_names(model)[1], flat))
            return {tf: named[k] for _, tf, k in self.outputs}

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(_EXPORT_KEY, serve, input_signature=specs)
        with contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(directory, verbose=False)

    def restore_interface(self, model_bytes: bytes) -> bytes:
        return _restore_interface(model_bytes, self.source,
                                  {tf: s for s, tf, _, _ in self.inputs},
                                  {tf: s for s, tf, _ in self.outputs})


def _plan_like(keras_model, source) -> _ExportPlan | None:
    """The export plan, or None when the Keras model's inputs / outputs cannot be matched to
    the source's one to one (the plain export then runs and the interface check reports)."""
    import tensorflow as tf

    names = _keras_io_names(keras_model)
    if names is None:
        return None
    sig = source.signature()
    sg = source.subgraphs[sig.subgraph_index]
    in_pairs = _pair_names(names[0], list(sig.inputs))
    out_pairs = _pair_names(names[1], list(sig.outputs))
    if in_pairs is None or out_pairs is None:
        return None
    taken: set = set()
    inputs = []
    for name, index in sig.inputs.items():
        t = sg.tensors[index]
        quantized = t.quantization is not None and t.type_name in QUANTIZED_IO
        dtype = np.float32 if quantized else t.dtype
        shape = [None if d == -1 else int(d) for d in t.shape_signature]
        tf_name = _tf_name(name, taken)
        inputs.append((name, tf_name, in_pairs[name], tf.TensorSpec(shape, dtype, name=tf_name)))
    outputs = [(name, _tf_name(name, taken), out_pairs[name]) for name in sig.outputs]
    in_struct = getattr(keras_model, "_inputs_struct", None)
    return _ExportPlan(keras_model, source, inputs, outputs, isinstance(in_struct, dict))


def _restore_interface(model_bytes: bytes, source, inputs: dict, outputs: dict) -> bytes:
    """Give the converted model the source's SignatureDef key, signature names and order, the
    subgraph's input / output order and the I/O tensor names (``inputs`` / ``outputs``: the
    export's signature name -> the source's)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sig = next(s for s in model.signatureDefs
               if (s.signatureKey or b"").decode() == _EXPORT_KEY)
    sg = model.subgraphs[sig.subgraphIndex]
    src_sig = source.signature()
    src_sg = source.subgraphs[src_sig.subgraph_index]
    for which, renames in (("inputs", inputs), ("outputs", outputs)):
        new_index = {renames[_text(tm.name)]: tm.tensorIndex for tm in getattr(sig, which)}
        src_index = getattr(src_sig, which)
        maps = []
        for name in src_index:  # the source's signature order
            tm = schema.TensorMapT()
            tm.name, tm.tensorIndex = name, new_index[name]
            maps.append(tm)
        setattr(sig, which, maps)
        by_source_tensor = {i: name for name, i in src_index.items()}
        order = [new_index[by_source_tensor[i]] for i in getattr(src_sg, which)
                 if i in by_source_tensor]
        if sorted(order) == sorted(getattr(sg, which).tolist()
                                   if hasattr(getattr(sg, which), "tolist")
                                   else getattr(sg, which)):
            setattr(sg, which, order)
        for name, i in src_index.items():
            sg.tensors[new_index[name]].name = src_sg.tensors[i].name
    if src_sig.key:
        sig.signatureKey = src_sig.key
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- streaming models: one frame per invoke, state in resource variables ----------------------


def _streaming_layer(keras_model):
    """The ``StreamingRNN`` of a model converted from a streaming ``.tflite``, or None (also
    when the converter, and so TensorFlow, was never imported: no such layer can exist)."""
    import sys

    if "mlflow_tflite_keras.converter.streaming" not in sys.modules:
        return None
    from mlflow_tflite_keras.converter.streaming import streaming_layer

    try:
        return streaming_layer(keras_model)
    except AttributeError:
        return None


def _streaming_frames(data, frame_shape: tuple, limit: int):
    """Calibration frames, in time order, from ``[n, time, *frame]`` sequences, ``[n, *frame]``
    frames, or a callable yielding either (a dict with one entry, or a one-array list)."""
    def frames_of(value):
        if isinstance(value, dict):
            if len(value) != 1:
                raise MlflowException("A streaming model has one input; representative_data "
                                      f"names {sorted(value)}.", error_code=INVALID_PARAMETER_VALUE)
            value = next(iter(value.values()))
        elif isinstance(value, (list, tuple)):
            value = value[0] if len(value) == 1 else np.asarray(value)
        value = np.asarray(value, np.float32)
        rank = len(frame_shape)
        if value.ndim == rank + 2:
            return value.reshape(-1, *value.shape[2:])
        if value.ndim == rank + 1:
            return value
        if value.ndim == rank:
            return value[None]
        raise MlflowException(
            f"representative_data of shape {list(value.shape)} for frames of shape "
            f"{list(frame_shape)}: give [n, time, *frame] sequences or [n, *frame] frames.",
            error_code=INVALID_PARAMETER_VALUE)

    def generate():
        count = 0
        chunks = data() if callable(data) else [data]
        for chunk in chunks:
            for frame in frames_of(chunk):
                if count >= limit:
                    return
                count += 1
                yield [frame[None].astype(np.float32)]

    return generate


def export_streaming_tflite(keras_model, *, source=None, recipe: str | None = None,
                            representative_data=None, allow_interface_changes: bool = False,
                            num_samples: int = 1000, inference_input_type=None,
                            inference_output_type=None, return_report: bool = False):
    """:func:`export_tflite` for a model converted from a streaming ``.tflite``
    (:mod:`mlflow_tflite_keras.converter.streaming`): the cell's one-step model, its state in
    ``tf.Variable``s (initialised to the cell's initial state) updated with ``assign``, one
    frame per invoke, converted with resource variables. The interface is the source's
    (signature key, input/output names, frame shape with its batch of 1, dtypes); a
    full-integer recipe quantizes the state variables too, and calibrates on
    ``representative_data`` frames fed in time order (``[n, time, *frame]`` sequences or
    ``[n, *frame]`` frames; up to ``num_samples`` frames), so the state ranges are the ones
    a stream reaches."""
    import keras
    import tensorflow as tf

    layer = _streaming_layer(keras_model)
    cell = layer.cell

    def from_layer(t):  # the RNN's output, or one output split from it
        op = t._keras_history.operation
        if op is layer:
            return True
        return getattr(op, "fn", None) == "streaming_output" and \
            op._inbound_nodes[0].input_tensors[0]._keras_history.operation is layer

    outputs = list(keras_model.outputs)
    if len(outputs) != cell.n_outputs or not all(from_layer(t) for t in outputs):
        raise MlflowException(
            "Only the streaming model itself exports to a streaming .tflite (its outputs must "
            "be the StreamingRNN's); layers added around it would not run per frame.",
            error_code=INVALID_PARAMETER_VALUE)
    struct = getattr(keras_model, "_outputs_struct", None)
    out_names = list(struct) if isinstance(struct, dict) else [layer.name]
    frame_shape = tuple(int(d) for d in keras_model.inputs[0].shape[1 if layer.stateful else 2:])
    in_name, batch = keras_model.inputs[0].name, 1
    signature_key = "serving_default"
    if source is not None:
        from mlflow_tflite_keras.converter.streaming import is_streaming

        # The source's step signature (an app may ship reset / setter signatures too).
        steps = [s for s in source.signatures if len(s.inputs) == 1
                 and len(s.outputs) == cell.n_outputs and is_streaming(source, s.subgraph_index)]
        sig = steps[0] if steps else source.signature()
        signature_key = sig.key or signature_key
        tensors = source.subgraphs[sig.subgraph_index].tensors
        if len(sig.inputs) == 1 and len(sig.outputs) == cell.n_outputs:
            in_name, out_names = next(iter(sig.inputs)), list(sig.outputs)
            batch = max(int(tensors[next(iter(sig.inputs.values()))].shape[0]), 1)
    recipe = _recipe(source, recipe)
    dataset = None
    if recipe in FULL_INTEGER:
        inference_input_type, inference_output_type = _full_integer_types(
            source, recipe, representative_data, inference_input_type, inference_output_type,
            f"Recipe '{recipe}' needs representative_data: frame sequences [n, time, *frame] "
            "(or frames [n, *frame]) to calibrate the activations and the state.")
        dataset = _streaming_frames(representative_data, frame_shape, num_samples)

    # Per-example cells hold the variables' exact shapes; others lack the stream's batch.
    initial = [np.asarray(keras.ops.convert_to_numpy(w)) if cell.per_example else
               np.broadcast_to(keras.ops.convert_to_numpy(w), (batch, *s)).copy()
               for w, s in zip(cell.initial_weights, cell.state_shapes)]

    # The step's weights enter the graph as constants (read through a StatelessScope), so
    # the only resource variables of the export are the state.
    weights = [(w, tf.constant(keras.ops.convert_to_numpy(w))) for w in cell.step_model.weights]

    class Streaming(tf.Module):
        def __init__(self):
            super().__init__()
            self.states = [tf.Variable(v, name=n) for v, n in zip(initial, cell.state_names)]

        @tf.function(input_signature=[tf.TensorSpec((batch, *frame_shape), tf.float32,
                                                    name=in_name)])
        def step(self, frame):
            with keras.StatelessScope(state_mapping=weights):
                values = cell.step_model([frame, *[v.read_value() for v in self.states]],
                                         training=False)
            n = cell.n_outputs
            for variable, value in zip(self.states, values[n:]):
                variable.assign(value)
            return dict(zip(out_names, values[:n]))

    module = Streaming()
    with tempfile.TemporaryDirectory() as saved_model_dir:
        with contextlib.redirect_stdout(io.StringIO()):
            tf.saved_model.save(module, saved_model_dir, signatures={signature_key: module.step})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.experimental_enable_resource_variables = True
        if recipe in FULL_INTEGER:
            converter._experimental_variable_quantization = True
        result = convert_with_recipe(converter, recipe, dataset, inference_input_type,
                                     inference_output_type)
    return _checked_against(source, result, allow_interface_changes, return_report)


def _checked_against(source, result: bytes, allow_interface_changes: bool, return_report: bool):
    """``result`` after comparing its interface with ``source`` (when given): a difference is
    an :class:`InterfaceChangedError` unless allowed (then a warning)."""
    if source is None:
        return (result, None) if return_report else result
    report = compare_interfaces(source, result)
    if not report.ok:
        if not allow_interface_changes:
            raise InterfaceChangedError(report)
        _log.warning("The exported model's interface differs from the source's:\n%s", report)
    return (result, report) if return_report else result
