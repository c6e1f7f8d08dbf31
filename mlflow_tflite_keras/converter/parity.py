"""Numerical parity between a ``.tflite`` model (LiteRT interpreter) and a Keras model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.converter.compiled import (
    COMPILED_MAX_REL_DIFF,
    CompiledCheck,
    CompiledInferenceError,
    as_output_list,
    compare_compiled,
    predict_compiled,
)
from mlflow_tflite_keras.converter.hybrid import hybrid_input_quantization, is_hybrid
from mlflow_tflite_keras.converter.metrics import error_metrics
from mlflow_tflite_keras.errors import reject_unknown_keywords
from mlflow_tflite_keras.noise import keras_noise_silenced
from mlflow_tflite_keras.recipes import (
    EMULATED_COMPILED_MAX_STEPS,
    EMULATED_TOLERANCES,
    DEFAULT_TOLERANCES,
    OP_BY_OP_TOLERANCES,
    OP_MAX_STEPS,
    WEIGHT_TYPES,
    is_hybrid_kind,
    tolerance_family,
)
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel, integer_range

__all__ = ["DivergenceReport", "OutputParity", "ParityReport", "TensorParity", "check_ops",
           "check_parity", "check_sequence_parity", "locate_divergence", "output_roles",
           "sample_inputs", "sample_sequences", "snap_to_input_grid", "streaming_reference"]

# What ``check_parity`` / ``locate_divergence`` accept as ``**tolerances``: every limit a
# default uses, and those only callers set.
TOLERANCES = tuple(sorted({key for limits in DEFAULT_TOLERANCES.values() for key in limits}
                          | {"max_abs_error", "max_rel_error", "float_max_rel_error",
                             "max_steps", "min_cosine", "min_top1"}))

_OP_LIMITS = ("op_max_steps", "op_max_rel_error")


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
    # "class-scores" (softmax/logistic/argmax-consumed, judged by top-1 too) or "values"
    kind: str = "values"
    # quantized outputs: {whole steps off: element count} (0 = bit-exact)
    step_histogram: dict[int, int] | None = None

    @property
    def share_exact(self) -> float | None:
        """Share of elements at 0 quantization steps (quantized outputs)."""
        if not self.step_histogram:
            return None
        return self.step_histogram.get(0, 0) / sum(self.step_histogram.values())


@dataclass
class ParityReport:
    """The interpreter against the Keras model called eagerly (``outputs``) and compiled
    (``compiled_outputs``: ``model.predict``, the way the model is served and trained)."""

    quantization: str
    n_samples: int
    tolerances: dict
    outputs: list[OutputParity]
    divergence: DivergenceReport | None = None  # check_parity(..., debug=True)
    compiled_outputs: list[OutputParity] | None = None  # None: not run compiled
    compiled: CompiledCheck | None = None  # compiled vs eager (a crash is a failure)
    ops: DivergenceReport | None = None  # check_ops, for full-integer models
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (all(o.passed for o in self.outputs) and self.compiled_passed is not False
                and not (self.ops is not None and self.ops.diverged))

    @property
    def compiled_passed(self) -> bool | None:
        if self.compiled is None:
            return None
        return self.compiled.passed and all(o.passed for o in self.compiled_outputs or ())

    def metrics(self, prefix: str = "parity_") -> dict[str, float]:
        """Flat numeric metrics for ``mlflow.log_metrics``."""
        out = {f"{prefix}passed": float(self.passed)}
        if self.ops is not None:
            out[f"{prefix}op_max_steps"] = max((t.max_steps or 0.0 for t in self.ops.tensors),
                                               default=0.0)
            out[f"{prefix}op_max_rel_error"] = max(
                (t.max_rel_error for t in self.ops.tensors if t.max_steps is None), default=0.0)
        if self.compiled is not None:
            out[f"{prefix}compiled_passed"] = float(self.compiled_passed)
            if self.compiled.max_rel_diff is not None:
                out[f"{prefix}compiled_max_rel_diff"] = float(self.compiled.max_rel_diff)
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
            if o.step_histogram:
                steps += f" exact={o.share_exact:.4f} histogram={o.step_histogram}"
            rows.append(f"  {o.name}: max_abs={o.max_abs_error:.3g} rel={o.max_rel_error:.3g}"
                        f" cos={o.cosine:.6f}{top1}{steps}"
                        + (f"  <- {'; '.join(o.failures)}" if o.failures else ""))
        if self.ops is not None:
            first = self.ops.first
            worst = max((t.max_steps or 0.0 for t in self.ops.tensors), default=0.0)
            worst_rel = max((t.max_rel_error for t in self.ops.tensors if t.max_steps is None),
                            default=0.0)
            rows.append(f"  op by op: {len(self.ops.tensors)} op outputs, worst {worst:.2f} steps,"
                        f" {worst_rel:.3g} rel"
                        + (f"; FAILED at op {first.op_index} ({first.op_type}) tensor "
                           f"'{_short(first.name)}': {'; '.join(first.failures)}"
                           if first else ""))
        rows += [f"  note: {n}" for n in self.notes]
        if self.compiled is not None:
            rows.append(f"  {self.compiled}")
            rows += [f"  compiled {o.name}: {'; '.join(o.failures)}"
                     for o in self.compiled_outputs or () if o.failures]
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
        grid = s if s.quantized else _quantized_input_grid(model, spec.subgraph_index, s)
        if grid is not None:
            # On the grid of the integer tensor the model quantizes the input to, so that the
            # input's own rounding is not counted as a difference of the reconstruction.
            info = np.iinfo(grid.dtype)
            q = rng.integers(info.min, info.max + 1, size=shape)
            feeds[s.name] = grid.dequantize(q.astype(grid.dtype))
        elif np.issubdtype(s.dtype, np.floating):
            feeds[s.name] = rng.uniform(-1, 1, size=shape).astype(s.dtype)
        elif s.dtype == np.bool_:
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            high = _index_bound(model, spec.subgraph_index, s.index) or 10
            feeds[s.name] = rng.integers(0, high, size=shape).astype(s.dtype)
    return feeds


def snap_to_input_grid(model: TFLiteModel, inputs: dict, signature_key=None) -> dict:
    """``inputs`` with every float input that the model quantizes (QUANTIZE right after the
    input) rounded to that quantization's grid: the values the integer kernels actually see,
    so a comparison measures the arithmetic, not the input's rounding."""
    spec = TFLiteRunner(model).signature(signature_key)
    out = dict(inputs)
    for s in spec.inputs:
        grid = None if s.quantized else _quantized_input_grid(model, spec.subgraph_index, s)
        if grid is not None and s.name in out:
            out[s.name] = grid.dequantize(grid.quantize(np.asarray(out[s.name], np.float32)))
    return out


