"""Numerical parity between a ``.tflite`` model (LiteRT interpreter) and a Keras model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel

# Default tolerances by quantization kind. "max_rel_error" is the max absolute error divided
# by the output's value range; quantized kinds are judged in output quantization steps and by
# top-1 agreement because a float model cannot reproduce integer rounding exactly.
DEFAULT_TOLERANCES = {
    "none": {"max_rel_error": 1e-4},
    "float16": {"max_rel_error": 1e-3},
    "dynamic-range": {"max_rel_error": 5e-2, "min_cosine": 0.99},
    "full-int8": {"max_steps": 8.0, "min_cosine": 0.95, "min_top1": 0.8},
    "full-uint8": {"max_steps": 8.0, "min_cosine": 0.95, "min_top1": 0.8},
    "int16x8": {"max_rel_error": 1e-2, "min_cosine": 0.99},
}


@dataclass
class OutputParity:
    name: str
    max_abs_error: float
    max_rel_error: float  # max abs error / output value range
    cosine: float
    top1_agreement: float | None  # classifier-shaped outputs only
    # Agreement on rows whose reference top-1 margin exceeds twice that row's error: a flip
    # there is a real difference, not a near-tie resolved by rounding. Judged by min_top1.
    top1_decisive: float | None
    quantization_step: float | None  # the output's scale, when quantized
    max_steps: float | None  # max abs error in quantization steps
    passed: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    quantization: str
    n_samples: int
    tolerances: dict
    outputs: list[OutputParity]
    divergence: DivergenceReport | None = None  # check_parity(..., debug=True)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def metrics(self, prefix: str = "parity_") -> dict[str, float]:
        """Flat numeric metrics for ``mlflow.log_metrics``."""
        out = {f"{prefix}passed": float(self.passed)}
        for o in self.outputs:
            tag = o.name if len(self.outputs) > 1 else ""
            for key in ("max_abs_error", "max_rel_error", "cosine", "top1_agreement",
                        "top1_decisive", "max_steps"):
                value = getattr(o, key)
                if value is not None:
                    out[f"{prefix}{key}{'_' + tag if tag else ''}"] = float(value)
        return out

    def to_dict(self) -> dict:
        return {"passed": self.passed, **asdict(self)}

    def __str__(self):
        rows = [f"parity {'PASSED' if self.passed else 'FAILED'} ({self.quantization}, "
                f"{self.n_samples} samples)"]
        for o in self.outputs:
            top1 = "" if o.top1_agreement is None else \
                f" top1={o.top1_agreement:.3f} (decisive {o.top1_decisive:.3f})"
            steps = "" if o.max_steps is None else f" steps={o.max_steps:.2f}"
            rows.append(f"  {o.name}: max_abs={o.max_abs_error:.3g} rel={o.max_rel_error:.3g}"
                        f" cos={o.cosine:.6f}{top1}{steps}"
                        + (f"  <- {'; '.join(o.failures)}" if o.failures else ""))
        if self.divergence is not None:
            rows.append(str(self.divergence))
        return "\n".join(rows)


def sample_inputs(model: TFLiteModel, n: int = 8, seed: int = 0, signature_key=None
                  ) -> dict[str, np.ndarray]:
    """Random inputs within each input's range (quantized range, else [-1, 1]; integer inputs
    that index a constant table stay within the table)."""
    rng = np.random.default_rng(seed)
    spec = TFLiteRunner(model).signature(signature_key)
    feeds = {}
    for s in spec.inputs:
        shape = list(s.shape)
        if spec.batched:
            shape[0] = n
        if s.quantized:
            info = np.iinfo(s.dtype)
            q = rng.integers(info.min, info.max + 1, size=shape)
            feeds[s.name] = s.dequantize(q.astype(s.dtype))
        elif np.issubdtype(s.dtype, np.floating):
            feeds[s.name] = rng.uniform(-1, 1, size=shape).astype(s.dtype)
        elif s.dtype == np.bool_:
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            high = _index_bound(model, spec.subgraph_index, s.index) or 10
            feeds[s.name] = rng.integers(0, high, size=shape).astype(s.dtype)
    return feeds


def _index_bound(model: TFLiteModel, subgraph_index: int, tensor_index: int) -> int | None:
    """Rows of the constant table an integer input indexes (via GATHER / EMBEDDING_LOOKUP),
    following it through a few elementwise ops (Keras Embedding exports a wrap-around
    LESS/ADD/SELECT_V2 before its GATHER)."""
    sg = model.subgraphs[subgraph_index]
    consumers: dict[int, list] = {}
    for op in sg.operators:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    frontier, seen = [tensor_index], {tensor_index}
    for _ in range(6):
        following = []
        for t in frontier:
            for op in consumers.get(t, []):
                if op.opcode in ("GATHER", "EMBEDDING_LOOKUP") and t in op.inputs[1:2]:
                    table = sg.tensors[op.inputs[0]]
                    if table.shape:
                        return int(table.shape[0])
                for out in op.outputs:
                    if out not in seen and np.issubdtype(
                            np.dtype(sg.tensors[out].dtype or np.float32), np.integer):
                        seen.add(out)
                        following.append(out)
        frontier = following
    return None


def _prepare(tflite_model, inputs, n_samples, seed, signature_key):
    """The parsed model, a runner, the signature, and the inputs as a dict (random within
    each input's range when None)."""
    model = TFLiteModel.load(tflite_model)
    runner = TFLiteRunner(model)
    spec = runner.signature(signature_key)
    if inputs is None:
        inputs = sample_inputs(model, n_samples, seed, signature_key)
    elif not isinstance(inputs, dict):
        inputs = {spec.inputs[0].name: np.asarray(inputs)}
    return model, runner, spec, inputs


def check_parity(tflite_model, keras_model, inputs=None, *, n_samples: int = 8,
                 signature_key=None, seed: int = 0, debug: bool = False, tensor_map=None,
                 **tolerances) -> ParityReport:
    """Run the interpreter and the Keras model on the same inputs and compare every output.

    ``inputs``: a dict name -> array (or one array) in the float domain; random when None.
    ``tolerances`` override the defaults for the model's quantization kind
    (``max_rel_error``, ``max_abs_error``, ``max_steps``, ``min_cosine``, ``min_top1``).
    ``debug=True`` also compares every intermediate tensor on the same inputs
    (:func:`locate_divergence`, ``tensor_map`` as there) and stores the result in
    ``report.divergence``.
    """
    model, runner, spec, inputs = _prepare(tflite_model, inputs, n_samples, seed,
                                           signature_key)
    expected = runner.predict(inputs, signature_key=signature_key, dequantize=True)
    actual = _keras_predict(keras_model, spec, inputs)
    limits = {**DEFAULT_TOLERANCES.get(model.quantization_kind, {}), **tolerances}
    outputs = [
        _compare(o, expected[o.name], actual[i], limits) for i, o in enumerate(spec.outputs)
    ]
    n = next(iter(inputs.values())).shape[0] if spec.batched else 1
    report = ParityReport(model.quantization_kind, int(n), limits, outputs)
    if debug:
        report.divergence = locate_divergence(model, keras_model, inputs,
                                              signature_key=signature_key,
                                              tensor_map=tensor_map, **tolerances)
    return report


def _keras_feed(keras_model, spec, inputs: dict):
    if len(spec.inputs) == 1:
        return np.asarray(inputs[spec.inputs[0].name])
    return {name: np.asarray(inputs[s.name]) for name, s in
            zip(_input_names(keras_model), spec.inputs)}


def _keras_predict(keras_model, spec, inputs: dict) -> list[np.ndarray]:
    import keras

    result = keras_model(_keras_feed(keras_model, spec, inputs), training=False)
    if isinstance(result, dict):
        result = list(result.values())
    elif not isinstance(result, (list, tuple)):
        result = [result]
    return [np.asarray(keras.ops.convert_to_numpy(r)) for r in result]


def _input_names(keras_model) -> list[str]:
    return [t.name for t in keras_model.inputs] if not isinstance(keras_model.input, dict) \
        else list(keras_model.input)


def _compare(spec, expected: np.ndarray, actual: np.ndarray, limits: dict) -> OutputParity:
    failures = []
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        if expected.size == actual.size:
            actual = actual.reshape(expected.shape)
        else:
            return OutputParity(spec.name, float("inf"), float("inf"), 0.0, None, None, None,
                                None, False, [f"shape {list(actual.shape)} != {list(expected.shape)}"])
    err = np.abs(expected - actual)
    max_abs = float(err.max()) if err.size else 0.0
    value_range = float(expected.max() - expected.min()) if expected.size else 0.0
    max_rel = max_abs / max(value_range, float(np.abs(expected).max(initial=0.0)), 1e-12)
    denom = np.linalg.norm(expected) * np.linalg.norm(actual)
    cosine = float(np.dot(expected.ravel(), actual.ravel()) / denom) if denom else \
        (1.0 if max_abs == 0 else 0.0)
    top1 = decisive = None
    if expected.ndim >= 2 and expected.shape[-1] > 1:
        agree = expected.argmax(-1) == actual.argmax(-1)
        top1 = float(np.mean(agree))
        ranked = np.sort(expected, axis=-1)
        margin = ranked[..., -1] - ranked[..., -2]
        row_error = err.max(axis=-1)
        clear = margin > 2 * row_error
        decisive = float(np.mean(agree[clear])) if np.any(clear) else 1.0
    step = None
    steps = None
    if spec.quantized:
        step = float(np.max(spec.quantization.scale))
        steps = max_abs / step if step else None
    if not np.all(np.isfinite(actual)):
        failures.append("non-finite values in the Keras output")
    checks = [
        ("max_rel_error", max_rel, lambda v, lim: v <= lim),
        ("max_abs_error", max_abs, lambda v, lim: v <= lim),
        ("max_steps", steps, lambda v, lim: v <= lim),
        ("min_cosine", cosine, lambda v, lim: v >= lim),
        ("min_top1", decisive, lambda v, lim: v >= lim),
    ]
    for key, value, ok in checks:
        if key in limits and value is not None and not ok(value, limits[key]):
            failures.append(f"{key.replace('min_', '').replace('max_', '')} {value:.4g} "
                            f"outside {key}={limits[key]}")
    return OutputParity(spec.name, max_abs, max_rel, cosine, top1, decisive, step, steps,
                        not failures, failures)


# ---- debug mode: where does the Keras model start to differ? --------------------------------

# Tolerances that judge a whole model's outputs but not an intermediate tensor.
_OUTPUT_ONLY_LIMITS = ("min_top1",)


@dataclass
class TensorParity:
    """One intermediate TFLite tensor against the Keras layer output holding its value."""

    tensor: int  # TFLite tensor index (signature subgraph)
    name: str
    op_index: int  # the op producing it, in execution order
    op_type: str
    layer: str  # Keras layer name (``name[node:output]`` when not the first node/output)
    shape: list[int]
    max_abs_error: float
    max_rel_error: float  # max abs error / the TFLite tensor's value range
    cosine: float
    max_steps: float | None  # max abs error in the tensor's quantization steps
    passed: bool
    failures: list[str] = field(default_factory=list)

    def row(self) -> str:
        steps = "-" if self.max_steps is None else f"{self.max_steps:.2f}"
        return (f"  {self.op_index:>5} {self.op_type:<20.20} {self.tensor:>6} "
                f"{self.max_abs_error:>10.3g} {self.max_rel_error:>10.3g} {self.cosine:>10.6f} "
                f"{steps:>7}  {_short(self.name)} -> {self.layer}")


def _short(name: str, width: int = 60) -> str:
    """A TFLite tensor name without its fused-op aliases (``a;b;c``), at most ``width``."""
    name = name.split(";")[0]
    return name if len(name) <= width else name[:width - 3] + "..."


@dataclass
class DivergenceReport:
    """Every mapped intermediate tensor compared, in execution order (``tensors``)."""

    quantization: str
    n_samples: int
    tolerances: dict
    tensors: list[TensorParity]
    skipped: list[str] = field(default_factory=list)  # mapped tensors that were not compared
    interpreter: str = "LiteRT builtin kernels, no delegate, all tensors preserved"

    @property
    def first(self) -> TensorParity | None:
        """The first tensor, in execution order, outside the tolerances (None: none)."""
        return next((t for t in self.tensors if not t.passed), None)

    @property
    def diverged(self) -> bool:
        return self.first is not None

    def worst(self, k: int = 5) -> list[TensorParity]:
        return sorted(self.tensors, key=lambda t: (-t.max_rel_error, t.op_index))[:k]

    def to_dict(self) -> dict:
        first = self.first
        return {"diverged": self.diverged, "first": asdict(first) if first else None,
                **asdict(self)}

    def __str__(self):
        first = self.first
        head = f"intermediate tensors: {len(self.tensors)} compared ({self.n_samples} samples"
        head += f", {len(self.skipped)} skipped)" if self.skipped else ")"
        if first is None:
            rows = [f"{head}: no divergence"]
        else:
            rows = [f"{head}: first divergence at op {first.op_index} ({first.op_type}), "
                    f"tensor {first.tensor} '{first.name}', Keras layer '{first.layer}': "
                    f"max_abs={first.max_abs_error:.3g} rel={first.max_rel_error:.3g} "
                    f"cos={first.cosine:.6f}  <- {'; '.join(first.failures)}"]
        header = (f"  {'op':>5} {'type':<20} {'tensor':>6} {'max_abs':>10} {'max_rel':>10} "
                  f"{'cosine':>10} {'steps':>7}  name -> layer")
        rows += ["  worst tensors:", header] + [t.row() for t in self.worst()]
        for s in self.skipped[:5]:
            rows.append(f"  skipped: {s}")
        if len(self.skipped) > 5:
            rows.append(f"  skipped: ... {len(self.skipped) - 5} more")
        return "\n".join(rows)


def locate_divergence(tflite_model, keras_model, inputs=None, *, tensor_map=None,
                      n_samples: int = 2, signature_key=None, seed: int = 0,
                      **tolerances) -> DivergenceReport:
    """Compare every intermediate tensor of the interpreter with the Keras layer output that
    holds the same value, and report the first one (in execution order) outside the
    tolerances, plus the worst ones.

    ``tensor_map``: TFLite tensor index -> (layer name, node index, output index), as in
    :attr:`ConversionReport.tensor_map`; when None the ``.tflite`` is converted again to
    obtain it and layers are matched by name (so a reloaded ``.keras`` model works too).
    Constants and folded ops have no Keras counterpart and are not compared. The
    interpreter runs with its builtin kernels and no delegate, so that every intermediate
    tensor is kept (``experimental_preserve_all_tensors``); quantized tensors are
    dequantized. ``tolerances`` as in :func:`check_parity` (``min_top1`` does not apply); a
    quantized tensor diverges when it is both more than ``max_steps`` quantization steps off
    and below ``min_cosine``.
    """
    import keras

    model, runner, spec, inputs = _prepare(tflite_model, inputs, n_samples, seed,
                                           signature_key)
    if tensor_map is None:
        from mlflow_tflite_keras.converter.convert import convert

        tensor_map = convert(model, signature_key=signature_key).report.tensor_map
    limits = {k: v for k, v in {**DEFAULT_TOLERANCES.get(model.quantization_kind, {}),
                                **tolerances}.items() if k not in _OUTPUT_ONLY_LIMITS}

    from mlflow_tflite_keras.converter.ir import build_graph

    graph = build_graph(model, spec.subgraph_index)
    inputs_set = {t.index for t in graph.inputs}
    skipped: list[str] = []
    # Keras side: one sub-model with every mapped layer output, evaluated in one pass.
    keras_tensors, slots, order = [], {}, []
    for op in graph.ops:
        for t in op.outputs:
            if t.index not in tensor_map or t.index in inputs_set:
                continue
            layer_name, node, out = (list(tensor_map[t.index]) + [0, 0])[:3]
            try:
                layer = keras_model.get_layer(layer_name)
                kt = layer._inbound_nodes[int(node)].output_tensors[int(out)]
            except (ValueError, IndexError, AttributeError):
                skipped.append(f"tensor {t.index} '{t.name}': no layer '{layer_name}' "
                               f"(node {node}, output {out}) in the Keras model")
                continue
            if id(kt) not in slots:
                slots[id(kt)] = len(keras_tensors)
                keras_tensors.append(kt)
            label = layer_name if (node, out) == (0, 0) else f"{layer_name}[{node}:{out}]"
            order.append((op, t, slots[id(kt)], label))
    if not order:
        raise ValueError(
            "No intermediate tensor of the .tflite model maps to a layer of this Keras model"
            + (f" ({skipped[0]})" if skipped else "") + ". Is it the model converted from "
            "this .tflite (a per-example model wraps its layers in PerExample)?")
    from mlflow_tflite_keras.converter.deep import run_deep

    def probe_outputs():
        probe = keras.Model(keras_model.input, keras_tensors)  # maps the graph recursively
        out = probe(_keras_feed(keras_model, spec, inputs), training=False)
        return [np.asarray(keras.ops.convert_to_numpy(a)) for a in
                (out if isinstance(out, (list, tuple)) else [out])]

    actual = run_deep(probe_outputs, len(keras_model.layers))
    # Interpreter side.
    expected = _interpreter_tensors(model, runner, spec, inputs, [t.index for _, t, _, _ in order])

    results = []
    for op, t, slot, label in order:
        value = expected.get(t.index)
        if value is None:
            skipped.append(f"tensor {t.index} '{t.name}': not readable from the interpreter")
            continue
        if value.dtype.kind not in "fiub" or value.size == 0:
            skipped.append(f"tensor {t.index} '{t.name}': {value.dtype} / empty, not compared")
            continue
        results.append(_compare_tensor(op, t, label, value, actual[slot], limits,
                                       explicit=tolerances))
    n = next(iter(inputs.values())).shape[0] if spec.batched else 1
    return DivergenceReport(model.quantization_kind, int(n), limits, results, skipped)


def _interpreter_tensors(model: TFLiteModel, runner: TFLiteRunner, spec, inputs: dict,
                         indices: list[int]) -> dict[int, np.ndarray]:
    """Every tensor in ``indices`` after one run (dequantized when quantized); a model that
    cannot take the whole batch runs row by row and the rows are concatenated."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mlflow_tflite_keras.runtime import _Session

    interpreter = Interpreter(
        model_content=model.model_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    session = _Session(interpreter)
    sg = spec.subgraph_index
    arrays = runner._prepare_inputs(spec, inputs)
    if spec.batched and not (spec.resizable_batch and not spec.stateful
                             and session.can_resize(sg, spec, arrays)):
        batches = [[a[i:i + 1] for a in arrays] for i in range(arrays[0].shape[0])]
    else:
        batches = [arrays]
    tensors = model.subgraphs[sg].tensors
    rows: dict[int, list] = {i: [] for i in indices}
    for batch in batches:
        session.run(sg, spec, batch)
        for i in indices:
            try:
                value = np.array(interpreter.get_tensor(i, sg))
            except ValueError:
                rows[i] = None
                continue
            if rows[i] is None:
                continue
            q = tensors[i].quantization
            if q is not None and value.dtype.kind in "iu" and q.scale.size:
                value = _dequantize(value, q)
            rows[i].append(value)
    out = {}
    for i, parts in rows.items():
        if not parts:
            continue
        if len(parts) == 1:
            out[i] = parts[0]
        elif all(p.ndim >= 1 and p.shape[0] == 1 for p in parts):
            out[i] = np.concatenate(parts, axis=0)
        else:
            out[i] = np.stack(parts)
    return out


def _dequantize(values: np.ndarray, q) -> np.ndarray:
    scale = q.scale.astype(np.float64).reshape(-1)
    zero_point = q.zero_point.astype(np.float64).reshape(-1)
    if scale.size > 1 and values.ndim:
        shape = [1] * values.ndim
        shape[q.quantized_dimension] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    else:
        scale, zero_point = scale[0], zero_point[0]
    return ((values.astype(np.float64) - zero_point) * scale).astype(np.float32)


def _compare_tensor(op, t, label: str, expected: np.ndarray, actual: np.ndarray,
                    limits: dict, explicit=()) -> TensorParity:
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    base = dict(tensor=t.index, name=t.name, op_index=op.index, op_type=op.type, layer=label,
                shape=[int(d) for d in expected.shape])
    if expected.shape != actual.shape:
        if expected.size != actual.size:
            return TensorParity(**base, max_abs_error=float("inf"), max_rel_error=float("inf"),
                                cosine=0.0, max_steps=None, passed=False,
                                failures=[f"shape {list(actual.shape)} != "
                                          f"{list(expected.shape)}"])
        actual = actual.reshape(expected.shape)
    err = np.abs(expected - actual)
    finite = bool(np.all(np.isfinite(actual)) or not np.all(np.isfinite(expected)))
    err = np.where(np.isnan(err) & np.isnan(expected) & np.isnan(actual), 0.0, err)
    max_abs = float(err.max())
    scale = max(float(np.ptp(expected)) if np.all(np.isfinite(expected)) else 0.0,
                float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)), 1e-12)
    max_rel = max_abs / scale
    e, a = np.nan_to_num(expected.ravel()), np.nan_to_num(actual.ravel())
    denom = np.linalg.norm(e) * np.linalg.norm(a)
    cosine = float(np.dot(e, a) / denom) if denom else (1.0 if max_abs == 0 else 0.0)
    steps = None
    if t.is_quantized and t.quantization is not None and t.quantization.scale.size:
        step = float(np.max(t.quantization.scale))
        steps = max_abs / step if step else None
    failures = [] if finite else ["non-finite values in the Keras tensor"]

    def check(key, value, ok):
        if key in limits and value is not None and not ok(value, limits[key]):
            return [f"{key.replace('min_', '').replace('max_', '')} {value:.4g} "
                    f"outside {key}={limits[key]}"]
        return []

    within = check("max_steps", steps, lambda v, lim: v <= lim)
    aligned = check("min_cosine", cosine, lambda v, lim: v >= lim)
    if steps is not None:
        # A quantized tensor matches when it is within max_steps of its own quantization
        # step, or (integer rounding accumulates over layers) still points the same way
        # (min_cosine): it diverges only when both fail. Tiny activations a few steps wide
        # have meaningless relative errors, so max_rel_error applies only when passed.
        failures += within + aligned if within and aligned else []
        if "max_rel_error" in explicit:
            failures += check("max_rel_error", max_rel, lambda v, lim: v <= lim)
    else:
        failures += check("max_rel_error", max_rel, lambda v, lim: v <= lim) + aligned
    failures += check("max_abs_error", max_abs, lambda v, lim: v <= lim)
    return TensorParity(**base, max_abs_error=max_abs, max_rel_error=max_rel, cosine=cosine,
                        max_steps=steps, passed=not failures, failures=failures)
