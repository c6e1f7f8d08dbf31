"""Small ``.tflite`` files written with the schema's object API (no TensorFlow): hostile ones
(subgraph cycles hidden in ``builtin_options_2``) and valid deep ones (op chains, CALL_ONCE
chains), for the validation, deep-graph and fuzz tests."""

from __future__ import annotations

import flatbuffers
import numpy as np

from ai_edge_litert import schema_py_generated as schema

F32 = schema.TensorType.FLOAT32


def opcode(name: str) -> "schema.OperatorCodeT":
    code = schema.OperatorCodeT()
    value = getattr(schema.BuiltinOperator, name)
    code.builtinCode = value
    code.deprecatedBuiltinCode = min(value, 127)
    code.version = 1
    return code


def tensor(name: str, shape, buffer: int = 0, type_=F32) -> "schema.TensorT":
    t = schema.TensorT()
    t.name = name
    t.shape = np.asarray(shape, np.int32)
    t.type = type_
    t.buffer = buffer
    return t


def operator(opcode_index: int, inputs, outputs, options=None, options_type=0,
             options2=None, options2_type=0) -> "schema.OperatorT":
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index
    op.inputs = np.asarray(inputs, np.int32)
    op.outputs = np.asarray(outputs, np.int32)
    op.builtinOptions, op.builtinOptionsType = options, options_type
    op.builtinOptions2, op.builtinOptions2Type = options2, options2_type
    return op


def subgraph(name, tensors, operators, inputs, outputs) -> "schema.SubGraphT":
    sg = schema.SubGraphT()
    sg.name = name
    sg.tensors, sg.operators = tensors, operators
    sg.inputs, sg.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
    return sg


def model(opcodes, subgraphs, n_buffers: int = 1, signature: bool = True) -> "schema.ModelT":
    m = schema.ModelT()
    m.version = 3
    m.operatorCodes = opcodes
    m.subgraphs = subgraphs
    m.buffers = [schema.BufferT() for _ in range(n_buffers)]
    if signature:
        main = subgraphs[0]
        sig = schema.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs, sig.outputs = [], []
        for kind, indices in (("inputs", main.inputs), ("outputs", main.outputs)):
            for i in indices:
                tm = schema.TensorMapT()
                tm.name, tm.tensorIndex = main.tensors[i].name, int(i)
                getattr(sig, kind).append(tm)
        m.signatureDefs = [sig]
    return m


def pack(m: "schema.ModelT") -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _composite(opcode_index: int, decomposition: int, decoy: bool):
    options2 = schema.StableHLOCompositeOptionsT()
    options2.name = "hostile.composite"
    options2.decompositionSubgraphIndex = decomposition
    options2.version = 1
    decoy_options = schema.ReducerOptionsT() if decoy else None
    return operator(opcode_index, [0], [1], decoy_options,
                    schema.BuiltinOptions.ReducerOptions if decoy else 0,
                    options2, schema.BuiltinOptions2.StableHLOCompositeOptions)


def composite_cycle(decoy: bool = True) -> bytes:
    """The ~400-byte file that segfaulted LiteRT: a STABLEHLO_COMPOSITE whose decomposition
    subgraph is a composite calling that same subgraph, the reference in ``builtin_options_2``
    and an unrelated ``builtin_options`` (ReducerOptions) set as a decoy."""
    sgs = [subgraph(f"sg{i}", [tensor("x", [1]), tensor("y", [1])], [_composite(0, 1, decoy)],
                    [0], [1]) for i in range(2)]
    return pack(model([opcode("STABLEHLO_COMPOSITE")], sgs))


def options2_reference(options2, options2_type: str, op_name: str, n_inputs: int = 1) -> bytes:
    """Subgraph 0 runs ``op_name`` with ``options2`` (its subgraph fields pointing wherever the
    caller set them); subgraph 1 is an identity-like ABS, so index 1 is a valid target."""
    ins = list(range(n_inputs))
    main = subgraph("main", [tensor(f"x{i}", [1]) for i in ins] + [tensor("y", [1])],
                    [operator(0, ins, [n_inputs], None, 0, options2,
                              getattr(schema.BuiltinOptions2, options2_type))], ins, [n_inputs])
    callee = subgraph("callee", [tensor("x", [1]), tensor("y", [1])],
                      [operator(1, [0], [1])], [0], [1])
    return pack(model([opcode(op_name), opcode("ABS")], [main, callee]))


