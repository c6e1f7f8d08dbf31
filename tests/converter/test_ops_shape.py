"""Shape ops: RESHAPE (incl. run-time SHAPE/PACK targets), SQUEEZE, EXPAND_DIMS, TRANSPOSE,
CONCATENATION, PACK, UNPACK, SPLIT, SPLIT_V, SLICE, STRIDED_SLICE, PAD, PADV2, MIRROR_PAD,
TILE, BROADCAST_TO, BROADCAST_ARGS, SHAPE, RANGE, FILL, REVERSE_V2. Batch dimensions stay
dynamic: inputs have a leading None wherever the op allows it (check_op feeds batch 3)."""

import numpy as np
import pytest
import tensorflow as tf

from converter.op_harness import check_op

F = "float"
I = "int"


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


# ---- RESHAPE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, inputs, out_shape", [
    (lambda x: tf.reshape(x, [-1, 3, 2]), [((None, 2, 3), F)], (None, 3, 2)),
    (lambda x: tf.reshape(x, [tf.shape(x)[0], -1]), [((None, 2, 3), F)], (None, 6)),
    (lambda x: tf.reshape(x, [tf.shape(x)[0], 3, -1]), [((None, 2, 3), F)], (None, 3, 2)),
    (lambda x: tf.reshape(x, [1, 6]), [((1, 2, 3), F)], (None, 6)),
], ids=["const-minus1", "flatten-shape-chain", "shape-chain-3d", "static-batch"])
def test_reshape_keeps_batch(fn, inputs, out_shape):
    model, _ = check_op("RESHAPE", fn, inputs)
    assert "Reshape" in layer_types(model)
    assert tuple(model.output.shape) == out_shape


def test_reshape_flatten_feeds_dense():
    w = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float32)
    model, _ = check_op("RESHAPE", lambda x: tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), w),
                        [((None, 2, 3), F)])
    assert tuple(model.output.shape) == (None, 4)


@pytest.mark.parametrize("fn", [
    lambda x: tf.reshape(x, [-1]),
    lambda x: tf.reshape(x, [tf.shape(x)[0] * 2, 2]),
    lambda x: tf.reshape(x, [tf.shape(x)[0] * 2, -1]),
], ids=["flat", "double-batch", "double-batch-inferred"])
def test_reshape_not_batch_preserving(fn):
    check_op("RESHAPE", fn, [((None, 4), F)])


# ---- SQUEEZE / EXPAND_DIMS / TRANSPOSE -------------------------------------------------------

@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.squeeze(x, [2]), (None, None, 1, 2)),
    (lambda x: tf.squeeze(x, [-1, 1]), (None, 1, None, 1)),
], ids=["axis", "negative-axes"])
def test_squeeze(fn, shape):
    check_op("SQUEEZE", fn, [(shape, F)])


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.expand_dims(x, -1), (None, None, 2)),
    (lambda x: tf.expand_dims(x, 1), (None, None)),
    (lambda x: tf.expand_dims(x, 0), (2, None)),
], ids=["last", "middle", "unbatched-front"])
def test_expand_dims(fn, shape):
    check_op("EXPAND_DIMS", fn, [(shape, F)])


@pytest.mark.parametrize("perm, shape, layer", [
    ([0, 2, 1], (None, 3, 4), "Permute"),
    ([0, 3, 1, 2], (None, 2, 3, 4), "Permute"),
    ([1, 0, 2], (None, 3, 4), "KerasOp"),
], ids=["swap-last", "nhwc-nchw", "moves-batch"])
def test_transpose(perm, shape, layer):
    model, _ = check_op("TRANSPOSE", lambda x: tf.transpose(x, perm), [(shape, F)])
    assert layer in layer_types(model)


# ---- CONCATENATION / PACK / UNPACK / SPLIT ---------------------------------------------------

CONST_23 = np.arange(6, dtype=np.float32).reshape(2, 3) / 10


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.concat([x, y], -1), [((None, 3, 2), F), ((None, 3, 4), F)]),
    (lambda x, y: tf.concat([x, y, x], 1), [((None, 2, 3), F), ((None, 1, 3), F)]),
    (lambda x: tf.concat([x, tf.broadcast_to(CONST_23, tf.shape(x))], 2), [((None, 2, 3), F)]),
    (lambda x: tf.concat([x, CONST_23[None]], 1), [((1, 2, 3), F)]),
], ids=["last-axis", "three", "broadcast-const", "static-batch-const"])
def test_concatenation(fn, inputs):
    check_op("CONCATENATION", fn, inputs)


