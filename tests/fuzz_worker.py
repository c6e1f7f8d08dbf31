"""Fuzzing the ``.tflite`` loader: mutators, a crash-isolating worker, and the driver.

Three parts, used by ``tests/test_fuzz.py`` and ``benchmarks/fuzz_loader.py``:

* **Mutators** (:func:`make_mutants`): deterministic for a seed. Byte level: truncation,
  byte flips (half of them on structural bytes), bad offsets (uoffset / soffset / vtable
  entries overwritten with large, negative or misaligned values), huge vector lengths
  (2^31-1, ...), wrong file identifiers, appended garbage. Semantic level (unpack with the
  schema's object API, change one field, repack): tensor shapes and types, buffer, tensor and
  opcode indices, operator arity, subgraph indices in WHILE / IF / CALL_ONCE options, option
  unions swapped for tables naming subgraphs in either union (with decoys),
  signature indices, quantization parameters. The structural byte positions are found by
  recording where the flatbuffer reader reads offsets, vtable entries and lengths while it
  parses the valid file.
* **Worker** (``python tests/fuzz_worker.py MUTANT_DIR OUT.jsonl``): feeds each mutant to
  ``TFLiteModel(bytes)``, ``flavor.save_model``, ``flavor.load_model`` of a saved model whose
  ``model.tflite`` was replaced (and its parsed ``model``), the pyfunc (load + predict), the CLI ``inspect`` and
  ``converter.to_keras``, and writes one JSON line per mutant (plus a ``start`` line before
  it, so the driver knows which mutant a crash belongs to).
* **Driver** (:func:`run_campaign`): runs the worker in a subprocess with a per-mutant
  timeout; when the worker dies (segfault, abort, OOM) or hangs, the mutant is recorded as a
  crash / hang, saved under ``test-artifacts/fuzz-crashes/`` and the worker restarted on the
  remaining mutants.

Reproduce one saved mutant: ``python tests/fuzz_worker.py --one test-artifacts/fuzz-crashes/X``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRASH_DIR = ROOT / "test-artifacts" / "fuzz-crashes"
TARGETS = ("parse", "save", "load", "pyfunc", "cli", "to_keras")


# ---- structural positions ------------------------------------------------------------------


def structural_positions(data: bytes) -> dict[str, list[int]]:
    """Byte positions of the flatbuffer's uoffsets, soffsets (table -> vtable), vtable entries
    and vector/string lengths, recorded while the schema's reader parses ``data``."""
    import flatbuffers.table as fbt

    from ai_edge_litert import schema_py_generated as schema

    found = {"uoffset": set(), "soffset": set(), "voffset": set(), "length": set()}
    u32 = lambda buf, off: struct.unpack_from("<I", buf, off)[0]  # noqa: E731
    originals = {name: getattr(fbt.Table, name) for name in
                 ("Offset", "Indirect", "String", "VectorLen", "Vector", "Union")}

    def offset(self, vtable_offset):
        found["soffset"].add(self.Pos)
        vtable = self.Pos - struct.unpack_from("<i", self.Bytes, self.Pos)[0]
        if vtable_offset < struct.unpack_from("<H", self.Bytes, vtable)[0]:
            found["voffset"].add(vtable + vtable_offset)
        return originals["Offset"](self, vtable_offset)

    def indirect(self, off):
        found["uoffset"].add(off)
        return originals["Indirect"](self, off)

    def string(self, off):
        found["uoffset"].add(off)
        found["length"].add(off + u32(self.Bytes, off))
        return originals["String"](self, off)

    def vector_len(self, off):
        found["uoffset"].add(self.Pos + off)
        found["length"].add(self.Pos + off + u32(self.Bytes, self.Pos + off))
        return originals["VectorLen"](self, off)

    def vector(self, off):
        found["uoffset"].add(self.Pos + off)
        return originals["Vector"](self, off)

    def union(self, t2, off):
        found["uoffset"].add(self.Pos + off)
        return originals["Union"](self, t2, off)

    patched = {"Offset": offset, "Indirect": indirect, "String": string,
               "VectorLen": vector_len, "Vector": vector, "Union": union}
    try:
        for name, fn in patched.items():
            setattr(fbt.Table, name, fn)
        schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    finally:
        for name, fn in originals.items():
            setattr(fbt.Table, name, fn)
    found["uoffset"].add(0)  # the root offset
    return {k: sorted(v) for k, v in found.items()}