def _quantized_input_grid(model: TFLiteModel, subgraph_index: int, s):
    """For a float input consumed only by QUANTIZE ops (full-integer models with float I/O),
    the quantized tensor it becomes, as a runtime spec; else None."""
    from mlflow_tflite_keras.runtime import TensorSpec

    sg = model.subgraphs[subgraph_index]
    consumers = [op for op in sg.operators if s.index in op.inputs]
    if not consumers or any(op.opcode != "QUANTIZE" for op in consumers):
        return None
    t = sg.tensors[consumers[0].outputs[0]]
    if t.quantization is None or t.dtype is None or not np.issubdtype(t.dtype, np.integer) \
            or t.quantization.per_channel:
        return None
    return TensorSpec(t.name, t.index, np.dtype(t.dtype), t.shape, t.shape_signature,
                      t.quantization)


# Ops that pass values through unchanged (up to quantization and layout).
_PASSTHROUGH_OPS = frozenset({"DEQUANTIZE", "QUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS",
                              "IDENTITY"})
_CLASS_SCORE_OPS = frozenset({"SOFTMAX", "LOGISTIC", "LOG_SOFTMAX"})


def output_roles(model: TFLiteModel, subgraph_index: int, spec) -> tuple[object, str]:
    """How to judge one output: ``((quantization, integer dtype) or None, kind)``, for the
    integer tensor behind the output (the output itself, or the input of the DEQUANTIZE that
    produces a float output of a full-integer model), whose steps measure the error; ``kind``
    is ``"class-scores"`` for a softmax/logistic output or one consumed by ARG_MAX/ARG_MIN
    (with a last axis > 1), else ``"values"`` (regressors, landmarks, embeddings...)."""
    sg = model.subgraphs[subgraph_index]
    producers = {o: op for op in sg.operators for o in op.outputs}
    quantized = spec if spec.quantized else None
    if quantized is None:
        op = producers.get(spec.index)
        if op is not None and op.opcode == "DEQUANTIZE":
            t = sg.tensors[op.inputs[0]]
            if t.quantization is not None and t.dtype is not None and \
                    np.issubdtype(t.dtype, np.integer) and not t.quantization.per_channel:
                quantized = t
    kind = "values"
    if len(spec.shape) >= 2 and spec.shape[-1] > 1:
        index, seen = spec.index, set()
        while index in producers and index not in seen:
            seen.add(index)
            op = producers[index]
            if op.opcode in _CLASS_SCORE_OPS:
                kind = "class-scores"
                break
            if op.opcode not in _PASSTHROUGH_OPS or not op.inputs:
                break
            index = op.inputs[0]
        if any(op.opcode in ("ARG_MAX", "ARG_MIN") and spec.index in op.inputs[:1]
               for op in sg.operators):
            kind = "class-scores"
    return (None if quantized is None else (quantized.quantization, np.dtype(quantized.dtype))), \
        kind


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


