"""Fusions: op patterns rebuilt as one built-in Keras layer, so their parameters train.

Layer normalization reaches a ``.tflite`` file decomposed into small ops, both from Keras
(``LayerNormalization`` through TFLiteConverter: ``MEAN``, ``SQUARED_DIFFERENCE``, ``MEAN``,
``ADD eps``, ``RSQRT``, gamma folded into the ``RSQRT`` product,
``x * (gamma * r) + (beta - mean * gamma * r)``) and from PyTorch through litert-torch
(``MEAN`` over the last axis and size-1 axes, ``RESHAPE``\\ s, ``x * r + (0 - r * mean)``, then
``MUL gamma``, ``ADD beta``). Rebuilt op by op, gamma and beta are frozen constants; this
module finds such patterns and emits one ``keras.layers.LayerNormalization(axis=-1)`` whose
gamma and beta are trainable weights set from the constants (``scale``/``center`` off where
the pattern has none).

Matching. From each ``MEAN`` op of a float32 tensor ``x`` over its last axis (other reduced
axes must have size 1 in the shape signature), the ops of a small elementwise vocabulary that
consume only ``x``, constants and what the set already produces are collected. Each produced
tensor with ``x``'s shape is a candidate output ``y``, latest first: the ops ``y`` depends on
form the pattern when every tensor they produce but ``y`` is used only inside it and is not a
graph output, and a ``RSQRT`` (or ``SQRT``) of ``ADD(variance, scalar eps)`` is among them.
The pattern is then *evaluated* with the converter's own handlers on probe rows (zero rows
give beta, random rows gamma by least squares; a constant of the pattern equal to the
fit is taken exactly) and accepted only when it equals
``gamma * (x - mean) / sqrt(var + eps) + beta`` on random rows of several scales (down to
variances below ``eps``). So an unusual order of the same arithmetic still fuses, and
anything else (a mean over another axis, an intermediate used elsewhere, a different
epsilon placement) converts op by op as before. Quantized graphs and
``emulate_quantization`` builds are left alone.
"""

from __future__ import annotations

import numpy as np

from mlflow_tflite_keras.converter.ir import Graph, Op, Tensor
from mlflow_tflite_keras.recipes import is_float_kind

#: Ops a decomposed layer normalization is made of.
_VOCABULARY = {"MEAN", "RESHAPE", "SQUARED_DIFFERENCE", "SUB", "MUL", "ADD", "RSQRT", "SQRT",
               "DIV", "NEG", "SQUARE", "SUM"}
_TOLERANCE = 1e-4


class LayerNormFusion:
    """A step of :func:`~mlflow_tflite_keras.converter.subgraph.run_ops`: the ops of one
    decomposed layer normalization of ``x`` into ``y``, built as one ``LayerNormalization``."""

    def __init__(self, ops: list[Op], x: Tensor, y: Tensor, epsilon: float,
                 gamma: np.ndarray | None, beta: np.ndarray | None):
        self.ops, self.x, self.y = ops, x, y
        self.epsilon, self.gamma, self.beta = epsilon, gamma, beta

    @property
    def outputs(self) -> list[Tensor]:
        return [self.y]

    @property
    def labels(self) -> list[str]:
        return [f"{op.index}:{op.type}" for op in self.ops]

    def materialize(self, ctx, report=None, key_prefix: str = "") -> list[Op] | None:
        """Store ``y``'s value; or return the ops, for ``run_ops`` to build one by one."""
        import keras

        x = ctx.value(self.x)
        if not isinstance(x, keras.KerasTensor) or x.shape[-1] != self.x.shape[-1]:
            return self.ops  # a build-time constant (folded), or an unknown channel count
        last = self.ops[-1]
        ctx._current_op = last
        layer = keras.layers.LayerNormalization(
            axis=-1, epsilon=self.epsilon, center=self.beta is not None,
            scale=self.gamma is not None, name=ctx.name(last, "_layer_norm"))
        layer.build(tuple(x.shape))
        weights = [w for w in (self.gamma, self.beta) if w is not None]
        if weights:
            layer.set_weights([w.astype("float32") for w in weights])
        y = layer(x)
        ctx.values[self.y.index] = y
        if report is not None:
            for label in self.labels:
                report.layers[f"{key_prefix}{label}"] = [layer.name]
        return None


