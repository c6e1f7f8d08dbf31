"""Custom operators (converter/ops/custom.py): models written with the schema's object API,
custom options encoded as each op's kernel reads them (C parameter structs for MediaPipe's
convolution / pooling ops, flexbuffer maps for TFLite_Detection_PostProcess and the face
mesh ops).

Parity against LiteRT where LiteRT runs the op (Convolution2DTransposeBias and the
MaxPoolingWithArgmax2D -> MaxUnpooling2D pair through XNNPACK, TFLite_Detection_PostProcess
through its kernel); against NumPy references of MediaPipe's kernels where it cannot (the
argmax output itself, which XNNPACK encodes differently, unpooling on its own, and the
attention face mesh ops, which LiteRT has no kernel for).
"""

from __future__ import annotations

import struct

import keras
import mlflow
import numpy as np
import pytest
from flatbuffers import flexbuffers

from converter.handmade import FlatModel
from converter.op_harness import check_model
from mlflow_tflite_keras.converter import (
    UnsupportedOperatorsError,
    supported_custom_operators,
    supported_operators,
    to_keras,
)
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel

CUSTOM_CODES = ["Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D",
                "TFLite_Detection_PostProcess", "Landmarks2TransformMatrix",
                "TransformTensorBilinear", "TransformLandmarks"]
SAME, VALID = 1, 2  # TfLitePadding


def _outputs(result, names=None):
    """Outputs as a list of arrays; a dict (the converter's output names) in its order."""
    if isinstance(result, dict):
        return [np.asarray(result[n]) for n in (names or result)]
    if not isinstance(result, (list, tuple)):
        result = [result]
    return [np.asarray(r) for r in result]


def predict_reload(model, feeds, tmp_path, atol=1e-6):
    """Eager outputs; ``model.predict`` (a compiled graph: float rounding may differ by
    ``atol``) and the ``.keras`` reload (safe_mode) give the same."""
    result = model(feeds)
    names = list(result) if isinstance(result, dict) else None
    eager = _outputs(result, names)
    predicted = _outputs(model.predict(feeds, verbose=0), names)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    again = _outputs(reloaded(feeds), names)
    for e, p, r in zip(eager, predicted, again):
        assert e.shape == p.shape == r.shape
        np.testing.assert_allclose(p, e, rtol=1e-6, atol=atol)
        np.testing.assert_array_equal(r, e)
    return eager


# ---- Convolution2DTransposeBias ----------------------------------------------------------------


def transpose_bias_model(in_hw, kernel, strides, padding, cin=3, cout=4, seed=0,
                         out_hw=None, options=None):
    """``out_hw``: the stored output size (default: what MediaPipe's kernel computes)."""
    rng = np.random.default_rng(seed)
    if out_hw is None:
        out_hw = []
        for n, k, s in zip(in_hw, kernel, strides):
            total = max(0, k - (n - 1) % s - 1) if padding == SAME else 0
            out_hw.append(s * (n - 1) + k - total)
    b = FlatModel()
    x = b.input((1, *in_hw, cin))
    w = b.const(rng.normal(size=(cout, *kernel, cin)).astype(np.float32))
    bias = b.const(rng.normal(size=(cout,)).astype(np.float32))
    y = b.output((1, *out_hw, cout))
    b.custom_op("Convolution2DTransposeBias", [x, w, bias], [y],
                struct.pack("<3i", padding, strides[1], strides[0]) if options is None
                else options)
    return b.finish(), (1, *in_hw, cin)


@pytest.mark.parametrize("in_hw,kernel,strides,padding", [
    ((5, 7), (3, 3), (2, 2), SAME),
    ((4, 6), (4, 4), (2, 2), SAME),  # MediaPipe segmentation's 4x4 stride 2 upsampling
    ((4, 5), (3, 2), (2, 3), VALID),
], ids=["same-odd", "same-4x4", "valid"])
def test_convolution_2d_transpose_bias(in_hw, kernel, strides, padding, tmp_path):
    data, shape = transpose_bias_model(in_hw, kernel, strides, padding)
    rng = np.random.default_rng(1)
    feeds = [{"input_0": rng.normal(size=shape).astype(np.float32)} for _ in range(2)]
    model = check_model(data, ["Convolution2DTransposeBias"], feeds)
    layer = [l for l in model.layers if isinstance(l, keras.layers.Conv2DTranspose)][0]
    assert layer.use_bias and len(layer.trainable_weights) == 2
    eager = predict_reload(model, feeds[0], tmp_path)
    assert eager[0].std() > 0.1  # depends on the input, not a constant


def test_transpose_bias_stored_output_size():
    """A file storing another output size than MediaPipe's kernel computes (5 -> 10 instead
    of 9): LiteRT (XNNPACK) takes the stored size, so does the converter, with a note."""
    from mlflow_tflite_keras.converter import convert

    data, shape = transpose_bias_model((5, 7), (3, 3), (2, 2), SAME, out_hw=(10, 14))
    feeds = {"input_0": np.random.default_rng(17).normal(size=shape).astype(np.float32)}
    result = convert(data)
    assert any("stored output size [10, 14]" in n for n in result.report.notes)
    report = check_parity(data, result.model, feeds)
    assert report.passed, str(report)