@keras_noise_silenced()
def check_parity(tflite_model, keras_model, inputs=None, *, n_samples: int = 8,
                 signature_key=None, seed: int = 0, debug: bool = False, tensor_map=None,
                 compiled=True, **tolerances) -> ParityReport:
    """Run the interpreter and the Keras model on the same inputs and compare every output.

    ``inputs``: a dict name -> array (or one array) in the float domain; random when None
    (for models that quantize a float input, on that input's quantization grid).
    ``tolerances`` override the defaults for the model's quantization kind
    (``max_rel_error``, ``max_abs_error``, ``max_steps``, ``min_cosine``, ``min_top1``;
    ``float_max_rel_error`` for float outputs not behind an integer tensor only).
    Output shapes must match exactly. Quantized outputs, and float outputs dequantized from an
    integer tensor, are judged in that tensor's quantization steps; top-1 agreement is judged
    only for class-score outputs (see :func:`output_roles`).

    ``compiled``: the Keras model is also run the way it is served and trained,
    ``model.predict`` (a ``tf.function`` graph), compared with the interpreter and with the
    eager call (within 1e-5 of the output range); both must pass. ``"isolated"`` runs it in a
    child process, so that a crash of the graph runtime fails the check instead of killing
    the caller; ``False`` skips it.
    ``debug=True`` also compares every intermediate tensor on the same inputs
    (:func:`locate_divergence`, ``tensor_map`` as there) and stores the result in
    ``report.divergence``.
    """
    if _is_streaming_source(tflite_model, signature_key):  # state across invokes: sequences
        return check_sequence_parity(tflite_model, keras_model, inputs, n_samples=n_samples,
                                     seed=seed, signature_key=signature_key, debug=debug,
                                     compiled=compiled, **tolerances)
    reject_unknown_keywords("check_parity", tolerances, TOLERANCES)
    model, runner, spec, inputs = _prepare(tflite_model, inputs, n_samples, seed,
                                           signature_key)
    expected = runner.predict(inputs, signature_key=signature_key, dequantize=True)
    feed = _keras_feed(keras_model, spec, inputs)
    actual = as_output_list(keras_model(feed, training=False), keras_model)
    family = tolerance_family(model.quantization_kind)
    from mlflow_tflite_keras.converter.layers.quantization import is_emulated

    emulated = is_emulated(keras_model) and family in EMULATED_TOLERANCES
    op_limits = {} if emulated else {**OP_BY_OP_TOLERANCES.get(family, {}),
                                     **{k: v for k, v in tolerances.items() if k in _OP_LIMITS}}
    ops = notes = None
    if op_limits:
        try:
            ops = check_ops(model, keras_model, inputs, tensor_map=tensor_map,
                            signature_key=signature_key, served=expected,
                            max_steps=op_limits.get("op_max_steps", OP_MAX_STEPS),
                            max_rel_error=op_limits.get("op_max_rel_error", 1e-4))
        except ValueError as e:
            notes = [f"not checked op by op ({e}): judged end to end"]
    defaults = EMULATED_TOLERANCES[family] if emulated else DEFAULT_TOLERANCES.get(family, {})
    if ops is not None:
        defaults = {k: v for k, v in defaults.items() if k == "min_top1"}
    limits = {**defaults, **op_limits, **{k: v for k, v in tolerances.items()
                                           if k not in _OP_LIMITS}}
    roles = [output_roles(model, spec.subgraph_index, o) for o in spec.outputs]

    def compare_all(values):
        return compare_outputs(spec, expected, values, limits, roles)

    n = next(iter(inputs.values())).shape[0] if spec.batched else 1
    report = ParityReport(model.quantization_kind, int(n), limits, compare_all(actual))
    if compiled:
        _check_compiled_run(report, keras_model, feed, actual, compare_all, compiled,
                            _emulated_compiled_limit(report, actual, family) if emulated else None)
    report.ops = ops
    report.notes = notes or []
    if debug:
        report.divergence = locate_divergence(model, keras_model, inputs,
                                              signature_key=signature_key,
                                              tensor_map=tensor_map, **tolerances)
    return report


