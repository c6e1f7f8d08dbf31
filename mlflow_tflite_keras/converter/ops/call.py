"""CALL: the called subgraph is inlined, its ops rebuilt in the caller's graph (the same
handlers, one name space for the layers), so the result is one flat Keras model."""

from __future__ import annotations

from mlflow_tflite_keras.converter.builder import BuildContext, ConversionError
from mlflow_tflite_keras.converter.ir import build_graph
from mlflow_tflite_keras.converter.registry import HANDLERS, register
from mlflow_tflite_keras.converter.subgraph import run_ops


@register("CALL", layer="(inlined: the called subgraph's layers)")
def call(op, ctx):
    return inline_subgraph(op, ctx, int(op.opt("subgraph", -1)))


def inline_subgraph(op, ctx, index: int) -> list:
    """The outputs of subgraph ``index`` run on the op's operands, its ops rebuilt in the
    caller's graph (also STABLEHLO_COMPOSITE's decomposition)."""
    model = ctx.graph.model
    if not 0 <= index < len(model.subgraphs):
        raise ConversionError(f"{op.type}: invalid subgraph index {index}.")
    graph = build_graph(model, index)
    if len(graph.inputs) != len(op.inputs) or len(graph.outputs) != len(op.outputs):
        raise ConversionError(f"{op.type}: {len(op.inputs)} operands and {len(op.outputs)} "
                              f"results, but subgraph {index} has {len(graph.inputs)} inputs and "
                              f"{len(graph.outputs)} outputs.")
    inner = BuildContext(graph)
    inner.layer_names = ctx.layer_names  # one name space: the layers join the caller's model
    for t, value in zip(graph.inputs, ctx.inputs(op)):
        inner.values[t.index] = value
    run_ops(graph, inner, HANDLERS)
    for note in inner.notes:
        ctx.note(note)
    return [inner.values[t.index] for t in graph.outputs]
