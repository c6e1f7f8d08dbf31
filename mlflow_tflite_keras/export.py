"""Keras -> ``.tflite`` with a named quantization recipe (TensorFlow needed).

:func:`keras_to_tflite` converts with a recipe; :func:`export_tflite` converts "like" a source
model (same recipe, same interface types) and checks with :func:`compare_interfaces` that the
app sees the same interface.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.errors import InterfaceChangedError

__all__ = ["RECIPES", "InterfaceChangedError", "InterfaceDifference", "InterfaceReport",
           "compare_interfaces", "export_saved_model", "export_streaming_tflite",
           "export_emulated", "export_tflite", "keras_to_tflite",
           "load_like", "normalize_recipe", "representative_dataset",
           "convert_with_recipe", "quantize_float_model", "recipe_for", "BLOCK_SIZES"]

#: Recipe names are the quantization kinds a source can have (``float32`` for kind ``none``).
#: ``<mode>-int<bits>-blockwise-<N>`` (mode ``weight-only`` or ``dynamic-range``, N one of
#: :data:`BLOCK_SIZES`) are recipes too.
RECIPES = ("float32", "float16", "weight-only-int8", "dynamic-range-int8", "weight-only-int4",
           "dynamic-range-int4", "full-int8", "full-uint8", "int16x8")
BLOCK_SIZES = (32, 64, 128, 256)
_ALIASES = {"none": "float32", "fp32": "float32", "fp16": "float16",
            "dynamic": "dynamic-range-int8", "dynamic-range": "dynamic-range-int8",
            "weight-only": "weight-only-int8", "int4": "dynamic-range-int4",
            "int8": "full-int8", "uint8": "full-uint8"}
_BLOCKWISE = re.compile(r"^(weight-only|dynamic-range)-int(4|8)-blockwise-(\d+)$")
# Made by TFLiteConverter from the SavedModel; the others by ai-edge-quantizer from the float
# .tflite (TFLiteConverter has no weight-only, int4 or blockwise recipe).
_CONVERTER_RECIPES = ("float32", "float16", "dynamic-range-int8", "full-int8", "full-uint8",
                      "int16x8")


def normalize_recipe(recipe: str) -> str:
    name = _ALIASES.get(str(recipe).lower(), str(recipe).lower())
    blockwise = _BLOCKWISE.match(name)
    if name in RECIPES or (blockwise and int(blockwise.group(3)) in BLOCK_SIZES):
        return name
    raise MlflowException(
        f"Unknown quantization recipe '{recipe}'; use one of {RECIPES}, or "
        "'<weight-only|dynamic-range>-int<4|8>-blockwise-<N>' with N in "
        f"{BLOCK_SIZES} (aliases: {sorted(_ALIASES)}).", error_code=INVALID_PARAMETER_VALUE)


def representative_dataset(data, limit: int = 200) -> Callable[[], Iterable[list[np.ndarray]]]:
    """A TFLiteConverter representative dataset from an array, a list of arrays (one per
    input) or a callable that already yields lists of arrays."""
    if callable(data):
        return data
    inputs = list(data) if isinstance(data, (list, tuple)) else [data]
    inputs = [np.asarray(x, dtype=np.float32) for x in inputs]
    count = min(limit, min(len(x) for x in inputs))

    def generate():
        for i in range(count):
            yield [x[i:i + 1] for x in inputs]

    return generate


def keras_to_tflite(model, recipe: str = "float32", representative_data=None,
                    inference_input_type=None, inference_output_type=None) -> bytes:
    """Convert a Keras model to ``.tflite`` bytes with one of :data:`RECIPES`.

    Full-integer recipes need ``representative_data``; their interface types default to the
    recipe's integer type (int8 / uint8 / int16), pass ``np.float32`` to keep float I/O.
    """
    import tensorflow as tf

    recipe = normalize_recipe(recipe)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        export_saved_model(model, saved_model_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        return convert_with_recipe(converter, recipe, representative_data,
                                   inference_input_type, inference_output_type)


def export_saved_model(model, directory: str) -> None:
    """Keras 3's own SavedModel export: it keeps dict inputs/outputs and their names, which
    TFLiteConverter.from_keras_model (a tf_keras-era path) does not. A batch size the model
    declares (``keras.Input(..., batch_size=1)``) is kept: the export would otherwise make it
    dynamic, which models with recurrent layers cannot be lowered with."""
    import keras
    import tensorflow as tf

    signature = None
    if model.inputs and all(t.shape and t.shape[0] is not None for t in model.inputs):
        struct = getattr(model, "_inputs_struct", None)
        struct = model.inputs if struct is None else struct
        signature = [keras.tree.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype, name=t.name), struct)]
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(directory, format="tf_saved_model", verbose=False,
                     input_signature=signature)


def convert_with_recipe(converter, recipe: str, representative_data=None,
                        inference_input_type=None, inference_output_type=None) -> bytes:
    """Run a ``tf.lite.TFLiteConverter`` with a recipe: TFLiteConverter's own options where it
    has the recipe, else a float conversion quantized by ai-edge-quantizer
    (:func:`quantize_float_model`). Builtin ops only: a Flex op would need the Select-TF-ops
    runtime, which the source's app does not have."""
    import tensorflow as tf

    recipe = normalize_recipe(recipe)
    if recipe not in _CONVERTER_RECIPES:
        return quantize_float_model(convert_with_recipe(converter, "float32"), recipe)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if recipe == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif recipe == "dynamic-range-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif recipe in _FULL_INTEGER:
        if representative_data is None:
            raise MlflowException(f"Recipe '{recipe}' needs representative_data.",
                                  error_code=INVALID_PARAMETER_VALUE)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative_data)
        io_type = {"full-int8": tf.int8, "full-uint8": tf.uint8, "int16x8": tf.int16}[recipe]
        if recipe == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.as_dtype(inference_input_type or io_type)
        converter.inference_output_type = tf.as_dtype(inference_output_type or io_type)
    try:
        # TensorFlow prints its SavedModel export summary to stdout; keep CLI output clean.
        # Calibration uses tf.lite.Interpreter, which warns that it is deprecated.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            return converter.convert()
    except Exception as e:
        raise MlflowException(f"TFLiteConverter failed for recipe '{recipe}': {e}") from e


