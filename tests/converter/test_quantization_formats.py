"""Today's quantization formats, read by the converter and named by the flavor.

ai-edge-quantizer (the pinned test dependency) quantizes digits classifiers trained a few
epochs (their outputs depend on the input) to int8 / int4 / int2 weights, channelwise or
blockwise, weight-only (DEQUANTIZE in front of float compute) or consumed by hybrid kernels
(dynamic range). Hand-built models cover what it does not write (UINT4 with zero points,
weight-only INT2, blockwise behind DEQUANTIZE, BFLOAT16).

A reconstruction is judged against the *weight-only equivalent*: the same dequantized weights
run by LiteRT in float, without activation quantization (float noise). For channelwise kinds
that is ai-edge-quantizer's weight-only variant (its integers and scales are checked equal to
the dynamic-range variant's); where it has no weight-only recipe (blockwise, int2) it is the
float model with its weights replaced by an independent NumPy dequantization written here.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from converter.handmade import FlatModel
from flavor_models import make_cnn
from model_factory import digits, digits_trained_tflite, quantized_tflite
from mlflow_tflite_keras.converter import to_keras
from mlflow_tflite_keras.converter.parity import check_parity
from mlflow_tflite_keras.tflite_model import TFLiteModel

# Float compute on the same weights: only summation order differs.
FLOAT_NOISE = {"max_rel_error": 1e-4}


def make_conv_net():
    """Conv2D, DepthwiseConv2D, a strided Conv2D and two Dense layers (512 -> 64 -> 10: the
    Dense inputs are multiples of 32, so blockwise-32 quantizes them)."""
    import keras

    keras.utils.set_random_seed(5)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


FLOAT_MODELS = {
    "cnn": lambda: digits_trained_tflite("quant-cnn", make_cnn),  # the flavor tests' CNN
    "convnet": lambda: digits_trained_tflite("quant-convnet", make_conv_net),
}
VARIANTS = [
    ("cnn", "weight-only-int8"), ("cnn", "dynamic-range-int8"), ("cnn", "weight-only-int4"),
    ("cnn", "dynamic-range-int4"), ("cnn", "dynamic-range-int4-blockwise-32"),
    ("cnn", "dynamic-range-int2"), ("cnn", "mixed"),
    ("convnet", "weight-only-int8"), ("convnet", "dynamic-range-int8"),
    ("convnet", "weight-only-int4"), ("convnet", "dynamic-range-int4"),
    ("convnet", "dynamic-range-int4-blockwise-32"),
]
# LiteRT 2.3's hybrid CONV_2D with INT2 filters outputs NaN (builtin kernels) or wrong values
# (XNNPACK), measured; its FULLY_CONNECTED and DEQUANTIZE read INT2 right. The runtime
# refuses such files: the weight-only equivalent is the reference.
LITERT_REFUSES = {"dynamic-range-int2"}


def variant(model: str, kind: str) -> bytes:
    return quantized_tflite(f"quant-{model}", FLOAT_MODELS[model](), kind)


def images(n=64):
    return digits()[0][:n]


# ---- an independent NumPy reading of quantized weights ---------------------------------------

_BITS = {"INT2": 2, "INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8}


def _type_name(code: int) -> str:
    return next(k for k, v in vars(schema.TensorType).items() if v == code)


def _unpack(raw: np.ndarray, type_name: str, n: int) -> np.ndarray:
    """Bit by bit: element k is bits [k*b, (k+1)*b) of the little-endian bit stream."""
    bits = _BITS[type_name]
    if bits == 8:
        return raw.view(np.int8 if type_name == "INT8" else np.uint8)[:n].astype(np.int64)
    stream = np.unpackbits(raw, bitorder="little")[:n * bits].reshape(n, bits)
    values = (stream.astype(np.int64) << np.arange(bits)).sum(axis=1)
    if not type_name.startswith("U"):
        values = np.where(values >= 2 ** (bits - 1), values - 2 ** bits, values)
    return values


def reference_weights(data: bytes) -> dict[str, np.ndarray]:
    """Every quantized constant of subgraph 0, dequantized, by tensor name."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    sg = model.subgraphs[0]

    def buffer(t):
        return np.asarray(model.buffers[t.buffer].data, dtype=np.uint8)

    out = {}
    for t in sg.tensors:
        type_name, q = _type_name(t.type), t.quantization
        if type_name not in _BITS or q is None or model.buffers[t.buffer].data is None:
            continue
        shape = [int(d) for d in t.shape]
        values = _unpack(buffer(t), type_name, int(np.prod(shape))).reshape(shape)
        if isinstance(q.details, schema.BlockwiseQuantizationT):
            s = sg.tensors[q.details.scales]
            scale = np.frombuffer(buffer(s).tobytes(), dtype=np.float16 if
                                  _type_name(s.type) == "FLOAT16" else np.float32)
            scale = scale.astype(np.float64).reshape([int(d) for d in s.shape])
            zero = 0
            if q.details.zeroPoints >= 0:
                z = sg.tensors[q.details.zeroPoints]
                zero = np.frombuffer(buffer(z).tobytes(), np.int32).reshape(scale.shape)
            for axis, (n, m) in enumerate(zip(shape, scale.shape)):  # blocks -> elements
                scale = np.repeat(scale, n // m, axis=axis)
                zero = np.repeat(zero, n // m, axis=axis) if np.ndim(zero) else zero
        else:
            expand = [1] * len(shape)
            expand[q.quantizedDimension] = -1
            scale = np.asarray(q.scale, np.float64).reshape(expand if len(q.scale) > 1 else 1)
            zero = np.asarray(q.zeroPoint, np.float64).reshape(
                expand if len(q.zeroPoint) > 1 else 1)
        out[t.name.decode() if isinstance(t.name, bytes) else t.name] = \
            ((values - zero) * scale).astype(np.float32)
    return out


def with_weights(float_data: bytes, weights: dict[str, np.ndarray]) -> bytes:
    """The float model with the named constants replaced (a float model LiteRT runs)."""
    import flatbuffers

    model = schema.ModelT.InitFromPackedBuf(float_data, 0)
    replaced = set()
    for t in model.subgraphs[0].tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        if name in weights:
            assert list(t.shape) == list(weights[name].shape), name
            model.buffers[t.buffer].data = np.frombuffer(
                weights[name].astype(np.float32).tobytes(), np.uint8)
            replaced.add(name)
    assert replaced == set(weights), set(weights) - replaced
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def weight_only_equivalent(model: str, kind: str) -> bytes:
    data = variant(model, kind)
    if kind.startswith("weight-only"):
        return data
    if kind in ("dynamic-range-int8", "dynamic-range-int4"):
        twin = variant(model, kind.replace("dynamic-range", "weight-only"))
        ours, theirs = reference_weights(data), reference_weights(twin)
        assert ours.keys() == theirs.keys()
        for name in ours:  # the same integers and scales
            np.testing.assert_array_equal(ours[name], theirs[name])
        return twin
    return with_weights(FLOAT_MODELS[model](), reference_weights(data))


# ---- ai-edge-quantizer variants -----------------------------------------------------------

@pytest.mark.parametrize("model,kind", VARIANTS, ids=[f"{m}-{k}" for m, k in VARIANTS])
def test_quantization_kind(model, kind, tmp_path):
    """The flavor's kind says what the file is; ``mixed`` lists every weight's scheme."""
    import mlflow

    data = variant(model, kind)
    tflite = TFLiteModel(data)
    assert tflite.quantization_kind == kind
    breakdown = tflite.quantization_breakdown
    assert breakdown
    if kind == "mixed":
        assert set(breakdown.values()) == {"dynamic-range-int8", "dynamic-range-int4"}
    else:
        assert set(breakdown.values()) == {kind}
    path = tmp_path / "model"
    mlflow.tflite_keras.save_model(data, str(path))
    flavor = mlflow.models.Model.load(str(path)).flavors["tflite_keras"]
    assert flavor["quantization"] == kind
    assert ("quantization_breakdown" in flavor) == (kind == "mixed")
    if kind == "mixed":
        assert flavor["quantization_breakdown"] == breakdown


@pytest.mark.parametrize("model,kind", VARIANTS, ids=[f"{m}-{k}" for m, k in VARIANTS])
def test_reconstruction(model, kind):
    """Within float noise of the weight-only equivalent; within the kind's tolerances of the
    file itself (dynamic range: LiteRT quantizes activations on the fly, the Keras model does
    not); eager, ``predict`` and a ``.keras`` reload with ``safe_mode=True`` agree."""
    import keras

    data, x = variant(model, kind), images()
    reference = weight_only_equivalent(model, kind)
    keras_model = to_keras(data)
    report = check_parity(reference, keras_model, x, **FLOAT_NOISE)
    assert report.passed, str(report)
    if kind in LITERT_REFUSES:
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="CONV_2D with the INT2 filter"):
            check_parity(data, keras_model, x)
    else:
        own = check_parity(data, keras_model, x)
        assert own.passed and own.quantization == kind, str(own)

    eager = np.asarray(keras_model(x, training=False))
    np.testing.assert_allclose(keras_model.predict(x, verbose=0, batch_size=16), eager,
                               rtol=1e-5, atol=1e-6)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        keras_model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), eager, rtol=1e-6,
                               atol=1e-7)
    assert check_parity(reference, reloaded, x, **FLOAT_NOISE).passed


