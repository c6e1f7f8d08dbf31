"""Window family: DILATE (interior padding) and REDUCE_WINDOW (a reduction over sliding
windows: sum, product, min, max, all, any), as ``KerasOp`` functions of ``keras.ops``."""

from __future__ import annotations

import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.registry import register

# ReduceWindowFunction -> reducer name of layers/discrete.py's reduce_window.
_REDUCERS = {1: "add", 2: "mul", 3: "min", 4: "max", 5: "all", 6: "any"}


def _ints(op, ctx, i, what):
    return [int(v) for v in np.asarray(ctx.const(op.inputs[i], what)).reshape(-1)]


@register("DILATE", layer="KerasOp(dilate)")
def dilate(op, ctx):
    x = ctx.value(op.inputs[0])
    pad = float(np.asarray(ctx.const(op.inputs[2], "the padding value")).reshape(-1)[0])
    return [ctx.op(op, "dilate", x, dilations=_ints(op, ctx, 1, "the dilations"),
                   padding_value=pad)]


@register("REDUCE_WINDOW", layer="KerasOp(reduce_window)")
def reduce_window(op, ctx):
    function = _REDUCERS.get(op.opt("reduceFunction", 0))
    if function is None:
        raise ConversionError(f"{op.type}: unsupported reduce function "
                              f"{op.opt('reduceFunction', 0)}.")
    x, init = ctx.inputs(op)[:2]
    return [ctx.op(op, "reduce_window", x, init, function=function,
                   window=_ints(op, ctx, 2, "the window shape"),
                   strides=_ints(op, ctx, 3, "the window strides"),
                   dilations=_ints(op, ctx, 4, "the window dilations"))]