def plan(graph: Graph, steps: list | None, handlers, ctx) -> list | None:
    """``steps`` (or the graph's ops) with every fusable layer normalization replaced by one
    :class:`LayerNormFusion` at the place of its last op; ``steps`` unchanged when none is."""
    if getattr(ctx, "emulate_quantization", False) or _quantized(graph):
        return steps
    order = list(graph.ops if steps is None else steps)
    free = {id(s) for s in order if isinstance(s, Op)}  # ops not inside a wrapped region
    taken: set[int] = set()
    fusions = []
    for op in graph.ops:
        if op.type != "MEAN" or id(op) not in free or op.index in taken:
            continue
        fusion = _match(graph, op, free, taken, handlers, ctx)
        if fusion is not None:
            fusions.append(fusion)
            taken.update(o.index for o in fusion.ops)
    if not fusions:
        return steps
    at_last = {f.ops[-1].index: f for f in fusions}
    planned = []
    for s in order:
        if isinstance(s, Op) and s.index in taken:
            if s.index in at_last:
                planned.append(at_last[s.index])
            continue
        planned.append(s)
    return planned


def _quantized(graph: Graph) -> bool:
    return not is_float_kind(graph.model.quantization_kind)


def _float32(t: Tensor) -> bool:
    return t.type_name == "FLOAT32" and not t.is_quantized


def _last_axis_mean(op: Op) -> Tensor | None:
    """The MEAN's input when it reduces the last axis and otherwise only size-1 axes."""
    x, axes = op.input(0), op.input(1)
    if x is None or x.is_constant or axes is None or not axes.is_constant or x.rank < 1:
        return None
    reduced = {int(a) % x.rank for a in np.asarray(axes.data).ravel()}
    if x.rank - 1 not in reduced:
        return None
    if any(x.shape_signature[a] != 1 for a in reduced - {x.rank - 1}):
        return None
    return x


def _match(graph: Graph, mean: Op, free: set, taken: set, handlers, ctx):
    x = _last_axis_mean(mean)
    if x is None or not _float32(x) or x.shape[-1] < 2 or min(x.shape) < 1:
        return None
    # Grow the set of ops computed from x alone (with constants).
    members, produced = [mean], {t.index for t in mean.outputs}
    for op in graph.ops:
        if op.index <= mean.index or op.type not in _VOCABULARY or id(op) not in free \
                or op.index in taken:
            continue
        live = [t for t in op.inputs if t is not None and not t.is_constant]
        if live and all(t.index == x.index or t.index in produced for t in live) \
                and any(t.index in produced for t in live):
            members.append(op)
            produced.update(t.index for t in op.outputs)
    outputs = {t.index for t in graph.outputs}
    for candidate in reversed(members):
        y = candidate.outputs[0]
        if tuple(y.shape) != tuple(x.shape) or tuple(y.shape_signature) != \
                tuple(x.shape_signature):
            continue
        cone = _cone(graph, y, x, members)
        if mean not in cone or not all(_float32(t) for op in cone for t in op.outputs):
            continue
        inside = {id(op) for op in cone}
        if any(t.index in outputs or any(id(c) not in inside for c in graph.consumers.get(
                t.index, ())) for op in cone for t in op.outputs if t.index != y.index):
            continue
        epsilon = _epsilon(cone)
        if epsilon is None:
            continue
        fitted = _fit(graph, cone, x, y, epsilon, handlers, ctx)
        if fitted is not None:
            return LayerNormFusion(cone, x, y, epsilon, *fitted)
    return None


def _cone(graph: Graph, y: Tensor, x: Tensor, members: list[Op]) -> list[Op]:
    """The ops of ``members`` that ``y`` depends on, in graph order."""
    by_output = {t.index: op for op in members for t in op.outputs}
    needed, stack = {}, [y.index]
    while stack:
        op = by_output.get(stack.pop())
        if op is None or op.index in needed:
            continue
        needed[op.index] = op
        stack += [t.index for t in op.inputs if t is not None and not t.is_constant
                  and t.index != x.index]
    return [needed[i] for i in sorted(needed)]


