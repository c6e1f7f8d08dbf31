"""Custom operators vendors ship, keyed by custom code (``@register_custom``).

Each op's custom options are decoded as its kernel reads them:

* ``Convolution2DTransposeBias`` (MediaPipe, ``transpose_conv_bias.cc``): options are the C
  struct ``TfLiteTransposeConvParams`` (int32 ``padding`` 1=SAME 2=VALID, ``stride_width``,
  ``stride_height``); inputs ``input, weights [Cout, H, W, Cin], bias``; output size
  ``stride * (in - 1) + k - pad`` with SAME ``pad = max(0, k - (in - 1) % stride - 1)``, the
  top/left share ``pad // 2``: TF's SAME transposed convolution for that size, so a trainable
  ``keras.layers.Conv2DTranspose`` with bias. LiteRT runs the op through XNNPACK, which takes
  the output size stored in the file; where a file stores another size, that one is used.
* ``MaxPoolingWithArgmax2D`` / ``MaxUnpooling2D`` (MediaPipe, ``max_pool_argmax.cc`` /
  ``max_unpooling.cc``): options are ``TfLitePoolParams`` (int32 ``padding``, ``stride_width``,
  ``stride_height``, ``filter_width``, ``filter_height``, ``activation``). The pool returns the
  window maximum and, as float32, the position inside the window ``y * filter_width + x +
  0.1``; unpooling writes each value at that position of an output ``filter`` times larger
  (later windows overwrite earlier ones where windows overlap), zeros elsewhere.
* ``TFLite_Detection_PostProcess`` (TFLite, ``kernels/detection_postprocess.cc``): flexbuffer
  map options. Box decoding with the constant anchors (center-size, in double precision as
  the kernel does), then per-class ("regular") or fast NMS, outputs padded to
  ``max_detections * max_classes_per_detection`` rows. Rows the kernel leaves unwritten (fast
  NMS: past ``num_detections``) are zeros here. Regular NMS follows the kernel run on one
  thread: LiteRT's multi-threaded path (``num_threads > 1``) never visits class index
  ``num_threads`` (its shared column counter is pre-incremented), so it can differ there.
* The attention face mesh's ``Landmarks2TransformMatrix``, ``TransformTensorBilinear`` and
  ``TransformLandmarks`` (MediaPipe, version 2 as that model uses; options are flexbuffer
  maps read by TFLite's GPU-delegate parsers, ``delegates/gpu/common/mediapipe``): the crop
  matrix from landmarks, a bilinear crop through it (align-corners correction, zeros
  outside the image), landmarks mapped back through it. LiteRT has no kernel for them.
  Version 1 of ``Landmarks2TransformMatrix`` (landmarks ``[1, 1, 1, 3N]``) and of
  ``TransformLandmarks`` (``[1, H, W, C]``, ``dimensions`` / ``scale`` options) are rebuilt
  too, told apart by the input rank as the kernels' Prepare checks it.
"""

from __future__ import annotations

import struct

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.layers import custom as layers
from mlflow_tflite_keras.converter.ops._common import transpose_output_padding, with_weights
from mlflow_tflite_keras.converter.registry import register_custom

# TfLitePadding (common.h): kTfLitePaddingSame = 1, kTfLitePaddingValid = 2.
C_PADDING = {1: "same", 2: "valid"}
# TfLiteFusedActivation -> the clamp CalculateActivationRange applies (others: none).
C_ACTIVATION_CLAMP = {1: "relu", 2: "relu_n1_to_1", 3: "relu6"}


def struct_options(op, names: tuple[str, ...]) -> dict[str, int]:
    """The leading int32 fields of a C params struct stored as custom options."""
    raw = op.custom_options or b""
    size = 4 * len(names)
    if len(raw) < size:
        raise ConversionError(f"{op.type}: custom options hold {len(raw)} bytes, expected a "
                              f"parameter struct of at least {size} ({', '.join(names)}).")
    return dict(zip(names, struct.unpack_from(f"<{len(names)}i", raw)))


