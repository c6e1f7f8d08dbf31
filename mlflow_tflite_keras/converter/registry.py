"""The op handler registry: TFLite operator name -> handler.

A handler is ``handler(op: ir.Op, ctx: BuildContext) -> list`` returning one value per output
of ``op`` (a KerasTensor, or a numpy array when the result is constant). It is registered with
the Keras layer(s) it produces, which ``docs/operators.md`` lists.
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


HANDLERS: dict[str, Handler] = {}


def register(*op_types: str, layer: str):
    """Decorator: ``@register("ADD", "SUB", layer="keras.layers.Add / KerasOp")``."""

    def decorate(fn):
        for op_type in op_types:
            if op_type in HANDLERS:
                raise ValueError(f"Two handlers for {op_type}: {HANDLERS[op_type].module} "
                                 f"and {fn.__module__}")
            HANDLERS[op_type] = Handler(op_type, fn, layer, fn.__module__)
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
    """Sorted names of the TFLite operators the converter rebuilds."""
    return sorted(load_handlers())
