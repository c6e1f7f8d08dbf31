"""Control flow: WHILE, IF, CALL_ONCE and resource variables (VAR_HANDLE, READ_VARIABLE,
ASSIGN_VARIABLE).

``WHILE`` and ``IF`` run other subgraphs. Each called subgraph is rebuilt as its own Keras
functional model by the same handlers (:func:`~mlflow_tflite_keras.converter.subgraph.
build_subgraph`), and the op becomes one serializable layer holding those models:
:class:`WhileLoop` (``keras.ops.while_loop`` over the body model, ``tf.while_loop`` with shape
invariants on the TensorFlow backend) and :class:`IfElse` (``keras.ops.cond``). Weights inside
a body are ordinary layer weights of the nested model, so they train: gradients flow through
the loop.

Loop variables the body passes through unchanged (loop invariants) are not carried by the
loop: a constant one (weights handed to the body) is bound as a constant inside the cond and
body models, so handlers see a constant there (a real ``Dense`` kernel, for example); a
computed one is carried as it is. A constant initial value of a changing variable is stored in
the layer as a (non-trainable) weight.

TFLite's Keras RNN graphs with a fixed batch of 1 bake the batch of 1 into the loop body
(``[1, 24] -> [24]`` reshapes, ``[1, 1, units]`` accumulators). Such models are built for one
example and mapped over the batch by :class:`PerExample`, as the interpreter runs them (one
invoke per row); :func:`~mlflow_tflite_keras.converter.convert.convert` decides that.

Resource variables: a variable that is only read, and initialized once by a ``CALL_ONCE``
initializer subgraph, becomes a constant (its initial value). A variable assigned at run time
(state carried from one invoke to the next, streaming models) cannot be expressed by a Keras
functional model, which has no per-call persistent state: conversion fails and names the
variables -- unless the signature's own subgraph assigns them: then it is a streaming model,
converted to a recurrent model by :mod:`mlflow_tflite_keras.converter.streaming`.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.builder import BuildContext, ConversionError
from mlflow_tflite_keras.converter.ir import build_graph
from mlflow_tflite_keras.converter.layers import KerasOp
from mlflow_tflite_keras.converter.layers.control_flow import (
    IfElse,
    WhileLoop,
    _call_model,
    _merge_shapes,
)
from mlflow_tflite_keras.converter.registry import HANDLERS, Handler, load_handlers, register
from mlflow_tflite_keras.converter.subgraph import InputSpec, build_subgraph, run_ops

LOOP_AND_BRANCH_OPS = {"WHILE", "IF"}


def _subgraph_options(op, *names) -> list[int]:
    """The subgraph indices the op's options name (``WhileOptions``, ``IfOptions``)."""
    values = [getattr(op.options, name, None) for name in names]
    if any(v is None for v in values):
        raise ConversionError(f"{op.type}: its options do not name the {' and '.join(names)}.")
    return [int(v) for v in values]


def _constant_output(name_prefix):
    def make(value, keras_inputs, pos):
        if not keras_inputs:
            raise ConversionError("a subgraph with constant outputs and no computed input.")
        value = np.asarray(value)
        return KerasOp("constant_like", constants={1: value}, n_inputs=1,
                       name=f"{name_prefix}_constant_{pos}")(keras_inputs[0])
    return make


# ---- WHILE ------------------------------------------------------------------------------------

def _is_tensor(v) -> bool:
    return isinstance(v, keras.KerasTensor)


def _spec_shape(t, value):
    """A Keras shape for a subgraph input ``t`` receiving ``value``: the outer value's shape
    where it is known (keeps the dynamic batch), else the TFLite shape signature."""
    sig = tuple(None if d == -1 else int(d) for d in t.shape_signature)
    shape = tuple(value.shape) if _is_tensor(value) else np.shape(value)
    if len(shape) != len(sig):
        return sig
    return tuple(None if (a is None or b is None) else a for a, b in zip(shape, sig))


def _dtype(t, value):
    return str(value.dtype) if _is_tensor(value) else t.float_dtype


