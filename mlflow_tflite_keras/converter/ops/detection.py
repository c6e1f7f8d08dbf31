"""Detection family: NON_MAX_SUPPRESSION_V4 / V5 as the non-trainable
:class:`~mlflow_tflite_keras.converter.layers.detection.NonMaxSuppression` layer, with LiteRT's
padded outputs (``max_output_size`` indices, zeros after the valid ones)."""

from __future__ import annotations

import numpy as np

from mlflow_tflite_keras.converter.layers.detection import NonMaxSuppression
from mlflow_tflite_keras.converter.registry import register


def _scalar(op, ctx, i, what):
    return np.asarray(ctx.const(op.inputs[i], what)).reshape(-1)[0]


@register("NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5",
          layer="NonMaxSuppression (non-trainable)")
def non_max_suppression(op, ctx):
    boxes, scores = ctx.inputs(op)[:2]
    v5 = op.type == "NON_MAX_SUPPRESSION_V5"
    layer = NonMaxSuppression(
        max_output_size=int(_scalar(op, ctx, 2, "max_output_size")),
        iou_threshold=float(_scalar(op, ctx, 3, "the IoU threshold")),
        score_threshold=float(_scalar(op, ctx, 4, "the score threshold")),
        soft_nms_sigma=float(_scalar(op, ctx, 5, "soft_nms_sigma")) if v5 else 0.0,
        with_scores=v5, name=ctx.name(op))
    out = ctx.apply(layer, boxes, scores)
    return list(out)