def _emulated_compiled_limit(report, eager, family: str) -> float:
    """How far (relative to the output range) ``model.predict`` of an emulated model may be
    from its eager call: :data:`~mlflow_tflite_keras.recipes.EMULATED_COMPILED_MAX_STEPS`
    steps of its quantized outputs (rounding ties resolved the other way), at least the
    float models' limit."""
    limit = COMPILED_MAX_REL_DIFF
    steps = EMULATED_COMPILED_MAX_STEPS.get(family, 0.0)
    for out, value in zip(report.outputs, eager):
        value = np.asarray(value, np.float64)
        finite = value[np.isfinite(value)]  # the range error_metrics divides by
        span = max(float(np.ptp(finite)), float(np.abs(finite).max())) if finite.size else 0.0
        if out.quantization_step and span > 0:
            limit = max(limit, steps * out.quantization_step / span)
    return limit


def _check_compiled_run(report, keras_model, feed, eager, compare_all, compiled,
                        max_rel_diff=None) -> None:
    """Fill ``report.compiled`` (compiled vs eager within ``max_rel_diff`` of the output
    range, the float default when None; a crash fails) and ``report.compiled_outputs``
    (compiled vs the interpreter)."""
    try:
        values = predict_compiled(keras_model, feed, isolated=compiled == "isolated")
    except CompiledInferenceError as e:
        report.compiled = CompiledCheck(False, None, str(e))
        return
    report.compiled = compare_compiled(eager, values, COMPILED_MAX_REL_DIFF
                                       if max_rel_diff is None else max_rel_diff)
    report.compiled_outputs = compare_all(values) if len(values) == len(eager) else None


def compare_outputs(spec, expected: dict, values: list, limits: dict, roles) -> list:
    """Each signature output of the interpreter (``expected``, by name) against the Keras
    model's outputs in signature order, judged by ``limits`` and each output's role."""
    if len(values) != len(spec.outputs):
        raise MlflowException(
            f"The Keras model has {len(values)} outputs; the .tflite signature has "
            f"{len(spec.outputs)} ({', '.join(o.name for o in spec.outputs)}).",
            error_code=INVALID_PARAMETER_VALUE)
    return [_compare(o, expected[o.name], values[i], limits, *roles[i])
            for i, o in enumerate(spec.outputs)]


def _keras_feed(keras_model, spec, inputs: dict):
    if len(spec.inputs) == 1:
        return np.asarray(inputs[spec.inputs[0].name])
    return {name: np.asarray(inputs[s.name]) for name, s in
            zip(_input_names(keras_model), spec.inputs)}


def _input_names(keras_model) -> list[str]:
    return [t.name for t in keras_model.inputs] if not isinstance(keras_model.input, dict) \
        else list(keras_model.input)


# Quantized values are compared dequantized, in float32: a difference of k steps measures k
# within a few 1e-6 (seen 1.0000076), which must not fail a limit of k steps.
STEP_SLACK = 1e-4


def within_steps(steps: float, limit: float) -> bool:
    """``steps`` (a measured difference in quantization steps) is within ``limit``."""
    return steps <= limit + STEP_SLACK


def _compare(spec, expected: np.ndarray, actual: np.ndarray, limits: dict,
             quantized=None, kind: str = "values") -> OutputParity:
    failures = []
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return OutputParity(spec.name, float("inf"), float("inf"), 0.0, None, None, None,
                            None, False, [f"shape {list(actual.shape)} (Keras) != "
                                         f"{list(expected.shape)} (interpreter)"], kind)
    err = np.abs(expected - actual)
    quantization = None
    if quantized is not None:
        quantization, dtype = quantized
        err = _beyond_saturation(err, expected, actual, quantization,
                                 (np.iinfo(dtype).min, np.iinfo(dtype).max))
    max_abs, max_rel, cosine = error_metrics(expected, actual, err)
    top1 = decisive = None
    if kind == "class-scores" and expected.ndim >= 2 and expected.shape[-1] > 1:
        agree = expected.argmax(-1) == actual.argmax(-1)
        top1 = float(np.mean(agree))
        ranked = np.sort(expected, axis=-1)
        margin = ranked[..., -1] - ranked[..., -2]
        row_error = err.max(axis=-1)
        clear = margin > 2 * row_error
        decisive = float(np.mean(agree[clear])) if np.any(clear) else 1.0
    step = steps = histogram = None
    if quantization is not None:
        step = float(np.max(quantization.scale))
        steps = max_abs / step if step else None
        scale = quantization.broadcast(expected.ndim)[0]
        counts = np.unique(np.rint(err / scale).astype(np.int64), return_counts=True)
        histogram = {int(k): int(c) for k, c in zip(*counts)}
    if not np.all(np.isfinite(actual)):
        failures.append("non-finite values in the Keras output")
    checks = [
        ("max_rel_error", max_rel, lambda v, lim: v <= lim),
        # outputs not behind an integer tensor (float kernels after the last one)
        ("float_max_rel_error", max_rel if quantization is None else None,
         lambda v, lim: v <= lim),
        ("max_abs_error", max_abs, lambda v, lim: v <= lim),
        ("max_steps", steps, within_steps),
        ("min_cosine", cosine, lambda v, lim: v >= lim),
        ("min_top1", decisive, lambda v, lim: v >= lim),
    ]
    for key, value, ok in checks:
        if key in limits and value is not None and not ok(value, limits[key]):
            failures.append(f"{key.replace('min_', '').replace('max_', '')} {value:.4g} "
                            f"outside {key}={limits[key]}")
    return OutputParity(spec.name, max_abs, max_rel, cosine, top1, decisive, step, steps,
                        not failures, failures, kind, histogram)


