"""NON_MAX_SUPPRESSION_V4 / V5 against LiteRT: hard NMS, soft NMS (V5), score thresholds
that leave fewer boxes than ``max_output_size`` (padded outputs), corners in any order."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import case_fn, check_op


def boxes_and_scores(n=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.2, 0.8, (n, 2))
    sizes = rng.uniform(0.1, 0.4, (n, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    boxes[::3] = boxes[::3][:, [2, 3, 0, 1]]  # some with the corners swapped
    scores = rng.permutation(np.linspace(0.05, 0.95, n))  # distinct: no ties
    return boxes.astype(np.float32), scores.astype(np.float32)


BOXES, SCORES = boxes_and_scores()


def nms_v4(b, s, m, iou, st):
    return tf.raw_ops.NonMaxSuppressionV4(boxes=b, scores=s, max_output_size=m,
                                          iou_threshold=iou, score_threshold=st,
                                          pad_to_max_output_size=True)


def nms_v5(b, s, m, iou, st, sigma):
    return tf.raw_ops.NonMaxSuppressionV5(boxes=b, scores=s, max_output_size=m,
                                          iou_threshold=iou, score_threshold=st,
                                          soft_nms_sigma=sigma, pad_to_max_output_size=True)


@pytest.mark.parametrize("m, iou, st", [(6, 0.3, 0.0), (10, 0.5, 0.6), (4, 0.1, 0.2)],
                         ids=["six", "padded", "strict-iou"])
def test_non_max_suppression_v4(m, iou, st):
    fn = case_fn(lambda b, s, m, iou, st: nms_v4(b, s, m, iou, st), m=m, iou=iou, st=st)
    model, _ = check_op("NON_MAX_SUPPRESSION_V4", fn, [((12, 4), BOXES), ((12,), SCORES)])
    assert not model.trainable_weights


@pytest.mark.parametrize("m, iou, st, sigma", [
    (6, 0.4, 0.1, 0.0), (8, 1.0, 0.1, 0.5), (5, 0.6, 0.3, 0.2)],
    ids=["hard", "soft", "soft-and-hard"])
def test_non_max_suppression_v5(m, iou, st, sigma):
    fn = case_fn(lambda b, s, m, iou, st, sigma: nms_v5(b, s, m, iou, st, sigma),
                 m=m, iou=iou, st=st, sigma=sigma)
    check_op("NON_MAX_SUPPRESSION_V5", fn, [((12, 4), BOXES), ((12,), SCORES)])