@pytest.mark.parametrize("kind", ["weight-only-int8", "dynamic-range-int4",
                                  "dynamic-range-int4-blockwise-32"])
def test_parity_rejects_a_perturbed_kernel(kind):
    """A 5% change of one Dense kernel of the reconstruction fails the check."""
    import keras

    data, x = variant("cnn", kind), images()
    keras_model = to_keras(data)
    dense = [layer for layer in keras_model.layers if isinstance(layer, keras.layers.Dense)]
    kernel, *rest = dense[0].get_weights()
    dense[0].set_weights([kernel * 1.05, *rest])
    report = check_parity(weight_only_equivalent("cnn", kind), keras_model, x, **FLOAT_NOISE)
    assert not report.passed, str(report)
    if kind.startswith("weight-only"):  # the kind's own tolerance is float noise too
        assert not check_parity(data, keras_model, x).passed


def test_converter_weights_match_the_numpy_reference():
    """The Keras kernels are the dequantized weights, blockwise int4 included."""
    import keras

    data = variant("cnn", "dynamic-range-int4-blockwise-32")
    weights = reference_weights(data)
    tflite = TFLiteModel(data)
    blockwise = [t for t in tflite.main.tensors if t.quantization is not None
                 and t.quantization.block_shape is not None]
    assert len(blockwise) == 2 and all(t.type_name == "INT4" for t in blockwise)
    assert all(t.quantization.block_size == 32 for t in blockwise)
    kernels = sorted((layer.get_weights()[0] for layer in to_keras(data).layers
                      if isinstance(layer, keras.layers.Dense)), key=lambda k: k.size)
    expected = sorted((w.T for w in weights.values()), key=lambda k: k.size)
    for kernel, reference in zip(kernels, expected, strict=True):
        np.testing.assert_allclose(kernel, reference, rtol=1e-6, atol=0)


