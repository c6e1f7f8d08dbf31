"""RESIZE_BILINEAR, RESIZE_NEAREST_NEIGHBOR, DEPTH_TO_SPACE, SPACE_TO_DEPTH,
SPACE_TO_BATCH_ND, BATCH_TO_SPACE_ND."""

from __future__ import annotations

import pytest

from converter.op_harness import case_fn, check_op

tf = pytest.importorskip("tensorflow")




def _flags(model, op_type):
    from mlflow_tflite_keras.converter.ir import build_graph
    from mlflow_tflite_keras.tflite_model import TFLiteModel

    op = next(o for o in build_graph(TFLiteModel(model)).ops if o.type == op_type)
    return bool(op.opt("alignCorners")), bool(op.opt("halfPixelCenters"))


# Every flag combination TF emits: compat.v1 (legacy coordinates, with or without
# align_corners) and TF2 tf.image.resize (half-pixel centers).
RESIZE_MODES = {
    "v1": lambda x, size, m: (tf.compat.v1.image.resize_bilinear if m == "bilinear" else
                              tf.compat.v1.image.resize_nearest_neighbor)(x, size),
    "v1_align_corners": lambda x, size, m: (
        tf.compat.v1.image.resize_bilinear if m == "bilinear" else
        tf.compat.v1.image.resize_nearest_neighbor)(x, size, align_corners=True),
    "v2_half_pixel": lambda x, size, m: tf.image.resize(x, size, method=m),
}
EXPECTED_FLAGS = {"v1": (False, False), "v1_align_corners": (True, False),
                  "v2_half_pixel": (False, True)}
SIZES = {"up": ((None, 4, 5, 2), (7, 11)), "up2x": ((None, 3, 4, 2), (6, 8)),
         "down": ((None, 9, 7, 2), (4, 3)), "mixed": ((1, 5, 4, 3), (2, 9))}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("mode", sorted(RESIZE_MODES))
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_resize(method, mode, size):
    from converter.op_harness import op_tflite

    op_type = "RESIZE_BILINEAR" if method == "bilinear" else "RESIZE_NEAREST_NEIGHBOR"
    shape, out = SIZES[size]
    fn = case_fn(RESIZE_MODES[mode], size=out, m=method)
    inputs = [(shape, "float")]
    model, _ = check_op(op_type, fn, inputs)
    assert _flags(op_tflite(op_type.lower(), fn, inputs), op_type) == EXPECTED_FLAGS[mode]
    assert model.output_shape[1:3] == out


def test_keras_resizing_layers():
    import keras

    def make(x):
        y = keras.layers.Resizing(6, 6, interpolation="nearest")(x)
        return keras.layers.Resizing(5, 7)(y)  # bilinear, half-pixel

    check_op("RESIZE_BILINEAR", make, [((None, 3, 3, 2), "float")],
             expect_ops=["RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"])


@pytest.mark.parametrize("recipe", ["full-int8", "float16"])
def test_resize_quantized(recipe):
    fn = lambda x: tf.image.resize(tf.compat.v1.image.resize_bilinear(  # noqa: E731
        x, (6, 6), align_corners=True), (12, 12), method="nearest")
    check_op("RESIZE_BILINEAR", fn, [((1, 4, 4, 3), "float")], recipe=recipe,
             expect_ops=["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"])


# ---- depth / space ---------------------------------------------------------------------

@pytest.mark.parametrize("block,shape", [(2, (None, 3, 4, 8)), (3, (1, 2, 2, 18)),
                                         (2, (2, 2, 3, 4))])
def test_depth_to_space(block, shape):
    fn = case_fn(lambda x, b: tf.nn.depth_to_space(x, b), b=block)
    model, _ = check_op("DEPTH_TO_SPACE", fn, [(shape, "float")])
    if shape[0] is None:
        assert model.input_shape[0] is None


@pytest.mark.parametrize("block,shape", [(2, (None, 4, 6, 3)), (3, (1, 6, 3, 2)),
                                         (2, (2, 4, 4, 1))])
def test_space_to_depth(block, shape):
    fn = case_fn(lambda x, b: tf.nn.space_to_depth(x, b), b=block)
    check_op("SPACE_TO_DEPTH", fn, [(shape, "float")])


S2B_CASES = {
    "2d": ((2, 2), [[0, 0], [0, 0]], (None, 4, 6, 2)),
    "2d_padded": ((2, 3), [[1, 1], [0, 2]], (None, 4, 4, 2)),
    "1d": ((2,), [[1, 1]], (None, 6, 3)),
    "static_batch": ((2, 2), [[0, 2], [2, 0]], (2, 4, 4, 1)),
}


@pytest.mark.parametrize("case", sorted(S2B_CASES))
def test_space_to_batch_nd(case):
    block, pads, shape = S2B_CASES[case]
    fn = case_fn(lambda x, b, p: tf.space_to_batch_nd(x, b, p), b=block, p=pads)
    check_op("SPACE_TO_BATCH_ND", fn, [(shape, "float")])


# Static batches: LiteRT cannot prepare a dynamic-batch BATCH_TO_SPACE_ND at its default
# batch of 1 (test_space_batch_round_trip covers the dynamic batch).
B2S_CASES = {
    "2d": ((2, 2), [[0, 0], [0, 0]], (4, 3, 2, 2)),
    "2d_cropped": ((2, 3), [[1, 1], [0, 2]], (12, 3, 3, 2)),
    "1d_cropped": ((2,), [[1, 0]], (4, 4, 3)),
    "static_batch": ((2, 2), [[0, 1], [1, 0]], (8, 2, 2, 1)),
}


@pytest.mark.parametrize("case", sorted(B2S_CASES))
def test_batch_to_space_nd(case):
    block, crops, shape = B2S_CASES[case]
    fn = case_fn(lambda x, b, c: tf.batch_to_space(x, b, c), b=block, c=crops)
    check_op("BATCH_TO_SPACE_ND", fn, [(shape, "float")])


def test_space_batch_round_trip():
    """The dilated-convolution pattern: SPACE_TO_BATCH_ND -> op -> BATCH_TO_SPACE_ND."""
    fn = lambda x: tf.batch_to_space(  # noqa: E731
        tf.nn.relu(tf.space_to_batch_nd(x, [2, 2], [[0, 2], [2, 0]]) - 0.1), [2, 2],
        [[0, 2], [2, 0]])
    check_op("SPACE_TO_BATCH_ND", fn, [((None, 6, 6, 2), "float")],
             expect_ops=["SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"])