def _epsilon(cone: list[Op]) -> float | None:
    """The scalar added to the variance under the (reciprocal) square root."""
    by_output = {t.index: op for op in cone for t in op.outputs}
    found = []
    for op in cone:
        if op.type not in ("RSQRT", "SQRT"):
            continue
        add = by_output.get(op.inputs[0].index)
        if add is None or add.type != "ADD":
            return None
        consts = [t for t in add.inputs if t is not None and t.is_constant]
        if len(consts) != 1 or consts[0].data.size != 1:
            return None
        found.append(float(np.asarray(consts[0].data).ravel()[0]))
    return found[0] if len(found) == 1 and found[0] > 0 else None


def _evaluate(graph: Graph, cone: list[Op], x: Tensor, y: Tensor, probe: np.ndarray, handlers,
              ctx) -> np.ndarray:
    values = {x.index: probe}
    for op in cone:
        inputs = {t.index: values.get(t.index, t.data) for t in op.inputs if t is not None}
        scratch = ctx.scratch(op, inputs)
        outs = handlers[op.type].convert(op, scratch)
        for t, v in zip(op.outputs, outs):
            if not isinstance(v, np.ndarray):
                raise TypeError("not folded")
            values[t.index] = v
    return np.asarray(values[y.index], dtype=np.float64)


def _fit(graph, cone, x, y, epsilon, handlers, ctx):
    """(gamma or None, beta or None) when the cone is a layer normalization of ``x`` over its
    last axis with this epsilon, else None. Evaluated with the handlers on probe rows."""
    shape = tuple(int(d) for d in x.shape)
    channels = shape[-1]
    rows = int(np.prod(shape[:-1]))
    rng = np.random.default_rng(0)

    def run(block):
        return _evaluate(graph, cone, x, y, block.reshape(shape).astype(np.float32), handlers,
                         ctx).reshape(rows, channels)

    def normalized(block):
        b = block.astype(np.float64)
        mu = b.mean(-1, keepdims=True)
        return (b - mu) / np.sqrt(((b - mu) ** 2).mean(-1, keepdims=True) + epsilon)

    try:
        beta = run(np.zeros((rows, channels)))[0]  # x = mean = 0: exactly beta
        num = den = 0.0
        for _ in range(4):  # least squares per channel (a few blocks: rows may be few)
            block = rng.normal(size=(rows, channels)) * 3.0 + 1.0
            n = normalized(block.astype(np.float32))
            num, den = num + ((run(block) - beta) * n).sum(0), den + (n * n).sum(0)
        gamma = num / den
        flat = np.repeat(rng.normal(size=(rows, 1)), channels, axis=1)
        if not np.allclose(run(flat), beta, atol=_TOLERANCE):
            return None
        for scale, offset in ((1.0, 0.0), (20.0, -5.0), (np.sqrt(epsilon) / 4, 0.5)):
            block = rng.normal(size=(rows, channels)) * scale + offset
            want = gamma * normalized(block.astype(np.float32)) + beta
            got = run(block)
            if not np.all(np.abs(got - want) <= _TOLERANCE * (1.0 + np.abs(want))):
                return None
    except Exception:  # noqa: BLE001 - a pattern the handlers cannot fold is not fused
        return None
    # The fit is float32 arithmetic: where a constant of the pattern is gamma (beta), take
    # it exactly.
    vectors = [np.asarray(t.data, np.float64).ravel() for op in cone for t in op.inputs
               if t is not None and t.is_constant and t.data.size == channels]
    gamma, beta = (next((v for v in vectors if np.allclose(v, fitted, rtol=_TOLERANCE,
                                                           atol=_TOLERANCE)), fitted)
                   for fitted in (gamma, beta))
    scale = bool(vectors) or not np.allclose(gamma, 1.0, atol=_TOLERANCE)
    center = bool(vectors) or not np.allclose(beta, 0.0, atol=_TOLERANCE)
    return (gamma.astype(np.float32) if scale else None,
            beta.astype(np.float32) if center else None)