@pytest.mark.parametrize("options,message", [
    (b"\x01\x00", "expected a parameter struct"),
    (struct.pack("<3i", SAME, 0, 2), "stride_width=0"),
    (struct.pack("<3i", 7, 2, 2), "unsupported padding 7"),
])
def test_transpose_bias_bad_options(options, message):
    data, _ = transpose_bias_model((4, 4), (3, 3), (2, 2), SAME, options=options)
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        to_keras(data)


def test_transpose_bias_trains():
    """The rebuilt Conv2DTranspose is trainable: compiled fit moves it towards a target."""
    data, shape = transpose_bias_model((4, 6), (4, 4), (2, 2), SAME)
    model = to_keras(data)
    rng = np.random.default_rng(14)
    x = rng.normal(size=(16, *shape[1:])).astype(np.float32)
    target = np.asarray(model(x)["output_0"] if isinstance(model(x), dict) else model(x)) * 0.5
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, target, epochs=5, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]


def test_transpose_bias_parity_rejects_perturbed_kernel():
    data, shape = transpose_bias_model((5, 7), (3, 3), (2, 2), SAME)
    feeds = {"input_0": np.random.default_rng(2).normal(size=shape).astype(np.float32)}
    model = to_keras(data)
    assert check_parity(data, model, feeds).passed
    layer = [l for l in model.layers if isinstance(l, keras.layers.Conv2DTranspose)][0]
    layer.kernel.assign(np.asarray(layer.kernel) * 1.05)
    assert not check_parity(data, model, feeds).passed


def test_transpose_bias_model_in_the_flavor(tmp_path):
    data, shape = transpose_bias_model((4, 6), (4, 4), (2, 2), SAME)
    x = np.random.default_rng(3).normal(size=(2, *shape[1:])).astype(np.float32)
    path = tmp_path / "model"
    mlflow.tflite_keras.save_model(data, str(path))
    pyfunc = mlflow.pyfunc.load_model(str(path))
    got = np.asarray(pyfunc.predict(x))
    expected = TFLiteRunner(TFLiteModel(data)).predict(x)["output_0"]
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-6)
    keras_out = to_keras(data)(x)
    np.testing.assert_allclose(np.asarray(keras_out["output_0"] if isinstance(keras_out, dict)
                                          else keras_out), expected, rtol=1e-4, atol=1e-4)


# ---- MaxPoolingWithArgmax2D / MaxUnpooling2D ----------------------------------------------------


def pool_options(padding, stride, filt, activation=0):
    """TfLitePoolParams: padding, stride_w, stride_h, filter_w, filter_h, activation, then
    the computed padding values the kernel fills in."""
    return struct.pack("<6i", padding, stride[1], stride[0], filt[1], filt[0],
                       activation) + bytes(16)


