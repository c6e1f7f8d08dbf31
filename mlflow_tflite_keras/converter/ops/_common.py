"""Helpers the op families share (not handlers): axis and shape operands, the batch rule,
run-time shape arithmetic, padding codes, building a layer with given weights."""

from __future__ import annotations

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.registry import HANDLERS
from mlflow_tflite_keras.tflite_model import drop_file_pages

INT_TYPES = ("INT32", "INT64", "INT16", "INT8", "UINT8", "UINT32")
_PROBES = (2, 3)  # two batch sizes: entries that differ depend on the batch

PADDING = {0: "same", 1: "valid"}  # schema Padding: SAME=0, VALID=1 (TF's definitions)


def keras_op_handler(fn: str, arity: int, family: str):
    """A handler applying ``KerasOp(fn)`` to the op's first ``arity`` inputs (elementwise
    operators with no options), belonging to the ``family`` module (its ``__name__``: the
    registry and the operator docs name the family by the handler's module)."""
    def handler(op, ctx):
        return [ctx.op(op, fn, *ctx.inputs(op)[:arity])]

    handler.__name__, handler.__module__ = fn, family
    return handler


def batched(ctx, x) -> bool:
    """``x`` is a graph tensor whose dimension 0 is the dynamic Keras batch."""
    return not ctx.is_const(x) and len(x.shape) >= 1 and x.shape[0] is None


def axis_arg(ctx, t, what="the axis") -> list[int]:
    return [int(a) for a in np.asarray(ctx.const(t, what)).reshape(-1)]


# ---- run-time shape tensors ------------------------------------------------------------------

def shape_value(ctx, t):
    """The value of an integer tensor computed at run time from SHAPE ops (shape arithmetic),
    as ``(value, mask)``: ``mask`` is 0 where the value is static, 1 where it is the batch size
    itself, 2 where it depends on the batch size otherwise. ``(None, None)`` when it depends
    on anything but shapes with a dynamic batch."""
    v = ctx.value(t)
    if ctx.is_const(v):
        return v, np.zeros(np.shape(v), np.int8)
    a, b = (_probe(ctx, t, n, {}, 0) for n in _PROBES)
    if a is None or b is None or a.shape != b.shape:
        return None, None
    mask = np.where(a == b, 0, np.where((a == _PROBES[0]) & (b == _PROBES[1]), 1, 2))
    return a, mask.astype(np.int8)


def _probe(ctx, t, batch, memo, depth):
    if t is None:
        return None
    v = ctx.value(t)
    if ctx.is_const(v):
        return v
    if t.index in memo:
        return memo[t.index]
    op = ctx.graph.producers.get(t.index)
    if op is None or depth > 24 or t.type_name not in INT_TYPES:
        return None
    result = None
    if op.type == "SHAPE":
        x = ctx.value(op.inputs[0])
        dims = [batch if (i == 0 and d is None) else d for i, d in enumerate(x.shape)]
        if all(d is not None for d in dims):
            result = np.array(dims, dtype=op.outputs[0].float_dtype)
    elif op.type in HANDLERS:
        ins = [None if u is None else _probe(ctx, u, batch, memo, depth + 1) for u in op.inputs]
        if all(val is not None for u, val in zip(op.inputs, ins) if u is not None):
            scratch = ctx.scratch(op, {u.index: val for u, val in zip(op.inputs, ins)
                                       if u is not None})
            try:
                outs = HANDLERS[op.type].convert(op, scratch)
            except Exception:  # noqa: BLE001 - not evaluable: the caller falls back
                outs = None
            if outs is not None and all(isinstance(o, np.ndarray) for o in outs):
                result = outs[op.outputs.index(t)]
    memo[t.index] = result
    return result


def target_shape(op, ctx, i=1):
    """A shape operand: ``(values, batch_mask)`` from a constant or run-time shape arithmetic;
    ``(None, None)`` when unknown."""
    t = op.input(i)
    if t is None:
        return None, None
    value, mask = shape_value(ctx, t)
    if value is None:
        return None, None
    return [int(d) for d in np.asarray(value).reshape(-1)], np.asarray(mask).reshape(-1)


# ---- convolution and pooling -----------------------------------------------------------------