def quantize_float_model(float_model: bytes, recipe: str) -> bytes:
    """Quantize a float ``.tflite`` with ai-edge-quantizer to a weight-only or dynamic-range
    recipe with int8 or int4 weights, channelwise or blockwise (``...-blockwise-<N>``: INT4
    constants with ``BlockwiseQuantization`` of that block size, on the ops that support it,
    e.g. FULLY_CONNECTED). Raises if nothing was quantized: the recipe would not be kept."""
    from ai_edge_quantizer import qtyping, quantizer

    recipe = normalize_recipe(recipe)
    blockwise = _BLOCKWISE.match(recipe)
    plain = re.match(r"^(weight-only|dynamic-range)-int(4|8)$", recipe)
    if not (blockwise or plain):
        raise MlflowException(f"Recipe '{recipe}' is made by TFLiteConverter, not by "
                              "ai-edge-quantizer.", error_code=INVALID_PARAMETER_VALUE)
    mode, bits = (blockwise or plain).group(1), int((blockwise or plain).group(2))
    granularity = (qtyping.QuantGranularity(f"BLOCKWISE_{blockwise.group(3)}") if blockwise
                   else qtyping.QuantGranularity.CHANNELWISE)
    quant = quantizer.Quantizer(bytearray(float_model))
    add = quant.add_weight_only_config if mode == "weight-only" else quant.add_dynamic_config
    add(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=bits,
        granularity=granularity)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = bytes(quant.quantize(enable_progress_report=False).quantized_model)
    except Exception as e:
        raise MlflowException(f"ai-edge-quantizer failed for recipe '{recipe}': "
                              f"{type(e).__name__}: {e}", error_code=INVALID_PARAMETER_VALUE
                              ) from e
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    made = _source_recipe(TFLiteModel(result))
    if made != recipe:
        raise MlflowException(
            f"ai-edge-quantizer made a '{made}' model for recipe '{recipe}': none of the "
            "model's ops supports it (blockwise recipes apply to FULLY_CONNECTED weights whose "
            "input dimension is a multiple of the block size).",
            error_code=INVALID_PARAMETER_VALUE)
    return result


# ---- round trip: export like a source model, and check the interface ---------------------------

_log = logging.getLogger(__name__)

