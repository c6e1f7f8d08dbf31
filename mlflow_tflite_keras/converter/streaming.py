"""Streaming (stateful) models as Keras recurrent models.

A streaming ``.tflite`` (keyword spotter, wake-word detector) takes one frame per invoke and
keeps ring buffers in resource variables: ``VAR_HANDLE`` / ``READ_VARIABLE`` /
``ASSIGN_VARIABLE``, initialised by a ``CALL_ONCE`` subgraph. Its one-step graph is a
recurrent cell: ``(frame, state) -> (output, new state)``.

The step graph is rebuilt by the ordinary handlers (:func:`~mlflow_tflite_keras.converter.
subgraph.build_subgraph`) with three handlers replaced: ``READ_VARIABLE`` of an assigned
variable reads the current state (a Keras input of the step model, or the value assigned
earlier in the same step), ``ASSIGN_VARIABLE`` records the new state, ``CALL_ONCE`` does
nothing (its initial values are the cell's initial state). Variables the step only reads
are constants, their ``CALL_ONCE`` values (another signature, e.g. a setter, may assign
them; the step does not). The step model becomes a
:class:`StreamingCell` (a registered, serializable layer holding the step model and the
initial state), run over time by :class:`StreamingRNN` (``keras.layers.RNN`` with
multi-dimensional states and outputs, and a reset to the initial state, not zeros):

* ``to_keras(model)``: input ``[batch, time, *frame]``, output ``[batch, time, *output]``;
  each sequence starts from the initial state. Trains with ``fit`` through time (BPTT).
* ``to_keras(model, stateful=True)``: input one frame ``[batch, *frame]`` per call, output
  ``[batch, *output]``; the state persists across calls until :func:`reset_streaming_state`.
* Hybrid conversion (``unsupported="wrap"`` / ``wrap_ops``) wraps stateless ops of the step
  graph as ``TFLiteLayer``s inside the cell (they run once per frame); a region holding the
  state (variable ops) is refused.

The frame's batch dimension (1 in the ``.tflite``) becomes the Keras batch when every state
variable has that leading 1 too (ring buffers ``[1, time, channels]``); otherwise (a state
``[4]``, say) the step is built at the ``.tflite``'s exact shapes and mapped over the batch
(``StreamingCell(per_example=True)``), one stream per example as one interpreter per stream.
"""

from __future__ import annotations

import keras
import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers import KerasOp
from mlflow_tflite_keras.converter.layers.streaming import StreamingCell, StreamingRNN
from mlflow_tflite_keras.converter.names import keras_name
from mlflow_tflite_keras.converter.registry import Handler

__all__ = ["StreamingCell", "StreamingRNN", "convert_streaming", "is_streaming",
           "reset_streaming_state", "state_variables", "streaming_layer"]


def reset_streaming_state(model) -> None:
    """Reset every stateful :class:`StreamingRNN` of ``model`` (``to_keras(...,
    stateful=True)``) to the model's initial state: the next frame starts a new stream."""
    found = False
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, StreamingRNN) and layer.stateful:
            layer.reset_state()
            found = True
    if not found:
        raise MlflowException("The model has no stateful streaming layer to reset (convert "
                              "with to_keras(model, stateful=True)).",
                              error_code=INVALID_PARAMETER_VALUE)


