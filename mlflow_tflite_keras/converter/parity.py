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


def check_parity(tflite_model, keras_model, inputs=None, *, n_samples: int = 8,
                 signature_key=None, seed: int = 0, **tolerances) -> ParityReport:
    """Run the interpreter and the Keras model on the same inputs and compare every output.

    ``inputs``: a dict name -> array (or one array) in the float domain; random when None.
    ``tolerances`` override the defaults for the model's quantization kind
    (``max_rel_error``, ``max_abs_error``, ``max_steps``, ``min_cosine``, ``min_top1``).
    """
    model = TFLiteModel.load(tflite_model)
    runner = TFLiteRunner(model)
    spec = runner.signature(signature_key)
    if inputs is None:
        inputs = sample_inputs(model, n_samples, seed, signature_key)
    elif not isinstance(inputs, dict):
        inputs = {spec.inputs[0].name: np.asarray(inputs)}
    expected = runner.predict(inputs, signature_key=signature_key, dequantize=True)
    actual = _keras_predict(keras_model, spec, inputs)
    limits = {**DEFAULT_TOLERANCES.get(model.quantization_kind, {}), **tolerances}
    outputs = [
        _compare(o, expected[o.name], actual[i], limits) for i, o in enumerate(spec.outputs)
    ]
    n = next(iter(inputs.values())).shape[0] if spec.batched else 1
    return ParityReport(model.quantization_kind, int(n), limits, outputs)


def _keras_predict(keras_model, spec, inputs: dict) -> list[np.ndarray]:
    import keras

    if len(spec.inputs) == 1:
        feed = np.asarray(inputs[spec.inputs[0].name])
    else:
        feed = {name: np.asarray(inputs[s.name]) for name, s in
                zip(_input_names(keras_model), spec.inputs)}
    result = keras_model(feed, training=False)
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
