"""Layers of the custom operators vendors ship (``converter/ops/custom.py``): MediaPipe's
pooling with argmax / unpooling, TFLite's detection post-processing and the attention face
mesh's transforms, each as its kernel computes it."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE


def compute_padding(stride, in_size, filter_size, out_size):
    """TFLite's ``ComputePadding`` (dilation 1): the top/left padding."""
    return max(0, ((out_size - 1) * stride + filter_size - in_size) // 2)


def _shift(x, offset, size, axis):
    """``y[i] = x[i - offset]`` along ``axis`` for ``i < size``, zeros outside ``x``."""
    n = x.shape[axis]
    margin = size + abs(offset) + n
    pad = [(0, 0)] * len(x.shape)
    pad[axis] = (margin, margin)
    padded = ops.pad(x, pad)
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(margin - offset, margin - offset + size)
    return padded[tuple(index)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """MediaPipe's ``MaxPoolingWithArgmax2D``: ``[max, argmax]`` over each NHWC window. The
    argmax is the position inside the window, ``y * pool_width + x``, plus 0.1, as float32
    (the first maximum wins); the window is placed as TFLite's SAME/VALID pooling places it."""

    def __init__(self, pool_size=(2, 2), strides=(2, 2), padding="same", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(v) for v in pool_size)
        self.strides = tuple(int(v) for v in strides)
        self.padding = str(padding)

    def _geometry(self, height, width):
        sizes = []
        for n, f, s in ((height, self.pool_size[0], self.strides[0]),
                        (width, self.pool_size[1], self.strides[1])):
            out = (n + s - 1) // s if self.padding == "same" else (n - f + s) // s
            sizes.append((out, compute_padding(s, n, f, out)))
        return sizes

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        (oh, top), (ow, left) = self._geometry(height, width)
        (fh, fw), (sh, sw) = self.pool_size, self.strides
        bottom = max(0, (oh - 1) * sh + fh - height - top)
        right = max(0, (ow - 1) * sw + fw - width - left)
        # Outside the image never wins: the kernel only visits in-bounds positions.
        padded = ops.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)],
                         constant_values=float("-inf"))
        windows = ops.stack([padded[:, fy:fy + (oh - 1) * sh + 1:sh, fx:fx + (ow - 1) * sw + 1:sw]
                             for fy in range(fh) for fx in range(fw)], axis=-1)
        pooled = ops.max(windows, axis=-1)
        argmax = ops.cast(ops.argmax(windows, axis=-1), "float32") + np.float32(0.1)
        return pooled, argmax

    def compute_output_shape(self, input_shape):
        (oh, _), (ow, _) = self._geometry(input_shape[1], input_shape[2])
        shape = (input_shape[0], oh, ow, input_shape[3])
        return shape, shape

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxUnpooling2D(keras.layers.Layer):
    """MediaPipe's ``MaxUnpooling2D``: each value written at the window position its float
    index names (``int(index) = y * pool_width + x``) in an output ``pool_size`` times larger,
    zeros elsewhere. Where windows overlap, the later window (row-major) wins, as in the
    kernel's loop. Indices outside the window write nothing."""

    def __init__(self, pool_size=(2, 2), strides=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(v) for v in pool_size)
        self.strides = tuple(int(v) for v in strides)

    def call(self, x, indices):
        (fh, fw), (sh, sw) = self.pool_size, self.strides
        height, width = x.shape[1], x.shape[2]
        oh, ow = height * fh, width * fw
        top = compute_padding(sh, oh, fh, height)
        left = compute_padding(sw, ow, fw, width)
        index = ops.cast(indices, "int32")  # C float -> int conversion: truncation
        batch, channels = ops.shape(x)[0], x.shape[3]
        out = ops.zeros((batch, oh, ow, channels), x.dtype)

        def spread(v):
            """Value at input (iy, ix) -> position (iy * sh, ix * sw) of a zero grid."""
            v = ops.expand_dims(ops.expand_dims(v, 2), 4)  # [B, H, 1, W, 1, C]
            v = ops.pad(v, [(0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1), (0, 0)])
            return ops.reshape(v, (batch, height * sh, width * sw, channels))

        # Later writes win: apply windows offsets from the lowest priority (largest fy, fx)
        # to the highest, each overriding where it writes.
        for fy in reversed(range(fh)):
            for fx in reversed(range(fw)):
                hit = ops.equal(index, fy * fw + fx)
                values = _shift(_shift(spread(ops.where(hit, x, ops.zeros_like(x))),
                                       fy - top, oh, 1), fx - left, ow, 2)
                written = _shift(_shift(spread(ops.cast(hit, x.dtype)), fy - top, oh, 1),
                                 fx - left, ow, 2)
                out = ops.where(written > 0, values, out)
        return out

    def compute_output_shape(self, x_shape, indices_shape=None):
        return (x_shape[0], x_shape[1] * self.pool_size[0], x_shape[2] * self.pool_size[1],
                x_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "strides": list(self.strides)}