# ---- EMBEDDING_LOOKUP: a hybrid kernel with an int8 / int4 table ----------------------------

LOOKUP = "EMBEDDING_LOOKUP"


def embedding_model() -> bytes:
    """ids -> EMBEDDING_LOOKUP(table [40, 64]) -> FULLY_CONNECTED (64 -> 10)."""
    rng = np.random.default_rng(3)
    b = FlatModel()
    ids = b.input((6,), np.int32, name="ids")
    table = b.const(rng.normal(0, 0.5, (40, 64)).astype(np.float32), name="table")
    rows = b.intermediate((6, 64))
    w = b.const(rng.normal(0, 0.2, (10, 64)).astype(np.float32), name="w")
    bias = b.const(rng.normal(0, 0.1, 10).astype(np.float32), name="bias")
    y = b.output((6, 10))
    b.op(LOOKUP, [ids, table], [rows])
    b.op("FULLY_CONNECTED", [rows, w, bias], [y], "FullyConnectedOptions")
    return b.finish()


@pytest.mark.parametrize("kind", ["dynamic-range-int8", "dynamic-range-int4-blockwise-32"])
def test_embedding_lookup_hybrid(kind):
    float_data = embedding_model()
    data = quantized_tflite("quant-embedding", float_data, kind)
    tflite = TFLiteModel(data)
    assert tflite.operator_names == ["EMBEDDING_LOOKUP", "FULLY_CONNECTED"]  # hybrid kernels
    assert tflite.quantization_kind == kind
    assert tflite.quantization_breakdown == {"table": kind, "w": kind}
    keras_model = to_keras(data)
    reference = with_weights(float_data, reference_weights(data))
    for seed in range(3):
        ids = np.random.default_rng(seed).integers(0, 40, 6).astype(np.int32)
        assert check_parity(reference, keras_model, ids, **FLOAT_NOISE).passed
        assert check_parity(data, keras_model, ids).passed


# ---- hand-built constants ai-edge-quantizer does not write ----------------------------------

N, K = 6, 64


