"""TFLite model metadata as readable files, without ``tflite-support``.

A ``.tflite`` file may carry, besides the graph:

* metadata entries (``Model.metadata``: a name and a buffer). ``TFLITE_METADATA`` is a
  ``ModelMetadata`` flatbuffer (file identifier ``M001``, schema
  ``tensorflow_lite_support/metadata/metadata_schema.fbs``, version 1.5) describing the model,
  its tensors (normalization, labels, tokenizers...) and the files that come with it. The
  converter adds ``min_runtime_version`` (text) and ``CONVERSION_METADATA`` (a
  ``ConversionMetadata`` flatbuffer, ``conversion_metadata.fbs``).
* associated files (label maps, vocabularies...) in a zip archive appended to the flatbuffer.

:func:`read_metadata` decodes all of it into a JSON-ready dict whose ``ModelMetadata`` part
has the layout of ``tflite-support``'s ``MetadataDisplayer.get_metadata_json()`` (schema field
names; union fields as ``<field>_type`` + ``<field>``; enum values by name), plus:

``metadata_entries``
    every metadata entry of the model: text entries decoded, ``CONVERSION_METADATA`` decoded,
    others (and ``TFLITE_METADATA`` itself) by size.
``packed_files``
    the zip archive's files: name -> size and the artifact name :func:`extract_metadata` gives
    it.
``missing_associated_files``
    associated files the metadata names that the archive lacks.
``error``
    why the ``TFLITE_METADATA`` buffer could not be decoded (it is then left out).

The flatbuffer is read generically, field by field, with :class:`flatbuffers.table.Table`
and every offset, vector and string is bounds-checked first: a malformed buffer gives an
``error``, never an exception or an unbounded loop.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import struct
import zipfile
import zlib

import numpy as np
from flatbuffers import number_types as N
from flatbuffers.table import Table
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras.tflite_model import TFLiteModel

__all__ = ["MalformedMetadata", "associated_files", "decode_flatbuffer", "extract_metadata",
           "parse_model_metadata", "read_metadata"]

METADATA_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
METADATA_JSON = "metadata.json"

MAX_METADATA_BYTES = 32 * 2**20  # a TFLITE_METADATA buffer larger than this is not decoded
MAX_ITEMS = 1_000_000  # tables + vector elements + string bytes / 64 decoded per buffer
MAX_FILE_BYTES = 64 * 2**20  # per associated file
MAX_TOTAL_FILE_BYTES = 256 * 2**20  # all associated files together
MAX_FILES = 1000
MAX_TEXT_ENTRY_BYTES = 4096  # other metadata entries shown as text up to this size
MAX_ARTIFACT_NAME_BYTES = 160  # an associated file's artifact name, extension included
_READ_CHUNK = 2**20  # bytes inflated at a time


class MalformedMetadata(ValueError):
    """A metadata flatbuffer that does not follow its schema."""


# ---- schema ---------------------------------------------------------------------------------
#
# A table spec is (table name, [(field name, kind), ...]) in declaration order. Each field takes
# one vtable slot, a union two (``<field>_type`` then the value), which _decode_table accounts
# for. Kinds:
#   ("str",)  ("bytes",)  ("scalar", flags, default)  ("enum", flags, {value: name})
#   ("table", spec)  ("strs",)  ("scalars", flags)  ("enums", flags, names)  ("tables", spec)
#   ("union", {type code: spec})

def _enum(*names, start=0):
    return {start + i: n for i, n in enumerate(names)}


ASSOCIATED_FILE_TYPES = _enum("UNKNOWN", "DESCRIPTIONS", "TENSOR_AXIS_LABELS",
                              "TENSOR_VALUE_LABELS", "TENSOR_AXIS_SCORE_CALIBRATION",
                              "VOCABULARY", "SCANN_INDEX_FILE")
COLOR_SPACE_TYPES = _enum("UNKNOWN", "RGB", "GRAYSCALE")
BOUNDING_BOX_TYPES = _enum("UNKNOWN", "BOUNDARIES", "UPPER_LEFT", "CENTER")
COORDINATE_TYPES = _enum("RATIO", "PIXEL")
SCORE_TRANSFORMATION_TYPES = _enum("IDENTITY", "LOG", "INVERSE_LOGISTIC")

_STR = ("str",)
_STRS = ("strs",)
_F32S = ("scalars", N.Float32Flags)
_U32 = ("scalar", N.Uint32Flags, 0)

ASSOCIATED_FILE = ("AssociatedFile", [
    ("name", _STR),
    ("description", _STR),
    ("type", ("enum", N.Int8Flags, ASSOCIATED_FILE_TYPES)),
    ("locale", _STR),
    ("version", _STR),
])
_FILES = ("tables", ASSOCIATED_FILE)

FEATURE_PROPERTIES = ("FeatureProperties", [])
IMAGE_SIZE = ("ImageSize", [("width", _U32), ("height", _U32)])
IMAGE_PROPERTIES = ("ImageProperties", [
    ("color_space", ("enum", N.Int8Flags, COLOR_SPACE_TYPES)),
    ("default_size", ("table", IMAGE_SIZE)),
])
BOUNDING_BOX_PROPERTIES = ("BoundingBoxProperties", [
    ("index", ("scalars", N.Uint32Flags)),
    ("type", ("enum", N.Int8Flags, BOUNDING_BOX_TYPES)),
    ("coordinate_type", ("enum", N.Int8Flags, COORDINATE_TYPES)),
])
AUDIO_PROPERTIES = ("AudioProperties", [("sample_rate", _U32), ("channels", _U32)])
CONTENT_PROPERTIES = {1: FEATURE_PROPERTIES, 2: IMAGE_PROPERTIES, 3: BOUNDING_BOX_PROPERTIES,
                      4: AUDIO_PROPERTIES}
VALUE_RANGE = ("ValueRange", [("min", ("scalar", N.Int32Flags, 0)),
                              ("max", ("scalar", N.Int32Flags, 0))])
CONTENT = ("Content", [
    ("content_properties", ("union", CONTENT_PROPERTIES)),
    ("range", ("table", VALUE_RANGE)),
])

NORMALIZATION_OPTIONS = ("NormalizationOptions", [("mean", _F32S), ("std", _F32S)])
SCORE_CALIBRATION_OPTIONS = ("ScoreCalibrationOptions", [
    ("score_transformation", ("enum", N.Int8Flags, SCORE_TRANSFORMATION_TYPES)),
    ("default_score", ("scalar", N.Float32Flags, 0.0)),
])
SCORE_THRESHOLDING_OPTIONS = ("ScoreThresholdingOptions", [
    ("global_score_threshold", ("scalar", N.Float32Flags, 0.0)),
])
BERT_TOKENIZER_OPTIONS = ("BertTokenizerOptions", [("vocab_file", _FILES)])
SENTENCE_PIECE_TOKENIZER_OPTIONS = ("SentencePieceTokenizerOptions", [
    ("sentencePiece_model", _FILES),
    ("vocab_file", _FILES),
])
REGEX_TOKENIZER_OPTIONS = ("RegexTokenizerOptions", [
    ("delim_regex_pattern", _STR),
    ("vocab_file", _FILES),
])
PROCESS_UNIT_OPTIONS = {1: NORMALIZATION_OPTIONS, 2: SCORE_CALIBRATION_OPTIONS,
                        3: SCORE_THRESHOLDING_OPTIONS, 4: BERT_TOKENIZER_OPTIONS,
                        5: SENTENCE_PIECE_TOKENIZER_OPTIONS, 6: REGEX_TOKENIZER_OPTIONS}
PROCESS_UNIT = ("ProcessUnit", [("options", ("union", PROCESS_UNIT_OPTIONS))])
_UNITS = ("tables", PROCESS_UNIT)

STATS = ("Stats", [("max", _F32S), ("min", _F32S)])
TENSOR_GROUP = ("TensorGroup", [("name", _STR), ("tensor_names", _STRS)])
TENSOR_METADATA = ("TensorMetadata", [
    ("name", _STR),
    ("description", _STR),
    ("dimension_names", _STRS),
    ("content", ("table", CONTENT)),
    ("process_units", _UNITS),
    ("stats", ("table", STATS)),
    ("associated_files", _FILES),
])
CUSTOM_METADATA = ("CustomMetadata", [("name", _STR), ("data", ("bytes",))])
SUBGRAPH_METADATA = ("SubGraphMetadata", [
    ("name", _STR),
    ("description", _STR),
    ("input_tensor_metadata", ("tables", TENSOR_METADATA)),
    ("output_tensor_metadata", ("tables", TENSOR_METADATA)),
    ("associated_files", _FILES),
    ("input_process_units", _UNITS),
    ("output_process_units", _UNITS),
    ("input_tensor_groups", ("tables", TENSOR_GROUP)),
    ("output_tensor_groups", ("tables", TENSOR_GROUP)),
    ("custom_metadata", ("tables", CUSTOM_METADATA)),
])
MODEL_METADATA = ("ModelMetadata", [
    ("name", _STR),
    ("description", _STR),
    ("version", _STR),
    ("subgraph_metadata", ("tables", SUBGRAPH_METADATA)),
    ("author", _STR),
    ("license", _STR),
    ("associated_files", _FILES),
    ("min_parser_version", _STR),
])

# tensorflow/compiler/mlir/lite/schema/conversion_metadata.fbs (no file identifier).
MODEL_TYPES = _enum("NONE", "TF_SAVED_MODEL", "KERAS_MODEL", "TF_CONCRETE_FUNCTIONS",
                    "TF_GRAPH_DEF", "TF_SESSION", "JAX", "PYTORCH")
MODEL_OPTIMIZATION_MODES = {1001: "PTQ_FLOAT16", 1002: "PTQ_DYNAMIC_RANGE",
                            1003: "PTQ_FULL_INTEGER", 1004: "PTQ_INT16",
                            2000: "QUANTIZATION_AWARE_TRAINING", 3001: "RANDOM_SPARSITY",
                            3002: "BLOCK_SPARSITY", 3003: "STRUCTURED_SPARSITY"}
ENVIRONMENT = ("Environment", [
    ("tensorflow_version", _STR),
    ("api_version", _U32),
    ("model_type", ("enum", N.Int32Flags, MODEL_TYPES)),
    ("model_hash", ("scalar", N.Uint64Flags, 0)),
])
SPARSITY_BLOCK_SIZE = ("SparsityBlockSize", [("values", ("scalars", N.Uint32Flags))])
CONVERSION_OPTIONS = ("ConversionOptions", [
    ("model_optimization_modes", ("enums", N.Int32Flags, MODEL_OPTIMIZATION_MODES)),
    ("allow_custom_ops", ("scalar", N.BoolFlags, False)),
    ("enable_select_tf_ops", ("scalar", N.BoolFlags, False)),
    ("force_select_tf_ops", ("scalar", N.BoolFlags, False)),
    ("sparsity_block_sizes", ("tables", SPARSITY_BLOCK_SIZE)),
])
CONVERSION_METADATA = ("ConversionMetadata", [
    ("environment", ("table", ENVIRONMENT)),
    ("options", ("table", CONVERSION_OPTIONS)),
])


# ---- bounds-checked flatbuffer reading ------------------------------------------------------

class _Reader:
    """One flatbuffer: bounds checks and a budget on the amount of data decoded."""

    def __init__(self, data: bytes, max_items: int = MAX_ITEMS):
        self.data = bytes(data)
        self.size = len(self.data)
        self.budget = max_items

    def check(self, pos: int, length: int, what: str):
        if pos < 0 or length < 0 or pos + length > self.size:
            raise MalformedMetadata(
                f"{what} at offset {pos} (+{length} bytes) is outside the {self.size}-byte buffer")

    def spend(self, items: int):
        self.budget -= items
        if self.budget < 0:
            raise MalformedMetadata("too much data to decode (size limit reached)")

    def table(self, pos: int, name: str) -> "_Table":
        return _Table(self, pos, name)

    def root(self, name: str) -> "_Table":
        self.check(0, 4, "root offset")
        return self.table(Table(self.data, 0).Indirect(0), name)


class _Table:
    def __init__(self, reader: _Reader, pos: int, name: str):
        reader.spend(1)
        reader.check(pos, 4, name)
        self.r, self.name = reader, name
        self.t = Table(reader.data, pos)
        vtable = pos - self.t.Get(N.SOffsetTFlags, pos)
        reader.check(vtable, 4, f"{name} vtable")
        vtable_size = self.t.Get(N.VOffsetTFlags, vtable)
        self.inline_size = self.t.Get(N.VOffsetTFlags, vtable + 2)
        if vtable_size < 4 or vtable_size % 2 or self.inline_size < 4:
            raise MalformedMetadata(f"{name} has an invalid vtable")
        reader.check(vtable, vtable_size, f"{name} vtable")
        reader.check(pos, self.inline_size, name)

    def _field(self, slot: int, width: int) -> int | None:
        """Absolute position of the field in ``slot`` (None if absent)."""
        off = self.t.Offset(4 + 2 * slot)
        if not off:
            return None
        if off + width > self.inline_size:
            raise MalformedMetadata(f"{self.name} field {slot} lies outside its table")
        return self.t.Pos + off

    def scalar(self, slot: int, flags, default):
        pos = self._field(slot, flags.bytewidth)
        return default if pos is None else self.t.Get(flags, pos)

    def _target(self, slot: int, what: str) -> int | None:
        pos = self._field(slot, 4)
        if pos is None:
            return None
        target = self.t.Indirect(pos)
        self.r.check(target, 4, f"{self.name}.{what}")
        return target

    def _vector(self, target: int, width: int, what: str) -> tuple[int, int]:
        length = self.t.Get(N.UOffsetTFlags, target)
        self.r.check(target + 4, length * width, f"{self.name}.{what}")
        return target + 4, length

    def string_at(self, target: int, what: str) -> str:
        start, length = self._vector(target, 1, what)
        self.r.spend(1 + length // 64)
        return self.r.data[start:start + length].decode("utf-8", errors="replace")

    def string(self, slot: int, what: str) -> str | None:
        target = self._target(slot, what)
        return None if target is None else self.string_at(target, what)

    def vector(self, slot: int, width: int, what: str) -> tuple[int, int] | None:
        target = self._target(slot, what)
        if target is None:
            return None
        start, length = self._vector(target, width, what)
        self.r.spend(length)
        return start, length

    def table(self, slot: int, spec) -> "_Table | None":
        target = self._target(slot, spec[0])
        return None if target is None else self.r.table(target, spec[0])


def _json_number(value):
    if isinstance(value, float):
        if math.isfinite(value):
            # Every float in these schemas is a float32: its shortest repr (127.5, 0.1), not the
            # float64 one of the widened value (0.10000000149011612).
            return float(str(np.float32(value)))
        return str(value)  # nan / inf / -inf are not JSON numbers
    return value


def _enum_name(names: dict, value: int):
    return names.get(value, value)


def _decode_table(table: _Table, spec) -> dict:
    out = {}
    slot = 0
    for field, kind in spec[1]:
        tag = kind[0]
        if tag == "union":
            type_code = table.scalar(slot, N.Uint8Flags, 0)
            target = table._target(slot + 1, field)
            slot += 2
            if type_code == 0 or target is None:
                continue
            member = kind[1].get(type_code)
            if member is None:
                out[f"{field}_type"] = type_code
                continue
            out[f"{field}_type"] = member[0]
            out[field] = _decode_table(table.r.table(target, member[0]), member)
            continue
        if tag == "scalar":
            out[field] = _json_number(table.scalar(slot, kind[1], kind[2]))
        elif tag == "enum":
            out[field] = _enum_name(kind[2], table.scalar(slot, kind[1], 0))
        elif tag == "str":
            value = table.string(slot, field)
            if value is not None:
                out[field] = value
        elif tag == "table":
            sub = table.table(slot, kind[1])
            if sub is not None:
                out[field] = _decode_table(sub, kind[1])
        elif tag == "bytes":
            vec = table.vector(slot, 1, field)
            if vec is not None:
                out[f"{field}_size"] = vec[1]
        elif tag in ("scalars", "enums"):
            flags = kind[1]
            vec = table.vector(slot, flags.bytewidth, field)
            if vec is not None:
                start, length = vec
                values = [table.t.Get(flags, start + i * flags.bytewidth)
                          for i in range(length)]
                if tag == "enums":
                    out[field] = [_enum_name(kind[2], v) for v in values]
                else:
                    out[field] = [_json_number(v) for v in values]
        elif tag in ("strs", "tables"):
            vec = table.vector(slot, 4, field)
            if vec is not None:
                start, length = vec
                items = []
                for i in range(length):
                    target = table.t.Indirect(start + 4 * i)
                    if tag == "strs":
                        table.r.check(target, 4, field)
                        items.append(table.string_at(target, field))
                    else:
                        items.append(_decode_table(table.r.table(target, kind[1][0]), kind[1]))
                out[field] = items
        else:  # pragma: no cover - schema definition error
            raise AssertionError(kind)
        slot += 1
    return out


def decode_flatbuffer(data: bytes, spec, file_identifier: bytes | None = None,
                      max_items: int = MAX_ITEMS) -> dict:
    """Decode a flatbuffer whose root table follows ``spec``; :class:`MalformedMetadata` if
    it does not."""
    if len(data) < 8:
        raise MalformedMetadata(f"{len(data)} bytes is too short for a flatbuffer")
    if file_identifier is not None and data[4:8] != file_identifier:
        raise MalformedMetadata(
            f"file identifier is {bytes(data[4:8])!r}, expected {file_identifier!r}")
    reader = _Reader(data, max_items)
    try:
        return _decode_table(reader.root(spec[0]), spec)
    except MalformedMetadata:
        raise
    except Exception as e:  # defensive: struct.error & co. from an unforeseen corner
        raise MalformedMetadata(f"{type(e).__name__}: {e}") from None


def parse_model_metadata(buffer: bytes) -> dict:
    """Decode a ``TFLITE_METADATA`` buffer (a ``ModelMetadata`` flatbuffer, identifier M001)."""
    if len(buffer) > MAX_METADATA_BYTES:
        raise MalformedMetadata(
            f"{len(buffer)} bytes is larger than the {MAX_METADATA_BYTES}-byte limit")
    return decode_flatbuffer(buffer, MODEL_METADATA, METADATA_FILE_IDENTIFIER)


# ---- associated files -----------------------------------------------------------------------

def _invalid_archive(message: str) -> MlflowException:
    return MlflowException(f"The model's associated-files archive is invalid: {message}",
                           error_code=INVALID_PARAMETER_VALUE)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int,
                 model_bytes: bytes) -> bytes:
    """A member's bytes, inflated chunk by chunk and counted. Its header's size is only a
    claim: zipfile would trust it (and one ``read()`` may inflate gigabytes before checking
    anything), so stored and deflated members are inflated here from their raw bytes, and
    must produce exactly the declared size and CRC."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        chunks = []
        with archive.open(info) as member:  # zipfile stops at the declared size
            while chunk := member.read(_READ_CHUNK):
                chunks.append(chunk)
        return b"".join(chunks)
    where = f"'{_short(info.filename)}'"
    local = info.header_offset
    if local < 0 or local + 30 > len(model_bytes) or \
            model_bytes[local:local + 4] != b"PK\x03\x04":
        raise _invalid_archive(f"{where} has no local header where the directory says.")
    name_len, extra_len = struct.unpack_from("<HH", model_bytes, local + 26)
    start = local + 30 + name_len + extra_len
    raw = memoryview(model_bytes)[start:start + info.compress_size]
    if len(raw) != info.compress_size:
        raise _invalid_archive(f"{where} runs past the end of the file.")
    chunks, size, crc = [], 0, 0
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    pending = raw
    while pending:
        if inflater is None:
            chunk, pending = bytes(pending[:_READ_CHUNK]), pending[_READ_CHUNK:]
        else:
            chunk = inflater.decompress(pending, _READ_CHUNK)
            pending = inflater.unconsumed_tail
        size += len(chunk)
        if size > min(limit, info.file_size):
            raise _invalid_archive(f"{where} inflates past {min(limit, info.file_size)} bytes "
                                   f"(its header says {info.file_size}).")
        crc = zlib.crc32(chunk, crc)
        chunks.append(chunk)
        if inflater is not None and (inflater.eof or not chunk):
            break
    if size != info.file_size or (inflater is not None and not inflater.eof) or \
            crc != info.CRC:
        raise _invalid_archive(f"{where} does not match its header ({size} bytes inflated, "
                               f"{info.file_size} declared, or a different CRC-32).")
    return b"".join(chunks)


