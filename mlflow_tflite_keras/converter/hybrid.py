"""Hybrid (dynamic-range) kernels: float activations, integer weights. Which ops are hybrid,
and how their kernels quantize the float input on the fly (per batch element or per row,
symmetric or asymmetric), for the emulated models (converter/emulation.py) and the op-by-op
parity check that replays it."""

from __future__ import annotations

import numpy as np

from mlflow_tflite_keras.recipes import WEIGHT_TYPES

HYBRID_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"})


def is_hybrid(op) -> bool:
    """A hybrid (dynamic-range) kernel: float activations, integer weights."""
    if op.type not in HYBRID_OPS or len(op.inputs) < 2 or op.inputs[1] is None:
        return False
    x, w = op.inputs[0], op.inputs[1]
    return x is not None and not x.is_quantized and x.type_name == "FLOAT32" and \
        w.is_quantized and w.type_name in WEIGHT_TYPES and \
        not getattr(w.quantization, "block_size", 0)  # blockwise kernels quantize per block


#: Hybrid ops LiteRT's default CPU delegate (XNNPACK) runs as dynamically quantized (qd8)
#: operators, with its own input quantization (xnnpack_delegate.cc: FULLY_CONNECTED, and
#: CONV_2D with int8 filters, quantized per batch element, except that XNNPACK runs a 1x1
#: convolution as a fully connected one, quantized per pixel; it leaves hybrid
#: DEPTHWISE_CONV_2D, whose input and filter types differ, to the builtin kernel). Measured:
#: the builtin kernels' scheme leaves FULLY_CONNECTED 1e-3 off where inputs sit on half
#: steps (an LSTM fed digits rows), XNNPACK's is within 2e-7.
XNNPACK_HYBRID_OPS = frozenset({"FULLY_CONNECTED", "CONV_2D"})


def _xnnpack_pointwise(op) -> bool:
    """A CONV_2D XNNPACK defines as a fully connected op (subgraph/convolution-2d.c: 1x1
    kernel, unit stride, one group, no padding, more than 2 input + output channels)."""
    w = op.inputs[1]
    return op.type == "CONV_2D" and tuple(w.shape[1:3]) == (1, 1) and \
        op.opt("strideH", 1) == 1 and op.opt("strideW", 1) == 1 and \
        op.inputs[0].shape[-1] == w.shape[-1] and w.shape[0] + w.shape[-1] > 2


def hybrid_scheme(op, x_shape, kernel: str | None = None) -> tuple[int | None, bool, str]:
    """``(row_size, asymmetric, kernel)`` of a hybrid kernel's input quantization: per batch
    element (``row_size`` None) for convolutions, asymmetric when the weights are
    per-channel (XNNPACK: always, and per pixel for a 1x1 convolution); per row of the
    weights' input depth (fully connected) or of the last dimension (batch matmul),
    asymmetric when the op asks for it. ``kernel``: whose arithmetic (default
    ``"xnnpack"`` for :data:`XNNPACK_HYBRID_OPS`, else ``"builtin"``; see
    :func:`~mlflow_tflite_keras.converter.layers.quantization.quantize_hybrid_input`)."""
    kernel = kernel or ("xnnpack" if op.type in XNNPACK_HYBRID_OPS else "builtin")
    if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = op.inputs[1]
        if kernel == "xnnpack" and _xnnpack_pointwise(op):
            return int(w.shape[-1]), True, kernel
        return None, bool(w.quantization is not None and w.quantization.per_channel), kernel
    row_size = op.inputs[1].shape[-1] if op.type == "FULLY_CONNECTED" else x_shape[-1]
    return int(row_size), bool(op.opt("asymmetricQuantizeInputs", False)), kernel


def hybrid_input_quantization(op, x: np.ndarray, kernel: str | None = None) -> np.ndarray:
    """The float activations a hybrid kernel actually multiplies (rounding half away from
    zero; :func:`~mlflow_tflite_keras.converter.layers.quantization.quantize_hybrid_input`, the one
    routine the emulated models use too), in the kernel's precision. Feeding these to the
    float layer reproduces the kernel's result up to float summation order. ``kernel``
    overrides whose arithmetic (the op-by-op check reads LiteRT's builtin kernels)."""
    import keras

    from mlflow_tflite_keras.converter.layers.quantization import quantize_hybrid_input

    x = np.asarray(x, np.float32)
    row_size, asymmetric, kernel = hybrid_scheme(op, x.shape, kernel)
    out = quantize_hybrid_input(x, row_size, asymmetric, kernel)
    return np.asarray(keras.ops.convert_to_numpy(out), np.float32)
