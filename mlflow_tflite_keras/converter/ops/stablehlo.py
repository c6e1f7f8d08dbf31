"""StableHLO family: the ``STABLEHLO_*`` operators that models exported from PyTorch and JAX
carry (litert-torch, jax2tf), with the StableHLO specification's semantics.

Elementwise ops take operands of one shape (no implicit broadcasting: BROADCAST_IN_DIM makes
it explicit). Ops with a body (REDUCE, REDUCE_WINDOW) are rebuilt when the body is one binary
op of a known reduction; DOT_GENERAL becomes ``keras.layers.EinsumDense`` when the right
operand is a constant (a trainable kernel), else an einsum; COMPOSITE inlines its
decomposition subgraph like CALL.
"""

from __future__ import annotations

import string

import keras
import numpy as np

from mlflow_tflite_keras.converter.builder import ConversionError
from mlflow_tflite_keras.converter.ir import build_graph
from mlflow_tflite_keras.converter.layers import KerasOp
from mlflow_tflite_keras.converter.ops._common import batched, keras_op_handler
from mlflow_tflite_keras.converter.ops.shape import _reshape
from mlflow_tflite_keras.converter.registry import register

UNARY = {
    "STABLEHLO_ABS": "abs",
    "STABLEHLO_CBRT": "cbrt",
    "STABLEHLO_COSINE": "cos",
    "STABLEHLO_EXPONENTIAL": "exp",
    "STABLEHLO_FLOOR": "floor",
    "STABLEHLO_LOG": "log",
    "STABLEHLO_LOGISTIC": "sigmoid",
    "STABLEHLO_NEGATE": "negative",
    "STABLEHLO_RSQRT": "rsqrt",
    "STABLEHLO_TANH": "tanh",
}

# REMAINDER is C's fmod (the dividend's sign), unlike TFLite's FLOOR_MOD.
BINARY = {
    "STABLEHLO_ADD": "add_exact",
    "STABLEHLO_SUBTRACT": "subtract",
    "STABLEHLO_MULTIPLY": "multiply",
    "STABLEHLO_MAXIMUM": "maximum",
    "STABLEHLO_MINIMUM": "minimum",
    "STABLEHLO_POWER": "power",
    "STABLEHLO_REMAINDER": "fmod",
    "STABLEHLO_SHIFT_LEFT": "left_shift",
}

# StablehloComparisonDirection -> keras.ops function.
_COMPARISONS = {0: "equal", 1: "not_equal", 2: "greater_equal", 3: "greater", 4: "less_equal",
                5: "less"}


for _type, _fn in UNARY.items():
    register(_type, layer=f"KerasOp({_fn})")(keras_op_handler(_fn, 1, __name__))
for _type, _fn in BINARY.items():
    register(_type, layer=f"KerasOp({_fn})")(keras_op_handler(_fn, 2, __name__))


def _is_bool(t) -> bool:
    return t.type_name == "BOOL"


def _is_int(t) -> bool:
    return t.float_dtype.startswith(("int", "uint"))


@register("STABLEHLO_DIVIDE", layer="KerasOp(divide / truncate_divide)")
def divide(op, ctx):
    fn = "truncate_divide" if _is_int(op.outputs[0]) else "divide"
    return [ctx.op(op, fn, *ctx.inputs(op)[:2])]


@register("STABLEHLO_AND", "STABLEHLO_OR", layer="KerasOp(logical_and / bitwise_and, ...)")
def and_or(op, ctx):
    word = "and" if op.type == "STABLEHLO_AND" else "or"
    fn = f"logical_{word}" if _is_bool(op.outputs[0]) else f"bitwise_{word}"
    return [ctx.op(op, fn, *ctx.inputs(op)[:2])]


@register("STABLEHLO_CONVERT", layer="KerasOp(cast)")
def convert(op, ctx):
    return [ctx.op(op, "cast", ctx.value(op.inputs[0]), dtype=op.outputs[0].float_dtype)]


