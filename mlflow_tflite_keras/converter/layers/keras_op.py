"""``KerasOp`` (one ``keras.ops`` function by name), the ``StoredConstants`` mixin that holds
a layer's constant operands as weights, and the ``KerasOp`` functions of general use.

Registered serializable (package ``mlflow_tflite_keras``), so reconstructed models save to
``.keras`` and reload with ``safe_mode=True``: no Lambda layers, no pickled code.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

PACKAGE = "mlflow_tflite_keras"


class StoredConstants:
    """Constant operands of a layer, held as (non-trainable, unless asked) weights.

    Built from arrays, the weights hold their values. Built from a config, constants are only
    declared there (shape, dtype): nothing of that size is allocated until the weights file
    is read, and it must hold exactly what the config declares (``load_own_variables``), so a
    config cannot make a small ``.keras`` file allocate gigabytes.
    """

    def _init_constants(self, constants: dict, trainable: bool = False):
        self.constant_positions = sorted(int(k) for k in constants)
        self.trainable_constants = bool(trainable)
        self._constant_values = {int(k): v if isinstance(v, DeclaredConstant) else np.asarray(v)
                                 for k, v in constants.items()}
        self.constant_weights = []
        self._pending = any(isinstance(v, DeclaredConstant)
                            for v in self._constant_values.values())
        if not self._pending:
            self._hold(self._constant_values)

    def _hold(self, values: dict):
        """The weights made from ``values`` (position -> array); only their shapes and dtypes
        are kept besides (the config's), not a second copy of each constant."""
        self.constant_weights = [self._constant_weight(p, values[p])
                                 for p in self.constant_positions]
        self._constant_values = {p: DeclaredConstant(v.shape, v.dtype) for p, v in values.items()}

    def _constant_weight(self, pos, value):
        # The variable is made from the array itself (``Constant`` would multiply a ones
        # tensor of the full size by it).
        return self.add_weight(
            name=f"constant_{pos}", shape=value.shape, dtype=_keras_dtype(value.dtype),
            initializer=(lambda shape, dtype=None: value) if value.size else "zeros",
            trainable=self._trainable_constant(value.dtype))

    def _trainable_constant(self, dtype) -> bool:
        return self.trainable_constants and np.issubdtype(np.dtype(dtype), np.floating)

    def _constant(self, pos, spec_only: bool = False):
        """The constant at ``pos``: its weight, or, before the weights file is read, a
        stand-in of its declared shape for shape inference (``spec_only``: a KerasTensor)."""
        if not self._pending:
            return self.constant_weights[self.constant_positions.index(pos)]
        declared = self._constant_values[pos]
        if spec_only:
            return keras.KerasTensor(declared.shape, dtype=_keras_dtype(declared.dtype))
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope

        if not in_symbolic_scope():
            raise ValueError(f"{type(self).__name__} '{self.name}': its constants are not "
                             "loaded; it was created from a config alone. Load the model "
                             "with keras.saving.load_model(...).")
        return ops.zeros(declared.shape, dtype=_keras_dtype(declared.dtype))  # traced only

    def _with_constants(self, tensors, n: int, spec_only: bool = False) -> list:
        """The ``n`` operands of a call: ``tensors`` in order, with the stored constants at
        their positions (``spec_only``: as :meth:`_constant`)."""
        it = iter(tensors)
        # Tensors, not the Variables: JAX refuses variables inside traced ops.
        return [(self._constant(p, spec_only) if spec_only
                 else ops.convert_to_tensor(self._constant(p)))
                if p in self.constant_positions else next(it) for p in range(n)]

    def _constants_config(self) -> dict:
        # Shapes/dtypes only: the values themselves are restored from weights.
        return {str(p): {"shape": list(v.shape), "dtype": np.dtype(v.dtype).name}
                for p, v in self._constant_values.items()}

    @staticmethod
    def _constants_from_config(specs) -> dict:
        return {int(p): DeclaredConstant.from_config(s, f"constant {p}")
                for p, s in (specs or {}).items()}

    def load_own_variables(self, store):
        if not self._pending:
            return super().load_own_variables(store)
        # The weights file stores trainable variables first, then the others.
        order = sorted(self.constant_positions, key=lambda p: not self._trainable_constant(
            self._constant_values[p].dtype))
        if len(store.keys()) != len(order):
            raise ValueError(f"{type(self).__name__} '{self.name}': its config declares "
                             f"{len(order)} constant(s), the weights file stores "
                             f"{len(store.keys())}.")
        values = {}
        for i, pos in enumerate(order):
            stored = store[str(i)]  # the file's own bytes: read before anything is sized
            declared = self._constant_values[pos]
            if tuple(stored.shape) != declared.shape or \
                    np.dtype(stored.dtype) != declared.dtype:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}': its config declares constant {pos} "
                    f"as {list(declared.shape)} {declared.dtype}, the weights file stores "
                    f"{list(stored.shape)} {stored.dtype}.")
            values[pos] = np.asarray(stored)
        self._tracker.unlock()  # as Keras itself does to add state to a built layer
        try:
            self._hold(values)
        finally:
            self._tracker.lock()
        self._pending = False


