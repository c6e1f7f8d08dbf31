"""Non-max suppression with LiteRT's padded outputs (NON_MAX_SUPPRESSION_V4/V5)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE


# ---- non-max suppression -----------------------------------------------------------------------

def _pairwise_iou(boxes):
    """IoU of every pair of ``[y1, x1, y2, x2]`` boxes (corners in any order), 0 where a box
    has no area, as TFLite's NMS kernel computes it."""
    y1, x1, y2, x2 = (boxes[:, k] for k in range(4))
    ymin, ymax = ops.minimum(y1, y2), ops.maximum(y1, y2)
    xmin, xmax = ops.minimum(x1, x2), ops.maximum(x1, x2)
    area = (ymax - ymin) * (xmax - xmin)
    ih = ops.maximum(ops.minimum(ymax[:, None], ymax[None]) -
                     ops.maximum(ymin[:, None], ymin[None]), 0.0)
    iw = ops.maximum(ops.minimum(xmax[:, None], xmax[None]) -
                     ops.maximum(xmin[:, None], xmin[None]), 0.0)
    inter = ih * iw
    union = area[:, None] + area[None] - inter
    valid = ops.logical_and(ops.greater(area[:, None], 0), ops.greater(area[None], 0))
    valid = ops.logical_and(valid, ops.not_equal(union, 0))
    return ops.where(valid, inter / ops.where(valid, union, 1.0), 0.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NonMaxSuppression(keras.layers.Layer):
    """TFLite NON_MAX_SUPPRESSION_V4 / V5 (single class, float boxes ``[n, 4]`` and scores
    ``[n]``), non-trainable, with LiteRT's padded outputs: ``max_output_size`` selected
    indices (zeros after the valid ones), with V5 their (soft-NMS decayed) scores, and the
    number of valid selections.

    Greedy selection in score order: a box is dropped once its IoU with a selected box
    reaches ``iou_threshold``; with ``soft_nms_sigma > 0`` the others' scores decay by
    ``exp(-0.5 * iou**2 / sigma)`` and drop out at ``score_threshold``. Selecting eagerly
    (each step decays every remaining score) is the same selection as LiteRT's lazy queue.
    """

    def __init__(self, max_output_size: int, iou_threshold: float, score_threshold: float,
                 soft_nms_sigma: float = 0.0, with_scores: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.max_output_size = int(max_output_size)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.with_scores = bool(with_scores)

    def call(self, boxes, scores):
        boxes = ops.cast(boxes, "float32")
        scores = ops.cast(scores, "float32")
        iou = _pairwise_iou(boxes)
        n = ops.shape(scores)[0]
        positions = ops.arange(n, dtype="int32")
        live = ops.greater(scores, self.score_threshold)
        current = scores
        scale = -0.5 / self.soft_nms_sigma if self.soft_nms_sigma > 0 else 0.0
        picked, picked_scores, valid = [], [], ops.zeros((), "int32")
        for _ in range(self.max_output_size):
            best = ops.cast(ops.argmax(ops.where(live, current, -np.inf)), "int32")
            ok = ops.take(live, best)
            picked.append(ops.where(ok, best, 0))
            picked_scores.append(ops.where(ok, ops.take(current, best), 0.0))
            valid = valid + ops.cast(ok, "int32")
            row = ops.take(iou, best, axis=0)
            if scale:
                current = current * ops.exp(scale * row * row)
            keep = ops.logical_and(ops.less(row, self.iou_threshold),
                                   ops.not_equal(positions, best))
            keep = ops.logical_and(keep, ops.greater(current, self.score_threshold))
            live = ops.logical_and(live, keep)
        indices = ops.stack(picked) if picked else ops.zeros((0,), "int32")
        if not self.with_scores:
            return indices, valid
        selected = ops.stack(picked_scores) if picked_scores else ops.zeros((0,), "float32")
        return indices, selected, valid

    def compute_output_spec(self, boxes, scores):
        m = self.max_output_size
        out = [keras.KerasTensor((m,), dtype="int32")]
        if self.with_scores:
            out.append(keras.KerasTensor((m,), dtype="float32"))
        return (*out, keras.KerasTensor((), dtype="int32"))

    def get_config(self):
        return {**super().get_config(), "max_output_size": self.max_output_size,
                "iou_threshold": self.iou_threshold, "score_threshold": self.score_threshold,
                "soft_nms_sigma": self.soft_nms_sigma, "with_scores": self.with_scores}
