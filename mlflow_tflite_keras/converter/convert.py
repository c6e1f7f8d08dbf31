"""``to_keras``: a trainable Keras 3 functional model from a ``.tflite`` flatbuffer."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import keras
import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.converter.builder import BuildContext, ConversionError
from mlflow_tflite_keras.converter.ir import Graph, build_graph
from mlflow_tflite_keras.converter.registry import load_handlers
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

    ctx = BuildContext(graph)
    in_names, out_names = graph.signature_names
    batched = _batched(graph)
    keras_inputs = {}
    for t in (graph.tensors[i] for i in signature.inputs.values()):
        input_name = _sanitize(in_names.get(t.index, t.name))
        shape = tuple(None if d == -1 else d for d in t.shape_signature)
        x = keras.Input(batch_shape=(None, *shape[1:]) if batched else shape,
                        dtype=t.float_dtype, name=input_name)
        keras_inputs[input_name] = x
        ctx.values[t.index] = x

    report = ConversionReport(model.sha256, model.quantization_kind, model.operator_counts())
    for op in graph.ops:
        ctx._current_op = op
        try:
            outputs = handlers[op.type].convert(op, ctx)
        except ConversionError as e:
            raise MlflowException(f"Cannot convert op {op.index} ({op.type}, output "
                                  f"'{op.outputs[0].name if op.outputs else '-'}'): {e}") from e
        if len(outputs) != len(op.outputs):
            raise MlflowException(f"Handler for {op.type} returned {len(outputs)} values for "
                                  f"{len(op.outputs)} outputs.")
        for t, v in zip(op.outputs, outputs):
            ctx.values[t.index] = v
        key = f"{op.index}:{op.type}"
        if all(isinstance(v, np.ndarray) for v in outputs):
            report.folded_ops.append(key)
        else:
            report.layers[key] = ctx.layers_by_op.get(op.index, [])
    report.notes = ctx.notes

    keras_outputs = {}
    for out_name, index in signature.outputs.items():
        value = ctx.values.get(index)
        if value is None or isinstance(value, np.ndarray):
            raise MlflowException(f"Output '{out_name}' is a constant; the converter only "
                                  "builds outputs that depend on the inputs.")
        keras_outputs[_sanitize(out_names.get(index, out_name))] = value
    inputs = list(keras_inputs.values())
    outputs = list(keras_outputs.values())
    keras_model = keras.Model(
        inputs=inputs[0] if len(inputs) == 1 else keras_inputs,
        outputs=outputs[0] if len(outputs) == 1 else keras_outputs,
        name=_sanitize(name or model.description or "reconstructed") or "reconstructed",
    )
    return ConversionResult(keras_model, report)


def check_supported(graph: Graph, handlers) -> None:
    """Raise one error naming every unsupported op (custom ops by custom code), with counts
    and the tensors involved, before anything is built."""
    missing: Counter = Counter()
    where: dict[str, list[str]] = {}
    for op in graph.ops:
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


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", name.split(":")[0]).strip("_")
    return name or "tensor"
