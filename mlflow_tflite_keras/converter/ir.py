"""The graph IR every op handler reads: tensors, constant data, ops, producers/consumers.

Built from one subgraph of a :class:`~mlflow_tflite_keras.tflite_model.TFLiteModel`. Constant
data is decoded here, when first asked for, so handlers never see storage details: quantized
constants are
dequantized to float32 (per-tensor, per-channel along ``quantized_dimension`` or blockwise;
INT2 / INT4 / UINT4 unpacked first), float16 and bfloat16 become float32, sparse constants
are densified. Index-like integer constants stay integers. The builder releases a decoded
constant once the layers that take it hold it (:meth:`Tensor.release`): each weight is then
in memory once as a variable, not also as an array of the IR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mlflow_tflite_keras.recipes import is_quantized
from mlflow_tflite_keras.tflite_model import (
    OperatorInfo,
    Quantization,
    SubgraphInfo,
    TensorInfo,
    TFLiteModel,
)


# Ops that only decode a stored constant (float16, quantized or sparse weights), which the IR
# decodes itself: with a constant input the builder folds them where their output is first
# used, not at their place in the graph (converters put them all first; folding them there
# would hold every weight decoded at once).
STORAGE_OPS = ("DEQUANTIZE", "DENSIFY")

# The schema's ActivationFunctionType codes (an op's fusedActivationFunction option).
FUSED_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}


@dataclass(eq=False)
class Tensor:
    index: int
    name: str
    type_name: str  # schema TensorType name, e.g. "INT8"
    shape: tuple[int, ...]  # static shape as stored (batch usually 1)
    shape_signature: tuple[int, ...]  # -1 for dynamic dimensions
    quantization: Quantization | None
    is_variable: bool = False
    # Where a constant's data is stored (None for activations); decoded by :attr:`data`.
    stored: TensorInfo | None = field(default=None, repr=False)
    model: TFLiteModel | None = field(default=None, repr=False)
    decodes: int = field(default=0, repr=False)  # times :attr:`data` decoded it
    _data: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_constant(self) -> bool:
        return self.stored is not None

    @property
    def data(self) -> np.ndarray | None:
        """The decoded constant value (None for activations), decoded on first use and kept
        until :meth:`release`."""
        if self._data is None and self.stored is not None:
            self._data = decode_constant(self.model, self.stored)
            self.decodes += 1
        return self._data

    @property
    def holds_data(self) -> bool:
        """The decoded constant is held (decoded and not released)."""
        return self._data is not None

    def release(self):
        """Let go of the decoded constant (its layers hold it now) and of the file's pages it
        was read from; asked for again, it is decoded again."""
        if self._data is not None:
            self._data = None
            self.model.drop_pages()

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_quantized(self) -> bool:
        return is_quantized(self)

    @property
    def float_dtype(self) -> str:
        """The dtype this tensor has in the float Keras model."""
        if self.is_quantized or self.type_name in ("FLOAT16", "FLOAT32", "FLOAT64", "BFLOAT16"):
            return "float32"
        return {"INT8": "int8", "UINT8": "uint8", "INT16": "int16", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT32": "uint32",
                "COMPLEX64": "complex64"}.get(self.type_name, "float32")

    def __repr__(self):
        return f"Tensor({self.index}, {self.name!r}, {self.type_name}, {list(self.shape)})"


@dataclass(eq=False)
class Op:
    index: int
    type: str  # builtin operator name ("CONV_2D"), or the custom code for custom ops
    inputs: list[Tensor | None]  # None for an omitted optional input (-1 in the file)
    outputs: list[Tensor]
    options: object | None  # schema *OptionsT object (camelCase attributes), or None
    is_custom: bool = False
    custom_options: bytes | None = None
    subgraph_index: int = 0
    called_subgraphs: list[int] = field(default_factory=list)  # see OperatorInfo
    # tensors the kernel reads besides its inputs (the integer LSTM's gate / hidden scales)
    intermediates: list[Tensor] = field(default_factory=list)

    def opt(self, name: str, default=None):
        """A builtin option by its schema name (``strideW``, ``fusedActivationFunction``...)."""
        if self.options is None:
            return default
        value = getattr(self.options, name, default)
        return default if value is None else value

    def input(self, i: int) -> Tensor | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def __repr__(self):
        return f"Op({self.index}, {self.type}, in={[t and t.index for t in self.inputs]}, " \
               f"out={[t.index for t in self.outputs]})"


@dataclass(eq=False)
class Graph:
    model: TFLiteModel
    subgraph_index: int
    name: str
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[Tensor]
    outputs: list[Tensor]
    producers: dict[int, Op] = field(default_factory=dict)
    consumers: dict[int, list[Op]] = field(default_factory=dict)

    @cached_property
    def signature_names(self) -> tuple[dict[int, str], dict[int, str]]:
        """Tensor index -> SignatureDef name, for this subgraph's inputs and outputs."""
        for sig in self.model.signatures:
            if sig.subgraph_index == self.subgraph_index:
                return ({i: n for n, i in sig.inputs.items()},
                        {i: n for n, i in sig.outputs.items()})
        return {}, {}


def build_graph(model: TFLiteModel, subgraph_index: int = 0) -> Graph:
    sg: SubgraphInfo = model.subgraphs[subgraph_index]
    tensors = [_tensor(model, t) for t in sg.tensors]
    ops = [_op(o, tensors, subgraph_index) for o in sg.operators]
    graph = Graph(
        model=model,
        subgraph_index=subgraph_index,
        name=sg.name,
        tensors=tensors,
        ops=ops,
        inputs=[tensors[i] for i in sg.inputs],
        outputs=[tensors[i] for i in sg.outputs],
    )
    for op in ops:
        for t in op.outputs:
            graph.producers[t.index] = op
        for t in op.inputs:
            if t is not None:
                graph.consumers.setdefault(t.index, []).append(op)
    return graph


def _op(o: OperatorInfo, tensors: list[Tensor], subgraph_index: int) -> Op:
    raw = o.raw
    custom = None
    if raw is not None and raw.customOptions is not None and len(raw.customOptions):
        custom = np.asarray(raw.customOptions, dtype=np.uint8).tobytes()
    return Op(
        index=o.index,
        type=o.name or "CUSTOM",
        inputs=[tensors[i] if i >= 0 else None for i in o.inputs],
        outputs=[tensors[i] for i in o.outputs],
        options=o.options,
        is_custom=o.opcode == "CUSTOM",
        custom_options=custom,
        subgraph_index=subgraph_index,
        called_subgraphs=list(o.called_subgraphs),
        intermediates=[tensors[int(i)] for i in
                       (raw.intermediates if raw is not None and
                        raw.intermediates is not None else ())],
    )


def _tensor(model: TFLiteModel, t: TensorInfo) -> Tensor:
    return Tensor(
        index=t.index,
        name=t.name,
        type_name=t.type_name,
        shape=t.shape,
        shape_signature=t.shape_signature,
        quantization=t.quantization,
        is_variable=t.is_variable,
        stored=t if model.has_constant(t) else None,
        model=model,
    )


def decode_constant(model: TFLiteModel, t: TensorInfo) -> np.ndarray | None:
    raw = model.constant(t)
    if raw is None:
        return None
    if t.sparsity is not None:
        from mlflow_tflite_keras.converter.sparsity import densify

        raw = densify(raw, t.sparsity, t.shape)
    if is_quantized(t):
        return t.quantization.dequantize(raw)
    if raw.dtype == np.float16:
        return raw.astype(np.float32)
    return raw  # a read-only view into the model's buffer: weights are not copied twice