def _pack(values, bits: int) -> bytes:
    flat = np.asarray(values).reshape(-1)
    per_byte = 8 // bits
    out = bytearray(-(-len(flat) // per_byte))
    for k, v in enumerate(flat):
        out[k // per_byte] |= (int(v) & (2 ** bits - 1)) << (bits * (k % per_byte))
    return bytes(out)


def _per_channel(scale, zero_point):
    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = list(map(float, scale)), \
        list(map(int, zero_point)), 0
    return q


def dequantize_fc(case: str):
    """x [2, 64] -> DEQUANTIZE(w [6, 64]) -> FULLY_CONNECTED: the stored weight and its
    dequantized value, computed here without the package."""
    rng = np.random.default_rng(11)
    b = FlatModel()
    x = b.input((2, K))
    bias_values = rng.normal(0, 0.1, N).astype(np.float32)
    scale = rng.uniform(0.01, 0.05, N)
    if case == "uint4":  # asymmetric: per-channel zero points
        q, zero = rng.integers(0, 16, (N, K)), rng.integers(5, 11, N)
        w = b.stored_const(_pack(q, 4), (N, K), "UINT4", "w", _per_channel(scale, zero))
        expected = (q - zero[:, None]) * scale[:, None]
    elif case in ("int2", "int4"):
        bits = int(case[-1])
        q = rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), (N, K))
        w = b.stored_const(_pack(q, bits), (N, K), case.upper(), "w",
                           _per_channel(scale, [0] * N))
        expected = q * scale[:, None]
    elif case == "int4-blockwise-16":  # scales [6, 4] and zero points, behind DEQUANTIZE
        q = rng.integers(-8, 8, (N, K))
        block_scale = rng.uniform(0.01, 0.05, (N, K // 16)).astype(np.float16)
        block_zero = rng.integers(-2, 3, (N, K // 16)).astype(np.int32)
        s = b.const(block_scale, name="w_scales")
        z = b.const(block_zero, name="w_zero_points")
        details = schema.BlockwiseQuantizationT()
        details.scales, details.zeroPoints, details.blockSize = s, z, 16
        quant = schema.QuantizationParametersT()
        quant.detailsType, quant.details = schema.QuantizationDetails.BlockwiseQuantization, \
            details
        w = b.stored_const(_pack(q, 4), (N, K), "INT4", "w", quant)
        expected = (q - np.repeat(block_zero, 16, axis=1)) * \
            np.repeat(block_scale.astype(np.float64), 16, axis=1)
    elif case == "int8-multi-axis":  # MultiAxisQuantization: scales [6] along dimension 0
        q = rng.integers(-128, 128, (N, K)).astype(np.int8)
        s = b.const(scale.astype(np.float32), name="w_scales")
        details = schema.MultiAxisQuantizationT()
        details.scales, details.zeroPoints, details.blockSize = s, -1, 0
        details.quantizedDimensions = [0]
        quant = schema.QuantizationParametersT()
        quant.detailsType, quant.details = schema.QuantizationDetails.MultiAxisQuantization, \
            details
        w = b.const(q, name="w", quantization=quant)
        expected = q * scale[:, None]
    elif case == "bfloat16":  # the upper half of float32: exact once widened
        values = rng.normal(0, 0.3, (N, K)).astype(np.float32)
        upper = (values.view(np.uint32) >> 16).astype(np.uint16)
        w = b.stored_const(upper.tobytes(), (N, K), "BFLOAT16", "w")
        expected = (upper.astype(np.uint32) << 16).view(np.float32)
    elif case == "float16":
        values = rng.normal(0, 0.3, (N, K)).astype(np.float16)
        w = b.const(values, name="w")
        expected = values.astype(np.float32)
    else:
        raise ValueError(case)
    w_float = b.intermediate((N, K))
    bias = b.const(bias_values, name="bias")
    y = b.output((2, N))
    b.op("DEQUANTIZE", [w], [w_float])
    b.op("FULLY_CONNECTED", [x, w_float, bias], [y], "FullyConnectedOptions")
    return b.finish(), np.asarray(expected, np.float32), bias_values


HANDMADE = {  # case -> (kind, what LiteRT 2.3 does with its DEQUANTIZE)
    "uint4": ("weight-only-uint4", "runs"),
    "int2": ("weight-only-int2", "runs"),
    "int4": ("weight-only-int4", "runs"),
    # Measured: LiteRT's DEQUANTIZE outputs zeros for blockwise constants (the model returns
    # its bias) and LiteRT crashes allocating MultiAxisQuantization under XNNPACK: the
    # runtime refuses both; the NumPy reference is the judge.
    "int4-blockwise-16": ("weight-only-int4-blockwise-16", "refuses"),
    "int8-multi-axis": ("weight-only-int8", "refuses"),
    "bfloat16": ("bfloat16", "refuses"),  # dequantize.cc: unsupported input type
    "float16": ("float16", "runs"),
}


@pytest.mark.parametrize("case", list(HANDMADE))
def test_handmade_constants(case):
    """The Keras kernel is the NumPy dequantization, its outputs x @ w.T + b; LiteRT agrees
    where it runs the DEQUANTIZE."""
    import keras

    data, w, bias = dequantize_fc(case)
    kind, litert = HANDMADE[case]
    tflite = TFLiteModel(data)
    assert tflite.quantization_kind == kind
    keras_model = to_keras(data)
    dense = next(layer for layer in keras_model.layers if isinstance(layer, keras.layers.Dense))
    np.testing.assert_allclose(dense.get_weights()[0], w.T, rtol=1e-6, atol=0)
    x = np.random.default_rng(0).uniform(-1, 1, (2, K)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(keras_model(x)), x @ w.T + bias, rtol=1e-5,
                               atol=1e-5)
    if litert == "runs":
        assert check_parity(data, keras_model, x).passed
    elif litert == "refuses":
        from mlflow.exceptions import MlflowException

        from mlflow_tflite_keras.runtime import TFLiteRunner

        with pytest.raises(MlflowException, match="LiteRT cannot"):
            TFLiteRunner(tflite).predict(x)
        import mlflow  # the flavor still saves it (with a warning) for the converter

        with tempfile.TemporaryDirectory() as d:
            mlflow.tflite_keras.save_model(data, os.path.join(d, "m"))
            loaded = mlflow.tflite_keras.load_model(os.path.join(d, "m"))
            assert loaded.description["quantization"] == kind
            with pytest.raises(MlflowException, match="LiteRT cannot"):
                loaded.predict(x)


# ---- malformed quantization parameters --------------------------------------------------------

def test_blockwise_scales_that_do_not_tile_are_rejected():
    from mlflow.exceptions import MlflowException

    data, _, _ = dequantize_fc("int4-blockwise-16")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    scales = next(t for t in model.subgraphs[0].tensors if t.name in (b"w_scales", "w_scales"))
    scales.shape = [N, 3]  # 64 columns are not 3 blocks
    model.buffers[scales.buffer].data = model.buffers[scales.buffer].data[:N * 3 * 2]
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(MlflowException, match="do not tile"):
        TFLiteModel(bytes(builder.Output()))


def test_packed_buffer_of_the_wrong_size_is_rejected():
    from mlflow.exceptions import MlflowException

    data, _, _ = dequantize_fc("int4")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    w = next(t for t in model.subgraphs[0].tensors if t.name in (b"w", "w"))
    model.buffers[w.buffer].data = model.buffers[w.buffer].data[:-1]
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(MlflowException, match=r"holds 191 bytes.*INT4 needs 192"):
        TFLiteModel(bytes(builder.Output()))


def test_inspect_shows_the_kind_and_the_mixed_breakdown():
    from click.testing import CliRunner

    from mlflow_tflite_keras.cli import cli

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mixed.tflite")
        with open(path, "wb") as f:
            f.write(variant("cnn", "mixed"))
        result = CliRunner().invoke(cli, ["inspect", path, "--no-converter"])
    assert result.exit_code == 0, result.output
    assert "quantization  mixed" in result.output
    assert "dynamic-range-int4" in result.output and "dynamic-range-int8" in result.output


def test_wrapped_blockwise_region_keeps_its_scales():
    """A FULLY_CONNECTED with blockwise int4 weights left to LiteRT inside a TFLiteLayer:
    the region's model carries the scales tensor its weight's quantization names."""
    from mlflow_tflite_keras.converter import convert
    from mlflow_tflite_keras.tflite_layer import TFLiteLayer

    data, x = variant("cnn", "dynamic-range-int4-blockwise-32"), images()
    result = convert(data, unsupported="wrap", wrap_ops=("FULLY_CONNECTED",))
    assert [type(layer) for layer in result.model.layers].count(TFLiteLayer) >= 1
    report = check_parity(data, result.model, x)
    assert report.passed, str(report)


def test_every_kind_has_a_tolerance_family():
    from mlflow_tflite_keras.converter.parity import DEFAULT_TOLERANCES
    from mlflow_tflite_keras.recipes import tolerance_family

    expected = {
        "none": "none", "float16": "float16", "bfloat16": "float16",
        "weight-only-int8": "weight-only", "weight-only-int4-blockwise-16": "weight-only",
        "dynamic-range-int8": "dynamic-range", "dynamic-range-int4-blockwise-32":
            "dynamic-range", "dynamic-range-int2": "dynamic-range", "mixed": "dynamic-range",
        "full-int8": "full-int8", "full-uint8": "full-uint8", "int16x8": "int16x8",
    }
    for kind, family in expected.items():
        assert tolerance_family(kind) == family
        assert family in DEFAULT_TOLERANCES