@register("STABLEHLO_CLAMP", layer="KerasOp(maximum) + KerasOp(minimum)")
def clamp(op, ctx):
    low, x, high = ctx.inputs(op)[:3]
    return [ctx.op(op, "minimum", ctx.op(op, "maximum", x, low, suffix="_low"), high)]


@register("STABLEHLO_SELECT", layer="KerasOp(where)")
def select(op, ctx):
    return [ctx.op(op, "where", *ctx.inputs(op)[:3])]


@register("STABLEHLO_COMPARE", layer="KerasOp(equal / less / ...)")
def compare(op, ctx):
    direction = op.opt("comparisonDirection", 0)
    if direction not in _COMPARISONS:
        raise ConversionError(f"{op.type}: unknown comparison direction {direction}.")
    return [ctx.op(op, _COMPARISONS[direction], *ctx.inputs(op)[:2])]


# ---- shapes ------------------------------------------------------------------------------------

def _ints(value) -> list[int]:
    return [] if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


@register("STABLEHLO_RESHAPE", layer="keras.layers.Reshape / KerasOp(reshape)")
def reshape(op, ctx):
    return [_reshape(op, ctx, ctx.value(op.inputs[0]), list(op.outputs[0].shape))]


@register("STABLEHLO_TRANSPOSE", layer="keras.layers.Permute / KerasOp(transpose)")
def transpose(op, ctx):
    x = ctx.value(op.inputs[0])
    perm = _ints(op.opt("permutation"))
    if batched(ctx, x) and perm and perm[0] == 0 and len(perm) > 1:
        return [ctx.apply(keras.layers.Permute(tuple(perm[1:]), name=ctx.name(op)), x)]
    return [ctx.op(op, "transpose", x, axes=tuple(perm))]


@register("STABLEHLO_CONCATENATE", layer="KerasOp(concat_n)")
def concatenate(op, ctx):
    return [ctx.op(op, "concat_n", *ctx.inputs(op), axis=int(op.opt("dimension", 0)))]


@register("STABLEHLO_SLICE", layer="KerasOp(getitem)")
def slice_(op, ctx):
    x = ctx.value(op.inputs[0])
    starts, limits = _ints(op.opt("startIndices")), _ints(op.opt("limitIndices"))
    strides = _ints(op.opt("strides")) or [1] * len(starts)
    index = []
    for axis, (b, e, s) in enumerate(zip(starts, limits, strides)):
        if axis == 0 and batched(ctx, x) and (b, e, s) == (0, op.inputs[0].shape[0], 1):
            index.append([None, None, None])  # the whole (dynamic) batch
        else:
            index.append([b, e, s])
    return [ctx.op(op, "getitem", x, index=index)]


@register("STABLEHLO_BROADCAST_IN_DIM", layer="KerasOp(broadcast_in_dim)")
def broadcast_in_dim(op, ctx):
    x = ctx.value(op.inputs[0])
    shape = list(op.outputs[0].shape)
    if not ctx.is_const(x) and batched(ctx, x):
        shape[0] = -1  # the batch: operand dimension 0 maps to output dimension 0
    return [ctx.op(op, "broadcast_in_dim", x, dims=_ints(op.opt("broadcastDimensions")),
                   shape=shape)]


@register("STABLEHLO_IOTA", layer="(constant)")
def iota(op, ctx):
    out = op.outputs[0]
    axis = int(op.opt("iotaDimension", 0))
    shape = [1] * out.rank
    shape[axis] = out.shape[axis]
    values = np.arange(out.shape[axis]).reshape(shape)
    return [np.broadcast_to(values, out.shape).astype(out.float_dtype)]


@register("STABLEHLO_PAD", layer="KerasOp(stablehlo_pad)")
def pad(op, ctx):
    x = ctx.value(op.inputs[0])
    value = float(np.asarray(ctx.const(op.inputs[1], "the padding value")).reshape(-1)[0])
    return [ctx.op(op, "stablehlo_pad", x, low=_ints(op.opt("edgePaddingLow")),
                   high=_ints(op.opt("edgePaddingHigh")),
                   interior=_ints(op.opt("interiorPadding")), value=value)]


