"""Fake-quantization layers of emulated reconstructions (``to_keras(emulate_quantization=True)``).

Each layer snaps a float tensor to the integer grid the source model's kernels compute on,
rounding as TFLite's reference kernels do (``TfLiteRound``: half away from zero) and
saturating to the integer type's range, so fused activation clamps fall out of the
saturation. Gradients pass straight through (``x + stop_gradient(q(x) - x)``), so ``fit``
trains through the integer arithmetic. Registered serializable (package
``mlflow_tflite_keras``): emulated models load with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE
from mlflow_tflite_keras.tflite_model import Quantization


def round_half_away(x):
    """Round to nearest, ties away from zero (``std::round``, TFLite's ``TfLiteRound``)."""
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def rounded_product(a, b):
    """``a * b`` rounded to float32 once, never fused into a following add (a float64
    product of float32 values is exact): XLA (``model.predict``) contracts ``a * b + c`` into
    a fused multiply-add, which moves values on half steps to the other side."""
    return ops.cast(ops.cast(a, "float64") * ops.cast(b, "float64"), "float32")


def rounded_quotient(a, b):
    """``a / b`` rounded to float32 (via float64): graph rewrites turn float32 ``1 / b`` into
    an approximate reciprocal (grappler) and a division by a constant into a multiplication
    by its reciprocal (XLA), which are not the division the kernels do."""
    return ops.cast(ops.cast(a, "float64") / ops.cast(b, "float64"), "float32")


def straight_through(x, quantized):
    """``quantized`` forward, identity gradient backward."""
    return x + ops.stop_gradient(quantized - x)


def quantize_hybrid_input(x, row_size=None, asymmetric=False, kernel="builtin"):
    """The float activations a hybrid (dynamic-range) kernel multiplies: quantized to int8 on
    the fly per batch element (``row_size=None``: convolutions) or per row of ``row_size``
    values (fully connected, batch matmul), then dequantized; returned in ``x``'s dtype
    (:func:`hybrid_input_integers` times their scale).
    On ``keras.ops``: used by the emulation layer and, on numpy, by the parity checker."""
    x = ops.convert_to_tensor(x)
    integers, scale = hybrid_input_integers(x, row_size, asymmetric, kernel)
    rows = ops.reshape(integers, (ops.shape(x)[0], -1) if row_size is None else (-1, row_size))
    return ops.reshape(ops.cast(rows * scale, x.dtype), ops.shape(x))


def hybrid_input_integers(x, row_size=None, asymmetric=False, kernel="builtin"):
    """``(integers, scale)``: the int8 values a hybrid kernel quantizes ``x`` to, less their
    zero point (float32, ``x``'s shape), and each row's float32 scale (``[rows, 1]``; rows:
    batch elements when ``row_size`` is None, else rows of ``row_size`` values).

    ``kernel="builtin"``: as TFLite's builtin kernels (tensor_utils::Symmetric /
    AsymmetricQuantizeFloats), symmetric or asymmetric: float32 values times a float32
    inverse scale (not a division: it decides which way a value on a half step rounds, half
    away from zero); the asymmetric scale ``range / 255`` in float32 (measured on LiteRT's
    x86 hybrid FULLY_CONNECTED and DEPTHWISE_CONV_2D temporaries: its published portable
    source divides in double, which is 1 ulp off for a quarter of the inputs), the zero
    point nudged from the nearer end. ``kernel="xnnpack"``: as XNNPACK's
    dynamically quantized (qd8) operators, always asymmetric, all in float32: multiplier
    ``255 / range``, zero point rounded to even, values clamped then rounded to even, scale
    ``1 / multiplier``."""
    x = ops.convert_to_tensor(x)
    shape = ops.shape(x)
    rows = ops.cast(ops.reshape(x, (shape[0], -1) if row_size is None else (-1, row_size)),
                    "float32")
    if kernel == "xnnpack":
        low = ops.minimum(ops.min(rows, axis=1, keepdims=True), 0.0)
        high = ops.maximum(ops.max(rows, axis=1, keepdims=True), 0.0)
        multiplier = ops.where(high == low, ops.ones_like(low), rounded_quotient(
            255.0, ops.where(high == low, ops.ones_like(low), high - low)))
        descaled_low = rounded_product(low, multiplier)
        descaled_high = rounded_product(high, multiplier)
        zero_point = ops.where((-128.0 + descaled_low) + (127.0 + descaled_high) > 0,
                               -128.0 - descaled_low, 127.0 - descaled_high)
        zero_point = ops.round(ops.clip(zero_point, -128.0, 127.0))  # ties to even (rintf)
        q = ops.round(ops.clip(rows * multiplier, -128.0 - zero_point, 127.0 - zero_point))
        scale = rounded_quotient(1.0, multiplier)
    elif asymmetric:
        low = ops.minimum(ops.min(rows, axis=1, keepdims=True), 0.0)
        high = ops.maximum(ops.max(rows, axis=1, keepdims=True), 0.0)
        empty = high == low
        scale = ops.where(empty, ops.ones_like(low), rounded_quotient(high - low, 255.0))
        # the zero point from the end whose error is smaller, nudged into [-128, 127]
        from_min, from_max = -128.0 - low / scale, 127.0 - high / scale
        zero_point = ops.where(128.0 + ops.abs(low / scale) < 127.0 + ops.abs(high / scale),
                               from_min, from_max)
        zero_point = ops.clip(round_half_away(zero_point), -128.0, 127.0)
        inverse = rounded_quotient(1.0, scale)
        q = ops.clip(round_half_away(zero_point + rounded_product(rows, inverse)),
                     -128.0, 127.0)
        q = ops.where(empty, ops.zeros_like(rows), q - zero_point)
    else:
        top = ops.max(ops.abs(rows), axis=1, keepdims=True)
        safe = ops.where(top > 0, top, ops.ones_like(top))
        q = ops.clip(round_half_away(rounded_product(rows, rounded_quotient(127.0, safe))),
                     -127.0, 127.0)
        q = ops.where(top > 0, q, ops.zeros_like(rows))
        scale = rounded_quotient(safe, 127.0)
    return ops.reshape(q, shape), scale


def fake_quantize(x, scale, zero_point, qmin, qmax):
    """``x`` snapped to the grid ``(q - zero_point) * scale``, ``q`` in ``[qmin, qmax]``
    (``scale`` / ``zero_point`` broadcast against ``x``), straight-through gradient."""
    q = ops.clip(round_half_away(x / scale) + zero_point, qmin, qmax)
    return straight_through(x, (q - zero_point) * scale)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FakeQuant(keras.layers.Layer):
    """``(clip(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``, per tensor
    (one scale) or per channel along ``axis``; no trainable weights."""

    def __init__(self, scale, zero_point, qmin: int, qmax: int, axis: int | None = None,
                 model_output: bool = False, model_input: bool = False, **kwargs):
        super().__init__(**kwargs)
        # On a model's integer input, float feeds are rounded as this package's runtime
        # quantizes them for the interpreter (Quantization.quantize: float64 division, ties
        # to even), so both see the same integers.
        self.model_input = bool(model_input)
        # On a model output, training sees the float value (as TF's QAT leaves the output
        # unquantized): a loss of rounded probabilities (0 for most classes) has no
        # gradient where it matters. Inference, and so parity and export, round as usual.
        self.model_output = bool(model_output)
        self.scale = [float(s) for s in scale]
        self.zero_point = [int(z) for z in zero_point]
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError("scale and zero_point need the same, non-zero length")
        self.qmin, self.qmax = int(qmin), int(qmax)
        self.axis = None if axis is None else int(axis)
        self.trainable = False

    def call(self, x, training=None):
        if training and self.model_output:
            return x
        # the one broadcasting of quantization parameters (per tensor / along the axis)
        scale, zero_point = Quantization(
            np.asarray(self.scale, np.float32), np.asarray(self.zero_point, np.int64),
            self.axis or 0).broadcast(len(x.shape), np.float32)
        if self.model_input:
            scale64 = scale.astype(np.float64)
            q = ops.clip(ops.round(ops.cast(x, "float64") / scale64) + zero_point,
                         self.qmin, self.qmax)
            return straight_through(x, ops.cast((q - zero_point) * scale64, x.dtype))
        return fake_quantize(x, scale, zero_point, self.qmin, self.qmax)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "zero_point": self.zero_point,
                "qmin": self.qmin, "qmax": self.qmax, "axis": self.axis,
                "model_output": self.model_output, "model_input": self.model_input}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HybridInputQuant(keras.layers.Layer):
    """A hybrid kernel's on-the-fly int8 quantization of its float input
    (:func:`quantize_hybrid_input`), straight-through gradient; no weights."""

    def __init__(self, row_size: int | None = None, asymmetric: bool = False,
                 kernel: str = "builtin", **kwargs):
        super().__init__(**kwargs)
        self.row_size = None if row_size is None else int(row_size)
        self.asymmetric = bool(asymmetric)
        self.kernel = str(kernel)
        self.trainable = False

    def call(self, x):
        return straight_through(x, quantize_hybrid_input(x, self.row_size, self.asymmetric,
                                                         self.kernel))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "row_size": self.row_size,
                "asymmetric": self.asymmetric, "kernel": self.kernel}


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedWeights(keras.layers.Wrapper):
    """A built-in Keras layer whose weights are fake-quantized on the source's scheme in every
    forward pass (straight-through gradient): the kernels compute with the integer weights
    (per-channel int8, int32 bias of scale ``input_scale * weight_scale``) and ``fit`` moves
    the float variables underneath, keeping the forward pass on the source grid.

    ``quantization``: one entry per quantized weight, ``{"weight": index in
    layer.weights, "scale": [...], "zero_point": [...], "qmin": int, "qmax": int, "axes":
    [Keras axes the channels run along, C order] or None (per tensor), "source": {"subgraph",
    "tensor", "perm"}}`` (the source constant it came from and the axis permutation that
    laid it out for Keras: ``export_tflite(like=source)`` writes it back). The variables stay
    the inner layer's (saved and trained as usual); the quantized values are fed to its call
    through a :class:`keras.StatelessScope`.

    ``float_weights``: ``[{"weight", "source"}]``, the layer's weights taken from float
    constants of a quantized source (a dynamic-range model's biases, its kernels too small
    to quantize): trained as they are, written back there by ``export_tflite(like=source)``."""

    def __init__(self, layer, quantization, float_weights=(), requantize=None, hybrid=None,
                 **kwargs):
        super().__init__(layer, **kwargs)
        # A hybrid kernel's arithmetic (float input quantized on the fly, integer weights):
        # {"row_size" (None: per batch element), "asymmetric", "kernel": "xnnpack" (qd8
        # convolution) | "builtin" (TFLite's per-channel hybrid depthwise), "weight_scale":
        # [per output channel], "integer": False when only the input quantization is
        # replayed (the float layer on fake-quantized weights then)}; None: the float layer
        # on its (separately quantized) input.
        self.hybrid = None if hybrid is None else {
            "row_size": None if hybrid.get("row_size") is None else int(hybrid["row_size"]),
            "asymmetric": bool(hybrid["asymmetric"]), "kernel": str(hybrid["kernel"]),
            "weight_scale": [float(v) for v in hybrid["weight_scale"]],
            "integer": bool(hybrid.get("integer", True))}
        # An integer kernel's arithmetic (XNNPACK's qs8 convolution / fully connected):
        # {"input_scale", "accumulator_scale": [per output channel], "multiplier": [float32,
        # per output channel], "output_scale", "low", "high" (output integers less the zero
        # point)}; None: the float layer on fake-quantized weights.
        self.requantize = None if requantize is None else {
            "input_scale": float(requantize["input_scale"]),
            "accumulator_scale": [float(v) for v in requantize["accumulator_scale"]],
            "multiplier": [float(v) for v in requantize["multiplier"]],
            "output_scale": float(requantize["output_scale"]),
            "low": int(requantize["low"]), "high": int(requantize["high"])}
        self.float_weights = [
            {"weight": int(f["weight"]),
             "source": {"subgraph": int(f["source"]["subgraph"]),
                        "tensor": int(f["source"]["tensor"]),
                        "perm": [int(a) for a in f["source"]["perm"]]}}
            for f in float_weights]
        self.quantization = [
            {"weight": int(q["weight"]), "scale": [float(s) for s in q["scale"]],
             "zero_point": [int(z) for z in q["zero_point"]], "qmin": int(q["qmin"]),
             "qmax": int(q["qmax"]),
             "axes": None if q.get("axes") is None else [int(a) for a in q["axes"]],
             **({"source": {"subgraph": int(q["source"]["subgraph"]),
                            "tensor": int(q["source"]["tensor"]),
                            "perm": [int(a) for a in q["source"]["perm"]]}}
                if q.get("source") else {})}
            for q in quantization]
        self.trainable = layer.trainable

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def grid(self, q: dict, shape) -> tuple:
        """(scale, zero point) of entry ``q`` broadcast against a weight of ``shape``."""
        scale = np.asarray(q["scale"], np.float32)
        zero_point = np.asarray(q["zero_point"], np.float32)
        if q["axes"] is None:
            return scale.reshape(()), zero_point.reshape(())
        target = [1] * len(shape)
        for a in q["axes"]:
            target[a] = shape[a]
        return scale.reshape(target), zero_point.reshape(target)

    def quantized_weights(self) -> list:
        """[(variable, its fake-quantized value)]."""
        pairs = []
        for q in self.quantization:
            w = self.layer.weights[q["weight"]]
            scale, zero_point = self.grid(q, tuple(w.shape))
            pairs.append((w, fake_quantize(ops.convert_to_tensor(w), scale, zero_point,
                                           q["qmin"], q["qmax"])))
        return pairs

    def integer_weights(self) -> list:
        """[(entry, the weight's integers on its grid, numpy, Keras layout)]."""
        result = []
        for q in self.quantization:
            w = np.asarray(self.layer.weights[q["weight"]].numpy(), np.float32)  # as call()
            scale, zero_point = self.grid(q, w.shape)
            integers = np.clip(np.sign(w / scale) * np.floor(np.abs(w / scale) + 0.5)
                               + zero_point, q["qmin"], q["qmax"])
            result.append((q, integers.astype(np.int64)))
        return result

    def call(self, inputs, *args, **kwargs):
        if self.requantize is not None:
            return self._integer_call(inputs, *args, **kwargs)
        if self.hybrid is not None:
            return self._hybrid_call(inputs, *args, **kwargs)
        if not self.quantization:
            return self.layer(inputs, *args, **kwargs)
        with keras.StatelessScope(state_mapping=self.quantized_weights()):
            return self.layer(inputs, *args, **kwargs)

    def _integer_weights(self):
        """[(variable, its integers less the zero point)], straight-through."""
        mapping = []
        for q in self.quantization:
            w = self.layer.weights[q["weight"]]
            scale, zero_point = self.grid(q, tuple(w.shape))
            w_steps = ops.convert_to_tensor(w) / scale
            integers = ops.clip(round_half_away(w_steps) + zero_point, q["qmin"], q["qmax"])
            mapping.append((w, straight_through(w_steps, integers - zero_point)))
        return mapping

    def _hybrid_call(self, inputs, *args, **kwargs):
        """The layer run on the integers a hybrid kernel computes with (its on-the-fly input
        quantization per batch element or row, the int8 weights, no bias): the float32
        accumulator is its int32 one exactly; then its float epilogue in its order (XNNPACK's
        qd8 kernels: ``(acc * input_scale) * weight_scale + bias``, the last two fused;
        TFLite's hybrid depthwise, measured: ``(acc * weight_scale) * input_scale + bias``),
        then the layer's activation. Straight-through: the gradient is the
        float layer's."""
        h = self.hybrid
        if not h["integer"]:
            quantized = straight_through(inputs, quantize_hybrid_input(
                inputs, h["row_size"], h["asymmetric"], h["kernel"]))
            with keras.StatelessScope(state_mapping=self.quantized_weights()):
                return self.layer(quantized, *args, **kwargs)
        integers, scale = hybrid_input_integers(inputs, h["row_size"], h["asymmetric"],
                                                h["kernel"])
        # one scale per batch element, or per row (pixel) of row_size channels
        scale = ops.stop_gradient(ops.reshape(
            scale, (-1,) + (1,) * (len(inputs.shape) - 1) if h["row_size"] is None
            else tuple(ops.shape(inputs)[:-1]) + (1,)))
        mapping = self._integer_weights()
        bias = getattr(self.layer, "bias", None) if getattr(self.layer, "use_bias", False) \
            else None
        if bias is not None:
            mapping.append((bias, ops.zeros(bias.shape, bias.dtype)))
        activation = self.layer.activation
        self.layer.activation = keras.activations.linear  # applied after the epilogue
        try:
            with keras.StatelessScope(state_mapping=mapping):
                accumulator = self.layer(straight_through(inputs / scale, integers),
                                         *args, **kwargs)
        finally:
            self.layer.activation = activation
        weight_scale = np.asarray(h["weight_scale"], np.float32)
        bias = ops.zeros((), "float32") if bias is None else ops.convert_to_tensor(bias)
        integer = ops.stop_gradient(accumulator)
        if h["kernel"] == "xnnpack":  # (acc * input scale), then a fused multiply-add
            exact = ops.cast(ops.cast(integer * scale, "float64")
                             * weight_scale.astype(np.float64)
                             + ops.cast(bias, "float64"), "float32")
        else:  # TFLite's hybrid depthwise: (acc * channel scale) * input scale + bias
            exact = rounded_product(rounded_product(integer, weight_scale), scale) + bias
        return activation(straight_through(accumulator * scale * weight_scale + bias, exact))

    def _integer_call(self, inputs, *args, **kwargs):
        """The layer run on the integers (input less its zero point, weights, int32 bias):
        its float32 accumulator is the kernel's int32 one exactly (integer sums below 2**24),
        requantized as XNNPACK's fp32 requantization does: times the float32 multiplier
        ``input_scale * weight_scale / output_scale``, rounded half to even, clamped.
        Straight-through: the gradient is the float layer's (accumulator times its scale).
        A fused ReLU left on the layer commutes with the monotonic requantization."""
        r = self.requantize
        steps = inputs / r["input_scale"]
        x = straight_through(steps, round_half_away(steps))
        with keras.StatelessScope(state_mapping=self._integer_weights()):
            accumulator = self.layer(x, *args, **kwargs)
        multiplier = np.asarray(r["multiplier"], np.float32)
        requantized = ops.clip(ops.round(accumulator * multiplier), r["low"], r["high"])
        return straight_through(accumulator * np.asarray(r["accumulator_scale"], np.float32),
                                requantized * np.float32(r["output_scale"]))

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "quantization": self.quantization,
                "float_weights": self.float_weights, "requantize": self.requantize,
                "hybrid": self.hybrid}


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntegerArithmetic(keras.layers.Layer):
    """The value an integer kernel computes for an op the float layers only approximate at
    its rounding (XNNPACK's qs8 ADD, MUL and MEAN), straight-through: called on ``[float result,
    *quantized operands]``, it returns the kernel's value (dequantized) with the float
    result's gradient; no weights.

    ``kind="add"``: ``params`` ``{"a_multiplier", "b_multiplier", "bias", "shift",
    "output_zero_point", "output_scale", "low", "high"}``, XNNPACK's qs8 / qu8 vadd
    (``(bias + a * a_multiplier + b * b_multiplier) >> shift`` on the stored integers, then
    the output zero point, clamped to ``[low, high]``), with ``a_scale`` / ``a_zero_point``
    (and b) to recover the stored integers. ``kind="mul"``: ``{"a_scale", "a_zero_point",
    "b_scale", "b_zero_point", "scale", "output_zero_point", "output_scale", "low", "high"}``,
    XNNPACK's qs8 vmul (the product of the stored integers less their zero points times the
    float32 ``scale``, rounded half to even, plus the output zero point, clamped to
    ``[low, high]``; operands broadcast). ``kind="mean"``: ``{"axes", "keepdims",
    "input_scale", "input_zero_point", "inverse_scale", "zero_point", "output_zero_point",
    "output_scale", "qmin", "qmax"}``, XNNPACK's qs8 / qu8 mean: the int32 sum of the stored
    integers times the float32 ``inverse_scale`` plus the float32 ``zero_point``, rounded half
    to even, saturated to ``[qmin, qmax]``. ``kind="quantize"``: ``{"inverse_scale",
    "output_zero_point", "output_scale", "qmin", "qmax"}``, XNNPACK's f32 -> qs8 / qu8
    conversion (a float input times the float32 ``1 / scale``, rounded half to even, plus the
    zero point, saturated). ``qmin`` / ``qmax`` default to int8's (configs saved before
    uint8 was replayed)."""

    def __init__(self, kind: str, params: dict, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("add", "mul", "mean", "quantize"):
            raise ValueError(f"unknown integer arithmetic {kind!r}")
        self.kind = kind
        self.params = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in params.items()}
        self.trainable = False

    @staticmethod
    def _stored(x, scale, zero_point):
        """The stored integers of a fake-quantized value (float32)."""
        return round_half_away(x / np.float32(scale)) + np.float32(zero_point)

    def call(self, inputs):
        p = self.params
        result = inputs[0]
        if self.kind == "add":
            a = ops.cast(self._stored(inputs[1], p["a_scale"], p["a_zero_point"]), "int32")
            b = ops.cast(self._stored(inputs[2], p["b_scale"], p["b_zero_point"]), "int32")
            acc = p["bias"] + a * p["a_multiplier"] + b * p["b_multiplier"]
            q = ops.floor_divide(acc, 1 << p["shift"]) + p["output_zero_point"]
            q = ops.cast(ops.clip(q, p["low"], p["high"]), "float32")
        elif self.kind == "mul":
            a = self._stored(inputs[1], p["a_scale"], p["a_zero_point"])
            b = self._stored(inputs[2], p["b_scale"], p["b_zero_point"])
            # |product| <= 255 * 255: exact in float32, as the kernel's int32 -> float
            product = (a - np.float32(p["a_zero_point"])) * (b - np.float32(p["b_zero_point"]))
            q = ops.round(rounded_product(product, np.float32(p["scale"])))
            q = ops.clip(q + np.float32(p["output_zero_point"]), np.float32(p["low"]),
                         np.float32(p["high"]))
        elif self.kind == "quantize":
            steps = ops.round(ops.cast(inputs[1], "float32") * np.float32(p["inverse_scale"]))
            q = ops.clip(steps + np.float32(p["output_zero_point"]),
                         float(p.get("qmin", -128)), float(p.get("qmax", 127)))
        else:
            stored = self._stored(inputs[1], p["input_scale"], p["input_zero_point"])
            total = ops.sum(stored, axis=tuple(p["axes"]), keepdims=bool(p["keepdims"]))
            q = ops.round(rounded_product(total, np.float32(p["inverse_scale"]))
                          + np.float32(p["zero_point"]))
            q = ops.clip(q, float(p.get("qmin", -128)), float(p.get("qmax", 127)))
        exact = (q - np.float32(p["output_zero_point"])) * np.float32(p["output_scale"])
        return straight_through(result, ops.reshape(ops.cast(exact, result.dtype),
                                                    ops.shape(result)))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "params": self.params}


EMULATION_LAYERS = (FakeQuant, HybridInputQuant, QuantizedWeights, IntegerArithmetic)


def is_emulated(keras_model) -> bool:
    """Whether ``keras_model`` was built with ``emulate_quantization=True``."""
    return any(isinstance(layer, EMULATION_LAYERS) for layer in keras_model._flatten_layers())
