"""Hybrid conversion: operators the converter does not rebuild run as embedded ``.tflite`` layers.

``convert(..., unsupported="wrap", wrap_ops=(...))`` selects operators of the signature's
subgraph -- those without a handler (with ``unsupported="wrap"``) and those named in
``wrap_ops`` -- groups them into regions, cuts each region out of the flatbuffer into a small
standalone model (:func:`write_region_model`) and runs it as one frozen
:class:`~mlflow_tflite_keras.tflite_layer.TFLiteLayer`; every other op is rebuilt as usual.

Regions. Selected ops are first grouped into connected components (an edge is a tensor one
selected op produces and another consumes). A component can be one layer only if it is
*convex*: no path leaves it and re-enters it (``a -> outside -> b`` with ``a``, ``b`` inside),
otherwise the layer would need, as input, a value computed from its own output. Rather than
merging the ops on such paths into the region (which would freeze ops the converter *can*
rebuild), a non-convex component is **split**: each op gets a stage, the largest number of
times a path from the component reaches it after passing through outside ops, and each
connected group of ops with the same stage is one region. Every such region is convex, so the
regions and the remaining ops form a DAG and :func:`schedule` orders them (a region runs as
soon as its last input is available, ties broken by original op order).

Boundaries. A region's inputs are the non-constant tensors its ops consume but do not
produce; constants (weights, shape vectors) and variable tensors travel inside the region.
Its outputs are tensors it produces that ops outside consume, or that are graph outputs. A
boundary tensor that is a build-time constant in the Keras model (a folded shape computation)
is baked into the region as a constant buffer. A region whose inputs are all constant is run
once at build time and folded to constants. The batch dimension of boundary tensors is made
dynamic (-1) where the Keras model's batch is, so the layer batches.

Quantization. The Keras model computes in float32; boundary tensors that are quantized
(int8/uint8/int16) are exchanged in the float domain: the ``TFLiteLayer`` quantizes its inputs
with the tensor's scale and zero point and dequantizes its outputs (``dequantize=True``).

Control flow. An op that calls other subgraphs (``WHILE``, ``IF``, ``CALL_ONCE``, StableHLO
ops) is wrapped with every subgraph it reaches, copied and renumbered; with
``unsupported="wrap"`` such an op is selected when any subgraph it reaches has an op without a
handler. Resource and variant tensors cannot cross a region boundary (a ``VAR_HANDLE`` outside
and a ``READ_VARIABLE`` inside): that is refused with an error naming them.

Custom ops: LiteRT runs a wrapped custom op only if its kernel is registered in the process
that runs the model (conversion succeeds; the first call fails otherwise). The conversion
report says so.
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass, field

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.converter.ir import Graph, Op, Tensor
from mlflow_tflite_keras.converter.names import keras_name
from mlflow_tflite_keras.converter.registry import handles
from mlflow_tflite_keras.tflite_model import FILE_IDENTIFIER, reachable_subgraphs
_UNCROSSABLE = ("RESOURCE", "VARIANT")


def _error(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(eq=False)
class Region:
    """A convex group of ops of ``graph`` that runs as one ``TFLiteLayer``."""

    index: int
    graph: Graph
    ops: list[Op]  # in graph order
    inputs: list[Tensor]  # non-constant tensors consumed, produced outside
    outputs: list[Tensor]  # produced inside, used outside or graph outputs
    reasons: dict[int, str] = field(default_factory=dict)  # op index -> why it is wrapped
    size_bytes: int = 0
    layer_name: str | None = None

    @property
    def labels(self) -> list[str]:
        return [f"{op.index}:{op.type}" for op in self.ops]

    @property
    def custom_ops(self) -> list[str]:
        ops = [op.type for op in self.ops if op.is_custom]
        model = self.graph.model
        for sg in _called_by(model, self.ops):
            ops += [o.custom_code for o in model.subgraphs[sg].operators if o.opcode == "CUSTOM"]
        return sorted(set(ops))

    def report_entry(self) -> dict:
        entry = {"ops": self.labels, "inputs": [t.name for t in self.inputs],
                 "outputs": [t.name for t in self.outputs], "size_bytes": self.size_bytes,
                 "layer": self.layer_name,
                 "reasons": {f"{op.index}:{op.type}": self.reasons.get(op.index, "wrap_ops")
                             for op in self.ops}}
        if self.custom_ops:
            entry["custom_ops"] = self.custom_ops
        return entry

    # ---- build ------------------------------------------------------------------------------

    def materialize(self, ctx, report=None, key_prefix: str = "") -> None:
        """Store the region's output values in ``ctx.values``: one ``TFLiteLayer`` call on the
        (non-constant) input values, or constants when every input is known at build time."""
        import keras

        from mlflow_tflite_keras.tflite_layer import TFLiteLayer

        if not self.outputs:  # nothing outside uses what it computes
            ctx.note(f"Wrapped region {self.index} ({', '.join(self.labels)}) has no used "
                     "outputs; it was dropped.")
            return
        values = {}
        for t in self.inputs:
            v = ctx.value(t)
            if not (ctx.is_const(v) or isinstance(v, keras.KerasTensor)):
                raise _error(f"Wrapped region {self.index} ({', '.join(self.labels)}): its input "
                             f"'{t.name}' is a build-time object ({type(v).__name__}), not a "
                             "tensor; it cannot cross a TFLiteLayer boundary.")
            values[t.index] = v
        constants = {i: v for i, v in values.items() if ctx.is_const(v)}
        live = [t for t in self.inputs if t.index not in constants]
        dynamic = {t.index for t in live if len(values[t.index].shape) >= 1
                   and values[t.index].shape[0] is None}
        data = write_region_model(self.graph, self.ops, live, self.outputs,
                                  constants=constants, dynamic_batch=dynamic,
                                  known_shapes={t.index: tuple(values[t.index].shape)
                                                for t in live})
        self.size_bytes = len(data)
        folded = not live
        if folded:
            outs = _run_once(data)
            results = [np.asarray(o) for o in outs]
        else:
            base = f"tflite_region_{self.index}"
            ctx.layer_names[base] += 1
            n = ctx.layer_names[base]
            self.layer_name = base if n == 1 else f"{base}_{n}"
            layer = TFLiteLayer(data, name=self.layer_name)
            feeds = []
            for t, spec in zip(live, layer._interface.inputs):
                feeds.append(_cast(ctx, values[t.index], spec.dtype, f"{self.layer_name}_in"))
            out = layer(feeds[0] if len(feeds) == 1 else feeds)
            out = [out] if len(self.outputs) == 1 else [out[s.name] for s in
                                                           layer._interface.outputs]
            results = [_cast(ctx, y, t.float_dtype, f"{self.layer_name}_out")
                       for t, y in zip(self.outputs, out)]
        for t, v in zip(self.outputs, results):
            ctx.values[t.index] = v
        if report is not None:
            for label in self.labels:
                if folded:
                    report.folded_ops.append(key_prefix + label)
                else:
                    report.layers[key_prefix + label] = [self.layer_name]
            report.wrapped_regions.append(self.report_entry())
        if self.custom_ops:
            ctx.note(f"Wrapped region {self.index} runs custom op(s) "
                     f"{', '.join(self.custom_ops)}: LiteRT can only run them if their kernels "
                     "are registered in the process that runs the model.")


def _cast(ctx, value, dtype: str, name: str):
    """``value`` as ``dtype`` (a registered KerasOp cast layer when it differs)."""
    from mlflow_tflite_keras.converter.layers import KerasOp

    if ctx.is_const(value):
        return np.asarray(value).astype(dtype)
    if str(value.dtype) == str(dtype):
        return value
    ctx.layer_names[name] += 1
    n = ctx.layer_names[name]
    return KerasOp("cast", fn_kwargs={"dtype": str(dtype)},
                   name=name if n == 1 else f"{name}_{n}")(value)


def _run_once(data: bytes) -> list[np.ndarray]:
    from mlflow_tflite_keras.runtime import TFLiteRunner
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    runner = TFLiteRunner(TFLiteModel(data))
    return list(runner.predict({}, dequantize=True).values())


# ---- selecting ops ----------------------------------------------------------------------------

def select_ops(graph: Graph, handlers, *, wrap_unsupported: bool, wrap_ops=()) -> dict[int, str]:
    """Op index (signature subgraph) -> why it is wrapped: ``"unsupported"`` (no handler, or a
    control-flow op reaching a subgraph with an op without handler) or ``"wrap_ops"``.

    ``wrap_ops`` entries: an op type (``"ADD"``), a custom code (``"MyOp"`` or
    ``"CUSTOM:MyOp"``), or one op by index (``12``, ``"12"`` or ``"12:ADD"``). An entry that
    matches no op is an error (a typo would otherwise silently wrap nothing)."""
    if isinstance(wrap_ops, (str, int)):
        wrap_ops = [wrap_ops]
    selected: dict[int, str] = {}
    if wrap_unsupported:
        for op in graph.ops:
            if not handles(handlers, op.type, op.is_custom):
                selected[op.index] = "unsupported"
                continue
            model = graph.model
            for sg in _called_by(model, [op]):
                if any(not handles(handlers, o.name, o.opcode == "CUSTOM")
                       for o in model.subgraphs[sg].operators):
                    selected[op.index] = "unsupported"
                    break
    unmatched = []
    for entry in wrap_ops or ():
        key = str(entry).strip()
        hits = [op for op in graph.ops if key in (
            op.type, f"CUSTOM:{op.type}", str(op.index), f"{op.index}:{op.type}")]
        if not hits:
            unmatched.append(key)
        for op in hits:
            selected.setdefault(op.index, "wrap_ops")
    if unmatched:
        present = sorted({op.type for op in graph.ops})
        raise _error(f"wrap_ops names {unmatched}, which match no operator of the model "
                     f"(its operators: {', '.join(present)}; an index '12' or '12:ADD' also "
                     "works).")
    return selected


# ---- grouping into convex regions -------------------------------------------------------------

def _preds(graph: Graph, op: Op) -> list[Op]:
    return [graph.producers[t.index] for t in op.inputs
            if t is not None and t.index in graph.producers]


def _succs(graph: Graph, op: Op) -> list[Op]:
    return [c for t in op.outputs for c in graph.consumers.get(t.index, [])]


def _components(graph: Graph, members: set[int]) -> list[list[int]]:
    """Connected components of ``members`` through tensors produced and consumed inside."""
    seen, comps = set(), []
    for start in sorted(members):
        if start in seen:
            continue
        comp, todo = [], [start]
        seen.add(start)
        while todo:
            i = todo.pop()
            comp.append(i)
            op = graph.ops[i]
            for other in _preds(graph, op) + _succs(graph, op):
                if other.index in members and other.index not in seen:
                    seen.add(other.index)
                    todo.append(other.index)
        comps.append(sorted(comp))
    return comps


def _split_convex(graph: Graph, comp: list[int]) -> list[list[int]]:
    """Split a component into convex groups (see the module docstring). TFLite stores ops in
    execution order, so one pass in index order is a topological pass."""
    inside = set(comp)
    stage: dict[int, int] = {}  # ops inside: stage; ops outside: stage of the latest reaching
    for op in graph.ops[comp[0]:]:
        best = None
        for p in _preds(graph, op):
            if p.index not in stage:
                continue
            s = stage[p.index] + (1 if (op.index in inside) != (p.index in inside)
                                  and op.index in inside else 0)
            best = s if best is None else max(best, s)
        if op.index in inside:
            stage[op.index] = best or 0
        elif best is not None:
            stage[op.index] = best
    groups = []
    for s in sorted({stage[i] for i in comp}):
        groups += _components(graph, {i for i in comp if stage[i] == s})
    return groups


def plan_regions(graph: Graph, selected: dict[int, str]) -> list[Region]:
    """Convex regions covering the ``selected`` ops, with their boundary tensors."""
    groups = []
    for comp in _components(graph, set(selected)):
        groups += _split_convex(graph, comp)
    groups.sort(key=lambda g: g[0])
    graph_outputs = {t.index for t in graph.outputs}
    regions = []
    for k, group in enumerate(groups):
        ops = [graph.ops[i] for i in group]
        members = set(group)
        produced = {t.index for op in ops for t in op.outputs}
        inputs, seen = [], set()
        for op in ops:
            for t in op.inputs:
                if t is None or t.index in produced or t.index in seen or _travels_inside(t):
                    continue
                seen.add(t.index)
                inputs.append(t)
        outputs = [t for op in ops for t in op.outputs
                   if t.index in graph_outputs or any(
                       c.index not in members for c in graph.consumers.get(t.index, []))]
        labels = ", ".join(f"{op.index}:{op.type}" for op in ops)
        crossing = [t.name for t in inputs + outputs if t.type_name in _UNCROSSABLE]
        if crossing:
            raise _error(f"Cannot wrap ops [{labels}] as a TFLiteLayer: tensors "
                         f"{crossing} ({'/'.join(_UNCROSSABLE).lower()}) would cross the "
                         "region boundary. Wrap the ops that create and use them together "
                         "(add them to wrap_ops).")
        regions.append(Region(k, graph, ops, inputs, outputs,
                              {i: selected[i] for i in group}))
    return regions


def _travels_inside(t: Tensor) -> bool:
    return t.is_constant or t.is_variable


def schedule(graph: Graph, regions: list[Region]) -> list:
    """Ops and regions in a dependency order: each region as one step, placed when its last
    input is available; otherwise the original op order."""
    owner = {op.index: r for r in regions for op in r.ops}
    nodes = [op for op in graph.ops if op.index not in owner] + regions
    key = {id(n): (n.ops[0].index if isinstance(n, Region) else n.index) for n in nodes}

    def node_of(op):
        return owner.get(op.index, op)

    deps: dict[int, set[int]] = {id(n): set() for n in nodes}
    users: dict[int, list] = {id(n): [] for n in nodes}
    for n in nodes:
        for op in (n.ops if isinstance(n, Region) else [n]):
            for p in _preds(graph, op):
                pn = node_of(p)
                if pn is not n and id(pn) not in deps[id(n)]:
                    deps[id(n)].add(id(pn))
                    users[id(pn)].append(n)
    heap = [(key[id(n)], i, n) for i, n in enumerate(nodes) if not deps[id(n)]]
    order = {id(n): i for i, n in enumerate(nodes)}
    heapq.heapify(heap)
    steps = []
    while heap:
        _, _, n = heapq.heappop(heap)
        steps.append(n)
        for u in users[id(n)]:
            deps[id(u)].discard(id(n))
            if not deps[id(u)]:
                heapq.heappush(heap, (key[id(u)], order[id(u)], u))
    if len(steps) != len(nodes):  # cannot happen for convex regions; never build wrongly
        raise _error("Wrapped regions form a cycle with the other ops; cannot order them.")
    return steps


# ---- writing a standalone model ---------------------------------------------------------------

def _called_by(model, ops) -> list[int]:
    """Subgraph indices the given ops call, transitively, in discovery order."""
    return reachable_subgraphs(model, [r for op in ops for r in op.called_subgraphs])


def _remap_subgraph_refs(raw_op, mapping: dict[int, int]):
    for attr in ("builtinOptions", "builtinOptions2"):
        options = getattr(raw_op, attr, None)
        if options is None:
            continue
        names = [n for n in vars(options) if "ubgraph" in n]
        if not names:
            continue
        options = copy.copy(options)
        for n in names:
            value = getattr(options, n)
            if value is None:
                continue
            if isinstance(value, (int, np.integer)):
                setattr(options, n, mapping[int(value)])
            else:
                setattr(options, n, [mapping[int(v)] for v in value])
        setattr(raw_op, attr, options)


class _Writer:
    def __init__(self, graph: Graph):
        from ai_edge_litert import schema_py_generated as schema

        self.schema = schema
        self.model = graph.model
        self.source = graph.model._model  # schema.ModelT of the whole file
        self.buffers = [schema.BufferT()]  # buffer 0: the schema's empty buffer
        self.buffer_map: dict[int, int] = {}
        self.opcodes = []
        self.opcode_map: dict[int, int] = {}
        self.subgraph_map: dict[int, int] = {}

    def buffer(self, old: int, data: bytes | None = None) -> int:
        if data is not None:  # a value baked in at build time
            self.buffers.append(self.schema.BufferT())
            self.buffers[-1].data = np.frombuffer(data, dtype=np.uint8).copy()
            return len(self.buffers) - 1
        if old <= 0:
            return 0
        if old not in self.buffer_map:
            b = self.schema.BufferT()
            raw = self.model._raw_buffer(old)
            if raw is None:  # an activation's empty buffer: buffer 0 does the same
                return 0
            b.data = np.frombuffer(raw, dtype=np.uint8).copy()
            self.buffers.append(b)
            self.buffer_map[old] = len(self.buffers) - 1
        return self.buffer_map[old]

    def opcode(self, old: int) -> int:
        if old not in self.opcode_map:
            self.opcodes.append(copy.copy(self.source.operatorCodes[old]))
            self.opcode_map[old] = len(self.opcodes) - 1
        return self.opcode_map[old]

    def tensor(self, sg: int, old: int, *, data: bytes | None = None,
               batch: bool = False, as_input: bool = False, known=None):
        t = copy.copy(self.source.subgraphs[sg].tensors[old])
        t.buffer = self.buffer(int(t.buffer), data) if data is not None else \
            (0 if as_input else self.buffer(int(t.buffer)))
        t.externalBuffer = 0
        shape = [int(d) for d in (t.shape if t.shape is not None else [])]
        sig = [int(d) for d in t.shapeSignature] if t.shapeSignature is not None and \
            len(t.shapeSignature) else list(shape)
        if batch and sig:
            sig[0] = -1
        if known is not None and len(known) == len(shape):
            shape = [int(k) if k is not None and s == -1 else d
                     for d, s, k in zip(shape, sig, known)]
            t.shape = shape
        if data is not None:
            sig = list(shape)
            t.isVariable = False
            t.sparsity = None
        t.shapeSignature = sig if sig != shape else None
        return t

    def operator(self, raw):
        o = copy.copy(raw)
        o.opcodeIndex = self.opcode(int(raw.opcodeIndex))
        o.debugMetadataIndex = -1
        _remap_subgraph_refs(o, self.subgraph_map)
        return o

    def whole_subgraph(self, sg: int):
        src = self.source.subgraphs[sg]
        out = copy.copy(src)
        out.tensors = [self.tensor(sg, i) for i in range(len(src.tensors or []))]
        out.operators = [self.operator(o) for o in (src.operators or [])]
        out.debugMetadataIndex = -1
        return out


def write_region_model(graph: Graph, ops: list[Op], inputs: list[Tensor], outputs: list[Tensor],
                       *, constants: dict[int, np.ndarray] | None = None,
                       dynamic_batch=frozenset(), known_shapes: dict | None = None,
                       description: str | None = None) -> bytes:
    """A standalone ``.tflite`` running ``ops`` (of ``graph``) from ``inputs`` to ``outputs``.

    Copies the ops, their tensors (quantization, shape signatures, sparsity), constant buffers,
    the operator codes they use (renumbered), every subgraph they call (renumbered), and writes
    a ``serving_default`` SignatureDef named after the (sanitized) tensor names.
    ``constants``: tensor index -> value (float domain) of inputs known at build time, written
    as constant buffers (quantized with the tensor's parameters when it is quantized).
    ``dynamic_batch``: indices of inputs whose dimension 0 is the dynamic Keras batch; their
    shape signature gets -1 there, as do outputs with a batch-1 leading dimension.
    ``known_shapes``: tensor index -> the Keras value's static shape (None: unknown) of inputs;
    it replaces placeholder static dimensions the file has where its signature says -1 (a
    tensor reshaped at run time is stored as ``[1, 1]``), so the model allocates as written.
    """
    import flatbuffers

    constants = constants or {}
    w = _Writer(graph)
    schema = w.schema
    sg_index = graph.subgraph_index
    src_ops = w.source.subgraphs[sg_index].operators
    # Called subgraphs first get their new numbers (the region itself is subgraph 0).
    called = _called_by(graph.model, ops)
    w.subgraph_map = {old: new for new, old in enumerate(called, start=1)}

    tensor_map: dict[int, int] = {}
    tensors = []
    input_set = {t.index for t in inputs}
    output_set = {t.index for t in outputs}
    any_dynamic = bool(dynamic_batch) or any(
        graph.tensors[i].shape_signature[:1] == (-1,) for i in input_set)

    def new_tensor(i: int) -> int:
        if i < 0:
            return -1
        if i not in tensor_map:
            t = graph.tensors[i]
            data = None
            if i in constants:
                data = _encode(t, constants[i]).tobytes()
            batch = (i in dynamic_batch) or (i in output_set and any_dynamic and t.rank >= 2
                                              and t.shape[0] == 1)
            tensors.append(w.tensor(sg_index, i, data=data, batch=batch,
                                    as_input=i in input_set,
                                    known=(known_shapes or {}).get(i)))
            tensor_map[i] = len(tensors) - 1
            _renumber_quantization_tensors(tensors[-1], new_tensor)
        return tensor_map[i]

    for t in inputs:
        new_tensor(t.index)
    operators = []
    for op in ops:
        raw = src_ops[op.index]
        o = w.operator(raw)
        o.inputs = [new_tensor(int(i)) for i in (raw.inputs if raw.inputs is not None else [])]
        o.outputs = [new_tensor(int(i)) for i in (raw.outputs if raw.outputs is not None else [])]
        if raw.intermediates is not None and len(raw.intermediates):
            o.intermediates = [new_tensor(int(i)) for i in raw.intermediates]
        if raw.mutatingVariableInputs is not None and len(raw.mutatingVariableInputs):
            o.mutatingVariableInputs = list(raw.mutatingVariableInputs)
        operators.append(o)

    main = schema.SubGraphT()
    main.tensors = tensors
    main.operators = operators
    main.inputs = [tensor_map[t.index] for t in inputs]
    main.outputs = [tensor_map[t.index] for t in outputs]
    main.name = "region"
    main.debugMetadataIndex = -1

    names, used = {}, set()
    for t in inputs + outputs:
        name = base = keras_name(t.name)
        n = 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names[t.index] = name
    sig = schema.SignatureDefT()
    sig.signatureKey = "serving_default"
    sig.subgraphIndex = 0
    sig.inputs, sig.outputs = [], []
    for t, target in [(t, sig.inputs) for t in inputs] + [(t, sig.outputs) for t in outputs]:
        m = schema.TensorMapT()
        m.name = names[t.index]
        m.tensorIndex = tensor_map[t.index]
        target.append(m)

    model = schema.ModelT()
    model.version = 3
    model.description = description or "mlflow_tflite_keras wrapped region"
    model.subgraphs = [main] + [w.whole_subgraph(old) for old in called]
    model.operatorCodes = w.opcodes
    model.buffers = w.buffers
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _renumber_quantization_tensors(tensor, new_tensor):
    """Blockwise quantization names its scales / zero points by tensor index: copy those
    tensors too and point at their new numbers (on a copy: the source model is shared)."""
    q = tensor.quantization
    details = getattr(q, "details", None)
    if not hasattr(details, "scales"):
        return
    q, details = copy.copy(q), copy.copy(details)
    details.scales = new_tensor(int(details.scales))
    if int(details.zeroPoints) >= 0:
        details.zeroPoints = new_tensor(int(details.zeroPoints))
    q.details = details
    tensor.quantization = q


def _encode(t: Tensor, value) -> np.ndarray:
    """A float-domain build-time value in the tensor's storage type (packed for INT4...)."""
    from mlflow_tflite_keras.tflite_model import NUMPY_DTYPES, PACKED_BITS, pack_integers

    dtype = np.dtype(NUMPY_DTYPES.get(t.type_name) or np.float32)
    value = np.asarray(value)
    if t.quantization is not None and np.issubdtype(dtype, np.integer) and \
            np.issubdtype(value.dtype, np.floating):
        value = t.quantization.quantize(value, t.type_name)
    value = np.ascontiguousarray(value.astype(dtype).reshape(t.shape))
    if t.type_name in PACKED_BITS:
        return np.frombuffer(pack_integers(value, t.type_name), dtype=np.uint8)
    return value