def with_weights(layer, input_shape, weights):
    """Build ``layer`` for ``input_shape`` holding ``weights`` (trainable variables, in the
    order of ``layer.weights``).

    Each variable is created from its weight: no initial values drawn and overwritten, no
    second copy for an assignment (peak memory on big models). A layer that creates its
    weights in another order or from other initializers is built with zeros and assigned
    instead. The layer's configured initializers are restored afterwards, so the saved
    config is as usual."""
    given = _GivenWeights(weights)
    saved = {}
    for attr in ("kernel_initializer", "depthwise_initializer", "bias_initializer",
                 "recurrent_initializer", "embeddings_initializer"):
        if hasattr(layer, attr):
            saved[attr] = getattr(layer, attr)
            setattr(layer, attr, given)
    layer.build(input_shape)
    for attr, value in saved.items():
        setattr(layer, attr, value)
    if not given.complete(layer):
        layer.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return layer


def shared_layer(op, ctx, make, *config):
    """One Keras layer for every op of this type that reads the same constant tensors (its
    weights) with the same ``config`` (the layer's other settings); ``make()`` builds it on
    first use. A weight the source shares (litert-torch unrolls an LSTM into one
    FULLY_CONNECTED per time step, all reading one recurrent kernel; a Keras layer called
    twice) stays one variable, so training keeps it tied. Emulated layers wrap their weights
    per op, so they are never shared."""
    if ctx.emulate_quantization:
        return make()
    weights = tuple(t.index for t in op.inputs if t is not None and ctx.is_const(ctx.value(t)))
    key = (op.type, weights, repr(config))
    layer = ctx.shared_layers.get(key)
    if layer is None:
        layer = ctx.shared_layers[key] = make()
    else:
        ctx.layers_by_op.setdefault(op.index, []).append(layer.name)
    return layer


class _GivenWeights:
    """An initializer handing out given weights in turn (each checked against the shape
    asked for; anything unexpected makes the zeros that :func:`with_weights` then
    overwrites)."""

    def __init__(self, weights):
        self.weights = list(weights)
        self.used = 0
        self.mismatch = False

    def __call__(self, shape, dtype=None):
        if self.used < len(self.weights) and not self.mismatch and \
                tuple(np.shape(self.weights[self.used])) == tuple(shape):
            # The weight is often a view of a mapped file in another layout: one copy,
            # which becomes the variable's memory (its file pages go once it is made).
            source = self.weights[self.used]
            value = _variable_memory(source)
            drop_file_pages(source)
            del source
            self.weights[self.used] = None  # the variable holds it now
            self.used += 1
            return value
        self.mismatch = True
        return np.zeros(shape, np.float32)

    def complete(self, layer) -> bool:
        return not self.mismatch and self.used == len(self.weights) == len(layer.weights)


_ALIGNMENT = 64  # bytes: Eigen's largest (AVX-512)


def _variable_memory(array):
    """A fresh contiguous float32 copy of ``array`` as a tensor of the backend. With
    TensorFlow the tensor takes the copy's memory through DLPack (no second copy), and the
    variable made from it keeps it: a weight is copied once on its way into a variable."""
    array = np.asarray(array)
    if keras.backend.backend() != "tensorflow" or not array.size:
        return np.array(array, dtype=np.float32, order="C", copy=True)
    # TensorFlow's kernels need their buffers aligned as its own allocator aligns them.
    memory = np.empty(array.size * 4 + _ALIGNMENT, np.uint8)
    start = -memory.ctypes.data % _ALIGNMENT
    copy = memory[start:start + array.size * 4].view(np.float32).reshape(array.shape)
    np.copyto(copy, array, casting="unsafe")
    import tensorflow as tf

    try:
        return tf.experimental.dlpack.from_dlpack(copy.__dlpack__())
    except (AttributeError, BufferError, TypeError, ValueError):  # other builds: a copy
        return copy


def padding(op):
    code = op.opt("padding", 0)
    if code not in PADDING:
        raise ConversionError(f"unsupported padding {code}")
    return PADDING[code]


def transpose_output_padding(pad, in_sizes, out_sizes, kernel_sizes, strides):
    """Keras ``output_padding`` giving exactly the TFLite output size (TF's semantics: the
    TF backend passes the computed output shape to ``conv_transpose`` with the same padding),
    or None when Keras' default size is already right."""
    result = []
    default = True
    for n, t, k, s in zip(in_sizes, out_sizes, kernel_sizes, strides):
        if n is None or n < 0 or t is None or t < 0:
            raise ConversionError("a transposed convolution needs static spatial sizes")
        if pad == "same":
            keras_default = n * s
            p = t - (n - 1) * s - k % 2
        else:
            keras_default = (n - 1) * s + k + max(k, s) - k
            p = t - (n - 1) * s - k
        if t != keras_default:
            default = False
        result.append(p)
    if default:
        return None
    for p, s in zip(result, strides):
        if not 0 <= p < s:
            raise ConversionError(f"output size is not reachable with padding (output "
                                  f"padding {p}, stride {s})")
    return tuple(result)
