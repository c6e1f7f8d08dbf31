"""What an app sees of a ``.tflite`` model, compared between two models.

:func:`compare_interfaces` reports every difference an app would notice between a source
model and a new one (signature keys, input / output names and order, shapes, dtypes) and in
the recipe (quantization kind, types of the weight constants, block sizes): the check
:func:`~mlflow_tflite_keras.export.export_tflite` and ``finetune`` run. TensorFlow-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.flavor import load_like
from mlflow_tflite_keras.recipes import FULL_INTEGER, QUANTIZED_IO, WEIGHT_TYPES

__all__ = ["InterfaceDifference", "InterfaceReport", "comparable_name", "compare_interfaces",
           "match_name", "match_names", "signature_tensors"]


@dataclass(frozen=True)
class InterfaceDifference:
    """One way the new model's interface differs from the source's."""

    what: str  # "signature", "key", "input", "output", "name", "shape", "dtype", "quantized",
    #            "order", "quantization kind", "constant types", "block sizes"
    where: str  # e.g. "output 'output_0'", "signature 'serving_default'", "model"
    source: object
    new: object

    def to_dict(self) -> dict:
        return {"what": self.what, "where": self.where, "source": self.source, "new": self.new}

    def __str__(self) -> str:
        return f"{self.where} {self.what}: source {_fmt(self.source)}, new {_fmt(self.new)}"


@dataclass
class InterfaceReport:
    """The result of :func:`compare_interfaces`: empty ``differences`` means the app sees the
    same interface (names, ranks and shapes, dtypes) and the same recipe (quantization kind,
    types of the weight constants, block sizes)."""

    source_quantization: str
    new_quantization: str
    matched_by: str  # "signature" (SignatureDef names) or "order" (source has no SignatureDef)
    differences: list[InterfaceDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The new model as parsed for the comparison: callers go on with it (one parse).
    new_model: object = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict:
        return {"ok": self.ok, "source_quantization": self.source_quantization,
                "new_quantization": self.new_quantization, "matched_by": self.matched_by,
                "differences": [d.to_dict() for d in self.differences], "notes": list(self.notes)}

    def __str__(self) -> str:
        if self.ok:
            head = "The interfaces match"
        else:
            head = f"{len(self.differences)} interface difference(s)"
        lines = [f"{head} (quantization: source {self.source_quantization}, "
                 f"new {self.new_quantization}; matched by {self.matched_by})."]
        lines += [f"  - {d}" for d in self.differences]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def comparable_name(name: str) -> str:
    """Compare names as the app would recognise them: 'serving_default_x:0' ~ 'x'."""
    name = str(name).split(":")[0]
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def match_name(key: str, names, aliases: dict | None = None) -> str | None:
    """The one of ``names`` that ``key`` means: itself, its alias, or the only name equal to
    it up to case and punctuation (:func:`comparable_name`); None when there is none."""
    if key in names:
        return key
    if aliases and aliases.get(key) is not None:
        return aliases[key]
    matches = [n for n in names if comparable_name(n) == comparable_name(key)]
    return matches[0] if len(matches) == 1 else None


def match_names(entries: dict, names, aliases: dict | None, unknown) -> dict:
    """``entries`` re-keyed by the one of ``names`` each key means (:func:`match_name`); a
    key that means none is an error, ``unknown(key)`` its message (e.g. calibration data or
    training targets given by input / output name)."""
    out = {}
    for key, value in entries.items():
        name = match_name(key, names, aliases)
        if name is None:
            raise MlflowException(unknown(key), error_code=INVALID_PARAMETER_VALUE)
        out[name] = value
    return out


def _pair_by_name(source: dict, new: dict):
    """Pairs (source name, new name, renamed?) by exact name, then by normalised name, then a
    single leftover on each side; and the unmatched names of each side."""
    pairs = [(n, n, False) for n in source if n in new]
    left_src = [n for n in source if n not in new]
    left_new = [n for n in new if n not in source]
    for n in list(left_src):
        candidates = [m for m in left_new if comparable_name(m) == comparable_name(n)]
        if len(candidates) == 1:
            pairs.append((n, candidates[0], True))
            left_src.remove(n)
            left_new.remove(candidates[0])
    if len(left_src) == 1 and len(left_new) == 1:
        pairs.append((left_src[0], left_new[0], True))
        left_src, left_new = [], []
    order = list(source)
    pairs.sort(key=lambda p: order.index(p[0]))
    return pairs, left_src, left_new


def _compare_tensor(where: str, src, new, diffs: list):
    s_sig, n_sig = list(src.shape_signature), list(new.shape_signature)
    if len(s_sig) != len(n_sig):
        diffs.append(InterfaceDifference("shape", where, s_sig, n_sig))
    else:
        # Exactly, batch included: a fixed batch of 1 that became dynamic changes what the
        # app's delegates and preallocated buffers see.
        if s_sig != n_sig:
            diffs.append(InterfaceDifference("shape", where, s_sig, n_sig))
    if src.type_name != new.type_name:
        diffs.append(InterfaceDifference("dtype", where, src.type_name.lower(),
                                         new.type_name.lower()))
    elif (src.quantization is not None) != (new.quantization is not None) and \
            src.type_name in QUANTIZED_IO:
        diffs.append(InterfaceDifference("quantized", where, src.quantization is not None,
                                         new.quantization is not None))


def signature_tensors(model, sig, which: str) -> dict:
    sg = model.subgraphs[sig.subgraph_index]
    return {name: sg.tensors[i] for name, i in getattr(sig, which).items()}


def compare_interfaces(source, new) -> InterfaceReport:
    """Compare what an app sees of two models (each a ``.tflite`` path or bytes, a
    TFLiteModel or an MLflow model URI): SignatureDef keys, input/output names and their
    order (in the SignatureDef and in the subgraph; by position when the source has no
    SignatureDef), shapes exactly (``-1`` where dynamic), dtypes, and the recipe
    (quantization kind, weight constant types, block sizes)."""
    src, dst = load_like(source), load_like(new)
    src_kind, dst_kind = src.quantization_kind, dst.quantization_kind
    report = InterfaceReport(src_kind, dst_kind, "signature" if src.signatures else "order",
                             new_model=dst)
    diffs = report.differences
    if src_kind != dst_kind:
        diffs.append(InterfaceDifference("quantization kind", "model", src_kind, dst_kind))
    src_consts, dst_consts = _constant_types(src), _constant_types(dst)
    # In a full-integer model every constant operand is quantized, weights or not (an
    # epsilon, a resize size): its kind says all there is to say about the recipe.
    compared = ("block_sizes",) if src_kind == dst_kind and src_kind in FULL_INTEGER \
        else ("types", "block_sizes")
    for key, what in (("types", "constant types"), ("block_sizes", "block sizes")):
        if key in compared and src_consts[key] != dst_consts[key]:
            diffs.append(InterfaceDifference(what, "weights", src_consts[key], dst_consts[key]))
    if src.signatures:
        new_keys = {s.key: s for s in dst.signatures}
        for i, sig in enumerate(src.signatures):
            other = new_keys.get(sig.key)
            if other is None and i == 0 and dst.signatures and \
                    not any(s.key == dst.signatures[0].key for s in src.signatures):
                other = dst.signatures[0]
                diffs.append(InterfaceDifference("key", "signature", sig.key, other.key))
            if other is None:
                diffs.append(InterfaceDifference("signature", f"signature '{sig.key}'",
                                                 "present", "missing"))
                continue
            prefix = f"signature '{sig.key}' " if len(src.signatures) > 1 else ""
            for which in ("inputs", "outputs"):
                pairs = _compare_named(prefix + which[:-1], signature_tensors(src, sig, which),
                                       signature_tensors(dst, other, which), diffs)
                _compare_order(prefix + which, pairs, (src, sig), (dst, other), which, diffs)
        extra = [s.key for s in dst.signatures if s.key not in {x.key for x in src.signatures}
                 and s.key != dst.signatures[0].key]
        if extra:
            report.notes.append(f"The new model has extra signatures: {extra}.")
    else:
        report.notes.append("The source has no SignatureDef: inputs and outputs are matched "
                            "by position, tensor names are not compared.")
        s_main, d_main = src.main, dst.main
        _compare_ordered("input", [s_main.tensors[i] for i in s_main.inputs],
                         [d_main.tensors[i] for i in d_main.inputs], diffs)
        _compare_ordered("output", [s_main.tensors[i] for i in s_main.outputs],
                         [d_main.tensors[i] for i in d_main.outputs], diffs)
    return report


def _compare_named(kind: str, source: dict, new: dict, diffs: list):
    pairs, missing, extra = _pair_by_name(source, new)
    for s_name, n_name, renamed in pairs:
        if renamed:
            diffs.append(InterfaceDifference("name", f"{kind} '{s_name}'", s_name, n_name))
        _compare_tensor(f"{kind} '{s_name}'", source[s_name], new[n_name], diffs)
    for name in missing:
        diffs.append(InterfaceDifference(kind, f"{kind} '{name}'", "present", "missing"))
    for name in extra:
        diffs.append(InterfaceDifference(kind, f"{kind} '{name}'", "absent", "added"))
    return pairs


def _compare_order(kind: str, pairs, source, new, which: str, diffs: list):
    """Apps that read outputs by index (most do) see the subgraph's order; the SignatureDef
    has its own order too. Both must be the source's."""
    to_new = {s: n for s, n, _ in pairs}
    for (s_model, s_sig), label in ((source, "signature"), (source, "subgraph")):
        n_model, n_sig = new
        s_names = list(getattr(s_sig, which))
        n_names = list(getattr(n_sig, which))
        if label == "subgraph":
            s_names = _subgraph_order(s_model, s_sig, which)
            n_names = _subgraph_order(n_model, n_sig, which)
        expected = [to_new[n] for n in s_names if n in to_new]
        got = [n for n in n_names if n in set(expected)]
        if expected != got:
            diffs.append(InterfaceDifference("order", f"{label} {kind}",
                                             [n for n in s_names if n in to_new],
                                             [s for n in got for s, m, _ in pairs if m == n]))


