"""``to_keras``: a trainable Keras 3 functional model from a ``.tflite`` flatbuffer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import keras
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.converter.deep import run_deep
from mlflow_tflite_keras.converter.ir import Graph, build_graph
from mlflow_tflite_keras.converter.names import keras_name
from mlflow_tflite_keras.converter.registry import handles, load_handlers, unsupported_reason
from mlflow_tflite_keras.converter.subgraph import InputSpec, build_subgraph
from mlflow_tflite_keras.errors import UnsupportedOperatorsError
from mlflow_tflite_keras.noise import keras_noise_silenced
from mlflow_tflite_keras.tflite_model import TFLiteModel, has_batch_dimension

__all__ = ["ConversionReport", "ConversionResult", "UnsupportedOperatorsError", "check_supported",
           "convert", "to_keras"]


@dataclass
class ConversionReport:
    source_sha256: str
    quantization: str
    operators: dict[str, int]
    layers: dict[str, list[str]] = field(default_factory=dict)  # "index:OP" -> layer names
    folded_ops: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wrapped_regions: list[dict] = field(default_factory=list)
    # TFLite tensor index (signature subgraph) -> (Keras layer name, node index, output index)
    # of the layer output holding that tensor's value; constants and folded ops are absent.
    # Used by ``parity.locate_divergence`` to compare intermediate tensors.
    tensor_map: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    emulate_quantization: bool = False  # built with emulate_quantization=True

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class ConversionResult:
    model: keras.Model
    report: ConversionReport


def to_keras(tflite_model, *, signature_key: str | None = None, name: str | None = None,
             unsupported: str = "error", wrap_ops=(), stateful: bool = False,
             emulate_quantization: bool = False) -> keras.Model:
    """Rebuild a ``.tflite`` model (path, bytes or :class:`TFLiteModel`) as a Keras model.

    Every op with weights becomes a real Keras layer with trainable variables (quantized
    weights dequantized); the model computes in float32. With ``unsupported="error"`` (the
    default) raises :class:`UnsupportedOperatorsError` listing every unsupported operator
    before building; with ``unsupported="wrap"`` each connected region of unsupported
    operators runs as an embedded, frozen ``TFLiteLayer`` instead. ``wrap_ops`` (op types,
    custom codes or op indices) wraps those operators too, e.g. to isolate a parity problem.
    See :mod:`mlflow_tflite_keras.converter.regions`.

    A streaming model (resource variables assigned by each invoke: state carried from one
    frame to the next) becomes a recurrent model over sequences ``[batch, time, *frame]``
    (:mod:`mlflow_tflite_keras.converter.streaming`); ``stateful=True`` gives instead a model
    taking one frame per call and keeping the state across calls
    (``converter.reset_streaming_state(model)`` starts a new stream).

    ``emulate_quantization=True`` computes what the integer kernels compute: every quantized
    tensor of the source is snapped to its scale / zero point and integer range (round half
    away from zero, saturating), hybrid ops quantize their input per batch / row as their
    kernels do; gradients pass straight through, so ``fit`` is quantization-aware
    (:mod:`~mlflow_tflite_keras.converter.emulation`).
    """
    return convert(tflite_model, signature_key=signature_key, name=name,
                   unsupported=unsupported, wrap_ops=wrap_ops, stateful=stateful,
                   emulate_quantization=emulate_quantization).model


@keras_noise_silenced()
def convert(tflite_model, *, signature_key: str | None = None, name: str | None = None,
            unsupported: str = "error", wrap_ops=(), stateful: bool = False,
            emulate_quantization: bool = False) -> ConversionResult:
    """Like :func:`to_keras`, also returning the :class:`ConversionReport` (wrapped regions in
    ``report.wrapped_regions``)."""
    if unsupported not in ("error", "wrap"):
        raise MlflowException(f"unsupported must be 'error' or 'wrap', got {unsupported!r}.",
                              error_code=INVALID_PARAMETER_VALUE)
    # A path is mapped, not read: each weight is then in memory once, as a variable.
    model = TFLiteModel.load(tflite_model, map_file=True)
    # Keras maps a functional graph recursively: deep graphs get a thread with room for it.
    depth = sum(len(sg.operators) for sg in model.subgraphs) + len(model.subgraphs)
    return run_deep(_convert, depth, model, signature_key, name, unsupported, wrap_ops,
                    stateful, emulate_quantization)


def _convert(model: TFLiteModel, signature_key, name, unsupported, wrap_ops,
             stateful=False, emulate_quantization=False) -> ConversionResult:
    signature = model.signature(signature_key)
    graph = build_graph(model, signature.subgraph_index)
    handlers = load_handlers()
    steps = regions = None
    if unsupported == "wrap" or wrap_ops:
        from mlflow_tflite_keras.converter import regions as hybrid

        selected = hybrid.select_ops(graph, handlers, wrap_unsupported=unsupported == "wrap",
                                     wrap_ops=wrap_ops)
        if selected:
            regions = hybrid.plan_regions(graph, selected)
            steps = hybrid.schedule(graph, regions)
    check_supported(graph, handlers,
                    skip={op.index for r in regions or () for op in r.ops})

    in_names, out_names = graph.signature_names
    batched = has_batch_dimension(graph.inputs)
    # A fixed batch of 1 with loops or branches: TFLite's graph (and its loop bodies) bakes
    # the batch of 1 in, so the model is built for exactly one example and mapped over the
    # batch (what the interpreter does too: one invoke per row).
    per_example = batched and _per_example(model, graph, signature)
    specs = []
    for t in (graph.tensors[i] for i in signature.inputs.values()):
        shape = tuple(None if d == -1 else d for d in t.shape_signature)
        if batched and not per_example:
            shape = (None, *shape[1:])
        specs.append(InputSpec(t.index, keras_name(in_names.get(t.index, t.name)), shape,
                               t.float_dtype))
    output_names = [keras_name(out_names.get(index, out_name))
                    for out_name, index in signature.outputs.items()]

    report = ConversionReport(model.sha256, model.quantization_kind, model.operator_counts(),
                              emulate_quantization=bool(emulate_quantization))
    model_name = keras_name(name or model.description or "reconstructed") or "reconstructed"
    from mlflow_tflite_keras.converter import streaming

    if streaming.is_streaming(model, signature.subgraph_index):
        if emulate_quantization:
            raise MlflowException("emulate_quantization does not cover streaming (stateful) "
                                  "models yet; convert without it.",
                                  error_code=INVALID_PARAMETER_VALUE)
        return ConversionResult(_streaming(model, signature, graph, handlers, report,
                                           model_name, stateful, steps, per_example), report)
    if stateful:
        raise MlflowException("stateful=True applies to streaming models (resource variables "
                              "assigned at run time); this model keeps no state.",
                              error_code=INVALID_PARAMETER_VALUE)
    built = build_subgraph(model, signature.subgraph_index, specs,
                           list(signature.outputs.values()), name=model_name,
                           handlers=handlers, report=report, output_names=output_names,
                           dict_inputs=True, graph=graph, steps=steps,
                           emulate_quantization=emulate_quantization)
    report.notes = built.ctx.notes
    report.tensor_map = _tensor_map(graph, built.ctx.values, built.model)
    keras_model = built.model
    if per_example:
        from mlflow_tflite_keras.converter.layers.control_flow import per_example_model

        keras_model = per_example_model(keras_model, name=model_name)
        report.notes.append("Fixed batch of 1 with control flow: the model is built for one "
                            "example and mapped over the batch (PerExample).")
    return ConversionResult(keras_model, report)


def _streaming(model, signature, graph, handlers, report, name, stateful, steps, per_example):
    from mlflow_tflite_keras.converter.builder import ConversionError
    from mlflow_tflite_keras.converter.streaming import convert_streaming

    try:
        return convert_streaming(model, signature, graph, handlers, report, name,
                                 stateful=stateful, steps=steps, per_example=per_example)
    except ConversionError as e:
        raise MlflowException(f"Cannot convert the streaming model: {e}",
                              error_code=INVALID_PARAMETER_VALUE) from e


def _tensor_map(graph: Graph, values: dict, model: keras.Model
                ) -> dict[int, tuple[str, int, int]]:
    """Each op output whose value is a Keras graph tensor -> the layer output producing it
    (``KerasTensor._keras_history``). An op that returns its input unchanged (QUANTIZE,
    DEQUANTIZE, no-op reshapes) maps to the layer that produced that input. Layers left out
    of the model (values no output depends on, e.g. a SHAPE whose result was not needed)
    are skipped."""
    in_model = {id(layer) for layer in model.layers}
    mapping = {}
    for op in graph.ops:
        for t in op.outputs:
            value = dict.get(values, t.index)  # as held: released arrays are not refolded
            history = getattr(value, "_keras_history", None)
            if isinstance(value, keras.KerasTensor) and history is not None \
                    and id(history.operation) in in_model:
                mapping[t.index] = (history.operation.name, int(history.node_index),
                                    int(history.tensor_index))
    return mapping


def check_supported(graph: Graph, handlers, skip=frozenset()) -> None:
    """Raise one error naming every unsupported op (custom ops by custom code), with counts
    and the tensors involved, before anything is built. ``skip``: indices of ops (of
    ``graph``) that are wrapped, with the subgraphs only they call."""
    from mlflow_tflite_keras.tflite_model import reachable_subgraphs

    missing: Counter = Counter()
    where: dict[str, list[str]] = {}
    ops = [op for op in graph.ops if op.index not in skip]
    called = set(reachable_subgraphs(graph.model, [i for op in ops for i in op.called_subgraphs]))
    for index in sorted(called - {graph.subgraph_index}):  # bodies, branches, initializers
        ops += build_graph(graph.model, index).ops
    for op in ops:
        if not handles(handlers, op.type, op.is_custom):
            label = f"CUSTOM:{op.type}" if op.is_custom else op.type
            missing[label] += 1
            tensors = [t.name for t in op.outputs][:2]
            where.setdefault(label, []).extend(tensors)
    if missing:
        lines = [f"  {label} x{count} (outputs: {', '.join(where[label][:4])}"
                 f"{', ...' if len(where[label]) > 4 else ''})"
                 + (f": {unsupported_reason(label)}" if unsupported_reason(label) else "")
                 for label, count in sorted(missing.items())]
        raise UnsupportedOperatorsError(
            f"The model has {sum(missing.values())} operator(s) the converter cannot rebuild:\n"
            + "\n".join(lines), dict(missing))


def _per_example(model: TFLiteModel, graph: Graph, signature) -> bool:
    """Fixed batch of 1 (every input and output), and WHILE/IF in the subgraphs it runs."""
    from mlflow_tflite_keras.converter.ops.control_flow import LOOP_AND_BRANCH_OPS
    from mlflow_tflite_keras.tflite_model import reachable_subgraphs

    if any(graph.tensors[i].shape_signature[0] != 1 for i in signature.inputs.values()):
        return False
    if any(graph.tensors[i].rank < 1 or graph.tensors[i].shape_signature[0] != 1
           for i in signature.outputs.values()):
        return False
    return any(op.name in LOOP_AND_BRANCH_OPS
               for i in reachable_subgraphs(model, [graph.subgraph_index])
               for op in model.subgraphs[i].operators)