@keras.saving.register_keras_serializable(package=PACKAGE)
class KerasOp(StoredConstants, keras.layers.Layer):
    """Calls one ``keras.ops`` function, by name, with constant operands held as weights.

    ``fn`` must name a function of ``keras.ops`` (or of this module's :data:`EXTRA_OPS`), so
    the saved config is data, never code. ``constants`` maps argument positions to arrays that
    are stored as (non-trainable) weights and spliced into the call at those positions.
    """

    def __init__(self, fn: str, fn_kwargs: dict | None = None, constants: dict | None = None,
                 n_inputs: int = 1, trainable_constants: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn
        self.fn_kwargs = dict(fn_kwargs or {})
        self.n_inputs = int(n_inputs)
        self._resolve(fn)  # fail at construction (and at load) for unknown names
        self._init_constants(constants or {}, trainable_constants)

    @staticmethod
    def _resolve(fn: str):
        target = EXTRA_OPS.get(fn) or getattr(ops, fn, None)
        if target is None or not callable(target):
            raise ValueError(f"KerasOp: '{fn}' is not a keras.ops function.")
        return target

    def call(self, *inputs):
        args = self._with_constants(flat_inputs(inputs),
                                    self.n_inputs + len(self.constant_positions))
        return self._resolve(self.fn)(*args, **self.fn_kwargs)

    def compute_output_spec(self, *inputs):
        x = inputs[0][0] if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) \
            else inputs[0]
        shape = self.fn_kwargs.get("newshape")
        if self.fn == "reshape" and shape is not None and not self.constant_positions and \
                -1 in shape and any(d is None for d in x.shape):
            # JAX infers shapes with a fresh symbol per dynamic dimension, so it cannot
            # tell that a merged (batch x time) dimension divides back: -1 stays dynamic.
            return keras.KerasTensor(tuple(None if d == -1 else int(d) for d in shape),
                                     dtype=x.dtype)
        static = self.fn_kwargs.get("static_shape")
        if self.fn in ("slice_dynamic", "strided_slice_dynamic") and static is not None:
            # The output shape known at build time; JAX cannot trace run-time slice sizes.
            return keras.KerasTensor(tuple(static), dtype=x.dtype)
        return super().compute_output_spec(*inputs)

    def get_config(self):
        config = super().get_config()
        config.update(fn=self.fn, fn_kwargs=self.fn_kwargs, n_inputs=self.n_inputs,
                      trainable_constants=self.trainable_constants,
                      constants=self._constants_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["constants"] = cls._constants_from_config(config.pop("constants", None))
        return cls(**config)


class DeclaredConstant:
    """A constant a layer config declares by shape and dtype only (no value, no memory)."""

    def __init__(self, shape, dtype):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    @classmethod
    def from_config(cls, spec, what: str) -> "DeclaredConstant":
        try:
            shape = [int(d) for d in spec["shape"]]
            dtype = np.dtype(spec["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"Invalid {what} in a layer config: {str(spec)[:200]}.") from None
        if any(d < 0 for d in shape) or dtype.kind not in "biufc":
            raise ValueError(f"Invalid {what} in a layer config: shape {shape[:8]}, "
                             f"dtype {dtype}.")
        return cls(shape, dtype)


def _keras_dtype(dtype) -> str:
    return np.dtype(dtype).name


def flat_inputs(inputs) -> list:
    """A layer's call inputs as a list: ``layer(a, b)`` and ``layer([a, b])`` alike."""
    if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
        return list(inputs[0])
    return list(inputs)


# Functions that keras.ops lacks, built from keras.ops. Each is a plain named function so a
# KerasOp config stays data ("fn": "relu_n1_to_1").
EXTRA_OPS: dict[str, callable] = {}


def extra_op(fn):
    """Register a helper usable as ``KerasOp(fn.__name__)``."""
    EXTRA_OPS[fn.__name__] = fn
    return fn


@extra_op
def relu_n1_to_1(x):
    return ops.clip(x, -1.0, 1.0)


@extra_op
def relu_0_to_1(x):
    return ops.clip(x, 0.0, 1.0)


@extra_op
def sign_bit(x):
    return ops.cast(ops.less(x, 0), x.dtype)


@extra_op
def squared_difference(x, y):
    return ops.square(ops.subtract(x, y))


@extra_op
def zero_pad_by_concat(x, pad_width):
    """Zero padding written as concatenation with zero blocks. TensorFlow 2.21's oneDNN graph
    rewrite crashes (SIGSEGV under ``tf.function``) when a zero ``Pad`` feeds the ``Add`` it
    fuses into a biased 1x1 convolution, as in channel-padded residual shortcuts; a
    concatenation computes the same values without that pattern."""
    for axis, (before, after) in enumerate(pad_width):
        if not before and not after:
            continue
        # zeros_like of a gathered slice keeps every other (possibly dynamic) dimension.
        parts = [ops.zeros_like(ops.take(x, [0] * int(before), axis=axis))] if before else []
        parts.append(x)
        if after:
            parts.append(ops.zeros_like(ops.take(x, [0] * int(after), axis=axis)))
        x = ops.concatenate(parts, axis=axis)
    return x


@extra_op
def truncate_divide(x, y):
    """Integer division rounding toward zero (TFLite integer DIV), in the inputs' dtype."""
    return ops.cast(ops.trunc(ops.divide(x, y)), keras.backend.result_type(x.dtype, y.dtype))


def _resize_axis_params(n_in, n_out, align_corners, half_pixel_centers, nearest):
    """TFLite's source coordinates for one resized axis, computed in float32 as its kernels
    do: nearest -> indices; bilinear -> (lower, upper, fraction)."""
    f32 = np.float32
    if align_corners and n_out > 1:
        scale = f32(n_in - 1) / f32(n_out - 1)
    else:
        scale = f32(n_in) / f32(n_out)
    out = np.arange(n_out, dtype=f32)
    if nearest:
        v = (out + f32(0.5 if half_pixel_centers else 0.0)) * scale
        fl = np.floor(v)
        idx = np.where(v - fl >= 0.5, fl + 1, fl) if align_corners else fl  # std::round
        idx = np.minimum(idx.astype(np.int64), n_in - 1)
        if half_pixel_centers:
            idx = np.maximum(idx, 0)
        return idx.astype("int32")
    v = (out + f32(0.5)) * scale - f32(0.5) if half_pixel_centers else out * scale
    fl = np.floor(v)
    lower = np.maximum(fl.astype(np.int64), 0)
    upper = np.minimum(np.ceil(v).astype(np.int64), n_in - 1)
    return lower.astype("int32"), upper.astype("int32"), (v - lower).astype(f32)


@extra_op
def resize_tflite(x, size, method="bilinear", align_corners=False, half_pixel_centers=False):
    """TFLite RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR on NHWC ``x`` (static H, W), exactly:
    align_corners and half_pixel_centers as TFLite defines them, by gathers."""
    for axis, n_out in ((1, int(size[0])), (2, int(size[1]))):
        n_in = x.shape[axis]
        if n_in is None:
            raise ValueError("resize_tflite needs static spatial dimensions")
        params = _resize_axis_params(n_in, n_out, align_corners, half_pixel_centers,
                                     method == "nearest")
        if method == "nearest":
            if not np.array_equal(params, np.arange(n_in)):
                x = ops.take(x, params, axis=axis)
            continue
        lower, upper, frac = params
        shape = [1] * len(x.shape)
        shape[axis] = n_out
        a = ops.take(x, lower, axis=axis)
        b = ops.take(x, upper, axis=axis)
        x = a + (b - a) * ops.cast(np.reshape(frac, shape), x.dtype)
    return x


# ---- shape / indexing / reduction families (converter/ops/{shape,indexing,reduction}.py) -----

@extra_op
def shape_of(x, dtype="int32"):
    """TFLite SHAPE: the run-time shape of ``x`` (dynamic dimensions included) as 1-D."""
    dims = [ops.cast(d, dtype) for d in ops.shape(x)]
    return ops.stack(dims) if dims else ops.zeros((0,), dtype)


def _plain(x):
    """A tensor for a value that may be a (constant) Variable, which list-taking ops refuse."""
    return ops.cast(x, x.dtype)


def _bcast_leading(xs, axis):
    """Broadcast operands with leading size 1 to the others' (dynamic) leading size, so a
    batch-1 constant joins batched tensors along a non-batch axis."""
    ref = next((x for x in xs if x.shape[0] != 1), None)
    if ref is None or axis == 0:
        return list(xs)
    n = ops.shape(ref)[0]
    return [ops.broadcast_to(x, (n, *x.shape[1:])) if x.shape[0] == 1 else x for x in xs]


@extra_op
def concat_n(*xs, axis=0):
    xs = [_plain(x) for x in xs]
    return ops.concatenate(_bcast_leading(xs, axis % len(xs[0].shape)), axis=axis)


@extra_op
def stack_n(*xs, axis=0):
    return ops.stack([_plain(x) for x in xs], axis=axis)


@extra_op
def getitem(x, index=()):
    """``x[index]``; ``index`` is data: ``[start, stop, step]`` slices, ints, ``"..."``,
    ``None`` (new axis)."""
    key = tuple(Ellipsis if k == "..." else slice(*k) if isinstance(k, (list, tuple))
                else k if k is None else int(k) for k in index)
    return x[key]


@extra_op
def gather_batched(params, indices, batch_dims=1):
    """``tf.gather(params, indices, axis=batch_dims, batch_dims=batch_dims)``."""
    b = batch_dims
    idx_rest = tuple(indices.shape[b:])
    k = int(np.prod(idx_rest))
    lead = tuple(-1 if d is None else d for d in indices.shape[:b])
    idx = ops.reshape(indices, (*lead, k) + (1,) * (len(params.shape) - b - 1))
    pshape = ops.shape(params)
    idx = ops.broadcast_to(idx, (*pshape[:b], k, *pshape[b + 1:]))
    out = ops.take_along_axis(params, idx, axis=b)
    return ops.reshape(out, (*lead, *idx_rest, *params.shape[b + 1:]))


@extra_op
def gather_nd(params, indices):
    """TFLite GATHER_ND (dimensions 1..depth-1 and the sliced rest of ``params`` static)."""
    depth = int(indices.shape[-1])
    dims = params.shape[:depth]
    strides = [int(np.prod(dims[j + 1:depth])) for j in range(depth)]
    flat = ops.reshape(params, (-1, *params.shape[depth:]))
    linear = ops.sum(indices * ops.cast(np.array(strides), indices.dtype), axis=-1)
    return ops.take(flat, linear, axis=0)


@extra_op
def fill_dims(dims, value, static_shape=None):
    """TFLite FILL / BROADCAST_TO with a run-time shape; ``static_shape`` (None for the
    dynamic dimension) restores the known dimensions."""
    y = ops.broadcast_to(value, dims)
    if static_shape is not None:
        y = ops.reshape(y, [-1 if d is None else int(d) for d in static_shape])
    return y


@extra_op
def broadcast_to_batch_of(ref, x, shape=()):
    """``broadcast_to(x, shape)`` where ``-1`` entries are ``ref``'s run-time batch size:
    FILL / BROADCAST_TO to a shape computed from the batch, without a shape tensor (JAX and
    PyTorch need shapes as (symbolic) integers)."""
    n = ops.shape(ref)[0]
    return ops.broadcast_to(x, [n if d == -1 else int(d) for d in shape])


@extra_op
def broadcast_to_keep(x, shape=()):
    """``broadcast_to`` where ``-1`` entries keep ``x``'s (run-time) dimension there."""
    off = len(shape) - len(x.shape)
    xs = ops.shape(x)
    return ops.broadcast_to(x, [xs[i - off] if d == -1 else int(d) for i, d in enumerate(shape)])


@extra_op
def broadcast_args(a, b):
    """TFLite BROADCAST_ARGS on two 1-D shape tensors."""
    n = max(a.shape[0], b.shape[0])
    a = ops.pad(a, [[n - a.shape[0], 0]], constant_values=1)
    b = ops.pad(b, [[n - b.shape[0], 0]], constant_values=1)
    return ops.where(ops.equal(a, 1), b, a)


@extra_op
def cumsum_tflite(x, axis=0, exclusive=False, reverse=False):
    if reverse:
        x = ops.flip(x, axis=axis)
    y = ops.cumsum(x, axis=axis)
    if exclusive:
        rank = len(x.shape)
        axis %= rank
        pad = [[1 if i == axis else 0, 0] for i in range(rank)]
        y = ops.pad(y[(slice(None),) * axis + (slice(None, -1),)], pad)
    return ops.flip(y, axis=axis) if reverse else y


@extra_op
def one_hot_tflite(indices, depth=1, on=1.0, off=0.0, axis=-1, dtype="float32"):
    hot = ops.one_hot(indices, depth, axis=axis, dtype="int32")
    return ops.cast(ops.where(ops.equal(hot, 1), on, off), dtype)


@extra_op
def where_indices(condition):
    """Single-argument TFLite WHERE: coordinates of true elements, ``[n, rank]`` int64."""
    if keras.backend.backend() == "tensorflow":
        # The op itself: it exports back to the builtin WHERE. keras.ops.nonzero unstacks
        # int64 coordinates (tf.Unpack), which TFLite has no builtin kernel for.
        import tensorflow as tf

        return tf.where(condition)
    return ops.cast(ops.stack(ops.nonzero(condition), axis=1), "int64")


@extra_op
def arg_reduce(x, axis=-1, mode="max", dtype="int64"):
    if keras.backend.backend() == "tensorflow":
        # The op itself: it exports back to the builtin ARG_MAX / ARG_MIN. keras.ops.argmax
        # works around flushed subnormals with tf.bitwise ops, which TFLite only runs as Flex.
        import tensorflow as tf

        fn = tf.math.argmax if mode == "max" else tf.math.argmin
        return fn(x, axis=axis, output_type=dtype)
    fn = ops.argmax if mode == "max" else ops.argmin
    return ops.cast(fn(x, axis=axis), dtype)


@extra_op
def add_exact(x, y):
    """``x + y`` with numpy broadcasting. ``keras.ops.add`` on TensorFlow turns some
    broadcasts, e.g. (N, C) + (N, 1) with N == C, into ``bias_add`` along the wrong axis;
    ``x - (-y)`` is the same sum, exactly, without that shortcut."""
    return ops.subtract(x, ops.negative(y))


# ---- slices with run-time bounds (SLICE / STRIDED_SLICE / DYNAMIC_UPDATE_SLICE) -------------

def _int_vector(v):
    return ops.reshape(ops.cast(v, "int32"), (-1,))


def with_static_shape(y, static_shape=None):
    """``y`` with the dimensions known at build time (``None`` elsewhere) made static."""
    if static_shape is None or len(static_shape) != len(y.shape):
        return y
    if all(a == b for a, b in zip(y.shape, static_shape) if b is not None):
        return y
    if all(d is not None for d in static_shape):
        return ops.reshape(y, tuple(int(d) for d in static_shape))
    dyn = shape_of(y, "int32")
    target = ops.stack([ops.convert_to_tensor(np.int32(d)) if d is not None else dyn[i]
                        for i, d in enumerate(static_shape)])
    return ops.reshape(y, target)


def _static_sizes(x, static_shape, full_dims=(), steps=None, shrink=()):
    """Slice sizes as integers, from the output shape known at build time, on backends
    whose slices need static sizes (JAX's ``dynamic_slice``); None on TensorFlow (run-time
    sizes, as the interpreter computes them) or when a size is unknown."""
    if keras.backend.backend() == "tensorflow" or static_shape is None:
        return None
    out = iter(static_shape)
    sizes = []
    for i in range(len(x.shape)):
        if i in shrink:
            sizes.append(1)
            continue
        d = next(out, None)
        if i in full_dims:
            d = x.shape[i]
        if d is None:
            return None
        step = steps[i] if steps is not None and i < len(steps) else 1
        sizes.append((d - 1) * step + 1 if d else 0)
    return sizes


@extra_op
def slice_dynamic(x, begin, size, static_shape=None, full_dims=()):
    """TFLite SLICE with run-time ``begin``/``size`` (``-1``: to the end). ``full_dims`` are
    taken whole (a static batch of 1 standing for the dynamic batch); ``static_shape`` gives
    the output dimensions known at build time."""
    rank = len(x.shape)
    begin = _int_vector(begin)
    if full_dims:
        whole = np.isin(np.arange(rank), list(full_dims))
        begin = ops.where(whole, np.int32(0), begin)
    sizes = _static_sizes(x, static_shape, full_dims)
    if sizes is not None:
        return ops.slice(x, begin, sizes)
    shape = shape_of(x, "int32")
    size = _int_vector(size)
    if full_dims:
        size = ops.where(whole, np.int32(-1), size)
    size = ops.where(ops.less(size, 0), shape - begin, size)
    return with_static_shape(ops.slice(x, begin, size), static_shape)


@extra_op
def strided_slice_dynamic(x, begin, end, strides=(), begin_mask=0, end_mask=0,
                          shrink_axis_mask=0, offset=False, static_shape=None):
    """TFLite STRIDED_SLICE with run-time ``begin``/``end`` and constant positive
    ``strides`` (no ellipsis or new axes): bounds normalized and clamped as TFLite does."""
    rank = len(x.shape)
    n = len(strides)
    begin = _int_vector(begin)
    end = _int_vector(end)
    static = _strided_static(x, begin, strides, begin_mask, shrink_axis_mask, static_shape)
    if static is not None:
        return static
    shape = shape_of(x, "int32")
    starts, sizes, steps, shrink = [], [], [], []
    for i in range(rank):
        d = shape[i]
        if i >= n:
            starts.append(ops.convert_to_tensor(np.int32(0)))
            sizes.append(d)
            steps.append(1)
            continue
        bit = 1 << i
        b_raw = begin[i]
        if shrink_axis_mask & bit:
            b = ops.where(ops.less(b_raw, 0), b_raw + d, b_raw)
            starts.append(b)
            sizes.append(ops.convert_to_tensor(np.int32(1)))
            steps.append(1)
            shrink.append(i)
            continue
        e_raw = b_raw + end[i] if offset else end[i]
        if begin_mask & bit:
            b = ops.convert_to_tensor(np.int32(0))
        else:
            b = ops.clip(ops.where(ops.less(b_raw, 0), b_raw + d, b_raw), 0, d)
        if end_mask & bit:
            e = d
        else:
            e = ops.clip(ops.where(ops.less(e_raw, 0), e_raw + d, e_raw), 0, d)
        starts.append(b)
        sizes.append(ops.maximum(e - b, 0))
        steps.append(int(strides[i]))
    y = ops.slice(x, ops.stack(starts), ops.stack([ops.cast(s, "int32") for s in sizes]))
    if any(s != 1 for s in steps):
        y = y[tuple(slice(None, None, s) for s in steps)]
    if shrink:
        y = ops.squeeze(y, axis=tuple(shrink))
    return with_static_shape(y, static_shape)


def _strided_static(x, begin, strides, begin_mask, shrink_axis_mask, static_shape):
    """``strided_slice_dynamic`` with sizes known at build time (see :func:`_static_sizes`):
    a slice of static size at the run-time begin (negative begins counted from the end, as
    TFLite does), then the strides and the shrunk axes."""
    rank, n = len(x.shape), len(strides)
    steps = [int(strides[i]) if i < n else 1 for i in range(rank)]
    shrink = [i for i in range(min(rank, n)) if shrink_axis_mask & (1 << i)]
    sizes = _static_sizes(x, static_shape, steps=steps, shrink=shrink)
    if sizes is None:
        return None
    starts = []
    for i in range(rank):
        if i >= n or (begin_mask & (1 << i) and i not in shrink):
            starts.append(ops.convert_to_tensor(np.int32(0)))
            continue
        b = begin[i]
        starts.append(ops.where(ops.less(b, 0), b + x.shape[i], b))
    y = ops.slice(x, ops.stack(starts), sizes)
    if any(s != 1 for s in steps):
        y = y[tuple(slice(None, None, s) for s in steps)]
    return ops.squeeze(y, axis=tuple(shrink)) if shrink else y


@extra_op
def dynamic_update_slice(operand, update, start):
    """TFLite DYNAMIC_UPDATE_SLICE: ``update`` written into ``operand`` at ``start``, the
    start clamped so the update fits (static ``update`` shape)."""
    rank = len(operand.shape)
    start = _int_vector(start)
    limit = shape_of(operand, "int32") - np.asarray(update.shape, np.int32)
    start = ops.clip(start, 0, ops.maximum(limit, 0))
    grid = np.indices(tuple(int(d) for d in update.shape), dtype=np.int32).reshape(rank, -1).T
    indices = ops.convert_to_tensor(grid) + ops.expand_dims(start, 0)
    return ops.scatter_update(operand, indices, ops.reshape(update, (-1,)))


extra_op(with_static_shape)
