"""Walks the IR in execution order, calling each op's handler, and assembles a Keras model.

Values are KerasTensors for anything that depends on a model input, numpy arrays for
constants. An op whose inputs are all constant is folded: its handler runs the same layers
eagerly on the arrays and the result stays a constant, so constant-only subgraphs never
become layers.
"""

from __future__ import annotations

import re
from collections import Counter

import keras
import numpy as np

from mlflow_tflite_keras.converter.ir import FUSED_ACTIVATIONS, Graph, Op, Tensor
from mlflow_tflite_keras.converter.layers import KerasOp

# TFLite fused activations (ActivationFunctionType) as Keras activation names.


class ConversionError(Exception):
    """A handler cannot rebuild an op as it is; the message says why."""


class ConversionState:
    """What one conversion works out once and every context of it shares: the contexts of
    the subgraphs it builds (loop bodies, branches) and scratch contexts. Kept here, never on
    the parsed model, so two conversions of one model share nothing."""

    def __init__(self):
        self.variables = None  # the model's resource variables (ops/control_flow.py)


class Values(dict):
    """Tensor index -> value in a subgraph being built. The graph's constants are not copied
    in: asked for, a constant is its tensor's decoded data (:attr:`Tensor.data`, decoded once,
    released by the builder once the layers taking it hold it); a value set here wins."""

    def __init__(self, graph: Graph, values=(), ctx: BuildContext | None = None):
        super().__init__(values)
        self.graph = graph
        self.ctx = ctx
        self._released: dict[int, Op] = {}  # folded values let go of -> their producer

    def release(self, index: int):
        """Let go of a value folded at build time (an array) that no op still to build takes;
        asked for again, its producer is run again on a scratch context (folding is pure)."""
        op = self.graph.producers.get(index)
        if op is not None and self.ctx is not None and \
                isinstance(dict.get(self, index), np.ndarray):
            del self[index]
            self._released[index] = op

    def _constant(self, index) -> Tensor | None:
        tensors = self.graph.tensors
        try:
            t = tensors[index] if 0 <= index < len(tensors) else None
        except TypeError:
            return None
        return t if t is not None and t.is_constant else None

    def defer(self, op: Op):
        """Fold ``op`` (its inputs are constants) when one of its outputs is first asked for,
        not now (:data:`~mlflow_tflite_keras.converter.ir.STORAGE_OPS`)."""
        for t in op.outputs:
            self._released[t.index] = op

    def __missing__(self, index):
        op = self._released.pop(index, None)
        if op is not None:
            from mlflow_tflite_keras.converter.registry import HANDLERS

            inputs = [u for u in op.inputs if u is not None]
            held = [u for u in inputs if u.is_constant and u.holds_data]
            scratch = self.ctx.scratch(op, {u.index: self[u.index] for u in inputs})
            outputs = HANDLERS[op.type].convert(op, scratch)
            for u in inputs:  # decoded for this fold only: the value here holds the result
                if u.is_constant and u not in held:
                    u.release()
            value = self[index] = outputs[[t.index for t in op.outputs].index(index)]
            return value
        t = self._constant(index)
        if t is None:
            raise KeyError(index)
        return t.data

    def __contains__(self, index) -> bool:
        return dict.__contains__(self, index) or index in self._released or \
            self._constant(index) is not None

    def get(self, index, default=None):
        return self[index] if index in self else default