def _beyond_saturation(err, expected, actual, quantization, bounds) -> np.ndarray:
    """Where the integer output sits at the end of its range, the integer model saturated: a
    float model that goes further out in the same direction agrees with it."""
    scale, zero_point = quantization.broadcast(expected.ndim)
    low, high = ((b - zero_point) * scale for b in bounds)
    tol = 0.5 * scale
    at_high, at_low = expected >= high - tol, expected <= low + tol
    err = np.where(at_high, np.maximum(expected - actual, 0.0), err)
    return np.where(at_low, np.maximum(actual - expected, 0.0), err)


# ---- streaming (stateful) models: sequences, one frame per invoke ------------------------------

#: Frames per sequence that :func:`check_sequence_parity` compares by default.
DEFAULT_TIME_STEPS = 32


def _is_streaming_source(tflite_model, signature_key=None) -> bool:
    from mlflow_tflite_keras.converter.streaming import is_streaming

    model = TFLiteModel.load(tflite_model)
    return is_streaming(model, model.signature(signature_key).subgraph_index)


def sample_sequences(tflite_model, n: int = 4, time_steps: int = DEFAULT_TIME_STEPS,
                     seed: int = 0, signature_key=None) -> dict[str, np.ndarray]:
    """Random frame sequences ``[n, time_steps, *frame]`` for a streaming model's inputs (each
    frame drawn as :func:`sample_inputs` draws a row)."""
    model = TFLiteModel.load(tflite_model)
    spec = TFLiteRunner(model).signature(signature_key)
    rows = sample_inputs(model, n * time_steps, seed, signature_key)
    return {s.name: rows[s.name].reshape(n, time_steps, *s.shape[1:]) for s in spec.inputs}


def streaming_reference(tflite_model, sequences: dict, signature_key=None
                        ) -> dict[str, np.ndarray]:
    """What the interpreter answers to each sequence fed one frame per invoke, from the
    model's initial state (a fresh interpreter per sequence): name -> ``[n, time, *out]``."""
    model = TFLiteModel.load(tflite_model)
    runner = TFLiteRunner(model)
    spec = runner.signature(signature_key)
    n = next(iter(sequences.values())).shape[0]
    per_sequence = []
    for i in range(n):
        # A stateful model gets a fresh interpreter per call and runs the rows in order.
        frames = {s.name: np.asarray(sequences[s.name][i]) for s in spec.inputs}
        per_sequence.append(runner.predict(frames, signature_key=signature_key,
                                           dequantize=True))
    return {o.name: np.stack([p[o.name] for p in per_sequence]) for o in spec.outputs}


def _keras_sequences(keras_model, sequences: np.ndarray) -> list[np.ndarray]:
    """The Keras model's outputs (in order) on ``[n, time, *frame]``: the sequence model in
    one call, a stateful (one frame per call) model frame by frame, reset before each
    sequence."""

    from mlflow_tflite_keras.converter.streaming import reset_streaming_state, streaming_layer

    def as_list(result):
        return as_output_list(result, keras_model)

    layer = streaming_layer(keras_model)
    if layer is None or not layer.stateful:
        return as_list(keras_model(sequences, training=False))
    per_sequence = []
    for sequence in sequences:
        reset_streaming_state(keras_model)
        steps = [as_list(keras_model(frame[None], training=False)) for frame in sequence]
        per_sequence.append([np.stack([s[k][0] for s in steps]) for k in range(len(steps[0]))])
    reset_streaming_state(keras_model)
    return [np.stack([p[k] for p in per_sequence]) for k in range(len(per_sequence[0]))]


