"""Quantization recipes and kinds: the one place that knows them.

A *kind* is what a ``.tflite`` file is (:attr:`TFLiteModel.quantization_kind`: ``none``,
``float16``, ``weight-only-int4``, ``full-int8``...), a *recipe* how one is made (named like
the kind it makes, ``float32`` for ``none``). This module holds, for every kind and recipe:
its name and aliases, how it is recognised in a file (:func:`weight_scheme`,
:func:`kind_from`), how it is made (:data:`CONVERTER_RECIPES` settings for TFLiteConverter,
:func:`quantizer_config` for ai-edge-quantizer), the interface types a full-integer recipe
allows (:data:`FULL_INTEGER`), and the parity tolerances of its family
(:func:`tolerance_family`, :data:`DEFAULT_TOLERANCES`). Adding a kind adds entries here
(and tests); the code that reads a model, converts, exports and checks parity asks this module.

A leaf module: numpy-free, TensorFlow-free, imported by the flatbuffer reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

__all__ = ["BLOCK_SIZES", "CONVERTER_RECIPES", "DEFAULT_TOLERANCES", "FULL_INTEGER", "MIXED",
           "EMULATED_COMPILED_MAX_STEPS", "EMULATED_TOLERANCES",
           "OP_BY_OP_TOLERANCES", "QUANTIZED_TYPES", "RECIPES", "WEIGHT_TYPES", "is_quantized",
           "is_float_kind", "is_hybrid_kind", "kind_from", "normalize_recipe", "quantizer_config",
           "tolerance_family",
           "weight_scheme"]

# ---- stored types ------------------------------------------------------------------------------

#: The integer types that carry affine-quantized values (with a Quantization): weights of
#: every width, activations (INT8 / UINT8 / INT16) and the INT32 / INT64 biases of integer ops.
QUANTIZED_TYPES = ("INT2", "INT4", "UINT4", "INT8", "UINT8", "INT16", "INT32", "INT64")

#: Integer types weights are stored in, quantized: what hybrid (dynamic-range) kernels and
#: weight-only dequantization take, and the constant types an interface comparison reports.
WEIGHT_TYPES = ("INT8", "INT4", "INT2")

#: Float types stored narrower than float32: their own kind when weights have them.
_NARROW_FLOATS = ("FLOAT16", "BFLOAT16")


def is_quantized(tensor) -> bool:
    """A tensor (anything with ``type_name`` and ``quantization``) holding quantized values."""
    return tensor.quantization is not None and tensor.type_name in QUANTIZED_TYPES


# ---- recipes: names ----------------------------------------------------------------------------

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
_QUANTIZER = re.compile(r"^(weight-only|dynamic-range)-int(4|8)(?:-blockwise-(\d+))?$")


def normalize_recipe(recipe: str) -> str:
    """The canonical name of a recipe (aliases resolved); an unknown one is refused."""
    name = _ALIASES.get(str(recipe).lower(), str(recipe).lower())
    made = _QUANTIZER.match(name)
    if name in RECIPES or (made and made.group(3) and int(made.group(3)) in BLOCK_SIZES):
        return name
    raise MlflowException(
        f"Unknown quantization recipe '{recipe}'; use one of {RECIPES}, or "
        "'<weight-only|dynamic-range>-int<4|8>-blockwise-<N>' with N in "
        f"{BLOCK_SIZES} (aliases: {sorted(_ALIASES)}).", error_code=INVALID_PARAMETER_VALUE)


# ---- recipes: how each is made -----------------------------------------------------------------


@dataclass(frozen=True)
class FullInteger:
    """A full-integer recipe: the type of its quantized activations, the interface types
    TFLiteConverter accepts for it (float32 keeps float I/O), and its ops set."""

    activation_type: str
    io_types: tuple[str, ...]
    ops_set: str

    @property
    def io_type(self) -> str:
        """The default interface type (the activations')."""
        return self.activation_type.lower()


#: Full-integer recipes, in the order a model's kind is decided by its activation types
#: (INT16 activations: int16x8, even where some tensors are INT8).
FULL_INTEGER = {
    "int16x8": FullInteger("INT16", ("float32", "int16"),
                           "EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"),
    "full-int8": FullInteger("INT8", ("float32", "int8", "uint8"), "TFLITE_BUILTINS_INT8"),
    "full-uint8": FullInteger("UINT8", ("float32", "int8", "uint8"), "TFLITE_BUILTINS_INT8"),
}
#: Interface (input / output) types a quantized model exchanges: TensorType -> numpy name.
QUANTIZED_IO = {f.activation_type: f.io_type for f in FULL_INTEGER.values()}

#: Recipes made by TFLiteConverter from the SavedModel: the converter's settings (names of
#: ``tf.lite.Optimize`` members, of ``tf`` dtypes for ``supported_types``); full-integer ones
#: also take :data:`FULL_INTEGER`. The others are made by ai-edge-quantizer from the float
#: ``.tflite`` (:func:`quantizer_config`): TFLiteConverter has no weight-only, int4 or
#: blockwise recipe.
CONVERTER_RECIPES = {
    "float32": {},
    "float16": {"optimizations": ["DEFAULT"], "supported_types": ["float16"]},
    "dynamic-range-int8": {"optimizations": ["DEFAULT"]},
    **{name: {"optimizations": ["DEFAULT"]} for name in FULL_INTEGER},
}


def quantizer_config(recipe: str) -> tuple[bool, int, int]:
    """``(weight_only, bits, block size)`` of a recipe made by ai-edge-quantizer: weight-only
    (else dynamic-range), the weights' bits, the block size (0: channelwise)."""
    made = _QUANTIZER.match(normalize_recipe(recipe))
    if made is None:
        raise MlflowException(f"Recipe '{recipe}' is made by TFLiteConverter, not by "
                              "ai-edge-quantizer.", error_code=INVALID_PARAMETER_VALUE)
    return made.group(1) == "weight-only", int(made.group(2)), int(made.group(3) or 0)


# ---- kinds: how each is recognised -------------------------------------------------------------


def weight_scheme(t, dequantized: bool, integer_op: bool) -> str | None:
    """How an op computes with a stored weight ``t`` (a TensorInfo): ``weight-only-<int>``
    (dequantized in front of float compute), ``dynamic-range-<int>`` (a hybrid kernel), with
    ``-blockwise-<N>``; ``float16`` / ``bfloat16``; None for a float weight or one of an
    integer-only op (``integer_op``: its activations say what the model is)."""
    if t.type_name in _NARROW_FLOATS:
        return t.type_name.lower()
    if not is_quantized(t) or (integer_op and not dequantized):
        return None
    blockwise = f"-blockwise-{t.quantization.block_size}" if t.quantization.block_size else ""
    return f"{'weight-only' if dequantized else 'dynamic-range'}-{t.type_name.lower()}{blockwise}"


def activation_types() -> tuple[str, ...]:
    """The types of quantized activations that make a model full-integer."""
    return tuple(f.activation_type for f in FULL_INTEGER.values())


#: The kind of a model whose weights are quantized several ways.
MIXED = "mixed"


def kind_from(activations: set[str], weight_schemes: set[str]) -> str:
    """A model's kind from the types of its quantized activations and the schemes of its
    reduced-precision weights (:func:`weight_scheme`)."""
    for name, recipe in FULL_INTEGER.items():
        if recipe.activation_type in activations:
            return name
    schemes = set(weight_schemes)
    if len(schemes) <= 1:
        return schemes.pop() if schemes else "none"
    # TFLiteConverter's dynamic-range recipe dequantizes the weights of ops that have no
    # hybrid kernel: weight-only and dynamic-range of one width are still that recipe.
    hybrid = {s.replace("weight-only-", "dynamic-range-") for s in schemes}
    if len(hybrid) == 1:
        return hybrid.pop()
    return MIXED


# ---- parity tolerances, by family of kinds -----------------------------------------------------


def tolerance_family(kind: str) -> str:
    """The family of a quantization kind that sets parity tolerances: ``none``, ``float16``,
    ``weight-only``, ``dynamic-range``, ``full-int8``, ``full-uint8`` or ``int16x8``.
    Weight-only models compute in float with the dequantized weights (float noise); mixed
    ones are judged like the loosest weight scheme, dynamic range."""
    if kind == "bfloat16":
        return "float16"
    if kind.startswith("weight-only"):
        return "weight-only"
    if kind.startswith("dynamic-range") or kind == MIXED:
        return "dynamic-range"
    return kind


def is_float_kind(kind: str) -> bool:
    """Float activations and float (or float16) weights: nothing quantized."""
    return tolerance_family(kind) in ("none", "float16")


def is_hybrid_kind(kind: str) -> bool:
    """Float activations that the kernels quantize on the fly (dynamic range, mixed)."""
    return tolerance_family(kind) == "dynamic-range"


# Each op of a full-integer model, fed the interpreter's own (integer) inputs, is within this
# many quantization steps of the integer kernel (measured: <= 0.8 on every builtin's tests).
OP_MAX_STEPS = 1.0

# Default tolerances by quantization kind. "max_rel_error" is the max absolute error divided
# by the output's value range; quantized kinds are judged in output quantization steps and by
# top-1 agreement because a float model cannot reproduce integer rounding exactly.
DEFAULT_TOLERANCES = {
    # float summation order and kernel approximations (XNNPACK vs TF) accumulate over deep
    # networks: up to 1.3e-4 of the range measured (MobileNetV3); a 5% kernel error is >= 3e-2
    "none": {"max_rel_error": 5e-4},
    "float16": {"max_rel_error": 1e-3},
    # float compute on the dequantized weights, as the Keras model does: float noise
    "weight-only": {"max_rel_error": 1e-4},
    "dynamic-range": {"max_rel_error": 5e-2, "min_cosine": 0.99},
    "full-int8": {"max_steps": 8.0, "min_cosine": 0.95, "min_top1": 0.8},
    "full-uint8": {"max_steps": 8.0, "min_cosine": 0.95, "min_top1": 0.8},
    "int16x8": {"max_rel_error": 1e-2, "min_cosine": 0.99},
}

# Kinds whose activations the interpreter quantizes are checked op by op (check_ops): each op
# fed the interpreter's own inputs is within 1 step of its integer kernel (full-integer), or
# within float noise for hybrid kernels whose input quantization is replayed (measured: <= 0.8
# steps, <= 1e-6). Rounding accumulates over layers, so where the op-by-op check runs, end to
# end only top-1 decisions are judged by default (the other figures are reported); where it
# cannot run (a Keras model that is not a reconstruction), the end-to-end defaults apply.
OP_BY_OP_TOLERANCES = {
    "dynamic-range": {"op_max_rel_error": 1e-4},
    **{name: {"op_max_steps": OP_MAX_STEPS} for name in FULL_INTEGER},
}

# Models built with emulate_quantization=True compute what the integer kernels compute: full-
# integer outputs within 1 step everywhere (rounding ties of the fixed-point requantization),
# hybrid kernels within float noise, judged end to end. int16x8 too: its convolution / dense
# kernels (int64 accumulators, a 15-bit or double rescale), SOFTMAX (lookup tables) and MEAN
# are replayed in integers (converter/layers/integer_kernels.py): 0 steps on the digits and
# audio CNNs (7 and 6 int16 steps when they were approximated in float).
# Float outputs not behind an integer tensor (a float custom kernel after the last integer
# op, e.g. detection post-processing) are computed from the same integers: float noise.
EMULATED_TOLERANCES = {
    "dynamic-range": {"max_rel_error": 1e-4},
    **{name: {"max_steps": 1.0, "float_max_rel_error": 1e-4} for name in FULL_INTEGER},
}
# An emulated model rounds at every quantized tensor, so model.predict (a graph whose float
# summation order differs from the eager call's) may land a tie on the other side: compiled
# and eager calls of an emulated full-integer model agree within this many steps of each
# quantized output (each is also judged against the interpreter by EMULATED_TOLERANCES). The
# replayed int16x8 kernels compute in integers (exact in both; measured 0 steps apart).
# Hybrid kernels: the float models' limit.
EMULATED_COMPILED_MAX_STEPS = {name: 1.0 for name in FULL_INTEGER}
