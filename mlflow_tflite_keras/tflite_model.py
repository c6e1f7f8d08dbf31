"""Read, validate and describe a ``.tflite`` flatbuffer with the official LiteRT schema.

Nothing here imports TensorFlow: the flavor, the pyfunc and the CLI's ``inspect`` use it in
serving environments. The converter builds its graph IR on top of :class:`TFLiteModel`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from ai_edge_litert import schema_py_generated as schema

from mlflow_tflite_keras import recipes

__all__ = ["OperatorInfo", "Quantization", "SignatureInfo", "SubgraphInfo", "TFLiteModel",
           "TensorInfo", "builtin_name", "read_model_bytes", "tensor_type_name"]

FILE_IDENTIFIER = b"TFL3"

# TensorType enum value -> numpy dtype (None: no numpy equivalent we can hold directly).
_TENSOR_TYPES = {
    v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")
}
NUMPY_DTYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
    "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16,
    "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64, "UINT64": np.uint64,
    "BOOL": np.bool_, "COMPLEX64": np.complex64, "COMPLEX128": np.complex128,
    # Sub-byte integers, held one value a byte once unpacked (see PACKED_BITS).
    "INT2": np.int8, "INT4": np.int8, "UINT4": np.uint8,
}
# Integer types whose values are packed several to a byte in a buffer: the flattened tensor,
# element k in byte k // (8 // bits) at bit offset (k % (8 // bits)) * bits (lowest bits
# first, the last byte padded), as LiteRT unpacks them and ai-edge-quantizer packs them.
PACKED_BITS = {"INT2": 2, "INT4": 4, "UINT4": 4}
_BUILTIN_NAMES = {
    v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")
}
_STATEFUL_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}
_CONTROL_FLOW_OPS = {"WHILE", "IF", "CALL_ONCE", "CALL", "STABLEHLO_WHILE", "STABLEHLO_CASE"}


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def tensor_type_name(type_code: int) -> str:
    return _TENSOR_TYPES.get(type_code, f"UNKNOWN_{type_code}")


def builtin_name(code: int) -> str:
    return _BUILTIN_NAMES.get(code, f"UNKNOWN_BUILTIN_{code}")


def integer_range(type_name: str) -> tuple[int, int]:
    """The values a quantized integer type holds (INT4: -8..7, UINT4: 0..15, INT8: -128..127)."""
    bits = PACKED_BITS.get(type_name)
    if bits is None:
        info = np.iinfo(NUMPY_DTYPES[type_name])
        return int(info.min), int(info.max)
    if type_name.startswith("U"):
        return 0, 2 ** bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def storage_nbytes(type_name: str, n: int) -> int | None:
    """Bytes a constant of ``n`` elements of ``type_name`` holds in its buffer."""
    if type_name in PACKED_BITS:
        return -(-n * PACKED_BITS[type_name] // 8)
    if type_name == "BFLOAT16":
        return 2 * n
    dtype = NUMPY_DTYPES.get(type_name)
    return None if dtype is None else n * np.dtype(dtype).itemsize


def unpack_integers(data, type_name: str, n: int) -> np.ndarray:
    """The ``n`` values of a packed INT2 / INT4 / UINT4 buffer, one a byte (int8 / uint8)."""
    bits = PACKED_BITS[type_name]
    per_byte = 8 // bits
    packed = np.frombuffer(data, dtype=np.uint8)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]
    if type_name.startswith("U"):
        return values.astype(np.uint8)
    values = values.astype(np.int8)
    return np.where(values >= 2 ** (bits - 1), values - 2 ** bits, values).astype(np.int8)


def pack_integers(values, type_name: str) -> bytes:
    """The inverse of :func:`unpack_integers`: values (within the type's range) packed."""
    bits = PACKED_BITS[type_name]
    per_byte = 8 // bits
    flat = (np.asarray(values).reshape(-1).astype(np.int64) & ((1 << bits) - 1)).astype(np.uint8)
    flat = np.concatenate([flat, np.zeros(-len(flat) % per_byte, np.uint8)])
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(flat.reshape(-1, per_byte) << shifts, axis=1).astype(
        np.uint8).tobytes()


def bfloat16_to_float32(data) -> np.ndarray:
    """bfloat16 is the upper half of a float32: widening it is exact."""
    return (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: ``real = (q - zero_point) * scale``.

    Per-tensor when ``scale`` has one element, per-channel along ``quantized_dimension``, or
    given by parameter tensors (the schema's ``BlockwiseQuantization`` /
    ``MultiAxisQuantization``, ``block_shape`` set): ``scale`` / ``zero_point`` then have the
    tensor's rank, one entry per tile of ``block_shape`` elements. ai-edge-quantizer's int4
    blockwise weights have ``[out, in / block_size]`` scales; ``block_size`` is the schema's
    (0: no blocks, e.g. multi-axis per-channel parameters).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0
    block_shape: tuple[int, ...] | None = None
    block_size: int = 0

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1 and self.block_shape is None

    def broadcast(self, ndim: int, dtype=np.float64):
        """``(scale, zero_point)`` as ``dtype``, broadcastable against a rank-``ndim`` array:
        along ``quantized_dimension`` when per-channel, scalars when per-tensor (blockwise
        parameters need the tensor's shape: use :meth:`dequantize` / :meth:`quantize`)."""
        if self.block_shape is not None:
            raise ValueError("blockwise quantization parameters broadcast by block")
        scale = self.scale.astype(dtype)
        zero_point = self.zero_point.astype(dtype)
        if self.per_channel and ndim:
            shape = [1] * ndim
            shape[self.quantized_dimension] = scale.size
            return scale.reshape(shape), zero_point.reshape(shape)
        return scale.reshape(-1)[0], zero_point.reshape(-1)[0]

    def _affine(self, values: np.ndarray, dtype=np.float64):
        """``(values', scale, zero_point, shape)``: values and parameters as ``dtype`` that
        broadcast together (blockwise: values viewed as ``[n0, b0, n1, b1, ...]`` and the
        parameters as ``[n0, 1, n1, 1, ...]``, no per-element copy of the scales)."""
        values = np.asarray(values, dtype=dtype)
        shape = values.shape
        if self.block_shape is None:
            scale, zero_point = self.broadcast(values.ndim, dtype)
            return values, scale, zero_point, shape
        split = [d for n, b in zip(self.scale.shape, self.block_shape) for d in (n, b)]
        param = [d for n in self.scale.shape for d in (n, 1)]
        return (values.reshape(split), self.scale.astype(dtype).reshape(param),
                self.zero_point.astype(dtype).reshape(param), shape)

    def dequantize(self, values, arithmetic=None) -> np.ndarray:
        """Integers -> real values (float32). The one dequantization of stored integers: the
        converter's constants, the parity checker's tensors, the runtime's outputs.

        ``arithmetic`` (default: by width): for integers of 16 bits or fewer float32 gives
        the float64 result bit for bit ((q - zero_point) and the float32 scale are exact, the
        product is rounded once) at half the memory of a large weight; INT32 / INT64 biases
        need float64. The runtime passes float32, as LiteRT users compute it."""
        if arithmetic is None:
            arithmetic = np.float32 if np.asarray(values).dtype.itemsize <= 2 else np.float64
        values, scale, zero_point, shape = self._affine(values, arithmetic)
        real = np.asarray(values - zero_point)  # 0-d stays an ndarray, not a numpy scalar
        real *= scale
        return real.astype(np.float32, copy=False).reshape(shape)

    def quantize(self, values, dtype) -> np.ndarray:
        """Real values -> integers of ``dtype`` (a numpy dtype, or a TensorType name such as
        ``"INT4"`` for the sub-byte types), rounded and saturated to its range."""
        if isinstance(dtype, str):
            low, high = integer_range(dtype)
            dtype = NUMPY_DTYPES[dtype]
        else:
            info = np.iinfo(dtype)
            low, high = info.min, info.max
        values, scale, zero_point, shape = self._affine(values)
        quantized = np.round(values / scale) + zero_point
        return np.clip(quantized, low, high).astype(dtype).reshape(shape)

    def to_dict(self) -> dict:
        out = {
            "scale": [float(s) for s in self.scale.reshape(-1)],
            "zero_point": [int(z) for z in self.zero_point.reshape(-1)],
            "quantized_dimension": int(self.quantized_dimension),
        }
        if self.block_shape is not None:
            out["block_shape"] = [int(b) for b in self.block_shape]
        return out


@dataclass
class TensorInfo:
    index: int
    name: str
    type_name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    buffer: int
    quantization: Quantization | None
    is_variable: bool
    sparsity: object | None  # schema.SparsityParametersT

    @property
    def dtype(self):
        return NUMPY_DTYPES.get(self.type_name)

    def to_dict(self) -> dict:
        info = {
            "name": self.name,
            "index": self.index,
            "dtype": self.type_name.lower(),
            "shape": list(self.shape),
            "shape_signature": list(self.shape_signature),
        }
        if self.quantization is not None:
            info["quantization"] = self.quantization.to_dict()
        return info


@dataclass
class OperatorInfo:
    index: int
    opcode: str  # builtin name, or "CUSTOM"
    custom_code: str | None
    inputs: list[int]  # -1 marks an omitted optional input
    outputs: list[int]
    options: object | None  # schema.*OptionsT (the op's own union), or None
    raw: object = field(repr=False, default=None)  # schema.OperatorT
    # Subgraphs this op names, from either options union or its custom options.
    called_subgraphs: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.custom_code if self.opcode == "CUSTOM" else self.opcode


@dataclass
class SubgraphInfo:
    index: int
    name: str
    tensors: list[TensorInfo]
    operators: list[OperatorInfo]
    inputs: list[int]
    outputs: list[int]


@dataclass
class SignatureInfo:
    key: str
    subgraph_index: int
    inputs: dict[str, int]  # signature name -> tensor index in its subgraph
    outputs: dict[str, int]


def has_batch_dimension(tensors) -> bool:
    """Dimension 0 is a batch dimension when every one of ``tensors`` (a signature's inputs:
    anything with ``shape`` and ``shape_signature``) has one there: declared dynamic (-1), or
    fixed at 1 with more dimensions behind it (then run row by row). The one rule of the
    pyfunc, the signature and the converter."""
    tensors = list(tensors)
    return bool(tensors) and all(
        len(t.shape) >= 1
        and (t.shape_signature[0] == -1 or (t.shape[0] == 1 and len(t.shape) >= 2))
        for t in tensors)


def read_model_bytes(tflite_model) -> bytes:
    """Accept a path (str / PathLike) or the bytes of a ``.tflite`` file."""
    if isinstance(tflite_model, (bytes, bytearray, memoryview)):
        return bytes(tflite_model)
    if isinstance(tflite_model, (str, os.PathLike)):
        path = os.fspath(tflite_model)
        if not os.path.isfile(path):
            raise _invalid(f"No .tflite file at {describe_path(path)}.")
        with open(path, "rb") as f:
            return f.read()
    raise _invalid(
        "Expected a path to a .tflite file or its bytes, got "
        f"{type(tflite_model).__name__}."
    )


def _map_file(path) -> mmap.mmap | None:
    """A ``.tflite`` file mapped read-only, or None when it cannot be (empty, or no mmap
    here): :func:`read_model_bytes` then reads it, and says what is wrong with it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def drop_file_pages(array) -> None:
    """If ``array`` views a memory-mapped file (a constant of a model loaded with
    ``map_file=True``, or a view of one), the pages it spans leave this process's memory: for
    a caller that has copied it. They stay in the page cache and are read again if used."""
    owner = array
    while owner is not None and not isinstance(owner, mmap.mmap):
        owner = owner.base if isinstance(owner, np.ndarray) else \
            owner.obj if isinstance(owner, memoryview) else None
    if owner is None or not hasattr(mmap, "MADV_DONTNEED") or owner.closed:
        return
    start = np.frombuffer(owner, np.uint8, count=1).ctypes.data if len(owner) else 0
    low, high = np.lib.array_utils.byte_bounds(array)
    first = max(0, (low - start) // mmap.PAGESIZE * mmap.PAGESIZE)
    last = min(len(owner), high - start)
    if last > first:
        owner.madvise(mmap.MADV_DONTNEED, first, last - first)


def describe_path(path) -> str:
    """A path for an error message, quoted; never the whole of a long or binary string (model
    bytes decoded to ``str`` by mistake would otherwise be echoed in full)."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if len(text) <= 512 and text.isprintable():
        return f"'{text}'"
    hint = " (the model's bytes as text? pass bytes or a path)" if \
        FILE_IDENTIFIER.decode() in text[:16] or not text.isprintable() else ""
    return f"a str of {len(text)} characters that is not a file path{hint}"


class TFLiteModel:
    """A parsed and validated TFLite flatbuffer.

    Construction raises :class:`MlflowException` (INVALID_PARAMETER_VALUE) for anything that
    is not a structurally valid TFLite model: wrong identifier, truncation, out-of-range
    tensor / buffer / opcode indices, constant buffers that do not match their tensor's size.
    """

    def __init__(self, model_bytes):
        if isinstance(model_bytes, mmap.mmap):  # a mapped file (``load(path, map_file=True)``)
            self._buffer = model_bytes
        else:
            self._buffer = self.model_bytes = bytes(model_bytes)
        _check_header(self._buffer)
        try:
            _check_vector_lengths(self._buffer)
            # Parsed in place: buffer data stays as numpy views into the buffer (no copy).
            self._model = schema.ModelT.InitFromPackedBuf(self._buffer, 0)
        except MlflowException:
            raise
        except Exception as e:  # the pure-python reader raises many kinds on bad offsets
            raise _invalid(f"Not a valid TFLite flatbuffer: {type(e).__name__}: {e}") from None
        try:
            self._build()
        except MlflowException:
            raise
        except Exception as e:
            raise _invalid(f"Not a valid TFLite model: {type(e).__name__}: {e}") from None

    @classmethod
    def load(cls, tflite_model, *, map_file: bool = False) -> "TFLiteModel":
        """A model from a path, bytes or a :class:`TFLiteModel` (returned as is).

        ``map_file=True`` memory-maps a path instead of reading it: only the flatbuffer's
        tables are read to parse it, constants are read where they are used, and
        :meth:`drop_pages` gives their pages back (the converter reads each weight once).
        The file must not be truncated in place while the model is in use."""
        if isinstance(tflite_model, TFLiteModel):
            return tflite_model
        if map_file and isinstance(tflite_model, (str, os.PathLike)):
            mapped = _map_file(tflite_model)
            if mapped is not None:
                return cls(mapped)
        return cls(read_model_bytes(tflite_model))

    @cached_property
    def model_bytes(self) -> bytes:
        """The file's bytes; a mapped file is read into memory only when they are asked for."""
        return bytes(self._buffer)

    def drop_pages(self):
        """A mapped file's pages leave this process's memory (the page cache keeps them, and
        they are read again where used): called once constants read from them are held
        elsewhere. Nothing to do for a model held as bytes."""
        if isinstance(self._buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            self._buffer.madvise(mmap.MADV_DONTNEED)

    # ---- structure ------------------------------------------------------------------------

    def _build(self):
        m = self._model
        if not m.subgraphs:
            raise _invalid("Not a valid TFLite model: it has no subgraphs.")
        self.schema_version = int(m.version)
        self.description = _text(m.description)
        self.opcodes = []
        for code in m.operatorCodes or []:
            # The schema moved builtin codes past 127 into builtin_code; old files only set the
            # deprecated int8 field, so the real code is the larger of the two.
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            name = builtin_name(builtin)
            if name == "CUSTOM" and not _text(code.customCode):
                raise _invalid(f"Operator code {len(self.opcodes)} is CUSTOM without a custom "
                               "code.")
            self.opcodes.append((name, _text(code.customCode), int(code.version)))
        self.buffers = m.buffers or []
        _check_buffers(m, len(self._buffer))
        self.subgraphs = [self._build_subgraph(i, sg) for i, sg in enumerate(m.subgraphs)]
        for sg in self.subgraphs:
            _check_operators(sg, self)
        _check_subgraph_calls(self.subgraphs)
        self.signatures = []
        for sig in m.signatureDefs or []:
            sg_index = int(sig.subgraphIndex)
            if not 0 <= sg_index < len(self.subgraphs):
                raise _invalid(f"Signature '{_text(sig.signatureKey)}' names missing subgraph.")
            target = self.subgraphs[sg_index]
            if sig.signatureKey is None:
                raise _invalid(f"SignatureDef {len(self.signatures)} has no signature key.")
            maps = []
            for kind, tmaps, allowed in (("input", sig.inputs or [], target.inputs),
                                         ("output", sig.outputs or [], target.outputs)):
                mapping = {}
                for tm in tmaps:
                    if tm.name is None:
                        raise _invalid(f"Signature '{_text(sig.signatureKey)}' has an {kind} "
                                       "without a name.")
                    # An input / output of the signature is one of its subgraph's.
                    if int(tm.tensorIndex) not in allowed:
                        raise _invalid(
                            f"Signature '{_text(sig.signatureKey)}' {kind} '{_text(tm.name)}' "
                            f"names tensor {tm.tensorIndex}, which is not a {kind} of subgraph "
                            f"{sg_index}.")
                    mapping[_text(tm.name)] = int(tm.tensorIndex)
                maps.append(mapping)
            self.signatures.append(
                SignatureInfo(_text(sig.signatureKey), sg_index, maps[0], maps[1])
            )
        self.metadata = {
            _text(md.name): int(md.buffer) for md in (m.metadata or []) if md.name is not None
        }
        for name, buf in self.metadata.items():
            if not 0 <= buf < len(self.buffers):
                raise _invalid(f"Metadata '{name}' names buffer {buf}, out of range.")
        for buf in _seq(m.metadataBuffer):
            if not 0 <= int(buf) < len(self.buffers):
                raise _invalid(f"The model's metadata_buffer names buffer {buf}, out of range.")

    def _build_subgraph(self, index, sg) -> SubgraphInfo:
        tensors = []
        for t_index, t in enumerate(sg.tensors or []):
            shape = tuple(int(d) for d in _seq(t.shape))
            signature = tuple(int(d) for d in _seq(t.shapeSignature)) or shape
            if any(d < 0 for d in shape) or len(signature) != len(shape):
                raise _invalid(f"Tensor {t_index} has an invalid shape {shape}.")
            if not 0 <= t.buffer < max(len(self.buffers), 1):
                raise _invalid(f"Tensor {t_index} names buffer {t.buffer}, out of range.")
            _check_sparsity(t.sparsity, len(shape), t_index)
            tensors.append(
                TensorInfo(
                    index=t_index,
                    name=_text(t.name) or f"tensor_{t_index}",
                    type_name=tensor_type_name(t.type),
                    shape=shape,
                    shape_signature=signature,
                    buffer=int(t.buffer),
                    quantization=_quantization(t.quantization, shape, t_index),
                    is_variable=bool(t.isVariable),
                    sparsity=t.sparsity,
                )
            )
        n = len(tensors)

        def check(indices, what, optional=False):
            out = [int(i) for i in _seq(indices)]
            for i in out:
                if not (0 <= i < n or (optional and i == -1)):
                    raise _invalid(f"Subgraph {index}: {what} names tensor {i}, out of range.")
            return out

        operators = []
        for o_index, op in enumerate(sg.operators or []):
            if not 0 <= op.opcodeIndex < len(self.opcodes):
                raise _invalid(f"Operator {o_index} names opcode {op.opcodeIndex}, out of range.")
            opcode, custom_code, _ = self.opcodes[op.opcodeIndex]
            operators.append(
                OperatorInfo(
                    index=o_index,
                    opcode=opcode,
                    custom_code=custom_code,
                    inputs=check(op.inputs, f"operator {o_index} input", optional=True),
                    outputs=check(op.outputs, f"operator {o_index} output"),
                    options=_own_options(opcode, op),
                    raw=op,
                )
            )
            _check_operator_indices(op, o_index, index, n, len(self._buffer))
        info = SubgraphInfo(
            index=index,
            name=_text(sg.name) or f"subgraph_{index}",
            tensors=tensors,
            operators=operators,
            inputs=check(sg.inputs, "input"),
            outputs=check(sg.outputs, "output"),
        )
        for t in tensors:
            data = self._raw_buffer(t.buffer)
            if data is not None and t.type_name == "STRING":
                _check_string_buffer(data, t)
            expected = storage_nbytes(t.type_name, int(np.prod(t.shape, dtype=np.int64)))
            if data is not None and t.sparsity is None and expected is not None:
                if len(data) != expected:
                    raise _invalid(
                        f"Constant tensor '{t.name}' holds {len(data)} bytes, its shape "
                        f"{list(t.shape)} of {t.type_name} needs {expected}."
                    )
        for t_index, t in enumerate(sg.tensors or []):
            details = t.quantization.details if t.quantization is not None else None
            if isinstance(details, (schema.BlockwiseQuantizationT,
                                    schema.MultiAxisQuantizationT)):
                tensors[t_index].quantization = self._blockwise(details, tensors, t_index)
        return info

    def _blockwise(self, details, tensors: list[TensorInfo], t_index: int) -> Quantization:
        """Blockwise parameters: the scales (and zero points, -1: none) are constant tensors
        of the weight's rank, one entry per block; a block spans ``shape / scales.shape``."""
        t = tensors[t_index]
        where = f"Tensor {t_index} ('{t.name}')"

        def parameter(index: int, what: str) -> np.ndarray:
            value = self.constant(tensors[index]) if 0 <= index < len(tensors) else None
            if value is None:
                raise _invalid(f"{where} takes its blockwise {what} from tensor {index}, "
                               "which is not a constant of this subgraph.")
            return np.asarray(value)

        scale = parameter(int(details.scales), "scales").astype(np.float32)
        zero_point = np.zeros(scale.shape, np.int64) if int(details.zeroPoints) < 0 else \
            parameter(int(details.zeroPoints), "zero points").astype(np.int64)
        axes = [int(a) for a in _seq(getattr(details, "quantizedDimensions", None))]
        if axes and scale.ndim == len(axes) < len(t.shape) and axes == sorted(set(axes)) and \
                axes[-1] < len(t.shape) and zero_point.shape == scale.shape:
            # MultiAxisQuantization may give parameters only along its quantized dimensions.
            full = [scale.shape[axes.index(d)] if d in axes else 1 for d in range(len(t.shape))]
            scale, zero_point = scale.reshape(full), zero_point.reshape(full)
        if scale.ndim != len(t.shape) or zero_point.shape != scale.shape or any(
                s == 0 or n % s for n, s in zip(t.shape, scale.shape)):
            raise _invalid(f"{where}: blockwise scales of shape {list(scale.shape)} (zero "
                           f"points {list(zero_point.shape)}) do not tile its shape "
                           f"{list(t.shape)}.")
        block = tuple(n // s for n, s in zip(t.shape, scale.shape))
        size = int(details.blockSize or 0)
        block_shape = [int(b) for b in _seq(getattr(details, "blockShape", None))]
        if block_shape:  # a block shape instead of one size
            wrong = len(block_shape) != len(block) or any(
                b not in (s, n) for b, s, n in zip(block, block_shape, t.shape))
            size = max(block_shape)
        else:
            wrong = size and any(b not in (1, n, size) for b, n in zip(block, t.shape))
        if wrong:
            raise _invalid(f"{where}: scales of shape {list(scale.shape)} make blocks of "
                           f"{list(block)}, not of block "
                           f"{block_shape or size}.")
        if not np.all(np.isfinite(scale)):
            raise _invalid(f"Tensor {t_index} has a NaN or infinite quantization scale.")
        return Quantization(scale, zero_point, 0, block, size)

    def _raw_buffer(self, buffer_index: int) -> memoryview | None:
        """A buffer's bytes as a view into the model's buffer (never a copy: weights can be
        hundreds of MB), or None for the empty buffer."""
        if buffer_index <= 0 or buffer_index >= len(self.buffers):
            return None  # buffer 0 is the schema's reserved empty buffer
        buf = self.buffers[buffer_index]
        if buf.offset > 1:  # large models keep buffers after the flatbuffer (offset/size)
            end = int(buf.offset) + int(buf.size)
            if end > len(self._buffer):
                raise _invalid(f"Buffer {buffer_index} points past the end of the file.")
            return memoryview(self._buffer)[int(buf.offset):end]
        if buf.data is None or len(buf.data) == 0:
            return None
        return memoryview(np.asarray(buf.data, dtype=np.uint8))

    # ---- accessors -------------------------------------------------------------------------

    @property
    def main(self) -> SubgraphInfo:
        return self.subgraphs[0]

    def has_constant(self, tensor: TensorInfo) -> bool:
        """:meth:`constant` gives data for this tensor (without reading it)."""
        if self._raw_buffer(tensor.buffer) is None:
            return tensor.buffer > 0 and tensor.dtype is not None and \
                tensor.sparsity is None and 0 in tensor.shape
        return tensor.type_name in PACKED_BITS or tensor.type_name == "BFLOAT16" or \
            tensor.dtype is not None

    def constant(self, tensor: TensorInfo) -> np.ndarray | None:
        """The raw (still quantized, still sparse-encoded) constant data of a tensor; packed
        sub-byte integers come unpacked (int8 / uint8), bfloat16 widened to float32."""
        data = self._raw_buffer(tensor.buffer)
        if data is None and tensor.buffer > 0 and tensor.dtype is not None and \
                tensor.sparsity is None and 0 in tensor.shape:
            return np.zeros(tensor.shape, dtype=tensor.dtype)  # an empty constant
        if data is None:
            return None
        if tensor.type_name in PACKED_BITS:  # unpacked to one value a byte
            n = int(np.prod(tensor.shape, dtype=np.int64)) if tensor.sparsity is None else \
                len(data) * 8 // PACKED_BITS[tensor.type_name]
            array = unpack_integers(data, tensor.type_name, n)
        elif tensor.type_name == "BFLOAT16":  # widened to float32 (exact)
            array = bfloat16_to_float32(data)
        elif tensor.dtype is None:
            return None
        else:
            array = np.frombuffer(data, dtype=tensor.dtype)
        return array if tensor.sparsity is not None else array.reshape(tensor.shape)

    def metadata_bytes(self, name: str) -> bytes | None:
        if name not in self.metadata:
            return None
        data = self._raw_buffer(self.metadata[name])
        return None if data is None else bytes(data)

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        view, chunk = memoryview(self._buffer), 1 << 24
        for start in range(0, len(view), chunk):  # a mapped file: a chunk resident at a time
            digest.update(view[start:start + chunk])
            if isinstance(self._buffer, mmap.mmap):
                self._buffer.madvise(mmap.MADV_DONTNEED, start, min(chunk, len(view) - start))
        view.release()
        return digest.hexdigest()

    @cached_property
    def operator_names(self) -> list[str]:
        names = {op.name for sg in self.subgraphs for op in sg.operators}
        return sorted(n for n in names if n)

    @cached_property
    def custom_ops(self) -> list[str]:
        return sorted({code for name, code, _ in self.opcodes if name == "CUSTOM" and code})

    @property
    def has_custom_ops(self) -> bool:
        return bool(self.custom_ops)

    @cached_property
    def is_stateful(self) -> bool:
        """Resource variables: state carried from one invoke to the next (streaming models).

        Variable tensors of sequence ops (LSTM/RNN state) do not count: they hold a sequence's
        running state, and the runtime resets them before every invoke.
        """
        if set(self.operator_names) & _STATEFUL_OPS:
            return True
        return any(t.type_name == "RESOURCE" for sg in self.subgraphs for t in sg.tensors)

    @cached_property
    def has_variable_tensors(self) -> bool:
        return any(t.is_variable for sg in self.subgraphs for t in sg.tensors)

    @cached_property
    def has_control_flow(self) -> bool:
        return bool(set(self.operator_names) & _CONTROL_FLOW_OPS)

    def operator_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sg in self.subgraphs:
            for op in sg.operators:
                counts[op.name] = counts.get(op.name, 0) + 1
        return dict(sorted(counts.items()))

    def signature(self, key: str | None = None) -> SignatureInfo:
        """The named SignatureDef (default: the first), or one made from subgraph 0's I/O."""
        if key is None and self.signatures:
            return self.signatures[0]
        for sig in self.signatures:
            if sig.key == key:
                return sig
        if key is not None:
            keys = [s.key for s in self.signatures] or ["<none: the model has no SignatureDef>"]
            raise _invalid(f"Unknown signature_key '{key}'. The model has: {keys}.")
        main = self.main
        return SignatureInfo(
            key="",
            subgraph_index=0,
            inputs={main.tensors[i].name: i for i in main.inputs},
            outputs={main.tensors[i].name: i for i in main.outputs},
        )

    @cached_property
    def litert_unsupported(self) -> list[str]:
        """What LiteRT 2.3 mishandles in this file (measured): it crashes allocating a
        model with MultiAxisQuantization tensors (XNNPACK; its builtin kernels read them as
        zeros), its DEQUANTIZE outputs zeros for blockwise-quantized constants (its hybrid
        FULLY_CONNECTED / EMBEDDING_LOOKUP read them right), and its hybrid CONV_2D gives NaN
        or wrong values with INT2 filters (FULLY_CONNECTED and DEQUANTIZE read INT2 right).
        The converter reads all of them; the runtime refuses them rather than crash or serve
        wrong numbers."""
        problems = []
        for sg in self.subgraphs:
            raw = self._model.subgraphs[sg.index].tensors or []
            for t, t_raw in zip(sg.tensors, raw):
                if isinstance(getattr(t_raw.quantization, "details", None),
                              schema.MultiAxisQuantizationT):
                    problems.append(f"tensor '{t.name}' has MultiAxisQuantization")
            for op in sg.operators:
                if op.opcode == "DEQUANTIZE" and op.inputs and op.inputs[0] >= 0:
                    t = sg.tensors[op.inputs[0]]
                    if t.quantization is not None and t.quantization.block_size:
                        problems.append(f"DEQUANTIZE of the blockwise-quantized '{t.name}'")
                if op.opcode == "CONV_2D" and len(op.inputs) > 1 and op.inputs[1] >= 0 and \
                        sg.tensors[op.inputs[1]].type_name == "INT2":
                    problems.append(f"CONV_2D with the INT2 filter "
                                    f"'{sg.tensors[op.inputs[1]].name}'")
        return problems

    def check_litert_support(self):
        """Raise :class:`MlflowException` for a file LiteRT would crash on or compute wrong
        (:attr:`litert_unsupported`)."""
        if self.litert_unsupported:
            problems = self.litert_unsupported
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise _invalid("LiteRT cannot run this model correctly: " + "; ".join(problems[:3])
                           + more + ". Convert it to Keras (mlflow_tflite_keras.converter) to "
                           "run it.")

    @cached_property
    def _quantization_scan(self) -> tuple[set[str], dict[str, str]]:
        """(types of quantized activations, :attr:`quantization_breakdown`)."""
        activation_types: set[str] = set()
        schemes: dict[str, str] = {}
        for sg in self.subgraphs:
            # Weight-derived tensor -> (its stored constant, dequantized on the way?). A
            # densified constant is still a weight, not an activation.
            weights = {t.index: (t.index, False) for t in sg.tensors
                       if self._raw_buffer(t.buffer) is not None}
            for op in sg.operators:
                if op.opcode in ("DENSIFY", "DEQUANTIZE") and op.inputs and \
                        op.inputs[0] in weights:
                    source, dequantized = weights[op.inputs[0]]
                    dequantized = dequantized or op.opcode == "DEQUANTIZE"
                    weights.update((o, (source, dequantized)) for o in op.outputs)
            for op in sg.operators:
                if op.opcode in ("QUANTIZE", "DEQUANTIZE", "DENSIFY"):
                    continue
                # Variable tensors are state, not activations: an integer LSTM of a full-int8
                # model keeps its cell state in INT16 (that does not make it int16x8).
                activations = [sg.tensors[i] for i in op.inputs if i >= 0 and i not in weights
                               and not sg.tensors[i].is_variable]
                quantized = {t.type_name for t in activations if t.quantization is not None
                             and t.type_name in recipes.activation_types()}
                activation_types |= quantized
                for i in op.inputs:
                    if i in weights:
                        source, dequantized = weights[i]
                        scheme = recipes.weight_scheme(sg.tensors[source], dequantized,
                                                       integer_op=bool(quantized))
                        if scheme is not None:
                            schemes[sg.tensors[source].name] = scheme
        return activation_types, schemes

    @property
    def quantization_breakdown(self) -> dict[str, str]:
        """Every reduced-precision weight (by tensor name) -> how the model computes with
        it: ``weight-only-int4`` (a DEQUANTIZE in front of float compute),
        ``dynamic-range-int8`` (a hybrid kernel: quantized weights, float activations it
        quantizes on the fly), with ``-blockwise-<N>`` for blockwise scales; ``float16`` /
        ``bfloat16`` (float weights stored narrow). Weights of integer-only ops (full-integer
        models) are not listed: their activations say what the model is."""
        return dict(self._quantization_scan[1])

    @cached_property
    def quantization_kind(self) -> str:
        """What the file is: ``none``, ``float16``, ``bfloat16``, ``weight-only-<int>``,
        ``dynamic-range-<int>`` (``<int>``: int8, int4, uint4, int2...; blockwise with
        ``-blockwise-<N>``), ``full-int8``, ``full-uint8``, ``int16x8``, or ``mixed``
        (weights quantized several ways: see :attr:`quantization_breakdown`)."""
        activations, breakdown = self._quantization_scan
        return recipes.kind_from(activations, set(breakdown.values()))

    def describe(self) -> dict:
        """A YAML/JSON-friendly summary, recorded in the MLmodel flavor."""
        signatures = {}
        for sig in self.signatures or [self.signature()]:
            sg = self.subgraphs[sig.subgraph_index]
            signatures[sig.key or "serving_default"] = {
                "subgraph_index": sig.subgraph_index,
                "inputs": {n: sg.tensors[i].to_dict() for n, i in sig.inputs.items()},
                "outputs": {n: sg.tensors[i].to_dict() for n, i in sig.outputs.items()},
            }
        main = self.main
        return {
            "schema_version": self.schema_version,
            "description": self.description,
            "subgraphs": len(self.subgraphs),
            "operators": self.operator_names,
            "operator_counts": self.operator_counts(),
            "custom_ops": self.custom_ops,
            "quantization": self.quantization_kind,
            **({"quantization_breakdown": self.quantization_breakdown}
               if self.quantization_kind == recipes.MIXED else {}),
            "stateful": self.is_stateful,
            "inputs": [main.tensors[i].to_dict() for i in main.inputs],
            "outputs": [main.tensors[i].to_dict() for i in main.outputs],
            "signature_keys": [s.key for s in self.signatures],
            "signatures": signatures,
            "metadata_entries": sorted(self.metadata),
        }


# ---- helpers ---------------------------------------------------------------------------------


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _seq(value):
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


def _quantization(q, shape: tuple[int, ...], t_index: int = -1) -> Quantization | None:
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, dtype=np.float32).reshape(-1)
    zero_point = np.asarray(_seq(q.zeroPoint) or [0], dtype=np.int64).reshape(-1)
    if zero_point.size == 1 and scale.size > 1:
        zero_point = np.repeat(zero_point, scale.size)
    if zero_point.size != scale.size:
        raise _invalid("Quantization has different numbers of scales and zero points.")
    dim = int(q.quantizedDimension)
    rank = len(shape)
    if scale.size > 1:
        if not 0 <= dim < max(rank, 1):
            raise _invalid(f"Quantized dimension {dim} out of range for a rank-{rank} tensor.")
        if rank and shape[dim] != scale.size:
            raise _invalid(f"Tensor {t_index} has {scale.size} per-channel scales for "
                           f"{shape[dim]} channels (dimension {dim} of {list(shape)}).")
    if not np.all(np.isfinite(scale)):
        raise _invalid(f"Tensor {t_index} has a NaN or infinite quantization scale.")
    return Quantization(scale, zero_point, dim)


def _check_header(data: bytes):
    if len(data) < 8:
        raise _invalid(f"Not a TFLite model: {len(data)} bytes is too short for a flatbuffer.")
    if data[4:8] != FILE_IDENTIFIER:
        raise _invalid(
            f"Not a TFLite model: file identifier is {data[4:8]!r}, expected {FILE_IDENTIFIER!r}."
        )
    (root,) = struct.unpack_from("<I", data, 0)
    if root < 8 or root + 4 > len(data):
        raise _invalid("Not a TFLite model: the root table offset points outside the file.")


def _check_vector_lengths(data: bytes):
    """Reject absurd vector lengths before the object API loops over them.

    The pure-python flatbuffer reader trusts every length field; a corrupted one would make it
    allocate or loop for billions of elements. Each element takes at least 4 bytes, so no sane
    vector is longer than the file.
    """
    limit = len(data) // 4 + 1
    model = schema.Model.GetRootAs(data, 0)
    lengths = [model.OperatorCodesLength(), model.SubgraphsLength(), model.BuffersLength(),
               model.MetadataLength(), model.SignatureDefsLength()]
    for s in range(min(model.SubgraphsLength(), limit)):
        sg = model.Subgraphs(s)
        lengths += [sg.TensorsLength(), sg.OperatorsLength(), sg.InputsLength(),
                    sg.OutputsLength()]
        for t in range(min(sg.TensorsLength(), limit)):
            tensor = sg.Tensors(t)
            lengths += [tensor.ShapeLength(), tensor.ShapeSignatureLength()]
        for o in range(min(sg.OperatorsLength(), limit)):
            op = sg.Operators(o)
            lengths += [op.InputsLength(), op.OutputsLength()]
            # Custom options are bytes, one byte an element: bounded by the file size.
            if op.CustomOptionsLength() > len(data):
                raise _invalid(f"Not a valid TFLite flatbuffer: the custom options of "
                               f"operator {o} are longer than the file.")
    for b in range(min(model.BuffersLength(), limit)):
        # Byte vectors are one byte an element: bound them by the file size itself.
        if model.Buffers(b).DataLength() > len(data):
            raise _invalid(f"Not a valid TFLite flatbuffer: buffer {b} is longer than the file.")
    if any(n < 0 or n > limit for n in lengths):
        raise _invalid("Not a valid TFLite flatbuffer: a vector length exceeds the file size.")


# ---- operator checks ---------------------------------------------------------------------------
# LiteRT trusts these: a kernel reads its inputs by position, a missing one is a null pointer.
# They run before any interpreter sees the bytes, and only reject what no converter writes.

# (min inputs, max inputs, min outputs, max outputs); None: no upper bound.
_UNARY = (1, 1, 1, 1)
_BINARY = (2, 2, 1, 1)
_ARITY = {
    **dict.fromkeys([
        "ABS", "CEIL", "COS", "EXP", "FLOOR", "LOG", "LOGISTIC", "NEG", "ROUND", "RSQRT", "SIGN",
        "SIN", "SQRT", "SQUARE", "TANH", "RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1", "ELU",
        "HARD_SWISH", "LEAKY_RELU", "GELU", "LOGICAL_NOT", "L2_NORMALIZATION", "ZEROS_LIKE",
        "SOFTMAX", "LOG_SOFTMAX", "DEQUANTIZE", "QUANTIZE", "CAST", "SHAPE", "DENSIFY", "REAL",
        "IMAG", "COMPLEX_ABS", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "AVERAGE_POOL_2D",
        "MAX_POOL_2D", "L2_POOL_2D", "SQUEEZE", "WHERE", "LOCAL_RESPONSE_NORMALIZATION",
        "READ_VARIABLE", "RANK"], _UNARY),
    **dict.fromkeys([
        "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "POW", "SQUARED_DIFFERENCE",
        "FLOOR_DIV", "FLOOR_MOD", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL",
        "NOT_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "ATAN2", "BATCH_MATMUL", "PRELU", "GATHER",
        "GATHER_ND", "TRANSPOSE", "EXPAND_DIMS", "FILL", "TILE", "BROADCAST_TO",
        "BROADCAST_ARGS", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD",
        "REDUCE_ANY", "REDUCE_ALL", "ARG_MAX", "ARG_MIN", "CUMSUM", "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2", "EMBEDDING_LOOKUP", "MIRROR_PAD", "RFFT2D"],
        _BINARY),
    **dict.fromkeys(["PADV2", "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "SLICE", "SELECT",
                     "SELECT_V2", "RANGE", "SCATTER_ND"], (3, 3, 1, 1)),
    "PAD": (2, 3, 1, 1), "STRIDED_SLICE": (4, 4, 1, 1), "ONE_HOT": (4, 4, 1, 1),
    "SPLIT": (2, 2, 1, None), "SPLIT_V": (3, 3, 1, None), "UNPACK": (1, 1, 1, None),
    "PACK": (1, None, 1, 1), "CONCATENATION": (1, None, 1, 1), "ADD_N": (1, None, 1, 1),
    "TOPK_V2": (2, 2, 2, 2), "RESHAPE": (1, 2, 1, 1),
    "CONV_2D": (2, 3, 1, 1), "DEPTHWISE_CONV_2D": (2, 3, 1, 1), "CONV_3D": (2, 3, 1, 1),
    "FULLY_CONNECTED": (2, 3, 1, 2), "TRANSPOSE_CONV": (3, 4, 1, 1),
    "CONV_3D_TRANSPOSE": (3, 4, 1, 1),
    "ASSIGN_VARIABLE": (2, 2, 0, 0), "VAR_HANDLE": (0, 0, 1, 1), "CALL_ONCE": (0, 0, 0, 0),
}
# Inputs a kernel accepts as omitted (-1). Other ops of _ARITY take none; builtins not listed
# there may omit any input but the first. Custom ops are free.
_OPTIONAL_INPUTS = {
    "CONV_2D": {2}, "DEPTHWISE_CONV_2D": {2}, "CONV_3D": {2}, "FULLY_CONNECTED": {2},
    "TRANSPOSE_CONV": {3}, "CONV_3D_TRANSPOSE": {3},
}
# Ops whose options give strides / filter sizes a kernel divides by: options required, >= 1.
_POSITIVE_OPTIONS = {
    "CONV_2D": ("strideW", "strideH", "dilationWFactor", "dilationHFactor"),
    "DEPTHWISE_CONV_2D": ("strideW", "strideH", "dilationWFactor", "dilationHFactor"),
    "TRANSPOSE_CONV": ("strideW", "strideH"),
    "AVERAGE_POOL_2D": ("strideW", "strideH", "filterWidth", "filterHeight"),
    "MAX_POOL_2D": ("strideW", "strideH", "filterWidth", "filterHeight"),
    "L2_POOL_2D": ("strideW", "strideH", "filterWidth", "filterHeight"),
    "CONV_3D": ("strideD", "strideW", "strideH", "dilationDFactor", "dilationWFactor",
                "dilationHFactor"),
    "CONV_3D_TRANSPOSE": ("strideD", "strideW", "strideH", "dilationDFactor",
                          "dilationWFactor", "dilationHFactor"),
}
# Options shared by another op than their namesake.
_SHARED_OPTIONS = {"CONV_3D_TRANSPOSE": "conv3d"}


def _squash(name: str) -> str:
    return name.replace("_", "").lower()


_OP_BY_SQUASHED = {_squash(n): n for n in _BUILTIN_NAMES.values()}


def _options_owner(options) -> str | None:
    """The builtin operator an options table is named after (Conv2DOptionsT -> CONV_2D)."""
    name = type(options).__name__
    for suffix in ("OptionsT", "Options"):
        if name.endswith(suffix):
            return _OP_BY_SQUASHED.get(_squash(name[: -len(suffix)]))
    return None


def _check_operators(sg: SubgraphInfo, model: "TFLiteModel"):
    where = f"Subgraph {sg.index}"
    produced: dict[int, int] = {}
    sg_inputs = set(sg.inputs)
    for op in sg.operators:
        label = f"{where}: operator {op.index} ({op.name})"
        known_builtin = op.opcode != "CUSTOM" and not op.opcode.startswith("UNKNOWN_")
        arity = _ARITY.get(op.opcode)
        if arity is not None:
            lo_in, hi_in, lo_out, hi_out = arity
            if len(op.inputs) < lo_in or (hi_in is not None and len(op.inputs) > hi_in):
                raise _invalid(f"{label} has {len(op.inputs)} inputs, it takes "
                               f"{_range_text(lo_in, hi_in)}.")
            if len(op.outputs) < lo_out or (hi_out is not None and len(op.outputs) > hi_out):
                raise _invalid(f"{label} has {len(op.outputs)} outputs, it makes "
                               f"{_range_text(lo_out, hi_out)}.")
        if known_builtin:
            optional = _OPTIONAL_INPUTS.get(op.opcode, set() if arity else None)
            for position, t in enumerate(op.inputs):
                if t == -1 and (position == 0 or (optional is not None
                                                  and position not in optional)):
                    raise _invalid(f"{label} omits its input {position}, which it needs.")
            _check_options(op, label)
        for t in op.outputs:
            tensor = sg.tensors[t]
            if t in produced:
                raise _invalid(f"{label} writes tensor {t} ('{tensor.name}'), already written "
                               f"by operator {produced[t]}.")
            if t in sg_inputs:
                raise _invalid(f"{label} writes tensor {t} ('{tensor.name}'), an input of the "
                               "subgraph.")
            if model._raw_buffer(tensor.buffer) is not None:
                raise _invalid(f"{label} writes tensor {t} ('{tensor.name}'), a constant.")
            produced[t] = op.index


def _range_text(lo, hi) -> str:
    if hi is None:
        return f"at least {lo}"
    return str(lo) if lo == hi else f"{lo} to {hi}"


def _check_options(op: OperatorInfo, label: str):
    options = op.options
    for table in (op.raw.builtinOptions, op.raw.builtinOptions2) if op.raw else (options,):
        owner = _options_owner(table) if table is not None else None
        if owner is not None and owner != op.opcode and \
                _SHARED_OPTIONS.get(op.opcode) != _squash(owner):
            raise _invalid(f"{label} carries the options of {owner}.")
    fields = _POSITIVE_OPTIONS.get(op.opcode)
    if fields:
        if options is None:
            raise _invalid(f"{label} has no options (strides, sizes).")
        for name in fields:
            value = getattr(options, name, 1)
            if int(value) < 1:
                raise _invalid(f"{label} has {name} = {value}; it must be at least 1.")


def _own_options(opcode: str, raw_op):
    """The options table an op reads: of its two unions (``builtin_options``, and
    ``builtin_options_2`` for StableHLO and newer ops), the one named after it, else the one
    that is set. A table in the other union is ignored by the op, but still validated."""
    candidates = [o for o in (raw_op.builtinOptions, raw_op.builtinOptions2) if o is not None]
    for options in candidates:
        if _options_owner(options) == opcode:
            return options
    return candidates[0] if candidates else None


def _option_subgraph_fields(options) -> list[int]:
    refs = []
    for name, value in vars(options).items() if options is not None else ():
        if "ubgraph" not in name or value is None:
            continue
        values = [value] if isinstance(value, (int, np.integer)) else _seq(value)
        refs.extend(int(v) for v in values)
    return refs


def _custom_subgraph_fields(raw_op) -> list[int]:
    """Integers under a "...subgraph..." key of a custom op's flexbuffer options map: a custom
    kernel that calls subgraphs names them there (only the top level is read, no recursion)."""
    data = raw_op.customOptions
    if data is None or len(data) == 0 or raw_op.customOptionsFormat != 0:
        return []
    try:
        from flatbuffers import flexbuffers

        root = flexbuffers.GetRoot(bytearray(np.asarray(data, dtype=np.uint8).tobytes()))
        if not root.IsMap:
            return []
        refs = []
        mapping = root.AsMap
        for key, value in zip(mapping.Keys, mapping.Values):
            if "subgraph" not in key.AsKey.lower():
                continue
            if value.IsInt:
                refs.append(int(value.AsInt))
            elif value.IsVector or value.IsTypedVector:
                refs.extend(int(v.AsInt) for v in value.AsVector if v.IsInt)
        return refs
    except Exception:  # not a flexbuffer map: opaque bytes only its kernel reads
        return []


def reachable_subgraphs(model: TFLiteModel, roots) -> list[int]:
    """The subgraphs ``roots`` (indices) and every subgraph their operators call,
    transitively (:attr:`OperatorInfo.called_subgraphs`), each once, in breadth-first order.
    The one walker of the call graph: control flow, streaming, hybrid regions use it."""
    order, seen, todo = [], set(), list(roots)
    while todo:
        index = todo.pop(0)
        if index in seen or not 0 <= index < len(model.subgraphs):
            continue
        seen.add(index)
        order.append(index)
        todo += [r for op in model.subgraphs[index].operators for r in op.called_subgraphs]
    return order


def subgraph_references(raw_op, subgraph_names: dict[str, int] | None = None) -> list[int]:
    """Every subgraph index an operator names: in both options unions (WHILE, IF, CALL_ONCE,
    CALL, the StableHLO ops, a composite's decomposition), a StableHLO custom call's called
    computations (by subgraph name), and a custom op's flexbuffer options."""
    refs = _option_subgraph_fields(raw_op.builtinOptions)
    refs += _option_subgraph_fields(raw_op.builtinOptions2)
    refs += _custom_subgraph_fields(raw_op)
    for options in (raw_op.builtinOptions, raw_op.builtinOptions2):
        for name in _seq(getattr(options, "calledComputations", None)):
            if subgraph_names and _text(name) in subgraph_names:
                refs.append(subgraph_names[_text(name)])
    return refs


def _check_subgraph_calls(subgraphs: list[SubgraphInfo]):
    """Subgraph indices named by ops are in range, and no subgraph calls itself (directly or
    through others): the interpreter would recurse until the stack overflows. An iterative
    depth-first search: a chain of thousands of subgraphs is valid and must not overflow ours."""
    n = len(subgraphs)
    names = {sg.name: sg.index for sg in subgraphs}
    calls: list[list[int]] = []
    for sg in subgraphs:
        called = set()
        for op in sg.operators:
            op.called_subgraphs = subgraph_references(op.raw, names)
            for r in op.called_subgraphs:
                if not 0 <= r < n:
                    raise _invalid(f"Subgraph {sg.index}: operator {op.index} ({op.name}) names "
                                   f"subgraph {r}; the model has {n}.")
            called.update(op.called_subgraphs)
        calls.append(sorted(called))
    state = [0] * n  # 0: unseen, 1: on the current path, 2: done
    for start in range(n):
        if state[start]:
            continue
        state[start] = 1
        path, stack = [start], [iter(calls[start])]
        while stack:
            j = next(stack[-1], None)
            if j is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[j] == 1:
                cycle = path[path.index(j):] + [j]
                raise _invalid("Subgraphs call each other in a cycle: "
                               + " -> ".join(map(str, cycle)) + ".")
            elif state[j] == 0:
                state[j] = 1
                path.append(j)
                stack.append(iter(calls[j]))


def _check_operator_indices(raw_op, o_index: int, sg_index: int, n_tensors: int,
                            file_size: int):
    """Indices of an operator that the interpreter follows besides its inputs and outputs."""
    label = f"Subgraph {sg_index}: operator {o_index}"
    for i in _seq(raw_op.intermediates):  # kernels (LSTM) read them as tensors
        if not 0 <= int(i) < n_tensors:
            raise _invalid(f"{label} intermediates names tensor {i}, out of range.")
    offset, size = int(raw_op.largeCustomOptionsOffset), int(raw_op.largeCustomOptionsSize)
    if offset > 1 and (size < 0 or offset + size > file_size):
        raise _invalid(f"{label} has custom options past the end of the file.")


def _check_string_buffer(data, t: "TensorInfo"):
    """A STRING constant: int32 count N, N + 1 int32 offsets, then the bytes. LiteRT reads
    strings through those offsets unchecked."""
    where = f"Constant STRING tensor '{t.name}'"
    if len(data) < 8:
        raise _invalid(f"{where} is too short for its string table.")
    (count,) = struct.unpack_from("<i", data, 0)
    expected = int(np.prod(t.shape, dtype=np.int64))
    if count != expected or 4 * (count + 2) > len(data):
        raise _invalid(f"{where} holds {count} strings; its shape {list(t.shape)} needs "
                       f"{expected}.")
    offsets = np.frombuffer(data, dtype="<i4", count=count + 1, offset=4)
    if offsets[0] != 4 * (count + 2) or offsets[-1] != len(data) or \
            np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise _invalid(f"{where} has string offsets outside its buffer.")


def _check_buffers(m, file_size: int):
    """Buffers stored after the flatbuffer (offset/size) lie inside the file."""
    for b_index, buf in enumerate(m.buffers or []):
        offset, size = int(buf.offset), int(buf.size)
        if offset > 1 and (size < 0 or offset + size > file_size):
            raise _invalid(f"Buffer {b_index} points past the end of the file.")


def _check_sparsity(sparsity, rank: int, t_index: int):
    """Sparse constants: traversal order and block map index the tensor's dimensions."""
    if sparsity is None:
        return
    order = [int(d) for d in _seq(sparsity.traversalOrder)]
    block_map = [int(d) for d in _seq(sparsity.blockMap)]
    dims = sparsity.dimMetadata or []
    if len(order) < rank or sorted(order) != list(range(len(order))) or \
            len(dims) != len(order) or len(block_map) != len(order) - rank or \
            any(not 0 <= d < rank for d in block_map):
        raise _invalid(f"Tensor {t_index} has inconsistent sparsity parameters.")