def test_concatenation_fused_relu():
    check_op("CONCATENATION", lambda x, y: tf.nn.relu(tf.concat([x, y], -1)),
             [((None, 4), F), ((None, 3), F)])


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, y: tf.stack([x, y], axis=1), [((None, 3), F), ((None, 3), F)]),
    (lambda x, y: tf.stack([x, y, x], axis=-1), [((None, 2, 3), F), ((None, 2, 3), F)]),
], ids=["axis1", "last"])
def test_pack(fn, inputs):
    check_op("PACK", fn, inputs)


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.unstack(x, axis=1), (None, 3, 2)),
    (lambda x: tf.unstack(x, axis=-1), (None, 2, 2)),
], ids=["axis1", "last"])
def test_unpack(fn, shape):
    check_op("UNPACK", fn, [(shape, F)])


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.split(x, 2, axis=-1), (None, 3, 4)),
    (lambda x: tf.split(x, 3, axis=1), (None, 3, 2)),
], ids=["last", "axis1"])
def test_split(fn, shape):
    check_op("SPLIT", fn, [(shape, F)])


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.split(x, [1, 3, 2], axis=-1), (None, 6)),
    (lambda x: tf.split(x, [1, -1, 2], axis=1), (None, 5, 2)),
], ids=["sizes", "inferred"])
def test_split_v(fn, shape):
    check_op("SPLIT_V", fn, [(shape, F)])


# ---- SLICE / STRIDED_SLICE -------------------------------------------------------------------

@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.slice(x, [0, 1], [-1, 2]), (None, 5)),
    (lambda x: tf.slice(x, [0, 1, 0], [-1, 2, 2]), (None, 4, 3)),
    (lambda x: tf.slice(x, [0, 2], [1, 3]), (1, 6)),
], ids=["2d", "3d", "static-batch"])
def test_slice(fn, shape):
    check_op("SLICE", fn, [(shape, F)])


@pytest.mark.parametrize("fn, shape", [
    (lambda x: x[:, ::-1, 1], (None, 5, 4)),
    (lambda x: x[:, 1:4:2], (None, 5)),
    (lambda x: x[:, -3:-1, ::-2], (None, 5, 4)),
    (lambda x: x[..., 1:3], (None, 2, 5)),
    (lambda x: x[..., 2], (None, 2, 5)),
    (lambda x: x[:, 1, tf.newaxis, 1:], (None, 3, 4)),
    (lambda x: x[1:], (None, 3)),
    (lambda x: x[:, 1:3], (1, 5)),
    (lambda x: x[:, 4:0:-1], (None, 6)),
], ids=["reverse-shrink", "stride", "negative", "ellipsis", "ellipsis-shrink", "new-axis",
        "batch-slice", "static-batch", "negative-stride"])
def test_strided_slice(fn, shape):
    check_op("STRIDED_SLICE", fn, [(shape, F)])


# ---- PAD / PADV2 / MIRROR_PAD / TILE / BROADCAST_TO ------------------------------------------

@pytest.mark.parametrize("fn, shape, layer", [
    # Explicit padding of a pooling window: the built-in Keras layer.
    (lambda x: tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 0], [2, 1], [0, 0]]), 2, 1, "VALID"),
     (None, 2, 3, 2), "ZeroPadding2D"),
    # Anything else (TF 2.21's oneDNN rewrite crashes on a zero Pad feeding a fused Add):
    # a concatenation with zeros.
    (lambda x: tf.pad(x, [[0, 0], [1, 2], [0, 0]]), (None, 3, 2), "zero_pad_by_concat"),
    (lambda x: tf.pad(x, [[0, 0], [1, 0], [2, 1], [0, 0]]), (None, 2, 3, 2),
     "zero_pad_by_concat"),
    (lambda x: tf.pad(x, [[0, 0], [0, 0], [1, 1]]), (None, 3, 2), "zero_pad_by_concat"),
], ids=["2d-into-pool", "1d", "2d", "channels"])
def test_pad(fn, shape, layer):
    model, _ = check_op("PAD", fn, [(shape, F)])
    assert layer in layer_types(model) | {getattr(x, "fn", None) for x in model.layers}


def test_padv2():
    check_op("PADV2", lambda x: tf.pad(x, [[0, 0], [1, 2], [2, 0]], constant_values=1.5),
             [((None, 3, 2), F)])


@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
def test_mirror_pad(mode):
    check_op("MIRROR_PAD", lambda x: tf.pad(x, [[0, 0], [2, 1], [1, 2], [0, 0]], mode=mode),
             [((None, 4, 4, 2), F)])