def streaming_layer(model):
    """The :class:`StreamingRNN` of a converted streaming model, or None."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, StreamingRNN):
            return layer
    return None


# ---- conversion -------------------------------------------------------------------------------

_VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}


class StateVariable:
    """A resource variable assigned by the step graph: its handle, name, initial value and
    the tensor holding its value at the end of the step."""

    def __init__(self, handle, initial: np.ndarray, final_tensor: int, dtype: str):
        self.handle = handle
        self.initial = np.asarray(initial, np.float32)
        self.final_tensor = final_tensor
        self.dtype = dtype

    @property
    def name(self) -> str:
        return keras_name(self.handle.shared_name or self.handle.label, "state")


def _assigning_subgraphs(model) -> set[int]:
    """Subgraphs with an ``ASSIGN_VARIABLE`` outside the ``CALL_ONCE`` initializers."""
    from mlflow_tflite_keras.converter.ops.control_flow import variable_state

    init = variable_state(model).init_subgraphs
    return {sg.index for sg in model.subgraphs if sg.index not in init
            and any(op.name == "ASSIGN_VARIABLE" for op in sg.operators)}


def is_streaming(model, subgraph_index: int | None = None) -> bool:
    """The signature's subgraph (default: the first signature's) assigns resource variables
    at run time (outside ``CALL_ONCE`` initializers): state carried across invokes."""
    if not model.is_stateful:
        return False
    from mlflow_tflite_keras.tflite_model import reachable_subgraphs

    if subgraph_index is None:
        subgraph_index = model.signature().subgraph_index
    return bool(_assigning_subgraphs(model) & set(reachable_subgraphs(model, [subgraph_index])))


def state_variables(model, graph) -> list[StateVariable]:
    """The variables the step graph (``graph``, the signature's subgraph) assigns, in order
    of first use; errors when a subgraph it calls assigns state or a state variable has no
    initial value. (Assignments by other signatures are not part of the step.)"""
    from mlflow_tflite_keras.converter.ops.control_flow import _handle_of, variable_state
    from mlflow_tflite_keras.tflite_model import reachable_subgraphs

    state = variable_state(model)
    called = set(reachable_subgraphs(model, [graph.subgraph_index])) - {graph.subgraph_index}
    elsewhere = sorted(_assigning_subgraphs(model) & called)
    if elsewhere:
        raise ConversionError(f"resource variables are assigned inside subgraph(s) {elsewhere} "
                              "that the step graph calls (a loop or branch); only a step graph "
                              "that assigns its state itself converts to a recurrent cell.")
    handles = {op.outputs[0].index: _handle_of(op) for op in graph.ops
               if op.type == "VAR_HANDLE"}
    order, final = [], {}
    for op in graph.ops:
        if op.type in ("READ_VARIABLE", "ASSIGN_VARIABLE"):
            handle = handles.get(op.inputs[0].index)
            if handle is None:
                raise ConversionError(f"{op.type} (op {op.index}) of a resource that is not a "
                                      "VAR_HANDLE of the step graph.")
            if handle not in order:
                order.append(handle)
            if op.type == "ASSIGN_VARIABLE":
                final[handle] = op.inputs[1]
    result = []
    for handle in order:
        if handle not in final:
            continue  # read only: a constant
        if handle not in state.initial:
            raise ConversionError(f"state variable '{handle.label}' has no initial value from a "
                                  "CALL_ONCE initializer.")
        tensor = final[handle]
        result.append(StateVariable(handle, state.initial[handle], tensor.index,
                                    tensor.float_dtype))
    return result


def _step_handlers(handlers, states: list[StateVariable], inputs: dict, initial: dict):
    """``handlers`` with READ_VARIABLE / ASSIGN_VARIABLE / CALL_ONCE acting on the step's
    state: ``inputs`` maps each state handle to its step-model input tensor index; other
    variables read their ``initial`` value (a constant)."""
    from mlflow_tflite_keras.converter.ops.control_flow import VariableHandle

    current: dict = {}
    stateful = {s.handle for s in states}

    def read(op, ctx):
        handle = ctx.value(op.inputs[0])
        if not isinstance(handle, VariableHandle):
            raise ConversionError("READ_VARIABLE of a resource that is not a variable handle.")
        if handle in stateful:
            value = current.get(handle)
            return [ctx.values[inputs[handle]] if value is None else value]
        if handle not in initial:  # read only here (maybe set by another signature)
            raise ConversionError(f"resource variable '{handle.label}' is read but no CALL_ONCE "
                                  "initializer assigns it a constant value.")
        return [np.array(initial[handle])]

    def assign(op, ctx):
        handle = ctx.value(op.inputs[0])
        if not (isinstance(handle, VariableHandle) and handle in stateful):
            raise ConversionError("ASSIGN_VARIABLE of a resource that is not a state variable.")
        current[handle] = ctx.value(op.inputs[1])
        return []

    return {**handlers,
            "READ_VARIABLE": Handler("READ_VARIABLE", read, "(the step's current state)",
                                     __name__),
            "ASSIGN_VARIABLE": Handler("ASSIGN_VARIABLE", assign, "(the step's new state)",
                                       __name__),
            "CALL_ONCE": Handler("CALL_ONCE", lambda op, ctx: [],
                                 "(initial state of the StreamingCell)", __name__)}


def convert_streaming(model, signature, graph, handlers, report, name: str, *,
                      stateful: bool = False, steps=None, per_example: bool = False
                      ) -> keras.Model:
    """The Keras model of a streaming ``.tflite`` (see the module docstring).
    ``per_example``: build the step at the exact shapes and map it over the batch even when
    every state has a leading 1 (a fixed batch of 1 with loops or branches baked in, as
    :func:`~mlflow_tflite_keras.converter.convert.convert` decides)."""
    from mlflow_tflite_keras.converter.ops.control_flow import _constant_output, variable_state
    from mlflow_tflite_keras.tflite_model import reachable_subgraphs
    from mlflow_tflite_keras.converter.subgraph import InputSpec, build_subgraph

    states = state_variables(model, graph)
    for region in steps or ():  # hybrid conversion: wrapped regions of the step graph
        touched = sorted({f"{op.index}:{op.type}" for op in getattr(region, "ops", ())
                          if op.type in _VARIABLE_OPS})
        if touched:
            raise ConversionError(
                f"a wrapped region holds the streaming state ({', '.join(touched)}): a "
                "TFLiteLayer would keep it across sequences and batch rows. Only stateless ops "
                "of a streaming model can be wrapped.")
    in_names, out_names = graph.signature_names
    if len(signature.inputs) != 1 or not signature.outputs:
        keys = [s.key for s in model.signatures]
        hint = f" Signatures: {keys}; pass signature_key= to choose the step." \
            if len(keys) > 1 else ""
        raise ConversionError(
            f"signature '{signature.key}' has {len(signature.inputs)} inputs and "
            f"{len(signature.outputs)} outputs; the recurrent conversion takes one frame input "
            f"and at least one output.{hint}")
    frame = graph.tensors[next(iter(signature.inputs.values()))]
    if frame.rank < 1 or frame.shape_signature[0] not in (1, -1):
        raise ConversionError(f"the streaming input '{frame.name}' has no batch dimension "
                              f"(shape {list(frame.shape_signature)}).")
    if any(d == -1 for d in frame.shape_signature[1:]):
        raise ConversionError(f"the streaming input '{frame.name}' has a dynamic frame shape "
                              f"{list(frame.shape_signature)}.")
    # Batch-native when every state has the frame's leading 1 (the usual ring buffers): the
    # step runs on the whole batch. Otherwise the step is built at the exact shapes and runs
    # once per example (a fixed batch of 1 then: which state a row of a bigger batch would
    # share is not defined).
    per_example = per_example or any(s.initial.ndim < 1 or s.initial.shape[0] != 1
                                     for s in states)
    if per_example and frame.shape_signature[0] != 1:
        odd = [f"'{s.handle.label}' {list(s.initial.shape)}" for s in states
               if s.initial.ndim < 1 or s.initial.shape[0] != 1]
        raise ConversionError(
            f"state variable(s) {', '.join(odd)} and the input '{frame.name}' with a dynamic "
            "batch: the recurrent conversion needs a leading batch dimension of 1 on every "
            "state, or a fixed batch of 1.")
    for s in states:
        if s.dtype != "float32":
            raise ConversionError(f"state variable '{s.handle.label}' is {s.dtype}; only "
                                  "float (or quantized) state converts.")
    frame_shape = tuple(int(d) for d in frame.shape[1:])
    input_name = keras_name(in_names.get(frame.index, frame.name))
    output_indices = list(signature.outputs.values())
    output_names = [keras_name(out_names.get(i, name))
                    for name, i in signature.outputs.items()]

    state_inputs = {s.handle: -(k + 1) for k, s in enumerate(states)}  # no real tensor
    step_batch = 1 if per_example else None
    state_shapes = [s.initial.shape if per_example else s.initial.shape[1:] for s in states]
    specs = [InputSpec(frame.index, input_name, (step_batch, *frame_shape), frame.float_dtype)]
    specs += [InputSpec(state_inputs[s.handle], f"state_{s.name}",
                        shape if per_example else (None, *shape), "float32")
              for s, shape in zip(states, state_shapes)]
    step = build_subgraph(
        model, signature.subgraph_index, specs, output_indices + [s.final_tensor for s in states],
        name=f"{name}_step", handlers=_step_handlers(handlers, states, state_inputs,
                                                     variable_state(model).initial),
        report=report, graph=graph, constant_output=_constant_output(f"{name}_step"),
        steps=steps)
    n_outputs = len(output_indices)
    for s, out in zip(states, step.model.outputs[n_outputs:]):
        if tuple(out.shape) != tuple(s.initial.shape if per_example else
                                     (None, *s.initial.shape[1:])):
            raise ConversionError(f"state variable '{s.handle.label}' changes shape in a step: "
                                  f"{list(s.initial.shape)} -> {list(out.shape)}.")
    for name, out in zip(output_names, step.model.outputs[:n_outputs]):
        if per_example and tuple(out.shape[:1]) != (1,):
            raise ConversionError(f"output '{name}' has shape {list(out.shape)}, without the "
                                  "batch dimension of 1 of the input frame.")
        if any(d is None for d in out.shape[1:]) and n_outputs > 1:
            raise ConversionError(f"output '{name}' has a dynamic shape {list(out.shape)}.")
    report.notes.extend(step.ctx.notes)
    others = sorted(_assigning_subgraphs(model)
                    - set(reachable_subgraphs(model, [graph.subgraph_index])))
    if others:
        report.notes.append(
            f"Subgraph(s) {others} of other signatures also assign variables; the Keras model "
            "is this signature's step, starting from the CALL_ONCE values.")
    report.notes.append(
        f"Streaming model: the step graph is a StreamingCell with {len(states)} state "
        f"variable(s) ({', '.join(s.handle.label for s in states)}), run over time by "
        "StreamingRNN" + (" (stateful: one frame per call)." if stateful else
                          ": input [batch, time, *frame], output [batch, time, *output]."))
    cell = StreamingCell(step.model, state_shapes, state_names=[s.name for s in states],
                         initial_state=[s.initial if per_example else s.initial[0]
                                        for s in states],
                         per_example=per_example, n_outputs=n_outputs, name=f"{name}_cell")
    rnn_name = output_names[0] if n_outputs == 1 else "streaming"
    if stateful:
        batch = max(int(frame.shape[0]), 1)
        x = keras.Input(batch_shape=(batch, *frame_shape), dtype=frame.float_dtype,
                        name=input_name)
        sequence = KerasOp("expand_dims", fn_kwargs={"axis": 1}, name="one_frame")(x)
        y = StreamingRNN(cell, stateful=True, name=rnn_name)(sequence)
    else:
        x = keras.Input(batch_shape=(None, None, *frame_shape), dtype=frame.float_dtype,
                        name=input_name)
        y = StreamingRNN(cell, return_sequences=True, name=rnn_name)(x)
    if n_outputs > 1:
        y = {out_name: KerasOp("streaming_output", name=out_name, fn_kwargs={
                 "start": start, "stop": stop, "shape": list(shape)})(y)
             for out_name, (start, stop), shape in zip(output_names, cell.output_slices,
                                                        cell.output_shapes)}
    return keras.Model(x, y, name=name)