def flex_options(op, required: tuple[str, ...] = ()) -> dict:
    """Custom options stored as a flexbuffer map, holding at least the keys ``required``."""
    from flatbuffers import flexbuffers

    try:
        options = flexbuffers.Loads(bytes(op.custom_options or b""))
    except Exception as e:  # malformed bytes: any decoding error
        raise ConversionError(f"{op.type}: custom options are not a flexbuffer map ({e}).") \
            from None
    if not isinstance(options, dict):
        raise ConversionError(f"{op.type}: custom options are not a flexbuffer map.")
    missing = [k for k in required if k not in options]
    if missing:
        raise ConversionError(f"{op.type}: custom options lack {', '.join(missing)}.")
    return options


def _positive(op, params, *names):
    bad = [f"{n}={params[n]}" for n in names if params[n] <= 0]
    if bad:
        raise ConversionError(f"{op.type}: {', '.join(bad)} in its custom options; "
                              "expected positive values.")


def _c_padding(op, code):
    if code not in C_PADDING:
        raise ConversionError(f"{op.type}: unsupported padding {code} in its custom options.")
    return C_PADDING[code]


def _static_hw(op, t):
    if t.rank != 4 or any(d < 0 for d in t.shape_signature[1:3]):
        raise ConversionError(f"{op.type}: needs an NHWC input with static height and width.")
    return int(t.shape[1]), int(t.shape[2])


# ---- Convolution2DTransposeBias --------------------------------------------------------------


@register_custom("Convolution2DTransposeBias", layer="keras.layers.Conv2DTranspose")
def convolution_2d_transpose_bias(op, ctx):
    params = struct_options(op, ("padding", "stride_width", "stride_height"))
    _positive(op, params, "stride_width", "stride_height")
    pad = _c_padding(op, params["padding"])
    strides = (params["stride_height"], params["stride_width"])
    x = ctx.value(op.inputs[0])
    weights = ctx.const(op.input(1), "the weights")  # [Cout, H, W, Cin]
    bias = ctx.const(op.input(2), "the bias").astype(np.float32).reshape(-1)
    in_hw = _static_hw(op, op.inputs[0])
    out_hw = []
    for n, k, s in zip(in_hw, weights.shape[1:3], strides):
        total = max(0, k - (n - 1) % s - 1) if pad == "same" else 0
        out_hw.append(s * (n - 1) + k - total)
    out_t = op.outputs[0]
    stored = [int(d) for d in out_t.shape[1:3]] if out_t.rank == 4 else []
    if len(stored) == 2 and all(d > 0 for d in stored) and stored != out_hw:
        # LiteRT runs the op through XNNPACK, which takes the stored output size (TF's SAME
        # padding for it); MediaPipe's own kernel would recompute it.
        ctx.note(f"{op.type}: the stored output size {stored} differs from MediaPipe's "
                 f"kernel's {out_hw}; rebuilt with the stored size, as LiteRT runs it.")
        out_hw = stored
    output_padding = transpose_output_padding(pad, list(in_hw), out_hw, weights.shape[1:3],
                                               strides)
    layer = keras.layers.Conv2DTranspose(
        filters=weights.shape[0], kernel_size=weights.shape[1:3], strides=strides, padding=pad,
        output_padding=output_padding, use_bias=True, name=ctx.name(op))
    with_weights(layer, (None, None, None, weights.shape[3]),
                 [np.transpose(weights, (1, 2, 0, 3)), bias])
    return [ctx.apply(layer, x)]


# ---- MaxPoolingWithArgmax2D / MaxUnpooling2D ---------------------------------------------------

POOL_PARAMS = ("padding", "stride_width", "stride_height", "filter_width", "filter_height",
               "activation")


@register_custom("MaxPoolingWithArgmax2D", layer="MaxPoolingWithArgmax2D")
def max_pooling_with_argmax_2d(op, ctx):
    params = struct_options(op, POOL_PARAMS)
    _positive(op, params, *POOL_PARAMS[1:5])
    _static_hw(op, op.inputs[0])
    layer = layers.MaxPoolingWithArgmax2D(
        pool_size=(params["filter_height"], params["filter_width"]),
        strides=(params["stride_height"], params["stride_width"]),
        padding=_c_padding(op, params["padding"]), name=ctx.name(op))
    pooled, argmax = ctx.apply(layer, ctx.value(op.inputs[0]))
    act = C_ACTIVATION_CLAMP.get(params["activation"])
    if act is not None:
        pooled = ctx.apply_activation(op, pooled, act)
    return [pooled, argmax]


