"""Discrete family: BUCKETIZE, UNIQUE, SPARSE_TO_DENSE, EMBEDDING_LOOKUP_SPARSE, RANK."""

from __future__ import annotations

import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers import KerasOp
from mlflow_tflite_keras.converter.registry import register

# EmbeddingLookupSparse's CombinerType.
_COMBINERS = {0: "sum", 1: "mean", 2: "sqrtn"}


@register("BUCKETIZE", layer="KerasOp(bucketize)")
def bucketize(op, ctx):
    boundaries = [float(b) for b in np.asarray(op.opt("boundaries", [])).reshape(-1)]
    return [ctx.op(op, "bucketize", ctx.value(op.inputs[0]), boundaries=boundaries)]


@register("UNIQUE", layer="KerasOp(unique_tflite)")
def unique(op, ctx):
    y, idx = ctx.op(op, "unique_tflite", ctx.value(op.inputs[0]),
                    idx_dtype=op.outputs[1].float_dtype)
    return [y, idx]


@register("SPARSE_TO_DENSE", layer="KerasOp(sparse_to_dense)")
def sparse_to_dense(op, ctx):
    indices, shape, values, default = ctx.inputs(op)[:4]
    shape = ctx.const(op.inputs[1], "the output shape")
    return [ctx.op(op, "sparse_to_dense", indices, values, default,
                   shape=[int(d) for d in np.asarray(shape).reshape(-1)])]


@register("EMBEDDING_LOOKUP_SPARSE",
          layer="KerasOp(embedding_lookup_sparse), the table a trainable weight")
def embedding_lookup_sparse(op, ctx):
    ids, indices, _, weights, params = ctx.inputs(op)[:5]
    dense_shape = np.asarray(ctx.const(op.inputs[2], "the dense shape")).reshape(-1)
    params = np.asarray(ctx.const(op.inputs[4], "the embedding table"), np.float32)
    combiner = _COMBINERS.get(op.opt("combiner", 0))
    if combiner is None:
        raise ConversionError(f"{op.type}: unknown combiner {op.opt('combiner')}.")
    values = [ids, indices, weights]
    if any(ctx.is_const(v) for v in values):
        raise ConversionError(f"{op.type}: ids, indices and weights must all be computed "
                              "at run time.")
    layer = KerasOp("embedding_lookup_sparse", constants={3: params}, n_inputs=3,
                    trainable_constants=True, name=ctx.name(op),
                    fn_kwargs={"out_rows": [int(d) for d in dense_shape[:-1]],
                               "combiner": combiner})
    return [layer(*values)]


@register("RANK", layer="(constant: the rank is known when the model is read)")
def rank(op, ctx):
    return [np.array(op.inputs[0].rank, dtype=op.outputs[0].float_dtype)]