@pytest.mark.parametrize("fn, shape", [
    (lambda x: tf.tile(x, [1, 2, 3]), (None, 2, 3)),
    (lambda x: tf.tile(x, [2, 1]), (None, 3)),
], ids=["inner", "batch"])
def test_tile(fn, shape):
    check_op("TILE", fn, [(shape, F)])


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.broadcast_to(x, tf.concat([tf.shape(x)[:1], [4, 3]], 0)),
     [((None, 1, 3), F)]),
    (lambda x: tf.broadcast_to(x, [1, 4, 3]), [((1, 1, 3), F)]),
    (lambda x: tf.broadcast_to(x, [2, 3]), [((3,), F)]),
], ids=["shape-chain", "static-batch", "unbatched"])
def test_broadcast_to(fn, inputs):
    check_op("BROADCAST_TO", fn, inputs)


def test_broadcast_args():
    check_op("BROADCAST_ARGS", lambda x, y: tf.broadcast_to(
        x, tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(y))) + y,
        [((None, 1, 3), F), ((None, 4, 1), F)], expect_ops=["BROADCAST_ARGS", "BROADCAST_TO"])


# ---- SHAPE / RANGE / FILL / REVERSE_V2 -------------------------------------------------------

def test_shape_is_runtime():
    model, _ = check_op("SHAPE", lambda x: tf.shape(x) * 2, [((None, 4, 2), F)])
    assert "KerasOp" in layer_types(model)


def test_range_runtime_limit():
    # Batch 3 != 4 columns: keras.ops.add (TF) mistakes an (N, 1) operand for a bias when N == C.
    check_op("RANGE", lambda x: x + tf.cast(tf.range(tf.shape(x)[0]), tf.float32)[:, None],
             [((None, 4), F)])


@pytest.mark.parametrize("fn, inputs", [
    (lambda x: tf.fill(tf.shape(x), 2.0) + x, [((None, 3), F)]),
    (lambda x: tf.fill([2, 3], tf.reduce_sum(x)), [((None, 2), F)]),
], ids=["shape-chain", "runtime-value"])
def test_fill(fn, inputs):
    check_op("FILL", fn, inputs)


@pytest.mark.parametrize("axes, shape", [
    ([1], (None, 4)),
    ([1, 2], (None, 3, 4)),
    ([-1], (None, 2, 3)),
], ids=["one", "two", "negative"])
def test_reverse_v2(axes, shape):
    check_op("REVERSE_V2", lambda x: tf.reverse(x, axes), [(shape, F)])


# ---- STRIDED_SLICE masks TensorFlow's converter never writes (ellipsis, new axis, offset) -----

def _handmade_strided_slice(shape, begin, end, strides, out_shape, **masks):
    from converter.handmade import FlatModel

    b = FlatModel()
    x = b.input(shape)
    consts = [b.const(np.array(v, np.int32)) for v in (begin, end, strides)]
    y = b.output(out_shape)
    b.op("STRIDED_SLICE", [x, *consts], [y], "StridedSliceOptions", **masks)
    return b.finish()


@pytest.mark.parametrize("begin, end, strides, masks, expected", [
    ([0, 1], [0, 3], [1, 1], dict(ellipsisMask=1), lambda a: a[..., 1:3]),
    ([0, 0, 2], [0, 0, 0], [1, 1, 1], dict(beginMask=1, endMask=1, newAxisMask=2,
                                           shrinkAxisMask=4), lambda a: a[:, None, 2]),
    ([0, 1, 1], [0, 2, 3], [1, 1, 1], dict(beginMask=1, endMask=1, offset=True),
     lambda a: a[:, 1:3, 1:4]),
    ([0, 3, 4], [0, 0, 0], [1, -1, -2], dict(beginMask=1, endMask=7),
     lambda a: a[:, 3::-1, 4::-2]),
], ids=["ellipsis", "new-axis-shrink", "offset", "negative-strides-masked"])
def test_strided_slice_masks_handmade(begin, end, strides, masks, expected):
    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity

    shape = (1, 4, 5)
    out_shape = expected(np.zeros(shape)).shape
    data = _handmade_strided_slice(shape, begin, end, strides, out_shape, **masks)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    model = to_keras(data)
    assert tuple(model.output.shape) == (None, *out_shape[1:])
    np.testing.assert_array_equal(np.asarray(model(x)), expected(x))
    report = check_parity(data, model, x)
    assert report.passed, str(report)


# ---- quantized (full-int8) models: the Keras model computes in the float domain -------------
# (judged in quantization steps; top-1 of a non-classifier output is meaningless)

@pytest.mark.parametrize("op_type, fn, inputs", [
    ("CONCATENATION", lambda x, y: tf.concat([x, y], -1), [((None, 3), F), ((None, 2), F)]),
    ("PAD", lambda x: tf.pad(x, [[0, 0], [1, 1], [0, 0]]), [((None, 3, 2), F)]),
    ("TRANSPOSE", lambda x: tf.transpose(x, [0, 2, 1]), [((None, 3, 4), F)]),
    ("STRIDED_SLICE", lambda x: x[:, 1:4], [((None, 5), F)]),
], ids=["concat", "pad", "transpose", "strided-slice"])
def test_full_int8(op_type, fn, inputs):
    check_op(op_type, fn, inputs, recipe="full-int8", min_top1=0.0)