@register("STABLEHLO_DYNAMIC_SLICE", layer="KerasOp(stablehlo_dynamic_slice)")
def dynamic_slice(op, ctx):
    return [ctx.op(op, "stablehlo_dynamic_slice", *ctx.inputs(op),
                   sizes=_ints(op.opt("sliceSizes")))]


@register("STABLEHLO_DYNAMIC_UPDATE_SLICE", layer="KerasOp(stablehlo_dynamic_update_slice)")
def dynamic_update_slice(op, ctx):
    return [ctx.op(op, "stablehlo_dynamic_update_slice", *ctx.inputs(op))]


# ---- reductions --------------------------------------------------------------------------------

# The body of a reduction (a subgraph of one binary op): its op -> (reduction, combiner).
_REDUCTIONS = {
    "STABLEHLO_ADD": ("sum", "add"), "ADD": ("sum", "add"),
    "STABLEHLO_MULTIPLY": ("prod", "multiply"), "MUL": ("prod", "multiply"),
    "STABLEHLO_MAXIMUM": ("max", "maximum"), "MAXIMUM": ("max", "maximum"),
    "STABLEHLO_MINIMUM": ("min", "minimum"), "MINIMUM": ("min", "minimum"),
    "STABLEHLO_AND": ("all", "logical_and"), "LOGICAL_AND": ("all", "logical_and"),
    "STABLEHLO_OR": ("any", "logical_or"), "LOGICAL_OR": ("any", "logical_or"),
}
_WINDOW_FUNCTIONS = {"sum": "add", "prod": "mul", "max": "max", "min": "min", "all": "all",
                     "any": "any"}


def _body_reduction(op, ctx, index):
    """(reduction, combiner) of a body subgraph computing one known binary op of its two
    inputs; else a ConversionError."""
    model = ctx.graph.model
    if not 0 <= index < len(model.subgraphs):
        raise ConversionError(f"{op.type}: invalid body subgraph {index}.")
    body = build_graph(model, index)
    ops = body.ops
    if len(ops) == 1 and ops[0].type in _REDUCTIONS and len(body.inputs) == 2 and \
            {t.index for t in ops[0].inputs} == {t.index for t in body.inputs} and \
            ops[0].outputs[0].index == body.outputs[0].index:
        return _REDUCTIONS[ops[0].type]
    raise ConversionError(f"{op.type}: the body {[o.type for o in ops]} is not one known "
                          "reduction (add, multiply, maximum, minimum, and, or).")


def _known_reduction(op, ctx, index):
    try:
        return _body_reduction(op, ctx, index)
    except ConversionError:
        return None


def _body_model(op, ctx, index, rank, dtypes):
    """The body subgraph as a Keras model of ``2 * n`` inputs of rank ``rank`` (every
    dimension open): its ops are elementwise, so it applies to whole tensors."""
    from mlflow_tflite_keras.converter.ops.control_flow import _constant_output
    from mlflow_tflite_keras.converter.registry import HANDLERS
    from mlflow_tflite_keras.converter.subgraph import InputSpec, build_subgraph

    graph = build_graph(ctx.graph.model, index)
    base = ctx.name(op, "_body")
    specs = [InputSpec(t.index, f"{base}_in{j}", (None,) * rank, dtypes[j % len(dtypes)])
             for j, t in enumerate(graph.inputs)]
    built = build_subgraph(ctx.graph.model, index, specs, [t.index for t in graph.outputs],
                           name=base, handlers=HANDLERS, graph=graph,
                           constant_output=_constant_output(base))
    return built.model


@register("STABLEHLO_REDUCE", layer="KerasOp(sum / max / min / prod / all / any) / "
          "TreeReduce(body model) for other bodies (argmax, ...)")