def ref_max_pool_argmax(x, filt, stride, padding, activation=0):
    """MediaPipe's max_pool_argmax.cc loops (vectorized over batch and channels)."""
    (fh, fw), (sh, sw) = filt, stride
    b, h, w, c = x.shape
    sizes = []
    for n, f, s in ((h, fh, sh), (w, fw, sw)):
        out = (n + s - 1) // s if padding == SAME else (n - f + s) // s
        sizes.append((out, max(0, ((out - 1) * s + f - n) // 2)))
    (oh, ph), (ow, pw) = sizes
    pooled = np.zeros((b, oh, ow, c), np.float32)
    argmax = np.zeros((b, oh, ow, c), np.float32)
    for oy in range(oh):
        for ox in range(ow):
            best = np.full((b, c), np.finfo(np.float32).min, np.float32)
            where = np.zeros((b, c), np.int64)
            for fy in range(fh):
                for fx in range(fw):
                    iy, ix = oy * sh - ph + fy, ox * sw - pw + fx
                    if 0 <= iy < h and 0 <= ix < w:
                        cur = x[:, iy, ix, :]
                        better = cur > best
                        best = np.where(better, cur, best)
                        where = np.where(better, fy * fw + fx, where)
            pooled[:, oy, ox] = best
            argmax[:, oy, ox] = where.astype(np.float32) + np.float32(0.1)
    if activation == 1:
        pooled = np.maximum(pooled, 0)
    elif activation == 3:
        pooled = np.clip(pooled, 0, 6)
    return pooled, argmax


def ref_max_unpooling(x, indices, filt, stride):
    """MediaPipe's max_unpooling.cc: later windows overwrite earlier ones."""
    (fh, fw), (sh, sw) = filt, stride
    b, h, w, c = x.shape
    oh, ow = h * fh, w * fw
    ph = max(0, ((h - 1) * sh + fh - oh) // 2)
    pw = max(0, ((w - 1) * sw + fw - ow) // 2)
    out = np.zeros((b, oh, ow, c), np.float32)
    for n in range(b):
        for iy in range(h):
            for ix in range(w):
                for ch in range(c):
                    idx = int(indices[n, iy, ix, ch])
                    oy, ox = iy * sh - ph + idx // fw, ix * sw - pw + idx % fw
                    if 0 <= oy < oh and 0 <= ox < ow:
                        out[n, oy, ox, ch] = x[n, iy, ix, ch]
    return out


def pool_unpool_model(hw, filt, stride, padding, channels=3, activation=0):
    (h, w), (fh, fw), (sh, sw) = hw, filt, stride
    oh = (h + sh - 1) // sh if padding == SAME else (h - fh + sh) // sh
    ow = (w + sw - 1) // sw if padding == SAME else (w - fw + sw) // sw
    b = FlatModel()
    x = b.input((1, h, w, channels))
    pooled = b.intermediate((1, oh, ow, channels))
    argmax = b.intermediate((1, oh, ow, channels))
    y = b.output((1, oh * fh, ow * fw, channels))
    options = pool_options(padding, stride, filt, activation)
    b.custom_op("MaxPoolingWithArgmax2D", [x], [pooled, argmax], options)
    b.custom_op("MaxUnpooling2D", [pooled, argmax], [y], options)
    return b.finish()


def test_max_pool_unpool_pair_matches_litert(tmp_path):
    """XNNPACK runs the pair (VALID 2x2 / 2, MediaPipe's segmentation layout)."""
    data = pool_unpool_model((6, 8), (2, 2), (2, 2), VALID)
    rng = np.random.default_rng(4)
    feeds = [{"input_0": rng.normal(size=(1, 6, 8, 3)).astype(np.float32)} for _ in range(2)]
    model = check_model(data, ["MaxPoolingWithArgmax2D", "MaxUnpooling2D"], feeds)
    out = predict_reload(model, feeds[0], tmp_path)[0]
    # One value per 2x2 window survives: a quarter of the outputs are non-zero.
    assert np.count_nonzero(out) == out.size // 4


@pytest.mark.parametrize("hw,filt,stride,padding,activation", [
    ((7, 6), (3, 3), (2, 2), SAME, 0),  # overlapping windows, padded edges
    ((6, 7), (2, 3), (2, 2), VALID, 1),  # fused relu on the maximum
    ((5, 5), (2, 2), (1, 1), SAME, 3),  # stride 1: unpooled windows overlap
], ids=["same-3x3", "valid-relu", "stride1-relu6"])
def test_max_pool_argmax_and_unpool_reference(hw, filt, stride, padding, activation, tmp_path):
    b = FlatModel()
    x = b.input((1, *hw, 4))
    ref_pool, ref_arg = ref_max_pool_argmax(np.zeros((1, *hw, 4), np.float32), filt, stride,
                                            padding)
    pooled = b.output(ref_pool.shape)
    argmax = b.output(ref_pool.shape)
    unpooled = b.output((1, ref_pool.shape[1] * filt[0], ref_pool.shape[2] * filt[1], 4))
    options = pool_options(padding, stride, filt, activation)
    b.custom_op("MaxPoolingWithArgmax2D", [x], [pooled, argmax], options)
    b.custom_op("MaxUnpooling2D", [pooled, argmax], [unpooled], options)
    model = to_keras(b.finish())
    rng = np.random.default_rng(5)
    for _ in range(2):
        value = rng.normal(size=(3, *hw, 4)).astype(np.float32)
        got = _outputs(model({"input_0": value}), ["output_0", "output_1", "output_2"])
        want_pool, want_arg = ref_max_pool_argmax(value, filt, stride, padding, activation)
        want_unpool = ref_max_unpooling(want_pool, want_arg, filt, stride)
        for g, w in zip(got, (want_pool, want_arg, want_unpool)):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g, w)
        assert len(np.unique(want_arg)) > 1
    predict_reload(model, {"input_0": value}, tmp_path)


def test_max_unpooling_reference_on_given_indices(tmp_path):
    """Unpooling alone with arbitrary in-window indices and overlapping windows (filter 3,
    stride 2): the later window wins, as in the kernel's loop."""
    filt, stride = (3, 3), (2, 2)
    b = FlatModel()
    x = b.input((1, 4, 5, 2))
    idx = b.input((1, 4, 5, 2))
    y = b.output((1, 12, 15, 2))
    b.custom_op("MaxUnpooling2D", [x, idx], [y], pool_options(VALID, stride, filt))
    model = to_keras(b.finish())
    rng = np.random.default_rng(6)
    value = rng.normal(size=(2, 4, 5, 2)).astype(np.float32)
    indices = (rng.integers(0, 9, size=(2, 4, 5, 2)) + 0.1).astype(np.float32)
    feeds = {"input_0": value, "input_1": indices}
    got = predict_reload(model, feeds, tmp_path)[0]
    np.testing.assert_array_equal(got, ref_max_unpooling(value, indices, filt, stride))


# ---- TFLite_Detection_PostProcess -----------------------------------------------------------


def detection_model(num_anchors=24, num_classes=3, background=True, seed=0, **options):
    rng = np.random.default_rng(seed)
    opts = dict(max_detections=6, max_classes_per_detection=1, detections_per_class=4,
                use_regular_nms=False, nms_score_threshold=0.3, nms_iou_threshold=0.45,
                num_classes=num_classes, y_scale=10.0, x_scale=10.0, h_scale=5.0, w_scale=5.0)
    opts.update(options)
    # Few centers, several sizes each: neighbouring anchors overlap, so NMS has work to do.
    centers = rng.uniform(0.3, 0.7, size=(num_anchors // 4, 2)).repeat(4, axis=0)
    sizes = rng.uniform(0.15, 0.35, size=(num_anchors, 2))
    anchors = np.concatenate([centers, sizes], axis=1).astype(np.float32)
    b = FlatModel()
    boxes = b.input((1, num_anchors, 4))
    scores = b.input((1, num_anchors, num_classes + int(background)))
    a = b.const(anchors)
    rows = opts["max_detections"] * opts["max_classes_per_detection"]
    outs = [b.output((1, rows, 4)), b.output((1, rows)), b.output((1, rows)), b.output((1,))]
    b.custom_op("TFLite_Detection_PostProcess", [boxes, scores, a], outs,
                flexbuffers.Dumps(opts))
    return b.finish()


def _quantization(scale, zero_point):
    from ai_edge_litert import schema_py_generated as schema

    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint = [float(scale)], [int(zero_point)]
    return q


def quantized_detection_model(num_anchors=24, num_classes=3, seed=0, uint8_inputs=False):
    """The end of a uint8 detector (SSD MobileNet's ``detect.tflite`` layout): box encodings
    and class scores as uint8 tensors (model inputs, or QUANTIZE of float inputs as the last
    layers' outputs), anchors a uint8 constant, float outputs."""
    rng = np.random.default_rng(seed)
    opts = dict(max_detections=6, max_classes_per_detection=1, detections_per_class=4,
                use_regular_nms=False, nms_score_threshold=0.3, nms_iou_threshold=0.45,
                num_classes=num_classes, y_scale=10.0, x_scale=10.0, h_scale=5.0, w_scale=5.0)
    centers = rng.uniform(0.3, 0.7, size=(num_anchors // 4, 2)).repeat(4, axis=0)
    anchors = np.concatenate([centers, rng.uniform(0.15, 0.35, (num_anchors, 2))], axis=1)
    anchor_scale = anchors.max() / 255
    b = FlatModel()
    shapes = [(1, num_anchors, 4), (1, num_anchors, num_classes + 1)]
    params = [(0.02, 128), (1 / 255, 0)]
    quantized = []
    for shape, (scale, zero_point) in zip(shapes, params):
        t = b.input(shape, np.uint8) if uint8_inputs else b.intermediate(shape, np.uint8)
        b.tensors[t].quantization = _quantization(scale, zero_point)
        if not uint8_inputs:
            b.op("QUANTIZE", [b.input(shape)], [t])
        quantized.append(t)
    a = b.const(np.clip(np.round(anchors / anchor_scale), 0, 255).astype(np.uint8),
                quantization=_quantization(anchor_scale, 0))
    rows = opts["max_detections"]
    outs = [b.output((1, rows, 4)), b.output((1, rows)), b.output((1, rows)), b.output((1,))]
    b.custom_op("TFLite_Detection_PostProcess", [*quantized, a], outs, flexbuffers.Dumps(opts))
    return b.finish()


def test_detection_postprocess_quantized_inputs():
    """uint8 box encodings, scores and anchors, dequantized as the kernel does. Fed uint8 by
    the model: float noise. Quantized inside the model: the float reconstruction passes its
    tolerances; the emulated one is exact, and a 5% change of its anchors is rejected."""
    rng = np.random.default_rng(7)
    on_grid = {"input_0": ((rng.integers(90, 166, (1, 24, 4)) - 128) * 0.02).astype(np.float32),
               "input_1": (rng.integers(0, 256, (1, 24, 4)) / 255).astype(np.float32)}
    data = quantized_detection_model(uint8_inputs=True)
    assert TFLiteModel(data).quantization_kind == "full-uint8"
    report = check_parity(data, to_keras(data), on_grid, float_max_rel_error=1e-6)
    assert report.passed, str(report)

    data = quantized_detection_model()
    feeds = detection_feeds(data, 7)
    assert check_parity(data, to_keras(data), feeds).passed
    emulated = to_keras(data, emulate_quantization=True)
    report = check_parity(data, emulated, feeds)
    assert report.passed and all(o.max_abs_error == 0 for o in report.outputs), str(report)
    layer, = [layer for layer in emulated._flatten_layers()
              if type(layer).__name__ == "DetectionPostProcess"]
    layer.anchors.assign(layer.anchors.numpy() * 1.05)
    assert not check_parity(data, emulated, feeds, compiled=False).passed


def detection_feeds(data, seed):
    model = TFLiteModel(data)
    sg = model.subgraphs[0]
    shapes = [tuple(sg.tensors[i].shape) for i in sg.inputs]
    rng = np.random.default_rng(seed)
    return {"input_0": (rng.normal(size=shapes[0]) * 0.5).astype(np.float32),
            "input_1": rng.uniform(size=shapes[1]).astype(np.float32)}


@pytest.mark.parametrize("options", [
    dict(max_classes_per_detection=1),
    dict(max_classes_per_detection=2, background=False),
], ids=["fast", "fast-2-classes-no-background"])
def test_detection_postprocess_fast_nms(options, tmp_path):
    data = detection_model(**options)
    feeds = [detection_feeds(data, seed) for seed in (7, 8)]
    model = check_model(data, ["TFLite_Detection_PostProcess"], feeds)
    assert not model.trainable_weights
    outs = [predict_reload(model, f, tmp_path) for f in feeds]
    assert not np.array_equal(outs[0][0], outs[1][0])  # depends on the input
    count = int(outs[0][3][0])
    above = int((feeds[0]["input_1"][0, :, -3:].max(axis=-1) >= 0.3).sum())
    assert 0 < count < above  # NMS suppressed overlapping boxes


def test_detection_postprocess_fast_nms_unwritten_rows(tmp_path):
    """Fast NMS writes only ``num_detections`` anchors and ``min(max_classes_per_detection,
    num_classes)`` columns each; LiteRT leaves the other rows as whatever its arena held
    (undefined), the Keras layer zeros. The written rows match."""
    per, classes = 4, 3
    data = detection_model(max_detections=20, max_classes_per_detection=per)
    model = to_keras(data)
    runner = TFLiteRunner(TFLiteModel(data))
    for seed in (12, 13):
        feeds = detection_feeds(data, seed)
        expected = list(runner.predict(feeds).values())
        got = predict_reload(model, feeds, tmp_path)
        count = int(expected[3][0])
        assert got[3][0] == count < 20
        written = np.zeros((20, per), bool)
        written[:count, :classes] = True
        written = written.reshape(-1)
        for g, e in zip(got[:3], expected[:3]):
            assert g.shape == e.shape
            np.testing.assert_allclose(g[0][written], e[0][written], rtol=1e-6, atol=1e-6)
            assert not g[0][~written].any()


@pytest.mark.parametrize("options", [
    dict(use_regular_nms=True),
    dict(use_regular_nms=True, num_classes=5, detections_per_class=2, max_detections=8),
    dict(use_regular_nms=True, nms_score_threshold=0.9, max_detections=10),  # zero-padded
], ids=["regular", "regular-5-classes", "regular-padded"])
def test_detection_postprocess_regular_nms(options, tmp_path):
    """Against LiteRT's kernel on one thread: its multi-threaded per-class loop skips class
    index ``num_threads`` (a LiteRT bug, shown below), so LiteRT is run single-threaded."""
    data = detection_model(**options)
    model = to_keras(data)
    assert not model.trainable_weights
    runner = TFLiteRunner(TFLiteModel(data), num_threads=1)
    for seed in (9, 10):
        feeds = detection_feeds(data, seed)
        expected = list(runner.predict(feeds).values())
        got = predict_reload(model, feeds, tmp_path)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)
    if options.get("nms_score_threshold", 0) >= 0.9:
        assert got[3][0] < 10 and not got[2][0, int(got[3][0]):].any()


def test_detection_postprocess_litert_threads_skip_a_class():
    """Documents why the regular-NMS test runs LiteRT on one thread."""
    data = detection_model(num_anchors=32, use_regular_nms=True)
    feeds = detection_feeds(data, 11)
    single = TFLiteRunner(TFLiteModel(data), num_threads=1).predict(feeds)["output_1"]
    two = TFLiteRunner(TFLiteModel(data), num_threads=2).predict(feeds)["output_1"]
    assert 2.0 in single and 2.0 not in two
    keras_classes = _outputs(to_keras(data)(feeds), ["output_1"])[0]
    np.testing.assert_array_equal(keras_classes, single)


def test_detection_postprocess_bad_options():
    b = FlatModel()
    boxes, scores = b.input((1, 4, 4)), b.input((1, 4, 2))
    anchors = b.const(np.full((4, 4), 0.5, np.float32))
    outs = [b.output((1, 1, 4)), b.output((1, 1)), b.output((1, 1)), b.output((1,))]
    b.custom_op("TFLite_Detection_PostProcess", [boxes, scores, anchors], outs,
                flexbuffers.Dumps({"max_detections": 1}))
    with pytest.raises(mlflow.exceptions.MlflowException, match="custom options lack"):
        to_keras(b.finish())


# ---- registry ---------------------------------------------------------------------------------


def test_custom_operators_are_listed_apart_from_builtins():
    custom = supported_custom_operators()
    assert set(CUSTOM_CODES) <= set(custom)
    assert not set(custom) & set(supported_operators())
    assert "CONV_2D" in supported_operators()


def test_unsupported_error_lists_only_unknown_custom_codes():
    b = FlatModel()
    x = b.input((1, 4, 4, 2))
    pooled, argmax = b.intermediate((1, 2, 2, 2)), b.intermediate((1, 2, 2, 2))
    y = b.intermediate((1, 4, 4, 2))
    z = b.output((1, 4, 4, 2))
    options = pool_options(VALID, (2, 2), (2, 2))
    b.custom_op("MaxPoolingWithArgmax2D", [x], [pooled, argmax], options)
    b.custom_op("MaxUnpooling2D", [pooled, argmax], [y], options)
    b.custom_op("VendorSecretOp", [y], [z])
    with pytest.raises(UnsupportedOperatorsError) as info:
        to_keras(b.finish())
    assert info.value.unsupported == {"CUSTOM:VendorSecretOp": 1}
    assert not any(code in str(info.value) for code in CUSTOM_CODES)


def test_keras_loads_custom_op_layers_after_import_mlflow(tmp_path):
    """A fresh process that only imports mlflow and keras loads a .keras file with these
    layers (safe_mode=True): the Keras hook registers them, no converter import needed."""
    import subprocess
    import sys

    b = FlatModel()
    x = b.input((1, 4, 4, 2))
    pooled, argmax = b.intermediate((1, 2, 2, 2)), b.intermediate((1, 2, 2, 2))
    y = b.output((1, 4, 4, 2))
    options = pool_options(VALID, (2, 2), (2, 2))
    b.custom_op("MaxPoolingWithArgmax2D", [x], [pooled, argmax], options)
    b.custom_op("MaxUnpooling2D", [pooled, argmax], [y], options)
    paths = []
    for i, data in enumerate([b.finish(), detection_model()]):
        paths.append(str(tmp_path / f"m{i}.keras"))
        to_keras(data).save(paths[-1])
    code = ("import mlflow, keras\n"
            f"for p in {paths!r}:\n"
            "    m = keras.saving.load_model(p, safe_mode=True)\n"
            "    print(sorted({type(l).__name__ for l in m.layers}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MaxUnpooling2D" in result.stdout and "DetectionPostProcess" in result.stdout


# ---- attention face mesh ops (LiteRT has no kernel for them) --------------------------------


MESH_OPTIONS = dict(subset_idxs=[0, 3, 5, 7, 2, 9, 11], left_rotation_idx=1,
                    right_rotation_idx=4, target_rotation_radians=0.0, output_height=12,
                    output_width=10, scale_x=1.5, scale_y=1.3)


def mesh_options_bytes(options):
    """The flexbuffer map MediaPipe's parser reads (subset_idxs as a typed vector)."""
    b = flexbuffers.Builder()
    with b.Map():
        b.Key("subset_idxs")
        b.TypedVectorFromElements(options["subset_idxs"])
        for key in ("left_rotation_idx", "right_rotation_idx", "output_height",
                    "output_width"):
            b.Int(key, options[key])
        for key in ("target_rotation_radians", "scale_x", "scale_y"):
            b.Float(key, options[key])
    return b.Finish()


def ref_landmarks_to_matrix(points, o):
    """landmarks_to_transform_matrix.cc, version 2, with its Mat3/Mat4 products."""
    f = np.float32
    idx = list(o["subset_idxs"])
    if len(idx) % 2:
        idx.append(idx[-1])
    left, right = points[o["left_rotation_idx"]], points[o["right_rotation_idx"]]
    r = f(o["target_rotation_radians"]) - np.arctan2(f(right[1] - left[1]),
                                                     f(right[0] - left[0]))
    rot = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]], f)
    inv = np.array([[np.cos(-r), -np.sin(-r), 0], [np.sin(-r), np.cos(-r), 0], [0, 0, 1]], f)
    xy1 = np.stack([points[idx, 0], points[idx, 1], np.ones(len(idx), f)], axis=1)
    turned = xy1 @ rot.T
    lo, hi = turned.min(axis=0), turned.max(axis=0)
    width, height = hi[0] - lo[0], hi[1] - lo[1]
    center = inv @ np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 1], f)
    a = -r
    shift = np.eye(4, dtype=f)
    shift[:2, 3] = center[:2]
    rotate = np.eye(4, dtype=f)
    rotate[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    scale = np.diag([o["scale_x"] * width / o["output_width"],
                     o["scale_y"] * height / o["output_height"], 1, 1]).astype(f)
    shift2 = np.eye(4, dtype=f)
    shift2[:2, 3] = [-o["output_width"] / 2.0, -o["output_height"] / 2.0]
    return shift @ rotate @ scale @ shift2


def ref_transform_tensor_bilinear(image, matrix, out_hw):
    """transform_tensor_bilinear.cc, version 2 (align-corners correction), pixel by pixel."""
    h, w, c = image.shape
    xt, yt = [float(v) for v in matrix[0]], [float(v) for v in matrix[1]]
    xt[3] = float(np.float32(xt[3] + (xt[0] * 0.5 + xt[1] * 0.5 - 0.5)))
    yt[3] = float(np.float32(yt[3] + (yt[0] * 0.5 + yt[1] * 0.5 - 0.5)))
    out = np.zeros((*out_hw, c), np.float32)

    def read(y, x):
        return image[y, x] if 0 <= y < h and 0 <= x < w else np.zeros(c, np.float32)

    for oy in range(out_hw[0]):
        for ox in range(out_hw[1]):
            tx = np.float32(np.float32(xt[0]) * ox + np.float32(xt[1]) * oy) + np.float32(xt[3])
            ty = np.float32(np.float32(yt[0]) * ox + np.float32(yt[1]) * oy) + np.float32(yt[3])
            if tx < 0 or tx > w - 1 or ty < 0 or ty > h - 1:
                continue
            fx, fy = int(np.floor(tx)), int(np.floor(ty))
            rc, lc = float(tx - fx), float(ty - fy)
            upper = (1 - rc) * read(fy, fx) + rc * read(fy, fx + 1)
            lower = (1 - rc) * read(fy + 1, fx) + rc * read(fy + 1, fx + 1)
            out[oy, ox] = lc * lower + (1 - lc) * upper
    return out


def ref_transform_landmarks(points, matrix):
    """transform_landmarks.cc, version 2: x, y through the matrix's first two rows."""
    out = points.copy()
    for i, (x, y) in enumerate(points[:, :2]):
        out[i, 0] = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 3]
        out[i, 1] = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 3]
    return out


def mesh_model(options=MESH_OPTIONS, image_hw=(32, 28), channels=2):
    oh, ow = options["output_height"], options["output_width"]
    b = FlatModel()
    landmarks = b.input((1, 20, 3))
    image = b.input((1, *image_hw, channels))
    local = b.input((1, 9, 3))
    matrix = b.output((1, 4, 4))
    crop = b.output((1, oh, ow, channels))
    moved = b.output((1, 9, 3))
    b.custom_op("Landmarks2TransformMatrix", [landmarks], [matrix], mesh_options_bytes(options),
                version=2)
    b.custom_op("TransformTensorBilinear", [image, matrix], [crop],
                flexbuffers.Dumps({"output_height": oh, "output_width": ow}), version=2)
    b.custom_op("TransformLandmarks", [local, matrix], [moved], b"", version=2)
    return b.finish()


@pytest.mark.parametrize("target", [0.0, 0.7], ids=["upright", "rotated"])
def test_attention_mesh_ops_reference(target, tmp_path):
    options = {**MESH_OPTIONS, "target_rotation_radians": target}
    data = mesh_model(options)
    assert {"Landmarks2TransformMatrix", "TransformTensorBilinear", "TransformLandmarks"} <= \
        set(TFLiteModel(data).operator_names)
    model = to_keras(data)
    rng = np.random.default_rng(15)
    crops = []
    for _ in range(2):
        points = np.concatenate([rng.uniform(6, 22, size=(1, 20, 2)),
                                 rng.normal(size=(1, 20, 1))], axis=-1).astype(np.float32)
        image = rng.normal(size=(1, 32, 28, 2)).astype(np.float32)
        local = np.concatenate([rng.uniform(0, 10, size=(1, 9, 2)),
                                rng.normal(size=(1, 9, 1))], axis=-1).astype(np.float32)
        feeds = {"input_0": points, "input_1": image, "input_2": local}
        matrix, crop, moved = predict_reload(model, feeds, tmp_path, atol=2e-5)
        want_matrix = ref_landmarks_to_matrix(points[0], options)
        np.testing.assert_allclose(matrix[0], want_matrix, rtol=1e-5, atol=1e-4)
        want_crop = ref_transform_tensor_bilinear(image[0], want_matrix, (12, 10))
        assert crop.shape == (1, 12, 10, 2)
        np.testing.assert_allclose(crop[0], want_crop, atol=1e-4)
        assert np.count_nonzero(want_crop) > want_crop.size // 2  # the crop is mostly inside
        np.testing.assert_allclose(moved[0], ref_transform_landmarks(local[0], want_matrix),
                                   rtol=1e-5, atol=1e-4)
        crops.append(crop)
    assert not np.allclose(crops[0], crops[1])


@pytest.mark.parametrize("dimensions", [2, 3])
def test_transform_landmarks_version_1(dimensions, tmp_path):
    """Version 1: landmarks ``[1, H, W, C]``, ``dimensions`` and ``scale`` (applied to the
    translation) in a flexbuffer map."""
    b = FlatModel()
    points = b.input((1, 2, 3, 4 * dimensions))
    matrix = b.input((1, 4, 4))
    y = b.output((1, 2, 3, 4 * dimensions))
    b.custom_op("TransformLandmarks", [points, matrix], [y],
                flexbuffers.Dumps({"dimensions": dimensions, "scale": 2.5}), version=1)
    model = to_keras(b.finish())
    rng = np.random.default_rng(16)
    value = rng.normal(size=(1, 2, 3, 4 * dimensions)).astype(np.float32)
    m = rng.normal(size=(1, 4, 4)).astype(np.float32)
    got = predict_reload(model, {"input_0": value, "input_1": m}, tmp_path)[0]
    scaled = m[0].copy()
    scaled[:2, 3] *= 2.5
    want = ref_transform_landmarks(value.reshape(-1, dimensions), scaled).reshape(value.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def ref_landmarks_to_matrix_v1(points, o):
    """landmarks_to_transform_matrix.cc, version 1, as its Mat3 products."""
    f = np.float32
    left, right = points[o["left_rotation_idx"]], points[o["right_rotation_idx"]]
    alpha = -np.arctan(f(right[1] - left[1]) / f(right[0] - left[0]))
    hi, lo = np.full(2, -100000, f), np.full(2, 100000, f)
    for i in o["subset"]:
        x, y = points[i, 0], points[i, 1]
        p = np.array([x * np.cos(alpha) - y * np.sin(alpha),
                      x * np.sin(alpha) + y * np.cos(alpha)], f)
        hi, lo = np.maximum(hi, p), np.minimum(lo, p)
    r = o["landmarks_range"]
    box = (hi - lo) * o["bbox_size_multiplier"]
    mid = (hi + lo) / 2
    b = -alpha
    rmid = [mid[0] * np.cos(b) - mid[1] * np.sin(b), mid[0] * np.sin(b) + mid[1] * np.cos(b)]
    scale = np.diag([box[0] / r, box[1] / r, 1]).astype(f)
    rotation = np.array([[np.cos(b), -np.sin(b), rmid[0] / r * 2 - 1],
                         [np.sin(b), np.cos(b), rmid[1] / r * 2 - 1], [0, 0, 1]], f)
    (ih, iw), (oh, ow) = o["input_hw"], o["output_hw"]
    to_relative = np.array([[2 / (ow - 1), 0, -1], [0, 2 / (oh - 1), -1], [0, 0, 1]], f)
    to_absolute = np.array([[(iw - 1) / 2, 0, (iw - 1) / 2], [0, (ih - 1) / 2, (ih - 1) / 2],
                            [0, 0, 1]], f)
    itm = to_absolute @ rotation @ scale @ to_relative
    out = np.zeros((4, 4), f)
    out[0] = [itm[0, 0], itm[0, 1], 0, itm[0, 2]]
    out[1] = [itm[1, 0], itm[1, 1], 0, itm[1, 2]]
    out[2] = [itm[2, 0], itm[2, 1], itm[2, 2], 0]
    out[3, 3] = 1
    return out


def test_landmarks_to_transform_matrix_version_1(tmp_path):
    options = dict(dimensions=3, landmarks_range=64, left_rotation_idx=2, right_rotation_idx=6,
                   bbox_size_multiplier=1.5, input_hw=[48, 40], output_hw=[16, 12],
                   subset=[0, 1, 3, 4, 5, 7, 8])
    b = FlatModel()
    landmarks = b.input((1, 1, 1, 30))
    matrix = b.output((1, 4, 4))
    fb = flexbuffers.Builder()
    with fb.Map():
        for key in ("subset", "input_hw", "output_hw"):
            fb.Key(key)
            fb.TypedVectorFromElements(options[key])
        for key in ("dimensions", "landmarks_range", "left_rotation_idx", "right_rotation_idx"):
            fb.Int(key, options[key])
        fb.Float("bbox_size_multiplier", options["bbox_size_multiplier"])
    b.custom_op("Landmarks2TransformMatrix", [landmarks], [matrix], fb.Finish(), version=1)
    model = to_keras(b.finish())
    rng = np.random.default_rng(18)
    got = []
    for _ in range(2):
        points = rng.uniform(10, 54, size=(1, 1, 1, 30)).astype(np.float32)
        out = predict_reload(model, {"input_0": points}, tmp_path, atol=2e-5)[0]
        want = ref_landmarks_to_matrix_v1(points.reshape(10, 3), options)
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-4)
        got.append(out)
    assert not np.allclose(got[0], got[1])


def test_detection_postprocess_model_in_the_flavor(tmp_path):
    """The flavor saves and serves a model ending in TFLite_Detection_PostProcess (LiteRT
    runs its kernel); fast NMS, so LiteRT's thread count does not matter."""
    data = detection_model()
    feeds = detection_feeds(data, 19)
    path = tmp_path / "model"
    mlflow.tflite_keras.save_model(data, str(path))
    loaded = mlflow.tflite_keras.load_model(str(path))
    assert loaded.description["custom_ops"] == ["TFLite_Detection_PostProcess"]
    pyfunc = mlflow.pyfunc.load_model(str(path))
    served = pyfunc.predict(feeds)
    expected = TFLiteRunner(TFLiteModel(data)).predict(feeds)
    rebuilt = to_keras(data)(feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(served[name]).reshape(value.shape), value)
        np.testing.assert_allclose(np.asarray(rebuilt[name]), value, rtol=1e-6, atol=1e-6)