class BuildContext:
    """The state of building one subgraph: its values (KerasTensors, constants), layer
    names, notes; :attr:`state` is the whole conversion's (shared with ``parent``)."""

    def __init__(self, graph: Graph, parent: BuildContext | None = None):
        self.graph = graph
        self.state = parent.state if parent is not None else ConversionState()
        self.values: dict[int, object] = Values(graph, ctx=self)
        self.layer_names: Counter = Counter()
        self.layers_by_op: dict[int, list[str]] = {}
        self.shared_layers: dict = {}  # weight tensors read by several ops -> their one layer
        self.notes: list[str] = []  # what could not be recovered, for the conversion report
        self._current_op: Op | None = None
        # Fake-quantize quantized tensors (converter/emulation.py); set per subgraph by
        # build_subgraph (loop bodies and branches inherit it from their caller).
        self.emulate_quantization = False

    def scratch(self, op: Op, values: dict[int, object]) -> BuildContext:
        """A throwaway context to evaluate ``op`` on build-time ``values`` (tensor index ->
        value), e.g. shape arithmetic: the same graph and conversion state, layer names that
        do not clash with this context's; its layers, names and notes are discarded."""
        scratch = BuildContext.__new__(BuildContext)
        scratch.graph, scratch.state = self.graph, self.state
        scratch.values = Values(self.graph, values)
        scratch.layer_names = self.layer_names.copy()
        scratch.layers_by_op, scratch.notes, scratch._current_op = {}, [], op
        scratch.shared_layers = {}
        scratch.emulate_quantization = False
        return scratch

    # ---- values -----------------------------------------------------------------------------

    def value(self, t: Tensor | None):
        """The value of a tensor: a KerasTensor, a numpy array (constant) or None (omitted)."""
        if t is None:
            return None
        if t.index not in self.values:
            raise ConversionError(f"Tensor '{t.name}' is used before any op produces it.")
        return self.values[t.index]

    def inputs(self, op: Op) -> list:
        return [self.value(t) for t in op.inputs]

    def const(self, t: Tensor | None, what: str = "this input") -> np.ndarray | None:
        """A constant input as numpy (weights, axes, shapes); error if it is computed."""
        if t is None:
            return None
        v = self.value(t)
        if not isinstance(v, np.ndarray):
            raise ConversionError(
                f"{self._current_op.type if self._current_op else 'op'}: {what} "
                f"('{t.name}') must be a constant, but it is computed at run time.")
        return v

    @staticmethod
    def is_const(value) -> bool:
        return isinstance(value, np.ndarray)

    # ---- layers -----------------------------------------------------------------------------

    def name(self, op: Op, suffix: str = "") -> str:
        """A unique layer name derived from the op's first output tensor name."""
        base = op.outputs[0].name if op.outputs else f"op_{op.index}"
        base = re.sub(r"[^A-Za-z0-9_.\-]+", "_", base.split(";")[0]).strip("_.-") or "op"
        base = (base[:60] + suffix) if suffix else base[:60]
        self.layer_names[base] += 1
        n = self.layer_names[base]
        name = base if n == 1 else f"{base}_{n}"
        self.layers_by_op.setdefault(op.index, []).append(name)
        return name

    def apply(self, layer, *inputs):
        """Call a layer on values. All-constant inputs are folded eagerly to numpy."""
        if inputs and all(self.is_const(v) for v in inputs):
            result = layer(*[keras.ops.convert_to_tensor(v) for v in inputs])
            return _to_numpy(result)
        if getattr(self, "emulate_quantization", False) and self._current_op is not None:
            from mlflow_tflite_keras.converter import emulation  # weights kept on the grid

            layer = emulation.quantize_weights(self, self._current_op, layer)
        return layer(*[self.tensor(v) for v in inputs])

    def op(self, op: Op, fn: str, *inputs, suffix: str = "", **fn_kwargs):
        """Apply ``keras.ops.<fn>`` to values; constant operands become stored weights."""
        if all(self.is_const(v) for v in inputs):
            fold = KerasOp._resolve(fn)
            return _to_numpy(fold(*[keras.ops.convert_to_tensor(v) for v in inputs], **fn_kwargs))
        constants = {i: v for i, v in enumerate(inputs) if self.is_const(v)}
        tensors = [v for v in inputs if not self.is_const(v)]
        layer = KerasOp(fn, fn_kwargs=fn_kwargs, constants=constants, n_inputs=len(tensors),
                        name=self.name(op, suffix))
        return layer(*tensors) if len(tensors) > 1 else layer(tensors[0])

    def tensor(self, value):
        """A value as something a Keras layer accepts in the functional graph."""
        if self.is_const(value):
            raise ConversionError("A constant reached a layer that takes only graph tensors; "
                                  "use ctx.op(...) so it is stored as a weight.")
        return value

    def activation(self, op: Op, x, option: str = "fusedActivationFunction"):
        """Apply the op's fused activation (if any) as a separate Keras layer."""
        code = op.opt(option, 0)
        act = FUSED_ACTIVATIONS.get(code, "unknown")
        if act is None:
            return x
        if act == "unknown":
            raise ConversionError(f"{op.type}: unknown fused activation {code}.")
        return self.apply_activation(op, x, act)

    def apply_activation(self, op: Op, x, act: str):
        if act == "relu":
            return self.apply(keras.layers.ReLU(name=self.name(op, "_relu")), x)
        if act == "relu6":
            return self.apply(keras.layers.ReLU(max_value=6.0, name=self.name(op, "_relu6")), x)
        if act in ("tanh", "sigmoid"):
            return self.apply(keras.layers.Activation(act, name=self.name(op, f"_{act}")), x)
        return self.op(op, act, x, suffix=f"_{act}")

    @staticmethod
    def activation_name(op: Op, option: str = "fusedActivationFunction"):
        """The fused activation as a Keras ``activation=`` argument, or False when the
        activation has no built-in Keras name (apply it with :meth:`activation`)."""
        act = FUSED_ACTIVATIONS.get(op.opt(option, 0), "unknown")
        return act if act in (None, "relu", "tanh") else False

    def note(self, message: str):
        if message not in self.notes:
            self.notes.append(message)


def _to_numpy(result):
    if isinstance(result, (list, tuple)):
        return [np.asarray(keras.ops.convert_to_numpy(r)) for r in result]
    return np.asarray(keras.ops.convert_to_numpy(result))