def check_sequence_parity(tflite_model, keras_model, inputs=None, *,
                          time_steps: int = DEFAULT_TIME_STEPS, n_samples: int = 4,
                          signature_key=None, seed: int = 0, debug: bool = False,
                          compiled=True, **tolerances) -> ParityReport:
    """Parity of a streaming model: the interpreter fed ``time_steps`` frames one invoke at a
    time against the Keras model (from ``to_keras``) fed the same frames as a sequence.

    ``inputs``: ``[n, time, *frame]`` frames (an array, or a dict by input name) in the float
    domain; random when None (``n_samples`` sequences of ``time_steps`` frames, each frame
    within the input's range). Every step of every sequence is compared, with the same
    tolerances as :func:`check_parity` (quantized outputs in quantization steps);
    ``report.n_samples`` counts frames. ``compiled`` as in :func:`check_parity` (the sequence
    model through ``model.predict`` too; a stateful one-frame model is run frame by frame
    only). ``debug`` (intermediate tensors of one invoke) is not available for streaming
    models.
    """
    reject_unknown_keywords("check_sequence_parity", tolerances, TOLERANCES)
    if debug:
        raise ValueError("debug=True compares the intermediate tensors of one invoke; a "
                         "streaming model is compared as frame sequences, without it.")
    if int(time_steps) < 1:
        raise ValueError(f"time_steps must be >= 1, got {time_steps}.")
    model = TFLiteModel.load(tflite_model)
    spec = TFLiteRunner(model).signature(signature_key)
    if len(spec.inputs) != 1:
        raise ValueError("check_sequence_parity takes streaming models with one input.")
    if inputs is None:
        inputs = sample_sequences(model, n_samples, int(time_steps), seed, signature_key)
    elif not isinstance(inputs, dict):
        inputs = {spec.inputs[0].name: np.asarray(inputs)}
    sequences = np.asarray(inputs[spec.inputs[0].name])
    expected = streaming_reference(model, inputs, signature_key)
    actual = _keras_sequences(keras_model, sequences)
    limits = {**DEFAULT_TOLERANCES.get(tolerance_family(model.quantization_kind), {}),
              **tolerances}
    roles = [output_roles(model, spec.subgraph_index, o) for o in spec.outputs]

    def compare_all(values):
        return compare_outputs(spec, expected, values, limits, roles)

    report = ParityReport(model.quantization_kind,
                          int(sequences.shape[0] * sequences.shape[1]), limits,
                          compare_all(actual))
    from mlflow_tflite_keras.converter.streaming import streaming_layer

    layer = streaming_layer(keras_model)
    if compiled and not (layer is not None and layer.stateful):
        _check_compiled_run(report, keras_model, sequences, actual, compare_all, compiled)
    return report


# ---- debug mode: where does the Keras model start to differ? --------------------------------

# Tolerances that judge a whole model's outputs but not an intermediate tensor.
_OUTPUT_ONLY_LIMITS = ("min_top1", *_OP_LIMITS)


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
    mode: str = "cumulative (the Keras model run end to end)"

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


@keras_noise_silenced()
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

    reject_unknown_keywords("locate_divergence", tolerances, TOLERANCES)
    model, runner, spec, inputs = _prepare(tflite_model, inputs, n_samples, seed,
                                           signature_key)
    if tensor_map is None:
        from mlflow_tflite_keras.converter.convert import convert

        tensor_map = convert(model, signature_key=signature_key).report.tensor_map
    defaults = DEFAULT_TOLERANCES.get(tolerance_family(model.quantization_kind), {})
    limits = {k: v for k, v in {**defaults, **tolerances}.items()
              if k not in _OUTPUT_ONLY_LIMITS}

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