_WEIGHT_TYPES = {"INT8": 8, "INT4": 4}


def _source_recipe(model) -> str:
    """The quantization kind of a :class:`TFLiteModel` (named like the recipe that makes it,
    ``none`` for float32)."""
    return model.quantization_kind


def _block_size(subgraph, index: int) -> int:
    """The block size of a blockwise-quantized tensor (schema ``BlockwiseQuantization``)."""
    from ai_edge_litert import schema_py_generated as schema

    q = subgraph.tensors[index].quantization
    if q is not None and q.detailsType == schema.QuantizationDetails.BlockwiseQuantization:
        return int(q.details.blockSize)
    return 0


def _constant_types(model) -> dict:
    """The recipe as stored: the types of the quantized / float16 weight constants and the
    block sizes of blockwise ones, e.g. ``{"types": ["INT4"], "block_sizes": [32]}``."""
    types, blocks = set(), set()
    for sg_info, sg in zip(model.subgraphs, model._model.subgraphs):
        consumed = {i for op in sg_info.operators for i in op.inputs if i >= 0}
        for t in sg_info.tensors:
            if t.index not in consumed or model._raw_buffer(t.buffer) is None:
                continue
            block = _block_size(sg, t.index)
            if t.type_name == "FLOAT16" or (t.type_name in _WEIGHT_TYPES and (
                    t.quantization is not None or block)):
                types.add(t.type_name)
            if block:
                blocks.add(block)
    return {"types": sorted(types), "block_sizes": sorted(blocks)}


def recipe_for(model) -> str:
    """The recipe that reproduces a source model's quantization (a TFLiteModel or anything
    :func:`load_like` takes)."""
    model = load_like(model)
    kind = _source_recipe(model)
    if kind == "mixed":
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


_FULL_INTEGER = ("full-int8", "full-uint8", "int16x8")
# What TFLiteConverter accepts as interface types per recipe (float32 keeps float I/O).
_IO_TYPES = {"full-int8": ("float32", "int8", "uint8"), "full-uint8": ("float32", "int8", "uint8"),
             "int16x8": ("float32", "int16")}
_QUANTIZED_IO = {"INT8": "int8", "UINT8": "uint8", "INT16": "int16"}


@dataclass(frozen=True)
class InterfaceDifference:
    """One way the new model's interface differs from the source's."""

    what: str  # "signature", "key", "input", "output", "name", "shape", "dtype", "quantized",
    #            "order", "quantization kind", "constant types", "block sizes"
    where: str  # e.g. "output 'output_0'", "signature 'serving_default'", "model"
    source: object
    new: object

    def to_dict(self) -> dict:
        return {"what": self.what, "where": self.where, "source": self.source, "new": self.new}

    def __str__(self) -> str:
        return f"{self.where} {self.what}: source {_fmt(self.source)}, new {_fmt(self.new)}"