def reduce(op, ctx):
    n = len(op.inputs) // 2
    index = int(op.opt("bodySubgraphIndex", -1))
    axes = tuple(_ints(op.opt("dimensions")))
    known = _known_reduction(op, ctx, index) if n == 1 else None
    if known is not None:
        reduction, combine = known
        x, init = ctx.inputs(op)
        y = ctx.op(op, reduction, x, axis=axes, suffix="_reduce")
        return [ctx.op(op, combine, y, init)]
    values = ctx.inputs(op)
    anchor = next((v for v in values[:n] if not ctx.is_const(v)), None)
    if anchor is None or any(anchor.shape[a] is None for a in axes):
        raise ConversionError(f"{op.type}: a reduction with this body needs a computed operand "
                              "of static size along the reduced dimensions.")
    from mlflow_tflite_keras.converter.layers.stablehlo import TreeReduce

    body = _body_model(op, ctx, index, op.inputs[0].rank, [t.float_dtype for t in op.inputs[:n]])
    layer = TreeReduce(body, sorted(axes), n, name=ctx.name(op))
    # Constant operands (an iota of indices) and initial values as graph tensors.
    values = [KerasOp("constant_like", constants={1: np.asarray(v)}, n_inputs=1,
                      name=ctx.name(op, f"_constant{i}"))(anchor) if ctx.is_const(v) else v
              for i, v in enumerate(values)]
    out = layer(*values)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@register("STABLEHLO_REDUCE_WINDOW", layer="KerasOp(stablehlo_pad) + KerasOp(reduce_window)")
def reduce_window(op, ctx):
    if len(op.inputs) != 2:
        raise ConversionError(f"{op.type}: a window reduction of several operands is not "
                              "supported.")
    reduction, _ = _body_reduction(op, ctx, int(op.opt("bodySubgraphIndex", -1)))
    x, init = ctx.inputs(op)
    rank = op.inputs[0].rank
    window = _ints(op.opt("windowDimensions"))
    strides = _ints(op.opt("windowStrides")) or [1] * rank
    base = _ints(op.opt("baseDilations")) or [1] * rank
    dilations = _ints(op.opt("windowDilations")) or [1] * rank
    padding = np.array(_ints(op.opt("padding")) or [0] * 2 * rank).reshape(rank, 2)
    if any(b != 1 for b in base) or padding.any():
        init_value = float(np.asarray(ctx.const(op.inputs[1], "the initial value"))
                           .reshape(-1)[0])
        x = ctx.op(op, "stablehlo_pad", x, low=[int(p) for p in padding[:, 0]],
                   high=[int(p) for p in padding[:, 1]], interior=[b - 1 for b in base],
                   value=init_value, suffix="_pad")
    return [ctx.op(op, "reduce_window", x, init, window=window, strides=strides,
                   dilations=dilations, function=_WINDOW_FUNCTIONS[reduction])]


# ---- dot_general -------------------------------------------------------------------------------

def _dot_equation(lhs_rank, rhs_rank, lb, rb, lc, rc) -> str:
    """The einsum equation of DOT_GENERAL: batch dimensions, then the lhs free ones, then the
    rhs free ones (the specification's result order)."""
    letters = iter(string.ascii_lowercase)
    lhs = [next(letters) for _ in range(lhs_rank)]
    rhs = [None] * rhs_rank
    for a, b in zip(lb, rb):
        rhs[b] = lhs[a]
    for a, b in zip(lc, rc):
        rhs[b] = lhs[a]
    rhs = [r or next(letters) for r in rhs]
    out = [lhs[a] for a in lb]
    out += [lhs[i] for i in range(lhs_rank) if i not in lb and i not in lc]
    out += [rhs[i] for i in range(rhs_rank) if i not in rb and i not in rc]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