def check_ops(tflite_model, keras_model, inputs=None, *, tensor_map=None, n_samples: int = 2,
              signature_key=None, seed: int = 0, max_steps: float = OP_MAX_STEPS,
              max_rel_error: float = 1e-4, served=None) -> DivergenceReport:
    """Op by op: each op's Keras layers are fed the interpreter's values of that op's inputs
    and compared with the interpreter's value of its output. Errors do not accumulate, so a
    float reconstruction of a full-integer model is judged sharply: each quantized output
    within ``max_steps`` of its quantization step (saturation-aware), other outputs within
    ``max_rel_error`` of their range. A 5% error in any weight shows up at its layer, which
    the end-to-end comparison of a deep int8 model cannot resolve.

    ``tensor_map`` as in :func:`locate_divergence`. Ops whose Keras layers cannot be cut
    out between their inputs and outputs (folded, fused across ops) are listed as skipped.
    ``served``: the interpreter's outputs on ``inputs`` (by name, dequantized) when the caller
    has them already.
    """
    # keras.Model on intermediate tensors clones nodes into the layers (and then the model
    # no longer saves); Keras' graph Function evaluates the same cut without touching them.
    from keras.src.ops.function import Function

    model, runner, spec, inputs = _prepare(tflite_model, inputs, n_samples, seed,
                                           signature_key)
    if tensor_map is None:
        from mlflow_tflite_keras.converter.convert import convert

        tensor_map = convert(model, signature_key=signature_key).report.tensor_map
    from mlflow_tflite_keras.converter.ir import build_graph

    graph = build_graph(model, spec.subgraph_index)
    if any(t is not None and t.is_constant and getattr(t.quantization, "block_size", 0)
           for op in graph.ops for t in op.inputs):
        # LiteRT's reference hybrid kernels (the only ones that keep intermediate tensors)
        # disagree with its XNNPACK kernels on blockwise weights; judge those end to end.
        raise ValueError("blockwise-quantized weights")
    try:
        input_tensors = (list(keras_model.input.values())
                         if isinstance(keras_model.input, dict) else list(keras_model.inputs))
    except (AttributeError, ValueError) as e:  # e.g. a Sequential model never called
        raise ValueError(f"the Keras model has no functional graph ({e})") from e
    known = {s.index: kt for s, kt in zip(spec.inputs, input_tensors)}
    skipped: list[str] = []
    for index, (layer_name, node, out) in tensor_map.items():
        try:
            layer = keras_model.get_layer(layer_name)
            known.setdefault(index, layer._inbound_nodes[int(node)].output_tensors[int(out)])
        except (ValueError, IndexError, AttributeError):
            skipped.append(f"tensor {index}: no layer '{layer_name}' in the Keras model")
    plan = []
    for op in graph.ops:
        sources = [t for t in op.inputs if t is not None and t.index in known]
        targets = [t for t in op.outputs if t.index in known]
        if not targets or not sources:
            continue
        try:
            cut = Function([known[t.index] for t in sources],
                              [known[t.index] for t in targets])
        except Exception as e:  # the layers reach tensors outside this op's inputs
            skipped.append(f"op {op.index} {op.type}: not separable ({type(e).__name__})")
            continue
        plan.append((op, sources, targets, cut))
    if not plan:
        raise ValueError("no op of the .tflite model maps to layers of this Keras model"
                         " (not a reconstruction of it, or built per example)")
    wanted = sorted({t.index for _, src, dst, _ in plan for t in [*src, *dst]}
                    | set(spec.output_indices))
    values = _interpreter_tensors(model, runner, spec, inputs, wanted)
    if is_hybrid_kind(model.quantization_kind) and model.has_custom_ops:
        if served is None:
            served = runner.predict(inputs, signature_key=signature_key, dequantize=True)
        _reference_kernels_agree(spec, served, values)
    limits = {"max_steps": max_steps, "max_rel_error": max_rel_error}
    results = []
    for op, sources, targets, cut in plan:
        if any(values.get(t.index) is None for t in [*sources, *targets]):
            skipped.append(f"op {op.index} {op.type}: a tensor is not readable")
            continue
        feed = [values[t.index].astype(known[t.index].dtype) for t in sources]
        op_limits = limits
        if is_hybrid(op) and op.inputs[0] is sources[0]:
            # _interpreter_tensors runs LiteRT's builtin kernels (no delegate)
            feed[0] = hybrid_input_quantization(op, feed[0], kernel="builtin")
            op_limits = {**limits, "max_rel_error": max(max_rel_error, HYBRID_REPLAYED_MAX_REL)}
        elif _has_integer_weights(op):  # other hybrid kernels (SVDF, blockwise...): not replayed
            op_limits = {**limits, "max_rel_error": max(max_rel_error, HYBRID_MAX_REL_ERROR)}
        actual = as_output_list(cut(feed))
        for t, value in zip(targets, actual):
            results.append(_compare_op_output(op, t, values[t.index], value, op_limits))
    n = next(iter(inputs.values())).shape[0] if spec.batched else 1
    return DivergenceReport(model.quantization_kind, int(n), limits, results, skipped,
                            mode="op by op (each op fed the interpreter's inputs)")