@register_custom("MaxUnpooling2D", layer="MaxUnpooling2D")
def max_unpooling_2d(op, ctx):
    params = struct_options(op, POOL_PARAMS)
    _positive(op, params, *POOL_PARAMS[1:5])
    _static_hw(op, op.inputs[0])
    layer = layers.MaxUnpooling2D(pool_size=(params["filter_height"], params["filter_width"]),
                           strides=(params["stride_height"], params["stride_width"]),
                           name=ctx.name(op))
    x, indices = ctx.inputs(op)[:2]
    if ctx.is_const(indices):
        raise ConversionError(f"{op.type}: constant indices are not supported.")
    return [ctx.apply(layer, x, indices)]


# ---- TFLite_Detection_PostProcess ----------------------------------------------------------


@register_custom("TFLite_Detection_PostProcess", layer="DetectionPostProcess (not trainable)")
def detection_postprocess(op, ctx):
    options = flex_options(op, ("max_detections", "max_classes_per_detection",
                                "nms_score_threshold", "nms_iou_threshold", "num_classes",
                                "y_scale", "x_scale", "h_scale", "w_scale"))
    encodings, class_scores = ctx.inputs(op)[:2]
    anchors = np.asarray(ctx.const(op.input(2), "the anchors"), np.float32)
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise ConversionError(f"{op.type}: anchors of shape {list(anchors.shape)}, expected "
                              "[num_anchors, 4].")
    boxes_t, scores_t = op.inputs[0], op.inputs[1]
    if boxes_t.rank != 3 or scores_t.rank != 3 or boxes_t.shape[1] != anchors.shape[0]:
        raise ConversionError(f"{op.type}: expected box encodings [1, {anchors.shape[0]}, 4+] "
                              "and class scores [1, anchors, classes].")
    num_classes = int(options["num_classes"])
    if not 0 <= scores_t.shape[2] - num_classes <= 1:
        raise ConversionError(f"{op.type}: {scores_t.shape[2]} score columns for "
                              f"{num_classes} classes.")
    layer = layers.DetectionPostProcess(
        anchors.shape[0], max_detections=options["max_detections"],
        max_classes_per_detection=options["max_classes_per_detection"],
        # absent or null: the kernel's defaults
        detections_per_class=100 if options.get("detections_per_class") is None
        else options["detections_per_class"],
        use_regular_nms=bool(options.get("use_regular_nms") or False),
        nms_score_threshold=options["nms_score_threshold"],
        nms_iou_threshold=options["nms_iou_threshold"], num_classes=num_classes,
        y_scale=options["y_scale"], x_scale=options["x_scale"], h_scale=options["h_scale"],
        w_scale=options["w_scale"], name=ctx.name(op))
    layer.anchors.assign(anchors)
    return list(ctx.apply(layer, encodings, class_scores))


# ---- attention face mesh: Landmarks2TransformMatrix, TransformTensorBilinear, TransformLandmarks


def _computed(ctx, op, *values):
    if any(ctx.is_const(v) for v in values):
        raise ConversionError(f"{op.type}: both inputs must be computed by the model (a "
                              "constant input is not supported).")


def _index_pairs(op, values, key):
    """An index list read as pairs; the kernel pairs an odd last index with itself."""
    values = [int(v) for v in values]
    if len(values) % 2:
        values.append(values[-1])
    if not values:
        raise ConversionError(f"{op.type}: empty {key} in its custom options.")
    return values


@register_custom("Landmarks2TransformMatrix",
                 layer="Landmarks2TransformMatrix / Landmarks2TransformMatrixV1")