@register("STABLEHLO_DOT_GENERAL", layer="keras.layers.EinsumDense / KerasOp(einsum_eq)")
def dot_general(op, ctx):
    lhs, rhs = ctx.inputs(op)[:2]
    lb, rb = _ints(op.opt("lhsBatchingDimensions")), _ints(op.opt("rhsBatchingDimensions"))
    lc = _ints(op.opt("lhsContractingDimensions"))
    rc = _ints(op.opt("rhsContractingDimensions"))
    equation = _dot_equation(op.inputs[0].rank, op.inputs[1].rank, lb, rb, lc, rc)
    out_shape = list(op.outputs[0].shape)
    if ctx.is_const(rhs) and not ctx.is_const(lhs) and not rb and 0 not in lc and \
            batched(ctx, lhs) and "float" in str(lhs.dtype):
        layer = keras.layers.EinsumDense(equation, output_shape=out_shape[1:],
                                         name=ctx.name(op))
        layer.build(tuple(lhs.shape))
        layer.set_weights([np.asarray(rhs, np.float32)])
        return [layer(lhs)]
    return [ctx.op(op, "einsum_eq", lhs, rhs, equation=equation)]


# ---- composites --------------------------------------------------------------------------------

def composite_attributes(op) -> dict:
    """A COMPOSITE's attributes (a FlexBuffers map), ``{}`` when absent or unreadable."""
    raw = op.opt("compositeAttributes")
    if raw is None or not len(raw):
        return {}
    from flatbuffers import flexbuffers

    try:
        value = flexbuffers.Loads(bytes(np.asarray(raw, np.uint8)))
    except Exception:  # noqa: BLE001 - attributes only refine the mapping
        return {}
    return value if isinstance(value, dict) else {}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gelu(op, ctx, x, attrs):
    approximate = _text(attrs.get("approximate", "none")) == "tanh"
    if approximate:
        return ctx.op(op, "gelu", x, approximate=True)
    return ctx.apply(keras.layers.Activation("gelu", name=ctx.name(op)), x)


def _hard_swish(op, ctx, x, attrs):
    return ctx.apply(keras.layers.Activation("hard_swish", name=ctx.name(op)), x)


# Composites known by name (litert-torch's): one input -> the idiomatic Keras layer.
KNOWN_COMPOSITES = {"aten.gelu.default": _gelu, "aten.hardswish.default": _hard_swish}


@register("STABLEHLO_COMPOSITE", layer="keras.layers.Activation(gelu / hard_swish) for known "
          "names; else the decomposition subgraph, inlined")
def composite(op, ctx):
    from mlflow_tflite_keras.converter.ops.call import inline_subgraph

    build = KNOWN_COMPOSITES.get(_text(op.opt("name", "")))
    x = ctx.value(op.inputs[0]) if len(op.inputs) == 1 else None
    if build is not None and x is not None and not ctx.is_const(x) and len(op.outputs) == 1:
        return [build(op, ctx, x, composite_attributes(op))]
    return inline_subgraph(op, ctx, int(op.opt("decompositionSubgraphIndex", -1)))


# ---- convolution -------------------------------------------------------------------------------

_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_ZERO_PAD = {1: keras.layers.ZeroPadding1D, 2: keras.layers.ZeroPadding2D,
             3: keras.layers.ZeroPadding3D}
_DEPTHWISE = {1: keras.layers.DepthwiseConv1D, 2: keras.layers.DepthwiseConv2D}


def _permute(op, ctx, x, perm, suffix):
    if list(perm) == list(range(len(perm))):
        return x
    if batched(ctx, x) and perm[0] == 0:
        return ctx.apply(keras.layers.Permute(tuple(perm[1:]), name=ctx.name(op, suffix)), x)
    return ctx.op(op, "transpose", x, axes=tuple(perm), suffix=suffix)


@register("STABLEHLO_CONVOLUTION",
          layer="keras.layers.Conv1D/2D/3D / DepthwiseConv1D/2D (+ ZeroPadding, Permute)")