# ---- mutators --------------------------------------------------------------------------------

LARGE_U32 = [0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0xFFFFFFFC, 0x10000000, 0x7FFFFFF0]
NEGATIVE_I32 = [-1, -4, -8, -0x7FFFFFFF, -0x80000000]


def _put_u32(buf: bytearray, pos: int, value: int):
    if 0 <= pos <= len(buf) - 4:
        struct.pack_into("<I", buf, pos, value & 0xFFFFFFFF)


def _put_u16(buf: bytearray, pos: int, value: int):
    if 0 <= pos <= len(buf) - 2:
        struct.pack_into("<H", buf, pos, value & 0xFFFF)


def mutate_truncate(data, rng, pos):
    n = len(data)
    cut = rng.choice([rng.randrange(0, min(n, 64)), rng.randrange(0, n), n - rng.randrange(1, 9),
                      rng.randrange(n // 2, n)])
    return data[:cut], f"truncate at {cut}/{n}"


def mutate_byteflip(data, rng, pos):
    buf = bytearray(data)
    structural = [p for kind in ("uoffset", "soffset", "voffset", "length") for p in pos[kind]]
    count = rng.choice([1, 1, 2, 4, 8, 32])
    where = []
    for _ in range(count):
        p = (rng.choice(structural) + rng.randrange(4)) if structural and rng.random() < 0.5 \
            else rng.randrange(len(buf))
        p = min(p, len(buf) - 1)
        buf[p] ^= rng.choice([0x01, 0x80, 0xFF, rng.randrange(1, 256)])
        where.append(p)
    return bytes(buf), f"flip {count} byte(s) at {where[:4]}"


def mutate_offset(data, rng, pos):
    buf = bytearray(data)
    n = len(buf)
    kind = rng.choice(["uoffset", "uoffset", "soffset", "voffset"])
    p = rng.choice(pos[kind])
    if kind == "voffset":
        value = rng.choice([0xFFFF, 0x8000, 0xFFFC, 1, 3, rng.randrange(0x10000)])
        _put_u16(buf, p, value)
    else:
        value = rng.choice(LARGE_U32 + NEGATIVE_I32 + [n, n - 2, n + 4, 1, 2, 3,
                                                       -p, rng.randrange(-n, n)])
        _put_u32(buf, p, value)
    return bytes(buf), f"{kind} at {p} := {value}"


def mutate_length(data, rng, pos):
    buf = bytearray(data)
    p = rng.choice(pos["length"])
    value = rng.choice([0x7FFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x40000000, len(buf), len(buf) // 3,
                        len(buf) // 4 + 1])
    _put_u32(buf, p, value)
    return bytes(buf), f"length at {p} := {value}"


def mutate_identifier(data, rng, pos):
    ident = rng.choice([b"TFL2", b"tfl3", b"\0\0\0\0", b"TFL", bytes(rng.randrange(256)
                                                                      for _ in range(4))])
    buf = data[:4] + ident + data[8:] if len(ident) == 4 else data[:4] + ident
    return bytes(buf), f"identifier {ident!r}"


def mutate_append(data, rng, pos):
    size = rng.choice([1, 3, 16, 1024, 65536])
    garbage = rng.choice([bytes(rng.randrange(256) for _ in range(min(size, 4096))) * (
        max(1, size // 4096)), b"\xff" * size, b"TFL3" * (size // 4 + 1), data[:size]])
    return data + garbage, f"append {len(garbage)} byte(s)"


# Semantic mutations: the file stays a well-formed flatbuffer, one field becomes nonsense.

def _repack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _unpack(data):
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


def _random_tensor(model, rng):
    sg = rng.choice(model.subgraphs)
    return sg, rng.randrange(len(sg.tensors)), sg.tensors


def _bad_index(rng, n):
    return rng.choice([-1, -2, n, n + 1, 2 ** 31 - 1, -(2 ** 31), 1000])


def mutate_semantic(data, rng, pos):  # noqa: C901 (a menu of mutations)
    import numpy as np

    from ai_edge_litert import schema_py_generated as schema

    model = _unpack(data)
    choices = ["shape", "shape", "shape_signature", "type", "buffer", "op_input", "op_input",
               "op_output", "arity", "arity", "opcode", "sg_io", "signature", "quant",
               "buffer_data", "options", "options", "builtin_code", "subgraph_drop"]
    what = rng.choice(choices)
    sg = rng.choice(model.subgraphs)
    ops = sg.operators or []
    n_tensors = len(sg.tensors or [])
    note = what
    if what in ("shape", "shape_signature") and n_tensors:
        t = rng.choice(sg.tensors)
        attr = "shape" if what == "shape" else "shapeSignature"
        shape = list(getattr(t, attr) if getattr(t, attr) is not None else [])
        action = rng.choice(["huge", "negative", "zero", "drop", "add", "empty"])
        if action == "huge" and shape:
            shape[rng.randrange(len(shape))] = rng.choice([2 ** 31 - 1, 2 ** 20, 65536 * 4])
        elif action == "negative" and shape:
            shape[rng.randrange(len(shape))] = rng.choice([-1, -7, -(2 ** 31)])
        elif action == "zero" and shape:
            shape[rng.randrange(len(shape))] = 0
        elif action == "drop" and shape:
            shape.pop()
        elif action == "add":
            shape.append(rng.choice([1, 3, 1000]))
        else:
            shape = []
        setattr(t, attr, np.asarray(shape, dtype=np.int32))
        note = f"{what} {action} -> {shape[:6]}"
    elif what == "type" and n_tensors:
        t = rng.choice(sg.tensors)
        t.type = rng.choice([0, 1, 2, 3, 4, 5, 7, 9, 10, 13, 17, 18, 20, 99, -1, 127])
        note = f"tensor type -> {t.type}"
    elif what == "buffer" and n_tensors:
        t = rng.choice(sg.tensors)
        t.buffer = rng.choice([_bad_index(rng, len(model.buffers or [])),
                               rng.randrange(len(model.buffers or [1]))])
        note = f"tensor buffer -> {t.buffer}"
    elif what in ("op_input", "op_output") and ops:
        op = rng.choice(ops)
        attr = "inputs" if what == "op_input" else "outputs"
        values = list(getattr(op, attr) if getattr(op, attr) is not None else [])
        if values:
            k = rng.randrange(len(values))
            values[k] = rng.choice([_bad_index(rng, n_tensors), rng.randrange(n_tensors), -1])
        setattr(op, attr, np.asarray(values, dtype=np.int32))
        note = f"{attr} -> {values[:6]}"
    elif what == "arity" and ops:
        op = rng.choice(ops)
        attr = rng.choice(["inputs", "outputs"])
        values = list(getattr(op, attr) if getattr(op, attr) is not None else [])
        action = rng.choice(["drop", "drop_all", "add", "dup"])
        if action == "drop" and values:
            values.pop(rng.randrange(len(values)))
        elif action == "drop_all":
            values = []
        elif action == "add":
            values.append(rng.randrange(n_tensors))
        elif values:
            values = values + values
        setattr(op, attr, np.asarray(values, dtype=np.int32))
        note = f"arity {attr} {action} -> {values[:6]}"
    elif what == "opcode" and ops:
        op = rng.choice(ops)
        op.opcodeIndex = rng.choice([_bad_index(rng, len(model.operatorCodes)),
                                     rng.randrange(len(model.operatorCodes))])
        note = f"opcodeIndex -> {op.opcodeIndex}"
    elif what == "builtin_code" and model.operatorCodes:
        code = rng.choice(model.operatorCodes)
        code.builtinCode = rng.choice([rng.randrange(0, 210), 32, 999, -5])
        code.deprecatedBuiltinCode = min(code.builtinCode, 127) if code.builtinCode >= 0 else 0
        note = f"builtin code -> {code.builtinCode}"
    elif what == "sg_io":
        attr = rng.choice(["inputs", "outputs"])
        values = list(getattr(sg, attr) if getattr(sg, attr) is not None else [])
        if values and rng.random() < 0.6:
            values[rng.randrange(len(values))] = _bad_index(rng, n_tensors)
        else:
            values = [] if rng.random() < 0.5 else values + [rng.randrange(max(n_tensors, 1))]
        setattr(sg, attr, np.asarray(values, dtype=np.int32))
        note = f"subgraph {attr} -> {values[:6]}"
    elif what == "signature" and model.signatureDefs:
        sig = rng.choice(model.signatureDefs)
        if rng.random() < 0.5 or not (sig.inputs or sig.outputs):
            sig.subgraphIndex = _bad_index(rng, len(model.subgraphs))
            note = f"signature subgraph -> {sig.subgraphIndex}"
        else:
            tm = rng.choice((sig.inputs or []) + (sig.outputs or []))
            tm.tensorIndex = rng.choice([_bad_index(rng, n_tensors) & 0xFFFFFFFF,
                                         rng.randrange(n_tensors)])
            note = f"signature tensor -> {tm.tensorIndex}"
    elif what == "quant" and n_tensors:
        quantized = [t for t in sg.tensors if t.quantization is not None and
                     t.quantization.scale is not None and len(t.quantization.scale)]
        if quantized:
            q = rng.choice(quantized).quantization
            action = rng.choice(["dim", "scales", "zero", "nan"])
            if action == "dim":
                q.quantizedDimension = rng.choice([-1, 7, 1000])
            elif action == "scales":
                q.scale = np.asarray(list(q.scale) * 3, dtype=np.float32)
            elif action == "zero":
                q.scale = np.zeros(len(q.scale), dtype=np.float32)
            else:
                q.scale = np.full(len(q.scale), np.nan, dtype=np.float32)
            note = f"quantization {action}"
    elif what == "buffer_data" and model.buffers:
        with_data = [b for b in model.buffers if b.data is not None and len(b.data)]
        if with_data:
            b = rng.choice(with_data)
            cut = rng.choice([0, 1, len(b.data) // 2, len(b.data) + 4])
            b.data = np.resize(np.asarray(b.data, dtype=np.uint8), cut)
            note = f"buffer data {len(b.data)} bytes"
    elif what == "options":
        candidates = [op for g in model.subgraphs for op in (g.operators or [])
                      if op.builtinOptions is not None]
        control = [op for op in candidates if isinstance(op.builtinOptions, (
            schema.WhileOptionsT, schema.IfOptionsT, schema.CallOnceOptionsT))]
        op = rng.choice(control or candidates) if (control or candidates) else None
        if op is not None:
            opts = op.builtinOptions
            fields = [k for k, v in vars(opts).items() if isinstance(v, (int, np.integer))
                      and not isinstance(v, bool)]
            if fields:
                k = rng.choice(fields)
                setattr(opts, k, _bad_index(rng, len(model.subgraphs)) if "ubgraph" in k
                        else rng.choice([-1, 0, 7, 1000, 2 ** 31 - 1]))
                note = f"{type(opts).__name__}.{k} -> {getattr(opts, k)}"
            if rng.random() < 0.3:
                op.builtinOptionsType = rng.randrange(1, 130)
                note += f", options type -> {op.builtinOptionsType}"
    elif what == "subgraph_drop" and len(model.subgraphs) > 1:
        model.subgraphs.pop(rng.randrange(1, len(model.subgraphs)))
        note = "dropped a subgraph"
    return _repack(model), f"semantic: {note}"


# Options tables that name subgraphs, by union: (union attribute, table, subgraph fields).
_SUBGRAPH_TABLES = [
    ("builtinOptions", "WhileOptions", ("condSubgraphIndex", "bodySubgraphIndex")),
    ("builtinOptions", "IfOptions", ("thenSubgraphIndex", "elseSubgraphIndex")),
    ("builtinOptions", "CallOnceOptions", ("initSubgraphIndex",)),
    ("builtinOptions2", "StableHLOCompositeOptions", ("decompositionSubgraphIndex",)),
    ("builtinOptions2", "StablehloWhileOptions", ("condSubgraphIndex", "bodySubgraphIndex")),
    ("builtinOptions2", "StablehloCaseOptions", ("branchSubgraphIndices",)),
    ("builtinOptions2", "StablehloReduceOptions", ("bodySubgraphIndex",)),
    ("builtinOptions2", "StablehloSortOptions", ("comparatorSubgraphIndex",)),
]
_DECOYS = ["ReducerOptions", "AddOptions", "SoftmaxOptions", "ReshapeOptions", "WhileOptions"]


def mutate_option_union(data, rng, pos):
    """Swap an operator's options unions: a table naming subgraphs (in range, out of range,
    the op's own subgraph: a cycle) in either union, often with an unrelated table as a decoy
    in the other union, and sometimes the op's opcode turned into the table's owner."""
    import numpy as np

    from ai_edge_litert import schema_py_generated as schema

    model = _unpack(data)
    s_index = rng.randrange(len(model.subgraphs))
    ops = model.subgraphs[s_index].operators or []
    if not ops:
        return _repack(model), "option union: no operator"
    op = rng.choice(ops)
    union, table_name, fields = rng.choice(_SUBGRAPH_TABLES)
    table = getattr(schema, table_name + "T")()
    n = len(model.subgraphs)
    for f in fields:
        value = rng.choice([s_index, s_index, 0, n - 1, n, -1, 2 ** 31 - 1])
        setattr(table, f, np.asarray([value, 0], np.int32) if f.endswith("Indices") else value)
    union_enum = schema.BuiltinOptions if union == "builtinOptions" else schema.BuiltinOptions2
    setattr(op, union, table)
    setattr(op, union + "Type", getattr(union_enum, table_name))
    note = f"{union} := {table_name}{[getattr(table, f) for f in fields]}"
    other = "builtinOptions2" if union == "builtinOptions" else "builtinOptions"
    if rng.random() < 0.6 and other == "builtinOptions":
        decoy = rng.choice(_DECOYS)
        op.builtinOptions = getattr(schema, decoy + "T")()
        op.builtinOptionsType = getattr(schema.BuiltinOptions, decoy)
        note += f", decoy builtinOptions {decoy}"
    if rng.random() < 0.5:  # make the op the table's own, so the interpreter reads it
        owner = {"StableHLOCompositeOptions": "STABLEHLO_COMPOSITE", "IfOptions": "IF",
                 "CallOnceOptions": "CALL_ONCE"}.get(table_name)
        owner = owner or table_name.replace("Options", "").replace("Stablehlo", "STABLEHLO_")
        code = getattr(schema.BuiltinOperator, owner.upper(), None)
        if code is not None:
            opcode = schema.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode = code, min(code, 127)
            opcode.version = 1
            model.operatorCodes.append(opcode)
            op.opcodeIndex = len(model.operatorCodes) - 1
            note += f", opcode {owner.upper()}"
    return _repack(model), f"option union: {note}"


MUTATORS = {
    "truncate": mutate_truncate, "byteflip": mutate_byteflip, "offset": mutate_offset,
    "length": mutate_length, "identifier": mutate_identifier, "append": mutate_append,
    "semantic": mutate_semantic, "option_union": mutate_option_union,
}
# How often each mutator is picked (per base model).
WEIGHTS = {"truncate": 2, "byteflip": 3, "offset": 3, "length": 2, "identifier": 1,
           "append": 1, "semantic": 5, "option_union": 2}


@dataclass
class Mutant:
    name: str
    base: str
    kind: str
    note: str
    data: bytes = field(repr=False)


def make_mutants(bases: dict[str, bytes], count: int, seed: int = 0,
                 weights: dict[str, int] | None = None) -> list[Mutant]:
    """``count`` mutants spread over ``bases`` (name -> bytes), deterministic for ``seed``."""
    rng = random.Random(seed)
    positions = {name: structural_positions(data) for name, data in bases.items()}
    kinds = [k for k, w in (weights or WEIGHTS).items() for _ in range(w)]
    names = sorted(bases)
    mutants = []
    for i in range(count):
        base = names[i % len(names)]
        kind = rng.choice(kinds)
        sub = random.Random(rng.getrandbits(64))
        for _attempt in range(10):
            try:
                data, note = MUTATORS[kind](bases[base], sub, positions[base])
                break
            except Exception:  # a semantic value the schema cannot pack (int8 field): retry
                continue
        else:
            data, note, kind = bases[base][:sub.randrange(len(bases[base]))], "fallback", "truncate"
        mutants.append(Mutant(f"{i:05d}-{base}-{kind}", base, kind, note, data))
    return mutants


def write_mutants(mutants: list[Mutant], bases: dict[str, bytes], directory: Path):
    """Lay out a worker's input: ``bases/<base>.tflite``, ``<name>.tflite`` + ``index.json``."""
    (directory / "bases").mkdir(parents=True, exist_ok=True)
    for name, data in bases.items():
        (directory / "bases" / f"{name}.tflite").write_bytes(data)
    index = []
    for m in mutants:
        (directory / f"{m.name}.tflite").write_bytes(m.data)
        index.append({"name": m.name, "base": m.base, "kind": m.kind, "note": m.note})
    (directory / "index.json").write_text(json.dumps(index))


# ---- worker ----------------------------------------------------------------------------------


class Worker:
    """Runs the targets on one mutant at a time, in this (disposable) process."""

    def __init__(self, directory: Path, targets=TARGETS):
        import numpy as np

        from mlflow_tflite_keras import flavor
        from mlflow_tflite_keras.runtime import TFLiteRunner
        from mlflow_tflite_keras.tflite_model import TFLiteModel

        self.np = np
        self.targets = targets
        self.scratch = Path(tempfile.mkdtemp(prefix="fuzz-worker-"))
        self.saved = {}  # base -> a saved model dir whose model.tflite gets replaced
        self.feeds = {}
        for path in sorted((directory / "bases").glob("*.tflite")):
            base = path.stem
            data = path.read_bytes()
            target = self.scratch / f"saved-{base}"
            flavor.save_model(data, target)
            self.saved[base] = target
            spec = TFLiteRunner(TFLiteModel(data)).signature()
            rng = np.random.default_rng(0)
            feeds = {}
            for s in spec.inputs:
                shape = [2 if (spec.batched and i == 0) else (1 if d == -1 else d)
                         for i, d in enumerate(s.shape_signature)]
                feeds[s.name] = rng.uniform(0, 1, shape).astype(s.logical_dtype)
            self.feeds[base] = feeds if len(feeds) > 1 else next(iter(feeds.values()))

    def close(self):
        shutil.rmtree(self.scratch, ignore_errors=True)

    def run(self, path: Path, base: str) -> dict:
        data = path.read_bytes()
        outcomes = {}
        for target in self.targets:
            start = time.perf_counter()
            try:
                detail = getattr(self, f"_{target}")(path, data, base)
                outcome = {"outcome": "ok"}
                if detail:
                    outcome["detail"] = detail
                    if detail.get("exit_code") == 2:  # the CLI refused it cleanly
                        outcome.update(outcome="rejected", message=detail["error"])
            except Exception as e:  # classified; anything unexpected is "bad"
                outcome = self._classify(target, e)
            outcome["seconds"] = round(time.perf_counter() - start, 4)
            outcomes[target] = outcome
        return outcomes

    @staticmethod
    def _classify(target, e) -> dict:
        from mlflow.exceptions import MlflowException

        if isinstance(e, _Violation):
            return {"outcome": "bad", "error": str(e)}
        if isinstance(e, MlflowException):
            return {"outcome": "rejected", "error": type(e).__name__,
                    "message": e.message[:300]}
        return {"outcome": "bad", "error": type(e).__name__, "message": str(e)[:300],
                "traceback": traceback.format_exc()[-2000:]}

    # ---- targets ----

    def _parse(self, path, data, base):
        from mlflow_tflite_keras.tflite_model import TFLiteModel

        model = TFLiteModel(data)
        model.describe()

    def _save(self, path, data, base):
        from mlflow_tflite_keras import flavor

        target = self.scratch / "save-target"
        shutil.rmtree(target, ignore_errors=True)
        try:
            flavor.save_model(data, target)
        except BaseException:
            if target.exists():
                raise _Violation("save_model failed and left its directory behind") from None
            raise
        shutil.rmtree(target)

    def _install(self, data, base) -> Path:
        model_dir = self.saved[base]
        (model_dir / "model.tflite").write_bytes(data)
        return model_dir

    def _load(self, path, data, base):
        from mlflow_tflite_keras import flavor

        # Loading reads only the signature tensors (the file was validated when saved); a
        # replaced file is refused when the parsed model is first asked for.
        loaded = flavor.load_model(str(self._install(data, base)))
        loaded.signature_keys
        loaded.model

    def _pyfunc(self, path, data, base):
        import mlflow

        model = mlflow.pyfunc.load_model(str(self._install(data, base)))
        out = model.predict(self.feeds[base])
        arrays = out.values() if isinstance(out, dict) else [out]
        return {"finite": bool(all(self.np.all(self.np.isfinite(a)) for a in arrays))}

    def _cli(self, path, data, base):
        from click.testing import CliRunner

        from mlflow_tflite_keras.cli import cli

        result = CliRunner().invoke(cli, ["inspect", "--no-converter", str(path)])
        output = result.output + (result.stderr if hasattr(result, "stderr") else "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise _Violation(f"inspect raised {type(result.exception).__name__}: "
                             f"{result.exception}")
        if "Traceback" in output:
            raise _Violation("inspect printed a traceback")
        if result.exit_code == 0:
            return None
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        if result.exit_code != 2 or not errors:
            raise _Violation(f"inspect exited {result.exit_code} without an 'Error:' line: "
                             f"{output[-300:]}")
        return {"exit_code": 2, "error": errors[0][:300]}

    def _selftest(self, path, data, base):
        """Only for testing the driver: a mutant can ask to kill or hang its worker."""
        if data.startswith(b"FUZZ-SELFTEST-ABORT"):
            os.abort()
        if data.startswith(b"FUZZ-SELFTEST-SEGV"):
            import ctypes

            ctypes.string_at(0)
        if data.startswith(b"FUZZ-SELFTEST-HANG"):
            time.sleep(3600)

    def _to_keras(self, path, data, base):
        from mlflow_tflite_keras.converter import to_keras

        to_keras(data)


class _Violation(Exception):
    """A target broke its contract (not an exception the caller should see)."""


def _limit_memory(gigabytes: float):
    """Cap the address space so a huge allocation fails in this process, not the machine."""
    with contextlib.suppress(Exception):
        import resource

        limit = int(gigabytes * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker_main(directory: Path, out: Path, only: list[str] | None, targets, memory_gb: float):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    sys.path.insert(0, str(ROOT))
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if memory_gb:
        _limit_memory(memory_gb)
    index = {m["name"]: m for m in json.loads((directory / "index.json").read_text())}
    names = only if only is not None else sorted(index)
    with open(out, "a", buffering=1) as log:
        worker = Worker(directory, targets)
        log.write(json.dumps({"event": "ready"}) + "\n")
        try:
            for name in names:
                meta = index[name]
                log.write(json.dumps({"event": "start", "mutant": name}) + "\n")
                log.flush()
                os.fsync(log.fileno())
                with contextlib.redirect_stdout(io.StringIO()):
                    outcomes = worker.run(directory / f"{name}.tflite", meta["base"])
                log.write(json.dumps({"event": "done", "mutant": name, **meta,
                                      "targets": outcomes}) + "\n")
        finally:
            worker.close()


# ---- driver ----------------------------------------------------------------------------------


@dataclass
class CampaignResult:
    records: list[dict]  # one "done" record per mutant that finished
    crashes: list[dict]  # {"mutant", "failure": "crash"|"hang", "returncode", "saved", ...}
    seconds: float
    worker_starts: int

    def bad(self) -> list[tuple[str, str, dict]]:
        return [(r["mutant"], t, o) for r in self.records for t, o in r["targets"].items()
                if o["outcome"] == "bad"]

    def summary(self) -> dict:
        counts: dict[str, dict[str, int]] = {}
        for r in self.records:
            for t, o in r["targets"].items():
                counts.setdefault(t, {}).setdefault(o["outcome"], 0)
                counts[t][o["outcome"]] += 1
        kinds: dict[str, int] = {}
        for r in self.records:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        return {"mutants": len(self.records) + len(self.crashes), "seconds": round(self.seconds, 1),
                "worker_starts": self.worker_starts, "crashes": len(self.crashes),
                "bad": len(self.bad()), "kinds": kinds, "targets": counts}


def run_campaign(directory: Path, *, targets=TARGETS, mutant_timeout: float = 30,
                 startup_timeout: float = 120, total_timeout: float | None = None,
                 crash_dir: Path = CRASH_DIR, memory_gb: float = 6,
                 python: str = sys.executable) -> CampaignResult:
    """Run every mutant of ``directory`` (see :func:`write_mutants`) through a worker process,
    restarting it after a crash or hang; save offending mutants under ``crash_dir``."""
    index = json.loads((directory / "index.json").read_text())
    meta = {m["name"]: m for m in index}
    pending = [m["name"] for m in index]
    records: dict[str, dict] = {}
    crashes: list[dict] = []
    started = time.monotonic()
    starts = 0
    while pending:
        if total_timeout is not None and time.monotonic() - started > total_timeout:
            break
        starts += 1
        out = directory / f"results-{starts}.jsonl"
        only = directory / f"only-{starts}.json"
        only.write_text(json.dumps(pending))
        stderr_path = directory / f"worker-{starts}.stderr"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [python, str(Path(__file__).resolve()), str(directory), str(out), "--only",
                 str(only), "--targets", ",".join(targets), "--memory-gb", str(memory_gb)],
                stdout=subprocess.DEVNULL, stderr=err, cwd=str(ROOT),
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        current, ready, seen = None, False, 0
        last_progress = time.monotonic()
        hung = False
        while True:
            lines = out.read_text().splitlines() if out.exists() else []
            for line in lines[seen:]:
                if not line.endswith("}"):
                    break  # a partial line: read it next time
                event = json.loads(line)
                seen += 1
                last_progress = time.monotonic()
                if event["event"] == "ready":
                    ready = True
                elif event["event"] == "start":
                    current = event["mutant"]
                elif event["event"] == "done":
                    records[event["mutant"]] = event
                    current = None
            if proc.poll() is not None:
                # Re-read once: lines written just before exit.
                lines = out.read_text().splitlines() if out.exists() else []
                for line in lines[seen:]:
                    event = json.loads(line)
                    seen += 1
                    if event["event"] == "start":
                        current = event["mutant"]
                    elif event["event"] == "done":
                        records[event["mutant"]] = event
                        current = None
                break
            limit = mutant_timeout if ready else startup_timeout
            if time.monotonic() - last_progress > limit or (
                    total_timeout is not None and time.monotonic() - started > total_timeout
                    and current is None):
                hung = current is not None
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
        pending = [n for n in pending if n not in records]
        if current is not None and current in pending:
            crash = {**meta[current], "mutant": current, "failure": "hang" if hung else "crash",
                     "returncode": proc.returncode,
                     "stderr": stderr_path.read_text(errors="replace")[-3000:]}
            crash_dir.mkdir(parents=True, exist_ok=True)
            saved = crash_dir / f"{current}.tflite"
            shutil.copyfile(directory / f"{current}.tflite", saved)
            shutil.copyfile(directory / "bases" / f"{meta[current]['base']}.tflite",
                            crash_dir / f"base-{meta[current]['base']}.tflite")
            (crash_dir / f"{current}.json").write_text(json.dumps(crash, indent=2))
            crash["saved"] = str(saved)
            crashes.append(crash)
            pending.remove(current)
        elif proc.returncode not in (0, None) or (not ready and pending):
            if not ready:
                raise RuntimeError("The fuzz worker failed to start:\n"
                                   + stderr_path.read_text(errors="replace")[-4000:])
    return CampaignResult([records[n] for n in meta if n in records], crashes,
                          time.monotonic() - started, starts)


def reproduce(path: Path, base: Path | None, targets=TARGETS):
    """Run one saved mutant in this process (for a debugger), printing each outcome."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        base = base or next(path.parent.glob("base-*.tflite"), None)
        if base is None:
            raise SystemExit("Pass --base: the mutant's original model.")
        name = base.stem.removeprefix("base-")
        write_mutants([Mutant(path.stem, name, "saved", "reproduction", path.read_bytes())],
                      {name: base.read_bytes()}, d)
        worker = Worker(d, targets)
        try:
            for target, outcome in worker.run(d / f"{path.stem}.tflite", name).items():
                print(target, json.dumps(outcome))
        finally:
            worker.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", type=Path)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--only", type=Path, help="JSON list of mutant names to run.")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--memory-gb", type=float, default=6)
    parser.add_argument("--one", type=Path, help="Reproduce one saved mutant in-process.")
    parser.add_argument("--base", type=Path, help="With --one: the original model.")
    args = parser.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    if args.one:
        sys.path.insert(0, str(ROOT))
        reproduce(args.one, args.base, targets)
        return
    only = json.loads(args.only.read_text()) if args.only else None
    worker_main(args.directory, args.out, only, targets, args.memory_gb)


if __name__ == "__main__":
    main()
