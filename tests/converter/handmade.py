"""Hand-built ``.tflite`` flatbuffers, for ops TensorFlow's converter no longer emits
(BIDIRECTIONAL_SEQUENCE_LSTM, UNIDIRECTIONAL_SEQUENCE_RNN, ...) or features it never sets
(peepholes, sparse constants written by hand).

    b = FlatModel()
    x = b.input((1, 5, 3))
    w = b.const(np.ones((4, 3), np.float32))
    h = b.variable((1, 4))
    y = b.output((1, 5, 4))
    b.op("UNIDIRECTIONAL_SEQUENCE_RNN", [x, w, ...], [y], "SequenceRNNOptions", timeMajor=False)
    data = b.finish()

Custom ops: ``b.custom_op("Convolution2DTransposeBias", [x, w, bias], [y], options_bytes)``
(the options encoded as the op's kernel reads them).
"""

from __future__ import annotations

import copy

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

_TYPES = {np.dtype(name): getattr(schema.TensorType, name.upper())
          for name in ("float32", "float16", "int32", "int64", "int8", "uint8")}


class FlatModel:
    def __init__(self):
        self.tensors: list = []
        self.buffers = [schema.BufferT()]
        self.operators: list = []
        self.opcodes: list = []  # builtin names, or ("CUSTOM", code, version)
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.extra_subgraphs: list = []

    def _tensor(self, shape, dtype=np.float32, name=None, buffer=0, variable=False,
                sparsity=None, quantization=None) -> int:
        t = schema.TensorT()
        t.shape = list(shape)
        t.type = _TYPES[np.dtype(dtype)]
        t.buffer = buffer
        t.name = name or f"t{len(self.tensors)}"
        t.isVariable = variable
        t.sparsity = sparsity
        t.quantization = quantization
        self.tensors.append(t)
        return len(self.tensors) - 1

    def input(self, shape, dtype=np.float32, name=None) -> int:
        i = self._tensor(shape, dtype, name or f"input_{len(self.inputs)}")
        self.inputs.append(i)
        return i

    def output(self, shape, dtype=np.float32, name=None) -> int:
        i = self._tensor(shape, dtype, name or f"output_{len(self.outputs)}")
        self.outputs.append(i)
        return i

    def intermediate(self, shape, dtype=np.float32, name=None) -> int:
        return self._tensor(shape, dtype, name)

    def const(self, array, name=None, shape=None, sparsity=None, quantization=None) -> int:
        array = np.ascontiguousarray(array)
        buf = schema.BufferT()
        buf.data = np.frombuffer(array.tobytes(), dtype=np.uint8)
        self.buffers.append(buf)
        return self._tensor(array.shape if shape is None else shape, array.dtype, name,
                            buffer=len(self.buffers) - 1, sparsity=sparsity,
                            quantization=quantization)

    def stored_const(self, data: bytes, shape, type_name: str, name=None,
                     quantization=None) -> int:
        """A constant given as its buffer's bytes, of any TensorType (packed INT4 / UINT4 /
        INT2, BFLOAT16, ...)."""
        buf = schema.BufferT()
        buf.data = np.frombuffer(bytes(data), dtype=np.uint8)
        self.buffers.append(buf)
        i = self._tensor(shape, np.float32, name, buffer=len(self.buffers) - 1,
                         quantization=quantization)
        self.tensors[i].type = getattr(schema.TensorType, type_name)
        return i

    def variable(self, shape, dtype=np.float32, name=None) -> int:
        return self._tensor(shape, dtype, name, variable=True)

    def op(self, name: str, inputs, outputs, options_type: str | None = None, **options):
        if name not in self.opcodes:
            self.opcodes.append(name)
        o = schema.OperatorT()
        o.opcodeIndex = self.opcodes.index(name)
        o.inputs = [-1 if i is None else i for i in inputs]
        o.outputs = list(outputs)
        custom_options = options.pop("custom_options", None)
        if custom_options is not None:
            o.customOptions = np.frombuffer(bytes(custom_options), dtype=np.uint8)
            o.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
        if options_type:
            opts = getattr(schema, options_type + "T")()
            for k, v in options.items():
                setattr(opts, k, v)
            if hasattr(schema.BuiltinOptions, options_type):
                o.builtinOptionsType = getattr(schema.BuiltinOptions, options_type)
                o.builtinOptions = opts
            else:  # the extended table (StableHLO ops, REDUCE_WINDOW, ...)
                o.builtinOptions2Type = getattr(schema.BuiltinOptions2, options_type)
                o.builtinOptions2 = opts
        self.operators.append(o)

    def custom_op(self, custom_code: str, inputs, outputs, custom_options: bytes = b"",
                  version: int = 1):
        self.op(("CUSTOM", custom_code, version), inputs, outputs,
                custom_options=custom_options)

    def add_subgraph(self, other: "FlatModel", name: str = "callee") -> int:
        """``other``'s graph as one more subgraph of this model (for CALL and other ops that
        name a subgraph); its constants and opcodes join this model's. Returns its index."""
        tensors = []
        for t in other.tensors:
            t = copy.copy(t)
            if t.buffer:
                self.buffers.append(other.buffers[t.buffer])
                t.buffer = len(self.buffers) - 1
            tensors.append(t)
        operators = []
        for o in other.operators:
            o = copy.copy(o)
            code = other.opcodes[o.opcodeIndex]
            if code not in self.opcodes:
                self.opcodes.append(code)
            o.opcodeIndex = self.opcodes.index(code)
            operators.append(o)
        sg = schema.SubGraphT()
        sg.tensors, sg.operators = tensors, operators
        sg.inputs, sg.outputs, sg.name = list(other.inputs), list(other.outputs), name
        self.extra_subgraphs.append(sg)
        return len(self.extra_subgraphs)

    def finish(self) -> bytes:
        sg = schema.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs, sg.name = self.inputs, self.outputs, "main"
        model = schema.ModelT()
        model.version = 3
        model.description = "handmade"
        model.subgraphs = [sg, *self.extra_subgraphs]
        model.buffers = self.buffers
        codes = []
        for name in self.opcodes:
            c = schema.OperatorCodeT()
            if isinstance(name, tuple):  # ("CUSTOM", custom code, version)
                _, c.customCode, c.version = name
                name = "CUSTOM"
            else:
                c.version = 1
            code = getattr(schema.BuiltinOperator, name)
            c.builtinCode, c.deprecatedBuiltinCode = code, min(code, 127)
            codes.append(c)
        model.operatorCodes = codes
        b = flatbuffers.Builder(1024)
        b.Finish(model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())
