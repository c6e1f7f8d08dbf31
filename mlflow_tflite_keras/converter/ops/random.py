"""Random family: RANDOM_STANDARD_NORMAL, RANDOM_UNIFORM, MULTINOMIAL as seeded Keras random
draws (:class:`~mlflow_tflite_keras.converter.layers.random.RandomSample`). Parity with
LiteRT is on distribution, not values: both are seeded, with different generators."""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers.random import RandomSample
from mlflow_tflite_keras.converter.registry import register


def _seed(op):
    # RandomOptions: both seeds 0 means "nondeterministic" in TFLite; one seed is enough here.
    seed, seed2 = int(op.opt("seed", 0) or 0), int(op.opt("seed2", 0) or 0)
    return None if not (seed or seed2) else (seed * 1000003 + seed2) % (2 ** 31)


def _anchor(ctx):
    """A model input: the layer's node in the graph (the sample does not depend on it)."""
    for t in ctx.graph.inputs:
        v = ctx.values.get(t.index)
        if isinstance(v, keras.KerasTensor):
            return v
    raise ConversionError("A random op in a model without run-time inputs.")


@register("RANDOM_STANDARD_NORMAL", "RANDOM_UNIFORM",
          layer="RandomSample(normal / uniform), seeded")
def random_tensor(op, ctx):
    kind = "normal" if op.type == "RANDOM_STANDARD_NORMAL" else "uniform"
    shape = ctx.value(op.inputs[0])
    if ctx.is_const(shape):
        dims, source = [int(d) for d in np.asarray(shape).reshape(-1)], _anchor(ctx)
    else:  # a shape computed at run time (e.g. the input's): the dynamic dimensions stay open
        dims, source = list(op.outputs[0].shape_signature), shape
    layer = RandomSample(kind, shape=dims, seed=_seed(op), name=ctx.name(op),
                         output_dtype=op.outputs[0].float_dtype)
    return [layer(source)]


@register("MULTINOMIAL", layer="RandomSample(categorical), seeded")
def multinomial(op, ctx):
    logits = ctx.value(op.inputs[0])
    n = int(np.asarray(ctx.const(op.inputs[1], "the number of samples")).reshape(-1)[0])
    layer = RandomSample("categorical", num_samples=n, seed=_seed(op), name=ctx.name(op),
                         output_dtype=op.outputs[0].float_dtype)
    return [layer(ctx.tensor(logits))]
