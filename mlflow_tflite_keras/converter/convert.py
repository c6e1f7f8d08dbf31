"""``to_keras``: a trainable Keras 3 functional model from a ``.tflite`` flatbuffer."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import keras
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.converter.ir import Graph, build_graph
from mlflow_tflite_keras.converter.registry import load_handlers
from mlflow_tflite_keras.converter.subgraph import InputSpec, build_subgraph
from mlflow_tflite_keras.tflite_model import TFLiteModel


class UnsupportedOperatorsError(MlflowException):
    """The model has operators the converter cannot rebuild (all listed at once)."""

    def __init__(self, message, unsupported: dict[str, int]):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.unsupported = unsupported


@dataclass
class ConversionReport:
    source_sha256: str
    quantization: str
    operators: dict[str, int]
    layers: dict[str, list[str]] = field(default_factory=dict)  # "index:OP" -> layer names
    folded_ops: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wrapped_regions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class ConversionResult:
    model: keras.Model
    report: ConversionReport


def to_keras(tflite_model, *, signature_key: str | None = None, name: str | None = None
             ) -> keras.Model:
    """Rebuild a ``.tflite`` model (path, bytes or :class:`TFLiteModel`) as a Keras model.

    Every op with weights becomes a real Keras layer with trainable variables (quantized
    weights dequantized); the model computes in float32. Raises
    :class:`UnsupportedOperatorsError` listing every unsupported operator before building.
    """
    return convert(tflite_model, signature_key=signature_key, name=name).model


def convert(tflite_model, *, signature_key: str | None = None, name: str | None = None
            ) -> ConversionResult:
    """Like :func:`to_keras`, also returning the :class:`ConversionReport`."""
    model = TFLiteModel.load(tflite_model)
    signature = model.signature(signature_key)
    graph = build_graph(model, signature.subgraph_index)
    handlers = load_handlers()
    check_supported(graph, handlers)

    in_names, out_names = graph.signature_names
    batched = _batched(graph)
    # A fixed batch of 1 with loops or branches: TFLite's graph (and its loop bodies) bakes
    # the batch of 1 in, so the model is built for exactly one example and mapped over the
    # batch (what the interpreter does too: one invoke per row).
    per_example = batched and _per_example(model, graph, signature)
    specs = []
    for t in (graph.tensors[i] for i in signature.inputs.values()):
        shape = tuple(None if d == -1 else d for d in t.shape_signature)
        if batched and not per_example:
            shape = (None, *shape[1:])
        specs.append(InputSpec(t.index, _sanitize(in_names.get(t.index, t.name)), shape,
                               t.float_dtype))
    output_names = [_sanitize(out_names.get(index, out_name))
                    for out_name, index in signature.outputs.items()]

    report = ConversionReport(model.sha256, model.quantization_kind, model.operator_counts())
    model_name = _sanitize(name or model.description or "reconstructed") or "reconstructed"
    built = build_subgraph(model, signature.subgraph_index, specs,
                           list(signature.outputs.values()), name=model_name,
                           handlers=handlers, report=report, output_names=output_names,
                           dict_inputs=True, graph=graph)
    report.notes = built.ctx.notes
    keras_model = built.model
    if per_example:
        from mlflow_tflite_keras.converter.ops.control_flow import per_example_model

        keras_model = per_example_model(keras_model, name=model_name)
        report.notes.append("Fixed batch of 1 with control flow: the model is built for one "
                            "example and mapped over the batch (PerExample).")
    return ConversionResult(keras_model, report)


def check_supported(graph: Graph, handlers) -> None:
    """Raise one error naming every unsupported op (custom ops by custom code), with counts
    and the tensors involved, before anything is built."""
    from mlflow_tflite_keras.converter.ops.control_flow import reachable_subgraphs

    missing: Counter = Counter()
    where: dict[str, list[str]] = {}
    ops = list(graph.ops)
    for index in sorted(reachable_subgraphs(graph.model, graph.subgraph_index)):
        if index != graph.subgraph_index:  # loop bodies, branches, initializers
            ops += build_graph(graph.model, index).ops
    for op in ops:
        if op.type not in handlers:
            label = f"CUSTOM:{op.type}" if op.is_custom else op.type
            missing[label] += 1
            tensors = [t.name for t in op.outputs][:2]
            where.setdefault(label, []).extend(tensors)
    if missing:
        lines = [f"  {label} x{count} (outputs: {', '.join(where[label][:4])}"
                 f"{', ...' if len(where[label]) > 4 else ''})" for label, count in
                 sorted(missing.items())]
        raise UnsupportedOperatorsError(
            f"The model has {sum(missing.values())} operator(s) the converter cannot rebuild:\n"
            + "\n".join(lines), dict(missing))


def _batched(graph: Graph) -> bool:
    """Same rule as the pyfunc: dimension 0 is a batch dimension on every input."""
    ins = graph.inputs
    return bool(ins) and all(
        t.rank >= 1 and (t.shape_signature[0] == -1 or (t.shape[0] == 1 and t.rank >= 2))
        for t in ins)


def _per_example(model: TFLiteModel, graph: Graph, signature) -> bool:
    """Fixed batch of 1 (every input and output), and WHILE/IF in the subgraphs it runs."""
    from mlflow_tflite_keras.converter.ops.control_flow import (
        LOOP_AND_BRANCH_OPS,
        reachable_subgraphs,
    )

    if any(graph.tensors[i].shape_signature[0] != 1 for i in signature.inputs.values()):
        return False
    if any(graph.tensors[i].rank < 1 or graph.tensors[i].shape_signature[0] != 1
           for i in signature.outputs.values()):
        return False
    return any(op.name in LOOP_AND_BRANCH_OPS
               for i in reachable_subgraphs(model, graph.subgraph_index)
               for op in model.subgraphs[i].operators)


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", name.split(":")[0]).strip("_")
    return name or "tensor"