# Hybrid kernels fed the replayed activation quantization: float noise on most (1e-6), up to
# 2.3e-3 of the range on some depthwise/wide convolutions (measured on the Keras apps).
HYBRID_REPLAYED_MAX_REL = 5e-3
# A hybrid kernel whose on-the-fly activation quantization is not replayed (blockwise weights,
# SVDF, sequence ops): within 1% of its output range (measured <= 0.4% on SVDF).
HYBRID_MAX_REL_ERROR = 1e-2


# LiteRT's reference hybrid kernels (which keep intermediate tensors) and its default ones
# (XNNPACK) quantize activations differently; they agree op by op, but the difference compounds
# end to end: 0.3% of the output range on a 3-layer int4 MLP, 12-29% on the deep Keras apps.
# Next to custom kernels (ai-edge-quantizer's Hadamard rotation) a single reference FC was
# seen 65% off: there, models whose kernels disagree by more than this are judged end to end.
KERNELS_AGREE_MAX_REL = 5e-2


def _reference_kernels_agree(spec, served: dict, values: dict) -> None:
    """The op-by-op check reads intermediate tensors from LiteRT's reference kernels; where
    those disagree with the default kernels the model runs with (seen: int4 hybrid
    FULLY_CONNECTED after ai-edge-quantizer's Hadamard rotation, 13-20% of the range), the
    ops would be judged against another computation: the model is judged end to end."""
    for o in spec.outputs:
        reference, default = values.get(o.index), served.get(o.name)
        if reference is None or default is None or reference.shape != default.shape:
            continue
        reference, default = np.asarray(reference, np.float64), np.asarray(default, np.float64)
        _, rel, _ = error_metrics(default, reference, np.abs(default - reference))
        if rel > KERNELS_AGREE_MAX_REL:
            raise ValueError(f"LiteRT's reference kernels differ from its default kernels by "
                             f"{rel:.3g} of the range of output '{o.name}'")


def _has_integer_weights(op) -> bool:
    outputs_float = all(not t.is_quantized for t in op.outputs)
    return outputs_float and any(t is not None and t.is_constant and t.is_quantized
                                 and t.type_name in WEIGHT_TYPES
                                 for t in op.inputs[1:])


def _compare_op_output(op, t, expected, actual, limits) -> TensorParity:
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    base = dict(tensor=t.index, name=t.name, op_index=op.index, op_type=op.type,
                layer=f"op {op.index}", shape=[int(d) for d in expected.shape])
    if expected.shape != actual.shape:
        return TensorParity(**base, max_abs_error=float("inf"), max_rel_error=float("inf"),
                            cosine=0.0, max_steps=None, passed=False,
                            failures=[f"shape {list(actual.shape)} != {list(expected.shape)}"])
    err = np.abs(expected - actual)
    steps = None
    q = t.quantization if t.is_quantized else None
    if q is not None and q.scale.size and not q.per_channel:
        err = _beyond_saturation(err, expected, actual, q, integer_range(t.type_name))
    max_abs, max_rel, cosine = error_metrics(expected, actual, err)
    if q is not None and q.scale.size and not q.per_channel:
        steps = max_abs / float(q.scale.reshape(-1)[0])
        failures = [] if within_steps(steps, limits["max_steps"]) else \
            [f"steps {steps:.3g} outside max_steps={limits['max_steps']}"]
    else:
        failures = [] if max_rel <= limits["max_rel_error"] else \
            [f"rel_error {max_rel:.3g} outside max_rel_error={limits['max_rel_error']}"]
    return TensorParity(**base, max_abs_error=max_abs, max_rel_error=max_rel,
                        cosine=cosine, max_steps=steps, passed=not failures, failures=failures)


def _interpreter_tensors(model: TFLiteModel, runner: TFLiteRunner, spec, inputs: dict,
                         indices: list[int]) -> dict[int, np.ndarray]:
    """Every tensor in ``indices`` after one run (dequantized when quantized); a model that
    cannot take the whole batch runs row by row and the rows are concatenated."""
    from mlflow_tflite_keras.runtime import _Session

    interpreter = runner.reference_interpreter(experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    session = _Session(interpreter, (lambda: interpreter) if model.has_custom_ops else None)
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
                value = q.dequantize(value)
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
    finite = bool(np.all(np.isfinite(actual)) or not np.all(np.isfinite(expected)))
    max_abs, max_rel, cosine = error_metrics(expected, actual, np.abs(expected - actual))
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

    within = check("max_steps", steps, within_steps)
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
