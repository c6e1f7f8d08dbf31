"""The op handler registry: TFLite operator name -> handler.

A handler is ``handler(op: ir.Op, ctx: BuildContext) -> list`` returning one value per output
of ``op`` (a KerasTensor, or a numpy array when the result is constant). It is registered with
the Keras layer(s) it produces, which ``docs/operators.md`` lists.

Builtin operators are keyed by their schema name (``@register("CONV_2D", ...)``), custom
operators by their custom code (``@register_custom("Convolution2DTransposeBias", ...)``): an
``ir.Op``'s ``type`` is the one or the other. Both live in one table, so every lookup
(``op.type in handlers``) serves both; a custom code equal to a builtin name is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Handler:
    op_type: str
    convert: Callable
    layer: str  # the Keras layer(s) this op becomes, for docs and conversion reports
    module: str
    custom: bool = False  # keyed by a custom code (a CUSTOM operator), not a builtin name


HANDLERS: dict[str, Handler] = {}


# Builtin operators with no Keras meaning: name -> why. The unsupported-operators error and
# docs/operators.md give the reason; ``unsupported="wrap"`` runs them in a TFLiteLayer.
NOT_CONVERTIBLE: dict[str, str] = {
    "CUSTOM": "a custom operator is keyed by its custom code (see the custom operators)",
    "DELEGATE": "a placeholder for a delegate's partition, never run by the interpreter",
    "PLACEHOLDER_FOR_GREATER_OP_CODES": "not an operator: marks the start of the extended "
                                        "opcode range",
    "HASHTABLE": "a string/resource hash table, no tensor computation",
    "HASHTABLE_FIND": "a string/resource hash table, no tensor computation",
    "HASHTABLE_IMPORT": "a string/resource hash table, no tensor computation",
    "HASHTABLE_LOOKUP": "a string-keyed table lookup, no tensor computation",
    "HASHTABLE_SIZE": "a string/resource hash table, no tensor computation",
    "SKIP_GRAM": "builds n-grams of strings",
    "LSH_PROJECTION": "hashes raw input bytes with FarmHash (Fingerprint64): no numeric, "
                      "differentiable meaning",
    "CONCAT_EMBEDDINGS": "declared in the schema but has no kernel in LiteRT (nothing to "
                         "match)",
    "STABLEHLO_CUSTOM_CALL": "an opaque call to a target named by a string",
    "STABLEHLO_RNG_BIT_GENERATOR": "not implemented: raw bits and the next state of a named "
                                   "generator (Philox / ThreeFry); no Keras random layer "
                                   "carries that state",
}


def schema_builtin_operators() -> list[str]:
    """Every builtin operator of the official schema (``ai_edge_litert``), sorted."""
    from ai_edge_litert import schema_py_generated as schema

    return sorted(k for k in vars(schema.BuiltinOperator) if not k.startswith("_"))


def unsupported_reason(op_type: str) -> str | None:
    """Why a builtin operator has no handler, when it has no Keras meaning."""
    return NOT_CONVERTIBLE.get(op_type)


def register(*op_types: str, layer: str):
    """Decorator: ``@register("ADD", "SUB", layer="keras.layers.Add / KerasOp")``."""
    return _register(op_types, layer, custom=False)


def register_custom(*custom_codes: str, layer: str):
    """Decorator for custom operators, keyed by custom code:
    ``@register_custom("MaxUnpooling2D", layer="MaxUnpooling2D")``."""
    return _register(custom_codes, layer, custom=True)


def _register(keys, layer, custom):
    def decorate(fn):
        for key in keys:
            if key in HANDLERS:
                raise ValueError(f"Two handlers for {key}: {HANDLERS[key].module} "
                                 f"and {fn.__module__}")
            HANDLERS[key] = Handler(key, fn, layer, fn.__module__, custom)
        return fn

    return decorate


def load_handlers() -> dict[str, Handler]:
    """Import every op family module (each registers its handlers on import)."""
    import importlib
    import pkgutil

    from mlflow_tflite_keras.converter import ops

    for info in pkgutil.iter_modules(ops.__path__):
        importlib.import_module(f"{ops.__name__}.{info.name}")
    return HANDLERS


def supported_operators() -> list[str]:
    """Sorted names of the TFLite builtin operators the converter rebuilds."""
    return sorted(name for name, h in load_handlers().items() if not h.custom)


def supported_custom_operators() -> list[str]:
    """Sorted custom codes of the custom operators the converter rebuilds."""
    return sorted(name for name, h in load_handlers().items() if h.custom)


def handles(handlers: dict[str, Handler], op_type: str, is_custom: bool) -> bool:
    """Whether ``handlers`` rebuild this operator: a builtin by name, a custom op by code
    (a custom op whose code happens to equal a builtin name is not that builtin)."""
    handler = handlers.get(op_type)
    return handler is not None and handler.custom == is_custom