def op_chain(length: int, op_name: str = "TANH", shape=(1, 4)) -> bytes:
    """A valid model: ``length`` unary ops in a row (x -> op -> op -> ... -> y)."""
    tensors = [tensor(f"t{i}", shape) for i in range(length + 1)]
    ops = [operator(0, [i], [i + 1]) for i in range(length)]
    return pack(model([opcode(op_name)], [subgraph("main", tensors, ops, [0], [length])]))


def call_once_chain(depth: int) -> bytes:
    """A valid model: subgraph 0 (y = abs(x)) runs CALL_ONCE on subgraph 1, which runs
    CALL_ONCE on subgraph 2, ... ``depth`` subgraphs deep; the last one is empty."""
    main_ops = [operator(1, [0], [1])]
    if depth:
        init = schema.CallOnceOptionsT()
        init.initSubgraphIndex = 1
        main_ops.insert(0, operator(0, [], [], init, schema.BuiltinOptions.CallOnceOptions))
    sgs = [subgraph("main", [tensor("x", [1, 4]), tensor("y", [1, 4])], main_ops, [0], [1])]
    for i in range(1, depth + 1):
        ops = []
        if i < depth:
            init = schema.CallOnceOptionsT()
            init.initSubgraphIndex = i + 1
            ops.append(operator(0, [], [], init, schema.BuiltinOptions.CallOnceOptions))
        sgs.append(subgraph(f"init{i}", [], ops, [], []))
    return pack(model([opcode("CALL_ONCE"), opcode("ABS")], sgs))


def string_tile() -> bytes:
    """A valid model on STRING tensors: y = tile(x, [1, 2]), x of shape [-1, 2] (LiteRT's TILE
    copies strings): each row's two strings, twice."""
    string = schema.TensorType.STRING
    x = tensor("text", [1, 2], type_=string)
    x.shapeSignature = np.asarray([-1, 2], np.int32)
    multiples = tensor("multiples", [2], buffer=1, type_=schema.TensorType.INT32)
    y = tensor("tiled", [1, 4], type_=string)
    y.shapeSignature = np.asarray([-1, 4], np.int32)
    m = model([opcode("TILE")], [subgraph("main", [x, multiples, y],
                                          [operator(0, [0, 1], [2])], [0], [2])], n_buffers=2)
    m.buffers[1].data = np.frombuffer(np.asarray([1, 2], np.int32).tobytes(), np.uint8)
    return pack(m)


def string_unsupported() -> bytes:
    """STRING tensors into an op whose kernel takes no strings (REVERSE_V2): LiteRT refuses
    it when it prepares the op."""
    string = schema.TensorType.STRING
    x, y = tensor("text", [1, 2], type_=string), tensor("out", [1, 2], type_=string)
    axis = tensor("axis", [1], buffer=1, type_=schema.TensorType.INT32)
    m = model([opcode("REVERSE_V2")], [subgraph("main", [x, y, axis],
                                                [operator(0, [0, 2], [1])], [0], [1])],
              n_buffers=2)
    m.buffers[1].data = np.frombuffer(np.asarray([1], np.int32).tobytes(), np.uint8)
    return pack(m)


def add_constant(values) -> bytes:
    """y = x + c with a float32 constant ``c`` of shape [1, n] (a KerasOp with a weight)."""
    values = np.asarray(values, np.float32).reshape(1, -1)
    n = values.shape[1]
    x, y = tensor("x", [1, n]), tensor("y", [1, n])
    c = tensor("c", [1, n], buffer=1)
    options = schema.AddOptionsT()
    m = model([opcode("ADD")], [subgraph("main", [x, c, y], [operator(
        0, [0, 1], [2], options, schema.BuiltinOptions.AddOptions)], [0], [2])], n_buffers=2)
    m.buffers[1].data = np.frombuffer(values.tobytes(), np.uint8)
    return pack(m)