def convolution(op, ctx):
    x = ctx.value(op.inputs[0])
    kernel = np.asarray(ctx.const(op.inputs[1], "the kernel"), np.float32)
    spatial = _ints(op.opt("inputSpatialDimensions"))
    n = len(spatial)
    strides = _ints(op.opt("windowStrides")) or [1] * n
    dilation = _ints(op.opt("rhsDilation")) or [1] * n
    padding = np.array(_ints(op.opt("padding")) or [0] * 2 * n).reshape(n, 2)
    groups = int(op.opt("featureGroupCount", 1) or 1)
    if n not in _CONV or any(_ints(op.opt("lhsDilation")) and d != 1
                             for d in _ints(op.opt("lhsDilation"))) or \
            int(op.opt("batchGroupCount", 1) or 1) != 1 or \
            any(_ints(op.opt("windowReversal"))) or (padding < 0).any() or \
            (any(s != 1 for s in strides) and any(d != 1 for d in dilation)):
        raise ConversionError(f"{op.type}: only 1-3 spatial dimensions, no input dilation, "
                              "window reversal, batch groups or negative padding, and not "
                              "strides together with dilation map to a Keras convolution.")
    # To channels-last: input [b, spatial..., f], kernel [spatial..., in / groups, out].
    x = _permute(op, ctx, x, [int(op.opt("inputBatchDimension", 0)), *spatial,
                              int(op.opt("inputFeatureDimension", 0))], "_to_nhwc")
    kernel = kernel.transpose([*_ints(op.opt("kernelSpatialDimensions")),
                               int(op.opt("kernelInputFeatureDimension", 0)),
                               int(op.opt("kernelOutputFeatureDimension", 0))])
    if padding.any():
        pads = tuple(tuple(int(p) for p in pair) for pair in padding)
        x = ctx.apply(_ZERO_PAD[n](pads[0] if n == 1 else pads, name=ctx.name(op, "_pad")), x)
    in_channels, out_channels = kernel.shape[-2] * groups, kernel.shape[-1]
    common = dict(strides=strides, dilation_rate=dilation, padding="valid", use_bias=False,
                  name=ctx.name(op))
    if groups > 1 and groups == in_channels and n in _DEPTHWISE:
        layer = _DEPTHWISE[n](kernel.shape[:n], depth_multiplier=out_channels // groups,
                              **common)
        weights = kernel.reshape(*kernel.shape[:n], in_channels, out_channels // groups)
    else:
        layer = _CONV[n](out_channels, kernel.shape[:n], groups=groups, **common)
        weights = kernel
    layer.build(tuple(x.shape))
    layer.set_weights([weights])
    y = ctx.apply(layer, x)
    # From [b, spatial..., f] to the result's dimension order.
    order = [0] * (n + 2)
    order[int(op.opt("outputBatchDimension", 0))] = 0
    order[int(op.opt("outputFeatureDimension", 0))] = n + 1
    for i, d in enumerate(_ints(op.opt("outputSpatialDimensions"))):
        order[d] = 1 + i
    return [_permute(op, ctx, y, order, "_to_result")]


# ---- gather, sort, while -----------------------------------------------------------------------

@register("STABLEHLO_GATHER", layer="KerasOp(stablehlo_gather)")
def gather(op, ctx):
    operand, indices = ctx.inputs(op)[:2]
    if any(d is None for d in getattr(operand, "shape", ())):
        raise ConversionError(f"{op.type}: the operand needs a static shape.")
    return [ctx.op(op, "stablehlo_gather", operand, indices,
                   offset_dims=_ints(op.opt("offsetDims")),
                   collapsed_slice_dims=_ints(op.opt("collapsedSliceDims")),
                   start_index_map=_ints(op.opt("startIndexMap")),
                   index_vector_dim=int(op.opt("indexVectorDim", 0)),
                   slice_sizes=_ints(op.opt("sliceSizes")))]


def _comparator_order(op, ctx, index):
    """Whether the comparator sorts descending: one COMPARE of the first operand's pair
    (LT / LE: ascending, GT / GE: descending)."""
    model = ctx.graph.model
    body = build_graph(model, index) if 0 <= index < len(model.subgraphs) else None
    compares = [o for o in (body.ops if body else []) if o.type == "STABLEHLO_COMPARE"]
    if body is None or len(body.ops) != 1 or len(compares) != 1 or \
            [t.index for t in compares[0].inputs] != [t.index for t in body.inputs[:2]]:
        raise ConversionError(f"{op.type}: only a comparator that compares the first "
                              "operand's pair (less / greater) is supported.")
    direction = compares[0].opt("comparisonDirection", 0)
    if direction not in (2, 3, 4, 5):
        raise ConversionError(f"{op.type}: comparator direction {direction} does not sort.")
    return direction in (2, 3)


@register("STABLEHLO_SORT", layer="KerasOp(sort_by_key)")
def sort(op, ctx):
    descending = _comparator_order(op, ctx, int(op.opt("comparatorSubgraphIndex", -1)))
    out = ctx.op(op, "sort_by_key", *ctx.inputs(op), axis=int(op.opt("dimension", -1)),
                 descending=descending)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@register("STABLEHLO_WHILE", layer="WhileLoop(cond model, body model)")
def while_(op, ctx):
    from mlflow_tflite_keras.converter.ops.control_flow import while_ as tflite_while

    return tflite_while(op, ctx)  # the same options (cond and body subgraph indices)


def _scatter_combine(op, ctx, index) -> str:
    """The update computation: returning the update (replace) or adding it (add)."""
    model = ctx.graph.model
    body = build_graph(model, index) if 0 <= index < len(model.subgraphs) else None
    if body is not None and len(body.inputs) == 2:
        if not body.ops and body.outputs[0].index == body.inputs[1].index:
            return "replace"
        if len(body.ops) == 1 and body.ops[0].type in ("STABLEHLO_ADD", "ADD"):
            return "add"
    raise ConversionError(f"{op.type}: only an update computation that replaces or adds is "
                          "supported.")


@register("STABLEHLO_SCATTER", layer="KerasOp(stablehlo_scatter)")
def scatter(op, ctx):
    if len(op.inputs) != 3:
        raise ConversionError(f"{op.type}: a scatter of several operands together is not "
                              "supported.")
    combine = _scatter_combine(op, ctx, int(op.opt("updateComputationSubgraphIndex", -1)))
    return [ctx.op(op, "stablehlo_scatter", *ctx.inputs(op), combine=combine,
                   update_window_dims=_ints(op.opt("updateWindowDims")),
                   inserted_window_dims=_ints(op.opt("insertedWindowDims")),
                   scatter_dims_to_operand_dims=_ints(op.opt("scatterDimsToOperandDims")),
                   index_vector_dim=int(op.opt("indexVectorDim", 0)))]


@register("STABLEHLO_CASE", layer="(constant index: the branch, inlined) / IfElse (two branches)")
def case(op, ctx):
    """The branch at the index (an index out of range selects the last one, as LiteRT does);
    the other operands are the branch subgraphs' inputs."""
    import dataclasses
    from types import SimpleNamespace

    from mlflow_tflite_keras.converter.ir import Tensor
    from mlflow_tflite_keras.converter.ops.call import inline_subgraph
    from mlflow_tflite_keras.converter.ops.control_flow import if_

    branches = _ints(op.opt("branchSubgraphIndices"))
    index = ctx.value(op.inputs[0])
    if ctx.is_const(index):
        i = int(np.asarray(index).reshape(-1)[0])
        chosen = branches[i] if 0 <= i < len(branches) else branches[-1]
        inner = dataclasses.replace(op, inputs=op.inputs[1:])
        return inline_subgraph(inner, ctx, chosen)
    if len(branches) != 2:
        raise ConversionError(f"{op.type}: a run-time index over {len(branches)} branches; only "
                              "two branches (a conditional) are supported.")
    # index == 0 -> branch 0, any other index -> branch 1: an IF on that predicate.
    pred = ctx.op(op, "equal", ctx.op(op, "reshape", index, newshape=(), suffix="_index"),
                  np.array(0, np.int32), suffix="_is_first")
    pred_tensor = Tensor(-1 - op.index, f"{op.outputs[0].name}_predicate", "BOOL", (), (), None)
    ctx.values[pred_tensor.index] = pred
    as_if = dataclasses.replace(op, type="IF", inputs=[pred_tensor, *op.inputs[1:]],
                                options=SimpleNamespace(thenSubgraphIndex=branches[0],
                                                        elseSubgraphIndex=branches[1]))
    return if_(as_if, ctx)