def _iou_row(box, boxes):
    """IoU of ``box [L, 4]`` with each of ``boxes [L, N, 4]`` (ymin, xmin, ymax, xmax), as
    the kernel computes it in float32: 0 when either area is not positive."""
    box = ops.expand_dims(box, 1)
    area_i = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    area_j = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    inter_h = ops.maximum(ops.minimum(box[..., 2], boxes[..., 2])
                          - ops.maximum(box[..., 0], boxes[..., 0]), 0.0)
    inter_w = ops.maximum(ops.minimum(box[..., 3], boxes[..., 3])
                          - ops.maximum(box[..., 1], boxes[..., 1]), 0.0)
    inter = inter_h * inter_w
    union = area_i + area_j - inter
    valid = ops.logical_and(area_i > 0, area_j > 0)
    return ops.where(valid, inter / ops.where(valid, union, ops.ones_like(union)), 0.0)


def greedy_nms(scores, boxes, score_threshold, iou_threshold, limit):
    """The kernel's single-class NMS on ``L`` independent lanes: candidates scoring at least
    ``score_threshold`` in decreasing score order (ties: lower index first, its stable sort),
    each kept unless an earlier kept box overlaps it with IoU above ``iou_threshold``, until
    ``limit`` are kept. Returns ``(order [L, N], kept [L, N])``: the candidate order and which
    of those positions are kept."""
    n = scores.shape[-1]
    key = ops.where(scores >= score_threshold, scores, float("-inf"))
    sorted_scores, order = ops.top_k(key, n)  # top_k: ties keep the lower index first
    active = sorted_scores >= score_threshold
    sorted_boxes = ops.take_along_axis(boxes, ops.expand_dims(order, -1), axis=1)
    positions = ops.arange(n, dtype="int32")
    lanes = ops.shape(scores)[0]
    kept = ops.zeros_like(active)
    count = ops.zeros((lanes,), "int32")
    n_valid = ops.max(ops.sum(ops.cast(active, "int32"), axis=-1))

    def cond(i, active, kept, count):
        return ops.logical_and(i < n_valid, ops.any(count < limit))

    def body(i, active, kept, count):
        here = ops.equal(positions, i)  # [N]
        candidate = ops.logical_and(ops.any(ops.logical_and(active, here), axis=-1),
                                    count < limit)  # [L]
        box = ops.sum(ops.where(ops.expand_dims(here, -1), sorted_boxes, 0.0), axis=1)
        overlap = _iou_row(box, sorted_boxes) > iou_threshold
        suppress = ops.logical_and(ops.logical_and(overlap, positions > i),
                                   ops.expand_dims(candidate, -1))
        active = ops.logical_and(active, ops.logical_not(suppress))
        kept = ops.logical_or(kept, ops.logical_and(ops.expand_dims(candidate, -1), here))
        return i + 1, active, kept, count + ops.cast(candidate, "int32")

    _, _, kept, _ = ops.while_loop(cond, body, (ops.convert_to_tensor(0, "int32"), active,
                                                kept, count))
    return order, kept


def _first_kept(values, kept, k):
    """The first ``k`` kept positions (in order) of ``values [L, N, ...]``, with a mask of
    which of the ``k`` slots exist. Pads with zeros when fewer than ``k`` are kept."""
    n = kept.shape[-1]
    rank = ops.where(kept, n - ops.arange(n, dtype="int32"), 0)
    if n < k:
        rank = ops.pad(rank, [(0, 0), (0, k - n)])
    top, slot = ops.top_k(rank, k)
    present = top > 0
    slot = ops.minimum(slot, n - 1)
    return [ops.take_along_axis(v, slot if len(v.shape) == 2
                                else ops.expand_dims(slot, -1), axis=1) for v in values], present