@register("WHILE", layer="WhileLoop(cond model, body model)")
def while_(op, ctx):
    model = ctx.graph.model
    cond_i, body_i = _subgraph_options(op, "condSubgraphIndex", "bodySubgraphIndex")
    cond_g, body_g = build_graph(model, cond_i), build_graph(model, body_i)
    values = ctx.inputs(op)
    n = len(values)
    if not (len(cond_g.inputs) == len(body_g.inputs) == len(body_g.outputs) == n
            == len(op.outputs)):
        raise ConversionError(f"WHILE: {n} loop variables but the cond subgraph takes "
                              f"{len(cond_g.inputs)}, the body {len(body_g.inputs)} -> "
                              f"{len(body_g.outputs)}.")
    invariant = [body_g.outputs[i].index == body_g.inputs[i].index for i in range(n)]
    for i, v in enumerate(values):
        if not invariant[i] and not _is_tensor(v) and not isinstance(v, np.ndarray):
            raise ConversionError(f"WHILE: loop variable {i} ('{op.inputs[i].name}') is a "
                                  f"{type(v).__name__} that the body changes.")
    bound = [invariant[i] and not _is_tensor(values[i]) for i in range(n)]
    loop = [i for i in range(n) if not bound[i]]  # the variables the Keras loop carries
    base = ctx.name(op)
    shapes = {i: _spec_shape(body_g.inputs[i], values[i]) for i in loop}
    handlers = HANDLERS
    for _attempt in range(3):
        def specs(graph):
            return [InputSpec(graph.inputs[i].index, value=values[i]) if bound[i] else
                    InputSpec(graph.inputs[i].index, f"{base}_var{i}", shapes[i],
                              _dtype(graph.inputs[i], values[i])) for i in range(n)]

        cond = build_subgraph(model, cond_i, specs(cond_g), [cond_g.outputs[0].index],
                              name=f"{base}_cond", handlers=handlers, graph=cond_g,
                              constant_output=_constant_output(f"{base}_cond"), parent=ctx)
        body = build_subgraph(model, body_i, specs(body_g),
                              [body_g.outputs[i].index for i in loop],
                              name=f"{base}_body", handlers=handlers, graph=body_g,
                              constant_output=_constant_output(f"{base}_body"), parent=ctx)
        relaxed = {}
        for i, out in zip(loop, body.model.outputs):
            merged = _merge_shapes(shapes[i], tuple(out.shape))
            if merged is None:
                raise ConversionError(f"WHILE: the body changes the rank of loop variable {i} "
                                      f"('{op.inputs[i].name}').")
            if merged != shapes[i]:
                relaxed[i] = merged
        if not relaxed:
            break
        shapes.update(relaxed)  # a shape that changes across iterations: declare it dynamic
        cond_g, body_g = build_graph(model, cond_i), build_graph(model, body_i)
    else:
        raise ConversionError("WHILE: the loop variables' shapes do not settle.")
    for sub in (cond, body):
        for note in sub.ctx.notes:
            ctx.note(note)

    constants = {k: values[i] for k, i in enumerate(loop) if not _is_tensor(values[i])}
    layer = WhileLoop(cond.model, body.model, n_vars=len(loop),
                      shapes=[list(shapes[i]) for i in loop], constants=constants, name=base,
                      trip_count=_static_trip_count(cond_g, body_g, cond.model, body.model,
                                                    values, loop, shapes))
    tensors = [values[i] for i in loop if _is_tensor(values[i])]
    if tensors:
        results = layer(*tensors)
    else:  # every carried variable starts constant: run the loop now (constant folding)
        results = [np.asarray(keras.ops.convert_to_numpy(r)) for r in layer.loop(
            [keras.ops.convert_to_tensor(values[i]) for i in loop])]
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    out = list(values)
    for i, r in zip(loop, results):
        out[i] = r
    return out


def _input_deps(graph, index, memo) -> frozenset:
    """The positions of ``graph``'s inputs that tensor ``index`` depends on."""
    if index in memo:
        return memo[index]
    memo[index] = frozenset()  # cycles cannot occur in a subgraph; guards deep recursion
    positions = [i for i, t in enumerate(graph.inputs) if t.index == index]
    op = graph.producers.get(index)
    deps = set(positions)
    if op is not None:
        for t in op.inputs:
            if t is not None:
                deps |= _input_deps(graph, t.index, memo)
    memo[index] = frozenset(deps)
    return memo[index]


MAX_STATIC_TRIPS = 1024


def _static_trip_count(cond_g, body_g, cond_model, body_model, values, loop, shapes):
    """The loop's iteration count when it is fixed at build time, else None: the condition
    depends only on loop variables that start constant and that the body updates from such
    variables alone (counters against constant bounds, as RNN lowerings have). Found by
    running the loop on those variables (the others as zeros: nothing they hold reaches the
    condition)."""
    n = len(values)
    fixed = {i for i in range(n) if not _is_tensor(values[i])}
    body_memo, cond_memo = {}, {}
    while True:
        keep = {i for i in fixed if _input_deps(body_g, body_g.outputs[i].index, body_memo)
                <= fixed}
        if keep == fixed:
            break
        fixed = keep
    if not _input_deps(cond_g, cond_g.outputs[0].index, cond_memo) <= fixed:
        return None
    try:
        xs = [ops.convert_to_tensor(np.asarray(values[i])) if i in fixed else
              ops.zeros([1 if d is None else d for d in shapes[i]], dtype=_dtype_of(values[i]))
              for i in loop]
        for count in range(MAX_STATIC_TRIPS + 1):
            going = ops.convert_to_numpy(_call_model(cond_model, xs)[0])
            if not bool(np.asarray(going).reshape(-1)[0]):
                return count
            xs = [ops.cast(o, x.dtype) for o, x in zip(_call_model(body_model, xs), xs)]
    except _evaluation_errors():  # not evaluable at build time: the loop stays a while_loop
        return None
    return None


