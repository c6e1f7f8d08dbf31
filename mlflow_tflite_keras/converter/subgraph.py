"""Builds a Keras functional model from any subgraph of a ``.tflite`` model.

Used for the signature's subgraph (:func:`~mlflow_tflite_keras.converter.convert.convert`) and
for the subgraphs that control-flow ops call (``WHILE`` cond/body, ``IF`` branches): each
becomes its own functional model, built by the same handlers, with its own
:class:`~mlflow_tflite_keras.converter.builder.BuildContext`.

An input is either a Keras ``Input`` (``InputSpec.shape``/``dtype``) or *bound* to a value
known at build time (``InputSpec.value``): a numpy constant, which handlers then see as a
constant (weights passed into a loop stay real layer weights), or a non-tensor object such as
a resource-variable handle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from mlflow.exceptions import MlflowException

from mlflow_tflite_keras.converter import emulation, fusions
from mlflow_tflite_keras.converter.builder import BuildContext, ConversionError
from mlflow_tflite_keras.converter.ir import STORAGE_OPS, Graph, Op, build_graph

_UNBOUND = object()


@dataclass
class InputSpec:
    tensor: int  # tensor index of the input in its subgraph
    name: str  # Keras Input name
    shape: tuple | None = None  # Keras batch_shape (None: dynamic dimension)
    dtype: str = "float32"
    value: object = _UNBOUND  # bound at build time instead of a Keras Input

    @property
    def bound(self) -> bool:
        return self.value is not _UNBOUND


@dataclass
class BuiltSubgraph:
    model: keras.Model
    ctx: BuildContext
    inputs: list  # the Keras Inputs of the unbound specs, in order
    outputs: list  # one value per requested output (KerasTensor, numpy or bound object)


def run_ops(graph: Graph, ctx: BuildContext, handlers, report=None, key_prefix: str = "",
            steps: list | None = None):
    """Call every op's handler in order, storing output values in ``ctx.values``.

    ``steps`` (hybrid conversion, :mod:`~mlflow_tflite_keras.converter.regions`) replaces
    ``graph.ops``: ops and wrapped regions in dependency order; a region stores its outputs
    itself (``region.materialize``), as one ``TFLiteLayer`` call; a fused pattern
    (:mod:`~mlflow_tflite_keras.converter.fusions`) as one layer, or returns its ops to run one
    by one when it cannot be built fused."""
    # Uses of each tensor still to build: at 0 the layers taking a constant (or a value
    # folded from constants) hold it, and the IR lets it go.
    pending = Counter(t.index for op in graph.ops for t in op.inputs if t is not None)
    for op in (graph.ops if steps is None else steps):
        if not isinstance(op, Op):  # a wrapped region or a fused pattern
            unfused = op.materialize(ctx, report, key_prefix)
            if unfused:  # it cannot be built fused: its ops one by one
                run_ops(graph, ctx, handlers, report, key_prefix, unfused)
                continue
            pending.update({t.index: len(graph.ops) + 1 for t in op.outputs})  # not refolded
            _release_constants(graph, ctx, op.ops, pending)
            continue
        if op.type in STORAGE_OPS and op.inputs and \
                all(t is not None and t.is_constant for t in op.inputs):
            ctx.values.defer(op)  # folded where its output is used
            if report is not None:
                report.folded_ops.append(f"{key_prefix}{op.index}:{op.type}")
            _release_constants(graph, ctx, [op], pending)
            continue
        ctx._current_op = op
        emulate = getattr(ctx, "emulate_quantization", False)
        try:
            if emulate:  # the hybrid kernels' input quantization, see converter.emulation
                with emulation.hybrid_inputs(ctx, op):
                    outputs = handlers[op.type].convert(op, ctx)
            else:
                outputs = handlers[op.type].convert(op, ctx)
        except MlflowException:
            raise
        except Exception as e:  # noqa: BLE001 - a layer refusing inconsistent shapes/options too
            # Name the op: the user gets which tensor failed, not a trace from inside Keras.
            detail = str(e) if isinstance(e, ConversionError) else f"{type(e).__name__}: {e}"
            where = f"subgraph {graph.subgraph_index} " if graph.subgraph_index else ""
            raise MlflowException(f"Cannot convert {where}op {op.index} ({op.type}, output "
                                  f"'{op.outputs[0].name if op.outputs else '-'}'): "
                                  f"{detail[:2000]}") from e
        if len(outputs) != len(op.outputs):
            raise MlflowException(f"Handler for {op.type} returned {len(outputs)} values for "
                                  f"{len(op.outputs)} outputs.")
        for t, v in zip(op.outputs, outputs):
            ctx.values[t.index] = v
        if emulate:
            emulation.quantize_outputs(ctx, op)
        if report is not None:
            key = f"{key_prefix}{op.index}:{op.type}"
            if all(isinstance(v, np.ndarray) for v in outputs):
                report.folded_ops.append(key)
            elif not any(isinstance(v, keras.KerasTensor) for v in outputs):
                report.folded_ops.append(key)  # build-time objects (variable handles)
            else:
                report.layers[key] = ctx.layers_by_op.get(op.index, [])
        _release_constants(graph, ctx, [op], pending)


def _release_constants(graph: Graph, ctx: BuildContext, ops, pending: Counter):
    """The constants of ``ops`` (just built) that no op still to build takes are released
    (:meth:`~mlflow_tflite_keras.converter.ir.Tensor.release`), and so are arrays folded from
    them (:meth:`~mlflow_tflite_keras.converter.builder.Values.release`); outputs of the
    subgraph are kept."""
    outputs = {t.index for t in graph.outputs}
    released = 0
    for op in ops:
        for t in op.inputs:
            if t is None:
                continue
            pending[t.index] -= 1
            if pending[t.index] > 0 or t.index in outputs:
                continue
            if t.is_constant and t.holds_data:
                released += t.data.nbytes
                t.release()
            elif isinstance(dict.get(ctx.values, t.index), np.ndarray):
                released += ctx.values[t.index].nbytes
                ctx.values.release(t.index)
    if released >= _TRIM_BYTES:
        _give_back_freed_memory()


# The copies a weight passes through on its way into a variable are freed, but glibc keeps
# freed blocks below its (growing) mmap threshold in its heaps: a weight's worth of freed
# memory per large layer. malloc_trim hands their pages back to the system.
_TRIM_BYTES = 1 << 20


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _give_back_freed_memory():
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def build_subgraph(tflite_model, subgraph_index: int, inputs: list[InputSpec],
                   outputs: list[int], *, name: str, handlers, report=None,
                   output_names: list[str] | None = None, dict_inputs: bool = False,
                   constant_output: Callable | None = None,
                   key_prefix: str = "", graph: Graph | None = None,
                   steps: list | None = None,
                   parent: BuildContext | None = None,
                   emulate_quantization: bool | None = None) -> BuiltSubgraph:
    """A functional model computing the subgraph's tensors ``outputs`` (indices) from
    ``inputs``.

    ``constant_output(value, keras_inputs, position)`` turns an output that does not depend on
    the Keras inputs into a graph tensor; without it such an output is an error.
    ``dict_inputs``/``output_names`` give the model dict inputs/outputs (the signature's
    names); otherwise a single tensor or a list. ``key_prefix`` prefixes the report's
    ``"index:OP"`` keys (``"sg2/"`` for a loop body). ``parent``: the context of the op that
    calls this subgraph, whose conversion state the new context shares.
    ``emulate_quantization``: fake-quantize every quantized tensor as the integer kernels
    compute it (:mod:`..emulation`); None: as the ``parent`` does (loop bodies and branches
    are emulated with the model that calls them).
    """
    graph = graph or build_graph(tflite_model, subgraph_index)
    ctx = BuildContext(graph, parent)
    if emulate_quantization is None:
        emulate_quantization = bool(getattr(parent, "emulate_quantization", False))
    ctx.emulate_quantization = emulate_quantization
    keras_inputs = {}
    for spec in inputs:
        if spec.bound:
            ctx.values[spec.tensor] = spec.value
            continue
        x = keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype, name=spec.name)
        keras_inputs[spec.name] = x
        ctx.values[spec.tensor] = x
        if emulate_quantization:
            t = graph.tensors[spec.tensor]
            ctx.values[spec.tensor] = emulation.fake_quantize(ctx, t, x, spec.name)
    # Decomposed layer normalizations become one trainable layer each (converter.fusions).
    steps = fusions.plan(graph, steps, handlers, ctx)
    run_ops(graph, ctx, handlers, report, key_prefix, steps)

    values, model_outputs = [], []
    for pos, index in enumerate(outputs):
        value = ctx.values.get(index)
        values.append(value)
        if not isinstance(value, keras.KerasTensor):
            label = output_names[pos] if output_names else graph.tensors[index].name
            if constant_output is None or value is None:
                raise MlflowException(f"Output '{label}' is a constant; the converter only "
                                      "builds outputs that depend on the inputs.")
            value = constant_output(value, list(keras_inputs.values()), pos)
        model_outputs.append(value)
    ins = list(keras_inputs.values())
    if dict_inputs and len(ins) > 1:
        model_inputs = keras_inputs
    else:
        model_inputs = ins[0] if len(ins) == 1 else ins
    if output_names is not None:
        model_out = model_outputs[0] if len(model_outputs) == 1 else \
            dict(zip(output_names, model_outputs))
    else:
        model_out = model_outputs
    model = keras.Model(inputs=model_inputs, outputs=model_out, name=name)
    return BuiltSubgraph(model, ctx, ins, values)