@keras.saving.register_keras_serializable(package=PACKAGE)
class DetectionPostProcess(keras.layers.Layer):
    """TFLite's ``TFLite_Detection_PostProcess``: SSD box decoding with constant anchors
    ``[N, 4]`` (ycenter, xcenter, h, w) and per-class or fast NMS. Inputs box encodings
    ``[B, N, >=4]`` and class scores ``[B, N, num_classes (+1 background)]``; outputs
    ``boxes [B, D, 4]`` (ymin, xmin, ymax, xmax), ``classes [B, D]``, ``scores [B, D]`` and
    ``num_detections [B]`` (float32), ``D = max_detections * max_classes_per_detection``,
    unused rows zero. Not trainable: its only weight is the anchors."""

    def __init__(self, num_anchors, max_detections=10, max_classes_per_detection=1,
                 detections_per_class=100, use_regular_nms=False, nms_score_threshold=0.0,
                 nms_iou_threshold=0.5, num_classes=1, y_scale=1.0, x_scale=1.0, h_scale=1.0,
                 w_scale=1.0, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.max_detections = int(max_detections)
        self.max_classes_per_detection = int(max_classes_per_detection)
        self.detections_per_class = int(detections_per_class)
        self.use_regular_nms = bool(use_regular_nms)
        self.nms_score_threshold = float(nms_score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.num_classes = int(num_classes)
        self.scales = tuple(float(v) for v in (y_scale, x_scale, h_scale, w_scale))
        self.anchors = self.add_weight(name="anchors", shape=(self.num_anchors, 4),
                                       initializer="zeros", trainable=False)

    @property
    def detections(self) -> int:
        return self.max_detections * self.max_classes_per_detection

    def decode(self, encodings):
        """Center-size encodings -> corners; the kernel's double-precision arithmetic, each
        center and half size rounded to float32 before the corners are formed."""
        e = ops.cast(encodings[..., :4], "float64")
        a = ops.cast(self.anchors, "float64")
        ys, xs, hs, ws = self.scales
        yc = ops.cast(e[..., 0] / ys * a[:, 2] + a[:, 0], "float32")
        xc = ops.cast(e[..., 1] / xs * a[:, 3] + a[:, 1], "float32")
        half_h = ops.cast(0.5 * ops.exp(e[..., 2] / hs) * a[:, 2], "float32")
        half_w = ops.cast(0.5 * ops.exp(e[..., 3] / ws) * a[:, 3], "float32")
        return ops.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], axis=-1)

    def call(self, encodings, class_scores):
        boxes = self.decode(encodings)  # [B, N, 4]
        offset = class_scores.shape[-1] - self.num_classes  # 1 with a background class
        scores = ops.cast(class_scores[..., offset:], "float32")  # [B, N, C]
        if self.use_regular_nms:
            return self._regular(boxes, scores)
        return self._fast(boxes, scores)

    def _pad_rows(self, tensor, rows):
        missing = self.detections - rows
        if missing <= 0:
            return tensor
        pad = [(0, 0), (0, missing)] + [(0, 0)] * (len(tensor.shape) - 2)
        return ops.pad(tensor, pad)

    def _regular(self, boxes, scores):
        n, c = self.num_anchors, self.num_classes
        batch = ops.shape(boxes)[0]
        lane_scores = ops.reshape(ops.transpose(scores, (0, 2, 1)), (-1, n))  # [B*C, N]
        lane_boxes = ops.reshape(ops.repeat(ops.expand_dims(boxes, 1), c, axis=1), (-1, n, 4))
        order, kept = greedy_nms(lane_scores, lane_boxes, self.nms_score_threshold,
                                 self.nms_iou_threshold, self.detections_per_class)
        sorted_scores = ops.take_along_axis(lane_scores, order, axis=1)
        selected = ops.where(kept, sorted_scores, float("-inf"))
        selected = ops.reshape(selected, (batch, c * n))
        anchor = ops.reshape(order, (batch, c * n))
        k = self.max_detections
        if c * n < k:
            selected = ops.pad(selected, [(0, 0), (0, k - c * n)],
                               constant_values=float("-inf"))
            anchor = ops.pad(anchor, [(0, 0), (0, k - c * n)])
        top, slot = ops.top_k(selected, k)
        present = top > float("-inf")
        box_index = ops.take_along_axis(anchor, slot, axis=1)
        out_boxes = ops.take_along_axis(boxes, ops.expand_dims(box_index, -1), axis=1)
        out_boxes = ops.where(ops.expand_dims(present, -1), out_boxes, 0.0)
        out_classes = ops.where(present, ops.cast(slot // n, "float32"), 0.0)
        out_scores = ops.where(present, top, 0.0)
        count = ops.cast(ops.sum(ops.cast(present, "int32"), axis=1), "float32")
        return (self._pad_rows(out_boxes, k), self._pad_rows(out_classes, k),
                self._pad_rows(out_scores, k), count)

    def _fast(self, boxes, scores):
        k, per = self.max_detections, self.max_classes_per_detection
        used = min(per, self.num_classes)
        order, kept = greedy_nms(ops.max(scores, axis=-1), boxes, self.nms_score_threshold,
                                 self.nms_iou_threshold, k)
        sorted_boxes = ops.take_along_axis(boxes, ops.expand_dims(order, -1), axis=1)
        sorted_class_scores = ops.take_along_axis(scores, ops.expand_dims(order, -1), axis=1)
        (det_boxes, det_scores), present = _first_kept([sorted_boxes, sorted_class_scores],
                                                       kept, k)
        top_scores, top_classes = ops.top_k(det_scores, used)  # [B, k, used]
        mask = ops.expand_dims(present, -1)
        out_scores = ops.where(mask, top_scores, 0.0)
        out_classes = ops.where(mask, ops.cast(top_classes, "float32"), 0.0)
        out_boxes = ops.where(ops.expand_dims(mask, -1),
                              ops.repeat(ops.expand_dims(det_boxes, 2), used, axis=2), 0.0)
        if used < per:  # the kernel leaves these columns unwritten
            out_scores = ops.pad(out_scores, [(0, 0), (0, 0), (0, per - used)])
            out_classes = ops.pad(out_classes, [(0, 0), (0, 0), (0, per - used)])
            out_boxes = ops.pad(out_boxes, [(0, 0), (0, 0), (0, per - used), (0, 0)])
        count = ops.cast(ops.sum(ops.cast(present, "int32"), axis=1), "float32")
        return (ops.reshape(out_boxes, (-1, k * per, 4)), ops.reshape(out_classes, (-1, k * per)),
                ops.reshape(out_scores, (-1, k * per)), count)

    def compute_output_shape(self, encodings_shape, class_scores_shape=None):
        b, d = encodings_shape[0], self.detections
        return (b, d, 4), (b, d), (b, d), (b,)

    def get_config(self):
        ys, xs, hs, ws = self.scales
        config = super().get_config()
        config.pop("trainable", None)
        return {**config, "num_anchors": self.num_anchors,
                "max_detections": self.max_detections,
                "max_classes_per_detection": self.max_classes_per_detection,
                "detections_per_class": self.detections_per_class,
                "use_regular_nms": self.use_regular_nms,
                "nms_score_threshold": self.nms_score_threshold,
                "nms_iou_threshold": self.nms_iou_threshold, "num_classes": self.num_classes,
                "y_scale": ys, "x_scale": xs, "h_scale": hs, "w_scale": ws}


def _rows(matrix):
    """The first two rows of each ``[4, 4]`` transform, as ``[B, 1, 4]`` float32 columns."""
    m = ops.reshape(ops.cast(matrix, "float32"), (-1, 16))
    return [ops.reshape(m[:, i], (-1, 1, 1)) for i in range(8)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class Landmarks2TransformMatrix(keras.layers.Layer):
    """MediaPipe's ``Landmarks2TransformMatrix`` (version 2): from landmarks ``[B, N, 3]``
    (pixels), the ``[B, 4, 4]`` matrix mapping a crop of ``output_height x output_width``
    onto the image: rotation so the left -> right landmarks lie at
    ``target_rotation_radians``, centred on and scaled to the rotated bounding box of the
    ``subset_idxs`` landmarks (times ``scale_x`` / ``scale_y``)."""

    def __init__(self, subset_idxs=(), left_rotation_idx=0, right_rotation_idx=1,
                 target_rotation_radians=0.0, output_height=1, output_width=1, scale_x=1.0,
                 scale_y=1.0, **kwargs):
        super().__init__(**kwargs)
        self.subset_idxs = [int(v) for v in subset_idxs]
        self.left_rotation_idx, self.right_rotation_idx = int(left_rotation_idx), \
            int(right_rotation_idx)
        self.target_rotation_radians = float(target_rotation_radians)
        self.output_height, self.output_width = int(output_height), int(output_width)
        self.scale_x, self.scale_y = float(scale_x), float(scale_y)

    def call(self, landmarks):
        points = ops.reshape(ops.cast(landmarks, "float32"), (ops.shape(landmarks)[0], -1, 3))
        left = points[:, self.left_rotation_idx]
        right = points[:, self.right_rotation_idx]
        rotation = np.float32(self.target_rotation_radians) - ops.arctan2(
            right[:, 1] - left[:, 1], right[:, 0] - left[:, 0])  # [B]
        cos, sin = ops.cos(rotation)[:, None], ops.sin(rotation)[:, None]
        subset = ops.take(points, np.asarray(self.subset_idxs, np.int32), axis=1)  # [B, K, 3]
        x, y = subset[..., 0], subset[..., 1]
        rx, ry = cos * x - sin * y, sin * x + cos * y
        x_min, x_max = ops.min(rx, axis=1), ops.max(rx, axis=1)
        y_min, y_max = ops.min(ry, axis=1), ops.max(ry, axis=1)
        width, height = x_max - x_min, y_max - y_min
        mx, my = (x_min + x_max) / 2, (y_min + y_max) / 2
        cos, sin = cos[:, 0], sin[:, 0]
        # The centre back in image coordinates (rotation by -r), then
        # T = shift(centre) . rotate(-r) . scale . shift(-output / 2).
        cx, cy = cos * mx + sin * my, -sin * mx + cos * my
        sx = self.scale_x * width / self.output_width
        sy = self.scale_y * height / self.output_height
        a00, a01, a10, a11 = cos * sx, sin * sy, -sin * sx, cos * sy
        hw, hh = self.output_width / 2.0, self.output_height / 2.0
        tx = cx - a00 * hw - a01 * hh
        ty = cy - a10 * hw - a11 * hh
        zero, one = ops.zeros_like(cos), ops.ones_like(cos)
        rows = [a00, a01, zero, tx, a10, a11, zero, ty, zero, zero, one, zero,
                zero, zero, zero, one]
        return ops.reshape(ops.stack(rows, axis=-1), (-1, 4, 4))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4, 4)

    def get_config(self):
        return {**super().get_config(), "subset_idxs": self.subset_idxs,
                "left_rotation_idx": self.left_rotation_idx,
                "right_rotation_idx": self.right_rotation_idx,
                "target_rotation_radians": self.target_rotation_radians,
                "output_height": self.output_height, "output_width": self.output_width,
                "scale_x": self.scale_x, "scale_y": self.scale_y}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformTensorBilinear(keras.layers.Layer):
    """MediaPipe's ``TransformTensorBilinear`` (version 2): samples ``x [B, H, W, C]`` at
    ``matrix . (out_x, out_y, 0, 1)`` for each output pixel of ``output_size``, bilinearly;
    pixels mapped outside ``[0, W-1] x [0, H-1]`` are zero. ``align_corners`` applies the
    kernel's half-pixel correction to the matrix's translation."""

    def __init__(self, output_size=(1, 1), align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.output_size = tuple(int(v) for v in output_size)
        self.align_corners = bool(align_corners)

    def call(self, x, matrix):
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        oh, ow = self.output_size
        x0, x1, _, x3, y0, y1, _, y3 = _rows(matrix)
        if self.align_corners:  # in double precision, as the kernel's += of a double
            x3 = ops.cast(ops.cast(x3, "float64") + ops.cast(x0, "float64") * 0.5
                          + ops.cast(x1, "float64") * 0.5 - 0.5, "float32")
            y3 = ops.cast(ops.cast(y3, "float64") + ops.cast(y0, "float64") * 0.5
                          + ops.cast(y1, "float64") * 0.5 - 0.5, "float32")
        out_x = np.arange(ow, dtype=np.float32).reshape(1, 1, ow)
        out_y = np.arange(oh, dtype=np.float32).reshape(1, oh, 1)
        tx = x0 * out_x + x1 * out_y + x3  # [B, oh, ow]
        ty = y0 * out_x + y1 * out_y + y3
        inside = (tx >= 0) & (tx <= width - 1) & (ty >= 0) & (ty <= height - 1)
        fx, fy = ops.floor(tx), ops.floor(ty)
        right, lower = tx - fx, ty - fy
        # One zero row and column past the edge: the kernel reads those corners as 0.
        padded = ops.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        flat = ops.reshape(padded, (-1, (height + 1) * (width + 1), channels))
        ix = ops.cast(ops.clip(fx, 0, width), "int32")
        iy = ops.cast(ops.clip(fy, 0, height), "int32")

        def corner(dy, dx):
            index = (ops.minimum(iy + dy, height)) * (width + 1) + ops.minimum(ix + dx, width)
            index = ops.reshape(index, (-1, oh * ow, 1))
            values = ops.take_along_axis(flat, ops.repeat(index, channels, axis=2), axis=1)
            return ops.reshape(values, (-1, oh, ow, channels))

        right, lower = right[..., None], lower[..., None]
        upper = (1.0 - right) * corner(0, 0) + right * corner(0, 1)
        below = (1.0 - right) * corner(1, 0) + right * corner(1, 1)
        result = lower * below + (1.0 - lower) * upper
        return ops.where(inside[..., None], result, 0.0)

    def compute_output_shape(self, x_shape, matrix_shape=None):
        return (x_shape[0], *self.output_size, x_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.output_size),
                "align_corners": self.align_corners}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformLandmarks(keras.layers.Layer):
    """MediaPipe's ``TransformLandmarks``: each landmark (groups of ``dimensions`` values
    along the last axis) mapped by the matrix's first two rows, ``x' = m00 x + m01 y + m03 *
    scale``, ``y' = m10 x + m11 y + m13 * scale``; a third value (z) passes through."""

    def __init__(self, dimensions=3, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.dimensions = int(dimensions)
        self.scale = float(scale)

    def call(self, landmarks, matrix):
        shape = landmarks.shape
        d = self.dimensions
        points = ops.reshape(landmarks, (-1, int(np.prod(shape[1:-1])) * (shape[-1] // d), d))
        x0, x1, _, x3, y0, y1, _, y3 = _rows(matrix)
        x3, y3 = x3 * np.float32(self.scale), y3 * np.float32(self.scale)
        x, y = points[..., 0:1], points[..., 1:2]
        moved = [x0[:, 0] * x + x1[:, 0] * y + x3[:, 0], y0[:, 0] * x + y1[:, 0] * y + y3[:, 0]]
        out = ops.concatenate(moved + ([points[..., 2:]] if d > 2 else []), axis=-1)
        return ops.reshape(out, (-1, *shape[1:]))

    def compute_output_shape(self, landmarks_shape, matrix_shape=None):
        return landmarks_shape

    def get_config(self):
        return {**super().get_config(), "dimensions": self.dimensions, "scale": self.scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Landmarks2TransformMatrixV1(keras.layers.Layer):
    """MediaPipe's ``Landmarks2TransformMatrix`` version 1: from landmarks ``[B, 1, 1, 3N]``
    (in ``[0, landmarks_range]``), the ``[B, 4, 4]`` matrix ``to_absolute . rotation .
    scale . to_relative`` mapping an ``output_hw`` crop onto an ``input_hw`` image: rotated
    by ``-atan(dy / dx)`` of the left -> right landmarks, the ``subset`` landmarks' rotated
    bounding box times ``bbox_size_multiplier``. The kernel writes the 3x3 product into the
    4x4 output with a zero third column and an identity last row."""

    def __init__(self, subset=(), left_rotation_idx=0, right_rotation_idx=1,
                 landmarks_range=1, bbox_size_multiplier=1.0, input_hw=(1, 1),
                 output_hw=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.subset = [int(v) for v in subset]
        self.left_rotation_idx, self.right_rotation_idx = int(left_rotation_idx), \
            int(right_rotation_idx)
        self.landmarks_range = int(landmarks_range)
        self.bbox_size_multiplier = float(bbox_size_multiplier)
        self.input_hw = tuple(int(v) for v in input_hw)
        self.output_hw = tuple(int(v) for v in output_hw)

    def call(self, landmarks):
        points = ops.reshape(ops.cast(landmarks, "float32"), (ops.shape(landmarks)[0], -1, 3))
        left = points[:, self.left_rotation_idx]
        right = points[:, self.right_rotation_idx]
        alpha = -ops.arctan((right[:, 1] - left[:, 1]) / (right[:, 0] - left[:, 0]))
        cos, sin = ops.cos(alpha), ops.sin(alpha)
        subset = ops.take(points, np.asarray(self.subset, np.int32), axis=1)
        x, y = subset[..., 0], subset[..., 1]
        rx = x * cos[:, None] - y * sin[:, None]
        ry = x * sin[:, None] + y * cos[:, None]
        # The kernel starts its running max / min at -1e5 / 1e5.
        x_max, y_max = ops.maximum(ops.max(rx, axis=1), -1e5), ops.maximum(ops.max(ry, axis=1),
                                                                           -1e5)
        x_min, y_min = ops.minimum(ops.min(rx, axis=1), 1e5), ops.minimum(ops.min(ry, axis=1),
                                                                          1e5)
        r = float(self.landmarks_range)
        bx = (x_max - x_min) * self.bbox_size_multiplier
        by = (y_max - y_min) * self.bbox_size_multiplier
        mx, my = (x_max + x_min) / 2.0, (y_max + y_min) / 2.0
        # rotation by -alpha: cos(-a) = cos a, sin(-a) = -sin a
        rmx, rmy = mx * cos + my * sin, -mx * sin + my * cos
        zero, one = ops.zeros_like(cos), ops.ones_like(cos)

        def mat(rows):
            return ops.reshape(ops.stack([v if not isinstance(v, float) else v * one
                                          for v in rows], axis=-1), (-1, 3, 3))

        (ih, iw), (oh, ow) = self.input_hw, self.output_hw
        to_absolute = mat([(iw - 1) / 2.0 * one, zero, (iw - 1) / 2.0 * one,
                           zero, (ih - 1) / 2.0 * one, (ih - 1) / 2.0 * one, zero, zero, one])
        rotation = mat([cos, sin, rmx / r * 2.0 - 1.0, -sin, cos, rmy / r * 2.0 - 1.0,
                        zero, zero, one])
        scale = mat([bx / r, zero, zero, zero, by / r, zero, zero, zero, one])
        to_relative = mat([2.0 / (ow - 1.0) * one, zero, -one, zero, 2.0 / (oh - 1.0) * one,
                           -one, zero, zero, one])
        itm = ops.matmul(ops.matmul(ops.matmul(to_absolute, rotation), scale), to_relative)
        rows = [itm[:, 0, 0], itm[:, 0, 1], zero, itm[:, 0, 2],
                itm[:, 1, 0], itm[:, 1, 1], zero, itm[:, 1, 2],
                itm[:, 2, 0], itm[:, 2, 1], itm[:, 2, 2], zero,
                zero, zero, zero, one]
        return ops.reshape(ops.stack(rows, axis=-1), (-1, 4, 4))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4, 4)

    def get_config(self):
        return {**super().get_config(), "subset": self.subset,
                "left_rotation_idx": self.left_rotation_idx,
                "right_rotation_idx": self.right_rotation_idx,
                "landmarks_range": self.landmarks_range,
                "bbox_size_multiplier": self.bbox_size_multiplier,
                "input_hw": list(self.input_hw), "output_hw": list(self.output_hw)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HadamardRotation(keras.layers.Layer):
    """ai-edge-quantizer's ``aeq.hadamard_rotation`` (LiteRT ``kernels/hadamard_rotation.cc``):
    the last axis, in blocks of ``hadamard_size`` (a power of two), multiplied by the
    Sylvester-ordered Walsh-Hadamard matrix scaled by ``1 / sqrt(hadamard_size)``. The
    quantizer rotated the consuming weights to match; the kernel does not apply the random
    sign vector it stores, so neither does this."""

    def __init__(self, hadamard_size, **kwargs):
        super().__init__(**kwargs)
        self.hadamard_size = int(hadamard_size)
        hadamard = np.ones((1, 1))
        while hadamard.shape[0] < self.hadamard_size:
            hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
        self.matrix = (hadamard / np.sqrt(self.hadamard_size)).astype("float32")

    def call(self, x):
        shape = ops.shape(x)
        blocks = ops.reshape(x, (-1, self.hadamard_size))
        return ops.reshape(ops.matmul(blocks, self.matrix), shape)

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "hadamard_size": self.hadamard_size}