def _evaluation_errors() -> tuple:
    """What running a loop's ops on sample values may raise when they cannot be evaluated
    there (shape or dtype mismatches, the backend's own op errors), and nothing else: a
    programming error must surface, not turn into a silent fallback."""
    errors = (ValueError, TypeError, ArithmeticError, IndexError, RuntimeError)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # the backend in use: already imported

        errors += (tf.errors.OpError,)
    return errors


def _dtype_of(value):
    return str(value.dtype)




# ---- IF ---------------------------------------------------------------------------------------

@register("IF", layer="IfElse(then model, else model)")
def if_(op, ctx):
    model = ctx.graph.model
    then_i, else_i = _subgraph_options(op, "thenSubgraphIndex", "elseSubgraphIndex")
    pred, *operands = ctx.inputs(op)
    base = ctx.name(op)

    def build(index, tag):
        graph = build_graph(model, index)
        if len(graph.inputs) != len(operands):
            raise ConversionError(f"IF: {len(operands)} operands, but the {tag} subgraph "
                                  f"takes {len(graph.inputs)}.")
        specs = [InputSpec(t.index, f"{base}_{tag}_in{j}", _spec_shape(t, v), _dtype(t, v))
                 if _is_tensor(v) else InputSpec(t.index, value=v)
                 for j, (t, v) in enumerate(zip(graph.inputs, operands))]
        if not any(_is_tensor(v) for v in operands):
            return None, graph, specs
        built = build_subgraph(model, index, specs, [t.index for t in graph.outputs],
                               name=f"{base}_{tag}", handlers=HANDLERS, graph=graph,
                               constant_output=_constant_output(f"{base}_{tag}"), parent=ctx)
        for note in built.ctx.notes:
            ctx.note(note)
        return built, graph, specs

    tensors = [v for v in operands if _is_tensor(v)]
    if ctx.is_const(pred):  # the branch is known: inline it
        index, tag = (then_i, "then") if bool(np.asarray(pred).reshape(-1)[0]) else \
            (else_i, "else")
        built, graph, specs = build(index, tag)
        if built is None:
            sub = _fold_subgraph(model, index, graph, specs, parent=ctx)
            return [sub.values[t.index] for t in graph.outputs]
        out = built.model(tensors[0] if len(tensors) == 1 else tensors)
        return list(out) if isinstance(out, (list, tuple)) else [out]
    then_b, _, _ = build(then_i, "then")
    else_b, _, _ = build(else_i, "else")
    if then_b is None:
        raise ConversionError("IF: a run-time condition choosing between constant operands "
                              "only is not supported.")
    layer = IfElse(then_b.model, else_b.model, name=base)
    out = layer(ctx.tensor(pred), *tensors)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _fold_subgraph(model, index, graph, specs, handlers=None, parent=None):
    """Run a subgraph whose inputs are all build-time values: everything folds."""
    sub = BuildContext(graph, parent)
    for s in specs:
        sub.values[s.tensor] = s.value
    run_ops(graph, sub, handlers or HANDLERS)
    return sub


# ---- resource variables -----------------------------------------------------------------------

@dataclass(frozen=True)
class VariableHandle:
    """A resource variable (VAR_HANDLE), as a build-time value: never a graph tensor."""
    container: str
    shared_name: str

    @property
    def label(self) -> str:
        return f"{self.container}/{self.shared_name}" if self.container else self.shared_name


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return bytes(np.asarray(value, dtype=np.uint8)).decode("utf-8", "replace")


def _handle_of(op) -> VariableHandle:
    """The handle a VAR_HANDLE op (``ir.Op`` or ``OperatorInfo``) names."""
    return VariableHandle(_text(getattr(op.options, "container", None)),
                          _text(getattr(op.options, "sharedName", None)))