@dataclass
class InterfaceReport:
    """The result of :func:`compare_interfaces`: empty ``differences`` means the app sees the
    same interface (names, ranks and shapes, dtypes) and the same recipe (quantization kind,
    types of the weight constants, block sizes)."""

    source_quantization: str
    new_quantization: str
    matched_by: str  # "signature" (SignatureDef names) or "order" (source has no SignatureDef)
    differences: list[InterfaceDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict:
        return {"ok": self.ok, "source_quantization": self.source_quantization,
                "new_quantization": self.new_quantization, "matched_by": self.matched_by,
                "differences": [d.to_dict() for d in self.differences], "notes": list(self.notes)}

    def __str__(self) -> str:
        if self.ok:
            head = "The interfaces match"
        else:
            head = f"{len(self.differences)} interface difference(s)"
        lines = [f"{head} (quantization: source {self.source_quantization}, "
                 f"new {self.new_quantization}; matched by {self.matched_by})."]
        lines += [f"  - {d}" for d in self.differences]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def load_like(like):
    """A :class:`TFLiteModel` from a ``.tflite`` path or bytes, a TFLiteModel, a loaded
    flavor model, or any MLflow model URI (or local model directory) of the tflite_keras
    flavor."""
    from mlflow_tflite_keras.tflite_model import TFLiteModel, describe_path

    if isinstance(like, TFLiteModel):
        return like
    if isinstance(like, (bytes, bytearray, memoryview)):
        return TFLiteModel(bytes(like))
    if hasattr(like, "model_bytes") and not isinstance(like, (str, os.PathLike)):
        return TFLiteModel(like.model_bytes)  # LoadedTFLiteModel
    if isinstance(like, (str, os.PathLike)):
        path = os.fspath(like)
        if os.path.isfile(path) or (path.endswith(".tflite") and "://" not in path) or \
                not describe_path(path).startswith("'"):
            return TFLiteModel.load(path)  # (an unprintable "path" is refused, not echoed)
        import mlflow_tflite_keras.flavor as flavor  # lazily: MLflow model URI or directory

        try:
            return TFLiteModel(flavor.load_model(path).model_bytes)
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


def _norm(name: str) -> str:
    """Compare names as the app would recognise them: 'serving_default_x:0' ~ 'x'."""
    name = str(name).split(":")[0]
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def match_name(key: str, names, aliases: dict | None = None) -> str | None:
    """The one of ``names`` that ``key`` means: itself, its alias, or the only name equal to
    it up to case and punctuation (:func:`_norm`); None when there is none."""
    if key in names:
        return key
    if aliases and aliases.get(key) is not None:
        return aliases[key]
    matches = [n for n in names if _norm(n) == _norm(key)]
    return matches[0] if len(matches) == 1 else None


def _pair_by_name(source: dict, new: dict):
    """Pairs (source name, new name, renamed?) by exact name, then by normalised name, then a
    single leftover on each side; and the unmatched names of each side."""
    pairs = [(n, n, False) for n in source if n in new]
    left_src = [n for n in source if n not in new]
    left_new = [n for n in new if n not in source]
    for n in list(left_src):
        candidates = [m for m in left_new if _norm(m) == _norm(n)]
        if len(candidates) == 1:
            pairs.append((n, candidates[0], True))
            left_src.remove(n)
            left_new.remove(candidates[0])
    if len(left_src) == 1 and len(left_new) == 1:
        pairs.append((left_src[0], left_new[0], True))
        left_src, left_new = [], []
    order = list(source)
    pairs.sort(key=lambda p: order.index(p[0]))
    return pairs, left_src, left_new


def _compare_tensor(where: str, src, new, diffs: list):
    s_sig, n_sig = list(src.shape_signature), list(new.shape_signature)
    if len(s_sig) != len(n_sig):
        diffs.append(InterfaceDifference("shape", where, s_sig, n_sig))
    else:
        # Exactly, batch included: a fixed batch of 1 that became dynamic changes what the
        # app's delegates and preallocated buffers see.
        if s_sig != n_sig:
            diffs.append(InterfaceDifference("shape", where, s_sig, n_sig))
    if src.type_name != new.type_name:
        diffs.append(InterfaceDifference("dtype", where, src.type_name.lower(),
                                         new.type_name.lower()))
    elif (src.quantization is not None) != (new.quantization is not None) and \
            src.type_name in _QUANTIZED_IO:
        diffs.append(InterfaceDifference("quantized", where, src.quantization is not None,
                                         new.quantization is not None))


def _sig_tensors(model, sig, which: str) -> dict:
    sg = model.subgraphs[sig.subgraph_index]
    return {name: sg.tensors[i] for name, i in getattr(sig, which).items()}


def compare_interfaces(source, new) -> InterfaceReport:
    """Compare what an app sees of two models (each a ``.tflite`` path or bytes, a
    TFLiteModel or an MLflow model URI): SignatureDef keys, input/output names and their
    order (in the SignatureDef and in the subgraph; by position when the source has no
    SignatureDef), shapes exactly (``-1`` where dynamic), dtypes, and the recipe
    (quantization kind, weight constant types, block sizes)."""
    src, dst = load_like(source), load_like(new)
    src_kind, dst_kind = _source_recipe(src), _source_recipe(dst)
    report = InterfaceReport(src_kind, dst_kind, "signature" if src.signatures else "order")
    diffs = report.differences
    if src_kind != dst_kind:
        diffs.append(InterfaceDifference("quantization kind", "model", src_kind, dst_kind))
    src_consts, dst_consts = _constant_types(src), _constant_types(dst)
    # In a full-integer model every constant operand is quantized, weights or not (an
    # epsilon, a resize size): its kind says all there is to say about the recipe.
    compared = ("block_sizes",) if src_kind == dst_kind and src_kind in _FULL_INTEGER \
        else ("types", "block_sizes")
    for key, what in (("types", "constant types"), ("block_sizes", "block sizes")):
        if key in compared and src_consts[key] != dst_consts[key]:
            diffs.append(InterfaceDifference(what, "weights", src_consts[key], dst_consts[key]))
    if src.signatures:
        new_keys = {s.key: s for s in dst.signatures}
        for i, sig in enumerate(src.signatures):
            other = new_keys.get(sig.key)
            if other is None and i == 0 and dst.signatures and \
                    not any(s.key == dst.signatures[0].key for s in src.signatures):
                other = dst.signatures[0]
                diffs.append(InterfaceDifference("key", "signature", sig.key, other.key))
            if other is None:
                diffs.append(InterfaceDifference("signature", f"signature '{sig.key}'",
                                                 "present", "missing"))
                continue
            prefix = f"signature '{sig.key}' " if len(src.signatures) > 1 else ""
            for which in ("inputs", "outputs"):
                pairs = _compare_named(prefix + which[:-1], _sig_tensors(src, sig, which),
                                       _sig_tensors(dst, other, which), diffs)
                _compare_order(prefix + which, pairs, (src, sig), (dst, other), which, diffs)
        extra = [s.key for s in dst.signatures if s.key not in {x.key for x in src.signatures}
                 and s.key != dst.signatures[0].key]
        if extra:
            report.notes.append(f"The new model has extra signatures: {extra}.")
    else:
        report.notes.append("The source has no SignatureDef: inputs and outputs are matched "
                            "by position, tensor names are not compared.")
        s_main, d_main = src.main, dst.main
        _compare_ordered("input", [s_main.tensors[i] for i in s_main.inputs],
                         [d_main.tensors[i] for i in d_main.inputs], diffs)
        _compare_ordered("output", [s_main.tensors[i] for i in s_main.outputs],
                         [d_main.tensors[i] for i in d_main.outputs], diffs)
    return report


def _compare_named(kind: str, source: dict, new: dict, diffs: list):
    pairs, missing, extra = _pair_by_name(source, new)
    for s_name, n_name, renamed in pairs:
        if renamed:
            diffs.append(InterfaceDifference("name", f"{kind} '{s_name}'", s_name, n_name))
        _compare_tensor(f"{kind} '{s_name}'", source[s_name], new[n_name], diffs)
    for name in missing:
        diffs.append(InterfaceDifference(kind, f"{kind} '{name}'", "present", "missing"))
    for name in extra:
        diffs.append(InterfaceDifference(kind, f"{kind} '{name}'", "absent", "added"))
    return pairs


def _compare_order(kind: str, pairs, source, new, which: str, diffs: list):
    """Apps that read outputs by index (most do) see the subgraph's order; the SignatureDef
    has its own order too. Both must be the source's."""
    to_new = {s: n for s, n, _ in pairs}
    for (s_model, s_sig), label in ((source, "signature"), (source, "subgraph")):
        n_model, n_sig = new
        s_names = list(getattr(s_sig, which))
        n_names = list(getattr(n_sig, which))
        if label == "subgraph":
            s_names = _subgraph_order(s_model, s_sig, which)
            n_names = _subgraph_order(n_model, n_sig, which)
        expected = [to_new[n] for n in s_names if n in to_new]
        got = [n for n in n_names if n in set(expected)]
        if expected != got:
            diffs.append(InterfaceDifference("order", f"{label} {kind}",
                                             [n for n in s_names if n in to_new],
                                             [s for n in got for s, m, _ in pairs if m == n]))


def _subgraph_order(model, sig, which: str) -> list:
    """The signature names in the order of the subgraph's inputs / outputs."""
    by_index = {i: name for name, i in getattr(sig, which).items()}
    sg = model.subgraphs[sig.subgraph_index]
    return [by_index[i] for i in getattr(sg, which) if i in by_index]


def _compare_ordered(kind: str, source: list, new: list, diffs: list):
    if len(source) != len(new):
        diffs.append(InterfaceDifference(f"{kind} count", "model", len(source), len(new)))
    for i, (s, n) in enumerate(zip(source, new)):
        _compare_tensor(f"{kind} #{i} ('{s.name}')", s, n, diffs)
    # The same inputs in another order would go unnoticed when they share shape and dtype.
    s_names, n_names = [_norm(t.name) for t in source], [_norm(t.name) for t in new]
    if sorted(s_names) == sorted(n_names) and len(set(s_names)) == len(s_names) and \
            s_names != n_names and kind == "input":
        diffs.append(InterfaceDifference("order", f"{kind}s", s_names, n_names))


# ---- export ------------------------------------------------------------------------------------


def _interface_types(source, recipe: str, input_type=None, output_type=None):
    """Interface types of a full-integer recipe: those given, else those that keep the
    source's I/O (a source whose float inputs were quantized (int8/uint8/int16) keeps that
    type, otherwise float32); without a source, those given (None: the recipe's default)."""
    if source is None:
        return input_type, output_type
    allowed = _IO_TYPES[recipe]
    sig = source.signature()
    types = []
    for which in ("inputs", "outputs"):
        found = {_QUANTIZED_IO[t.type_name] for t in _sig_tensors(source, sig, which).values()
                 if t.type_name in _QUANTIZED_IO and t.quantization is not None}
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
        candidates = [t for t in left if _norm(t) == _norm(n)]
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
            out = {}
            for key, value in sample.items():
                name = match_name(key, specs, aliases)
                if name is None:
                    raise MlflowException(
                        f"representative_data has an entry '{key}' that matches no input of "
                        f"the model; its inputs are {names}.", error_code=INVALID_PARAMETER_VALUE)
                out[name] = value
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
    """
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
    if recipe is None:
        recipe = recipe_for(source) if source is not None else "float32"
    recipe = normalize_recipe(recipe)
    if recipe in _FULL_INTEGER:
        if representative_data is None:
            origin = f"The source model is {_source_recipe(source)}-quantized; recreating " \
                     "that recipe" if source is not None else f"Recipe '{recipe}'"
            raise MlflowException(
                f"{origin} needs representative_data to calibrate activations: an array, a "
                "list of arrays (one per input), a dict by input name, or a callable yielding "
                "samples.", error_code=INVALID_PARAMETER_VALUE)
        inference_input_type, inference_output_type = _interface_types(
            source, recipe, inference_input_type, inference_output_type)
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
    own scheme (per-channel int8 kernels, int32 biases): every op, every activation scale and
    zero point and the int8 / float interface stay the source's, so no calibration data is
    needed, and LiteRT computes what the emulated Keras model computes.

    Raises when a trainable weight has no source constant to go to (a layer added or
    replaced after conversion: export without emulation instead) or ``source`` is not the
    model it was built from."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from mlflow_tflite_keras.converter.layers.quantization import QuantizedWeights
    from mlflow_tflite_keras.tflite_model import NUMPY_DTYPES

    source = load_like(source)
    model = schema.ModelT.InitFromPackedBuf(bytearray(source.model_bytes), 0)
    placed, written = set(), {}
    for layer in keras_model._flatten_layers():
        if not isinstance(layer, QuantizedWeights):
            continue
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
            f"of the source to go to (e.g. '{missing[0]}'): a layer was added or replaced, "
            "or the source keeps float weights (dynamic-range models: written back only "
            "from quantized constants so far). Export a reconstruction built without "
            "emulation instead.", error_code=INVALID_PARAMETER_VALUE)
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
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _convert_saved_model(directory, recipe, representative_data, order, aliases, num_samples,
                         inference_input_type, inference_output_type) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(directory,
                                                         signature_keys=[_EXPORT_KEY])
    dataset = None
    if recipe in _FULL_INTEGER:
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
        quantized = t.quantization is not None and t.type_name in _QUANTIZED_IO
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
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
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
    if recipe is None:
        recipe = recipe_for(source) if source is not None else "float32"
    recipe = normalize_recipe(recipe)
    dataset = None
    if recipe in _FULL_INTEGER:
        if representative_data is None:
            raise MlflowException(
                f"Recipe '{recipe}' needs representative_data: frame sequences "
                "[n, time, *frame] (or frames [n, *frame]) to calibrate the activations and the "
                "state.", error_code=INVALID_PARAMETER_VALUE)
        inference_input_type, inference_output_type = _interface_types(
            source, recipe, inference_input_type, inference_output_type)
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
        if recipe in _FULL_INTEGER:
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