def _short(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[:limit] + "..."


def associated_files(model_bytes: bytes) -> dict[str, bytes]:
    """Files packed after the flatbuffer as a zip archive (label maps, vocabularies...).

    Files whose header declares more than the per-file / total limits, and files past the
    count limit, are skipped; members that cannot be read here (encrypted, unsupported
    compression) too. A member whose content does not match its header (it inflates past
    its declared size, or its CRC differs) makes the archive invalid: MlflowException
    (INVALID_PARAMETER_VALUE). Memory stays bounded by the limits whatever the headers say.
    """
    files: dict[str, bytes] = {}
    total = 0
    try:
        archive = zipfile.ZipFile(io.BytesIO(model_bytes))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return {}  # no archive appended (the usual case)
    with archive:
        for info in archive.infolist():
            if len(files) >= MAX_FILES:
                break
            if info.is_dir() or info.file_size > MAX_FILE_BYTES:
                continue
            if total + info.file_size > MAX_TOTAL_FILE_BYTES:
                continue
            try:
                data = _read_member(archive, info, min(MAX_FILE_BYTES,
                                                       MAX_TOTAL_FILE_BYTES - total),
                                    model_bytes)
            except (NotImplementedError, RuntimeError):
                continue  # encrypted, or a compression method this Python lacks
            except MemoryError:
                raise _invalid_archive(f"'{_short(info.filename)}' does not fit in memory."
                                       ) from None
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
                raise _invalid_archive(f"'{_short(info.filename)}': {e}") from None
            total += len(data)
            files[info.filename] = data
    return files


def _artifact_names(names) -> dict[str, str]:
    """Archive name -> a unique basename that is not ``metadata.json``, at most
    ``MAX_ARTIFACT_NAME_BYTES`` long (file systems refuse names over 255 bytes): an over-long
    name keeps its start and extension, and a hash of the whole name keeps it unique."""
    import hashlib

    taken = {METADATA_JSON}
    out = {}
    for name in sorted(names):
        base = posixpath.basename(name.replace("\\", "/")) or "unnamed"
        base = base.lstrip(".") or "unnamed"  # no hidden files, no "." / ".."
        stem, ext = os.path.splitext(base)
        if len(ext.encode()) > 16:
            stem, ext = base, ""
        if len(base.encode()) > MAX_ARTIFACT_NAME_BYTES:
            digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
            room = MAX_ARTIFACT_NAME_BYTES - len(ext.encode()) - len(digest) - 1 - 8
            stem = stem.encode()[:room].decode("utf-8", "ignore") + "_" + digest
            base = stem + ext
        candidate, n = base, 1
        while candidate in taken:
            candidate = f"{stem}_{n}{ext}"
            n += 1
        taken.add(candidate)
        out[name] = candidate
    return out


# ---- model level ----------------------------------------------------------------------------

def _entry_summary(name: str, data: bytes | None):
    """A non-TFLITE_METADATA metadata entry, readable."""
    if data is None:
        return None
    if name == "CONVERSION_METADATA":
        try:
            return decode_flatbuffer(data, CONVERSION_METADATA, max_items=10_000)
        except MalformedMetadata:
            pass
    if len(data) <= MAX_TEXT_ENTRY_BYTES:
        text = data.rstrip(b"\0")
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
        if decoded is not None and b"\0" not in text and all(
                c.isprintable() or c in "\n\r\t" for c in decoded):
            return decoded
    return {"size": len(data)}


def _referenced_files(node) -> set[str]:
    """Names of every AssociatedFile in a decoded ModelMetadata (an iterative walk)."""
    names, todo = set(), [node]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("associated_files", "vocab_file", "sentencePiece_model") and \
                        isinstance(value, list):
                    names.update(f["name"] for f in value if isinstance(f, dict) and "name" in f)
                todo.append(value)
        elif isinstance(node, list):
            todo.extend(node)
    return names


def _read(model: TFLiteModel, files: dict[str, bytes]) -> dict | None:
    has_metadata = METADATA_NAME in model.metadata
    if not has_metadata and not files:
        return None
    result: dict = {}
    if has_metadata:
        buffer = model.metadata_bytes(METADATA_NAME) or b""
        try:
            result.update(parse_model_metadata(buffer))
        except MalformedMetadata as e:
            result["error"] = f"Could not decode the {METADATA_NAME} buffer: {e}"
    entries = {}
    for name in sorted(model.metadata):
        data = model.metadata_bytes(name)
        entries[name] = ({"size": len(data or b"")} if name == METADATA_NAME
                         else _entry_summary(name, data))
    result["metadata_entries"] = entries
    artifacts = _artifact_names(files)
    result["packed_files"] = {name: {"size": len(data), "artifact": artifacts[name]}
                              for name, data in sorted(files.items())}
    missing = sorted(_referenced_files(result) - set(files))
    if missing:
        result["missing_associated_files"] = missing
    return result


def read_metadata(model) -> dict | None:
    """Everything the model carries as metadata, decoded (see the module docstring).

    ``model`` is a :class:`TFLiteModel`, a path or bytes. None when the model has neither a
    ``TFLITE_METADATA`` buffer nor associated files. A malformed ``TFLITE_METADATA`` buffer
    gives an ``error`` entry, not an exception.
    """
    model = TFLiteModel.load(model)
    return _read(model, associated_files(model.model_bytes))


def extract_metadata(model: TFLiteModel) -> dict[str, bytes]:
    """Artifact name -> content: ``metadata.json`` (see :func:`read_metadata`) plus each
    associated file under a unique basename; empty when the model has neither a
    ``TFLITE_METADATA`` buffer nor associated files."""
    files = associated_files(model.model_bytes)
    try:
        metadata = _read(model, files)
    except Exception as e:  # saving a model must not fail on its metadata
        metadata = {"error": f"Could not read the model's metadata: {type(e).__name__}: {e}"}
    if metadata is None:
        return {}
    artifacts = _artifact_names(files)
    out = {artifacts[name]: data for name, data in files.items()}
    out[METADATA_JSON] = json.dumps(metadata, indent=2, ensure_ascii=False).encode("utf-8")
    return out