class _VariableState:
    """What a model does with its resource variables: initial values (from ``CALL_ONCE``
    initializer subgraphs) and the variables assigned anywhere else (state)."""

    def __init__(self, model):
        self.init_subgraphs = {i for sg in model.subgraphs for op in sg.operators
                               if op.name == "CALL_ONCE"
                               for i in op.called_subgraphs}
        self.initial: dict[VariableHandle, np.ndarray] = {}
        self.assigned: dict[str, list[str]] = {}  # variable -> where
        for index in _callees_first(model, sorted(self.init_subgraphs)):
            self._run_initializer(model, index)
        for sg in model.subgraphs:
            if sg.index in self.init_subgraphs:
                continue
            handles = {op.outputs[0]: op for op in sg.operators if op.name == "VAR_HANDLE"}
            for op in sg.operators:
                if op.name == "ASSIGN_VARIABLE":
                    producer = handles.get(op.inputs[0])
                    label = _handle_of(producer).label if producer is not None else \
                        f"(handle '{sg.tensors[op.inputs[0]].name}' passed into {sg.name})"
                    self.assigned.setdefault(label, []).append(
                        f"subgraph {sg.index} ({sg.name}) op {op.index}")

    def _run_initializer(self, model, index):
        graph = build_graph(model, index)
        # A CALL_ONCE inside an initializer: its subgraph is an initializer too, already run
        # (callees first), so here it does nothing.
        handlers = {**load_handlers(), **{name: Handler(name, lambda op, c: [], "", __name__)
                                   for name in ("ASSIGN_VARIABLE", "CALL_ONCE")}}
        sub = _fold_subgraph(model, index, graph, [], handlers)
        for op in graph.ops:
            if op.type == "ASSIGN_VARIABLE":
                handle = sub.values.get(op.inputs[0].index)
                value = sub.values.get(op.inputs[1].index)
                if isinstance(handle, VariableHandle) and isinstance(value, np.ndarray):
                    self.initial[handle] = value


def _callees_first(model, roots) -> list[int]:
    """``roots`` and the subgraphs they call, each after every subgraph it calls (an
    iterative post-order: call chains may be thousands deep; validation excluded cycles)."""
    def callees(index):
        return iter([c for op in model.subgraphs[index].operators for c in op.called_subgraphs])

    order, done = [], set()
    for root in roots:
        stack, on_stack = [(root, callees(root))], {root}
        while stack:
            index, pending = stack[-1]
            callee = next(pending, None)
            if callee is None:
                stack.pop()
                on_stack.discard(index)
                if index not in done:
                    done.add(index)
                    order.append(index)
            elif callee not in done and callee not in on_stack:
                stack.append((callee, callees(callee)))
                on_stack.add(callee)
    return order


def _state(ctx) -> _VariableState:
    """The model's resource variables, worked out once per conversion."""
    if ctx.state.variables is None:
        ctx.state.variables = variable_state(ctx.graph.model)
    return ctx.state.variables


def variable_state(model) -> _VariableState:
    """The model's resource variables (initial values, where they are assigned)."""
    return _VariableState(model)


def _stateful_error(state) -> ConversionError:
    names = ", ".join(f"'{name}'" for name in sorted(state.assigned))
    return ConversionError(
        f"the model is stateful: resource variable(s) {names} are assigned at run time "
        "(ASSIGN_VARIABLE), so their values carry over from one invoke to the next. A Keras "
        "functional model has no per-call persistent state; only models whose variables are "
        "read-only (initialized once by CALL_ONCE) convert.")


@register("CALL_ONCE", layer="(initializer: read-only variables become constants; state: "
          "the StreamingCell's initial state)")
def call_once(op, ctx):
    state = _state(ctx)
    if state.assigned:
        raise _stateful_error(state)
    ctx.note("Resource variables initialized by CALL_ONCE and only read are constants.")
    return []


@register("VAR_HANDLE", layer="(build-time variable handle)")
def var_handle(op, ctx):
    return [_handle_of(op)]


@register("READ_VARIABLE", layer="(constant: the variable's initial value; state: the "
          "StreamingCell's state input)")
def read_variable(op, ctx):
    handle = ctx.value(op.inputs[0])
    if not isinstance(handle, VariableHandle):
        raise ConversionError("READ_VARIABLE of a resource that is not a variable handle.")
    state = _state(ctx)
    if state.assigned:
        raise _stateful_error(state)
    if handle not in state.initial:
        raise ConversionError(f"resource variable '{handle.label}' is read but no CALL_ONCE "
                              "initializer assigns it a constant value.")
    return [np.array(state.initial[handle])]


@register("ASSIGN_VARIABLE", layer="(CALL_ONCE initializers; state: the StreamingCell's new "
          "state)")
def assign_variable(op, ctx):
    raise _stateful_error(_state(ctx))
