"""Sparse family: DENSIFY. The IR already decodes sparse constants to dense arrays
(:mod:`mlflow_tflite_keras.converter.sparsity`), so DENSIFY passes its input on."""

from __future__ import annotations

from mlflow_tflite_keras.converter.registry import register


@register("DENSIFY", layer="(identity: sparse constants are densified when the model is read)")
def densify(op, ctx):
    return [ctx.value(op.inputs[0])]