def _subgraph_order(model, sig, which: str) -> list:
    """The signature names in the order of the subgraph's inputs / outputs."""
    by_index = {i: name for name, i in getattr(sig, which).items()}
    sg = model.subgraphs[sig.subgraph_index]
    return [by_index[i] for i in getattr(sg, which) if i in by_index]


def _compare_ordered(kind: str, source: list, new: list, diffs: list):
    if len(source) != len(new):
        diffs.append(InterfaceDifference(f"{kind} count", "model", len(source), len(new)))
    for i, (s, n) in enumerate(zip(source, new)):
        _compare_tensor(f"{kind} #{i} ('{s.name}')", s, n, diffs)
    # The same inputs in another order would go unnoticed when they share shape and dtype.
    s_names = [comparable_name(t.name) for t in source]
    n_names = [comparable_name(t.name) for t in new]
    if sorted(s_names) == sorted(n_names) and len(set(s_names)) == len(s_names) and \
            s_names != n_names and kind == "input":
        diffs.append(InterfaceDifference("order", f"{kind}s", s_names, n_names))


# ---- the recipe as stored -----------------------------------------------------------------


def _block_size(subgraph, index: int) -> int:
    """The block size of a blockwise-quantized tensor (schema ``BlockwiseQuantization``)."""
    from ai_edge_litert import schema_py_generated as schema

    q = subgraph.tensors[index].quantization
    if q is not None and q.detailsType == schema.QuantizationDetails.BlockwiseQuantization:
        return int(q.details.blockSize)
    return 0


def _constant_types(model) -> dict:
    """The recipe as stored: the types of the quantized / float16 weight constants and the
    block sizes of blockwise ones, e.g. ``{"types": ["INT4"], "block_sizes": [32]}``."""
    types, blocks = set(), set()
    for sg_info, sg in zip(model.subgraphs, model._model.subgraphs):
        consumed = {i for op in sg_info.operators for i in op.inputs if i >= 0}
        for t in sg_info.tensors:
            if t.index not in consumed or model._raw_buffer(t.buffer) is None:
                continue
            block = _block_size(sg, t.index)
            if t.type_name == "FLOAT16" or (t.type_name in WEIGHT_TYPES and (
                    t.quantization is not None or block)):
                types.add(t.type_name)
            if block:
                blocks.add(block)
    return {"types": sorted(types), "block_sizes": sorted(blocks)}