# ---- a Keras model's shape layers come back as the same Keras layers, batch dynamic ----------

def _keras_shape_layers():
    import keras

    inp = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3)(inp)
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(a),
                                         keras.layers.GlobalAveragePooling2D()(a)])
    p = keras.layers.Permute((2, 1))(keras.layers.Reshape((3, -1))(joined))
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(p)))


def test_keras_flatten_reshape_permute_concatenate():
    from model_factory import keras_model_tflite

    from mlflow_tflite_keras.converter import to_keras
    from mlflow_tflite_keras.converter.parity import check_parity

    data = keras_model_tflite("shape-layers", _keras_shape_layers)
    model = to_keras(data)
    assert {"Reshape", "Permute", "Concatenate", "GlobalAveragePooling2D", "Dense"} <= \
        layer_types(model)
    assert tuple(model.output.shape) == (None, 2)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 6, 6, 2)).astype(np.float32)
    report = check_parity(data, model, x)
    assert report.passed, str(report)


# ---- slice bounds computed at run time (loop counters, data-dependent offsets) --------------

def _at(value):
    """A fixed int32 offset input, fed as is."""
    return ((1,), np.array([value], np.int32))


@pytest.mark.parametrize("fn, inputs, out_shape", [
    (lambda x, i: tf.slice(x, tf.concat([[0], i], 0), [-1, 2]), [((None, 6), F), _at(3)],
     (None, 2)),
    (lambda x, i: tf.slice(x, [0, 1], tf.concat([[-1], i], 0)), [((None, 6), F), _at(4)],
     (None, None)),
    (lambda x, i: tf.slice(x, tf.concat([[0], i, [0]], 0), [-1, -1, 3]),
     [((None, 5, 4), F), _at(2)], (None, None, 3)),
], ids=["run-time-begin", "run-time-size", "begin-to-end"])
def test_slice_run_time_bounds(fn, inputs, out_shape):
    model, _ = check_op("SLICE", fn, inputs)
    assert tuple(model.output.shape) == out_shape


@pytest.mark.parametrize("fn, inputs", [
    (lambda x, i: x[:, i[0]:i[0] + 3], [((None, 7), F), _at(2)]),
    (lambda x, i: x[:, i[0]:], [((None, 7), F), _at(-4)]),
    (lambda x, i: x[:, i[0]], [((None, 7), F), _at(5)]),
    (lambda x, i: x[:, i[0]::2, 1:], [((None, 7, 3), F), _at(1)]),
], ids=["window", "negative-begin", "shrink", "strided"])
def test_strided_slice_run_time_bounds(fn, inputs):
    check_op("STRIDED_SLICE", fn, inputs)


def _accumulate(x):
    """A loop writing one value per step into a TensorArray at the loop counter, as Keras RNN
    layers do: TensorListSetItem becomes SLICE/CONCATENATION with run-time sizes."""
    ta = tf.TensorArray(tf.float32, size=6, element_shape=(1,))

    def body(i, acc, ta):
        acc = acc * 0.5 + x[:, i]
        return i + 1, acc, ta.write(i, acc)

    _, _, ta = tf.while_loop(lambda i, acc, ta: i < 6, body,
                             [tf.constant(0), tf.zeros((1,)), ta])
    return tf.transpose(ta.stack()) * 2.0


def test_slice_run_time_size_in_loop_body():
    model, _ = check_op("SLICE", _accumulate, [((1, 6), F)],
                        expect_ops=["WHILE", "SLICE"])
    assert tuple(model.output.shape) == (None, 6)


def _dynamic_update(x, u, i):
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    return gen_xla_ops.xla_dynamic_update_slice(x, u, tf.stack([i[0], 1]))


@pytest.mark.parametrize("at", [1, 3], ids=["inside", "clamped"])
def test_dynamic_update_slice(at):
    check_op("DYNAMIC_UPDATE_SLICE", _dynamic_update, [((4, 5), F), ((2, 3), F), _at(at)])


def test_slice_run_time_begin_static_batch():
    """A fixed batch of 1: the batch dimension of a run-time slice stays the Keras batch."""
    model, _ = check_op("SLICE", lambda x, i: tf.slice(x, tf.concat([[0], i[0]], 0), [1, 2]),
                        [((1, 6), F), ((1, 1), np.array([[3]], np.int32))])
    assert tuple(model.output.shape) == (None, 2)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 6)).astype(np.float32)
    y = np.asarray(model({"x": x, "i": np.full((3, 1), 3, np.int32)}))
    np.testing.assert_array_equal(y, x[:, 3:5])