def landmarks_to_transform_matrix(op, ctx):
    t = op.inputs[0]
    o = flex_options(op)
    count = int(np.prod(t.shape)) // 3
    if t.rank == 3:  # version 2
        subset = _index_pairs(op, o.get("subset_idxs", []), "subset_idxs")
        layer = layers.Landmarks2TransformMatrix(
            subset_idxs=subset, left_rotation_idx=o.get("left_rotation_idx", 0),
            right_rotation_idx=o.get("right_rotation_idx", 0),
            target_rotation_radians=o.get("target_rotation_radians", 0.0),
            output_height=o.get("output_height", 0), output_width=o.get("output_width", 0),
            scale_x=o.get("scale_x", 0.0), scale_y=o.get("scale_y", 0.0), name=ctx.name(op))
        if min(layer.output_height, layer.output_width) <= 0 or \
                min(layer.scale_x, layer.scale_y) <= 0:
            raise ConversionError(f"{op.type}: output size and scales must be positive.")
    elif t.rank == 4:  # version 1
        subset = _index_pairs(op, o.get("subset", []), "subset")
        if o.get("dimensions") != 3:
            raise ConversionError(f"{op.type}: dimensions {o.get('dimensions')}; the kernel "
                                  "needs 3.")
        input_hw, output_hw = list(o.get("input_hw", [])), list(o.get("output_hw", []))
        if len(input_hw) != 2 or len(output_hw) != 2 or min(input_hw + output_hw) <= 0 \
                or o.get("landmarks_range", 0) <= 0 or not o.get("bbox_size_multiplier"):
            raise ConversionError(f"{op.type}: input_hw, output_hw, landmarks_range and "
                                  "bbox_size_multiplier must be positive.")
        layer = layers.Landmarks2TransformMatrixV1(
            subset=subset, left_rotation_idx=o.get("left_rotation_idx", 0),
            right_rotation_idx=o.get("right_rotation_idx", 0),
            landmarks_range=o["landmarks_range"],
            bbox_size_multiplier=o["bbox_size_multiplier"], input_hw=input_hw,
            output_hw=output_hw, name=ctx.name(op))
    else:
        raise ConversionError(f"{op.type}: landmarks of rank {t.rank}; expected [1, N, 3] "
                              "(version 2) or [1, 1, 1, 3N] (version 1).")
    used = subset + [layer.left_rotation_idx, layer.right_rotation_idx]
    if min(used) < 0 or max(used) >= count:
        raise ConversionError(f"{op.type}: landmark indices {min(used)}..{max(used)} outside "
                              f"the {count} landmarks.")
    return [ctx.apply(layer, ctx.value(t))]


@register_custom("TransformTensorBilinear", layer="TransformTensorBilinear")
def transform_tensor_bilinear(op, ctx):
    _static_hw(op, op.inputs[0])
    out = op.outputs[0]
    if out.rank != 4 or any(d <= 0 for d in out.shape[1:3]):
        raise ConversionError(f"{op.type}: needs a static output height and width.")
    layer = layers.TransformTensorBilinear(output_size=out.shape[1:3], align_corners=True,
                                    name=ctx.name(op))
    x, matrix = ctx.inputs(op)[:2]
    _computed(ctx, op, x, matrix)
    return [ctx.apply(layer, x, matrix)]


@register_custom("TransformLandmarks", layer="TransformLandmarks")
def transform_landmarks(op, ctx):
    t = op.inputs[0]
    if t.rank == 3:  # version 2: dimensions from the output's last axis, no scale
        dimensions, scale = op.outputs[0].shape[-1], 1.0
    else:  # version 1: [1, H, W, C] with flexbuffer options
        o = flex_options(op)
        dimensions, scale = o.get("dimensions", 0), o.get("scale", 0.0)
        if scale == 0:
            raise ConversionError(f"{op.type}: scale 0 in its custom options.")
    if dimensions not in (2, 3) or t.shape[-1] % dimensions:
        raise ConversionError(f"{op.type}: {dimensions} values per landmark; the kernel "
                              "supports 2 or 3.")
    layer = layers.TransformLandmarks(dimensions=dimensions, scale=scale, name=ctx.name(op))
    landmarks, matrix = ctx.inputs(op)[:2]
    _computed(ctx, op, landmarks, matrix)
    return [ctx.apply(layer, landmarks, matrix)]
