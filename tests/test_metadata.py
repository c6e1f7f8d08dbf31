"""TFLite model metadata (TFLITE_METADATA + associated files) read without tflite-support.

The metadata is written here with ``flatbuffers.Builder`` slot by slot, following
``metadata_schema.fbs`` (tflite-support, schema 1.5) independently of the reader's own schema
tables, and attached the way tflite-support's MetadataPopulator does: a model buffer plus a
``Metadata`` entry named TFLITE_METADATA, then a zip archive of the associated files appended
to the flatbuffer.
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import zipfile

import flatbuffers
import numpy as np
import pytest
import yaml

from ai_edge_litert import schema_py_generated as schema
from mlflow.exceptions import MlflowException
from model_factory import digits, keras_model_tflite
from mlflow_tflite_keras import model_metadata as mm
from mlflow_tflite_keras.tflite_model import TFLiteModel


def make_classifier():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return keras_model_tflite("metadata-classifier", make_classifier)


LABELS = "".join(f"digit_{i}\n" for i in range(10)).encode()


# ---- a metadata writer, slot by slot from metadata_schema.fbs ---------------------------------
#
# Each table is built with StartObject(number of slots); a field's slot is its declaration index,
# a union field takes two slots (<field>_type, then <field>).

# Union type codes (NONE = 0).
FEATURE, IMAGE, BOUNDING_BOX, AUDIO = 1, 2, 3, 4
NORMALIZATION, SCORE_CALIBRATION, SCORE_THRESHOLDING, BERT, SENTENCE_PIECE, REGEX = range(1, 7)
# AssociatedFileType
DESCRIPTIONS, AXIS_LABELS, VALUE_LABELS, SCORE_CALIBRATION_FILE, VOCABULARY, SCANN = range(1, 7)


class Writer:
    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def _s(self, text):
        return None if text is None else self.b.CreateString(text)

    def _tables(self, offsets):
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def _strings(self, texts):
        return self._tables([self.b.CreateString(t) for t in texts])

    def _floats(self, values):
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependFloat32(v)
        return self.b.EndVector()

    def _uints(self, values):
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependUint32(v)
        return self.b.EndVector()

    def _table(self, n_slots, refs=(), scalars=()):
        """refs: (slot, offset or None); scalars: (slot, Prepend*Slot name, value, default)."""
        self.b.StartObject(n_slots)
        for slot, off in refs:
            if off is not None:
                self.b.PrependUOffsetTRelativeSlot(slot, off, 0)
        for slot, method, value, default in scalars:
            getattr(self.b, method)(slot, value, default)
        return self.b.EndObject()

    # AssociatedFile {name, description, type:byte, locale, version}
    def file(self, name, type_, description=None, locale=None, version=None):
        refs = [(0, self._s(name)), (1, self._s(description)), (3, self._s(locale)),
                (4, self._s(version))]
        return self._table(5, refs, [(2, "PrependInt8Slot", type_, 0)])

    def files(self, offsets):
        return self._tables(offsets)

    # ImageProperties {color_space:byte, default_size:ImageSize{width:uint, height:uint}}
    def image_properties(self, color_space, width=None, height=None):
        size = None
        if width is not None:
            size = self._table(2, scalars=[(0, "PrependUint32Slot", width, 0),
                                           (1, "PrependUint32Slot", height, 0)])
        return self._table(2, [(1, size)], [(0, "PrependInt8Slot", color_space, 0)])

    def feature_properties(self):
        return self._table(0)

    # AudioProperties {sample_rate:uint, channels:uint}
    def audio_properties(self, sample_rate, channels):
        return self._table(2, scalars=[(0, "PrependUint32Slot", sample_rate, 0),
                                       (1, "PrependUint32Slot", channels, 0)])

    # BoundingBoxProperties {index:[uint], type:byte, coordinate_type:byte}
    def bounding_box_properties(self, index, type_, coordinate_type):
        return self._table(3, [(0, self._uints(index))],
                           [(1, "PrependInt8Slot", type_, 0),
                            (2, "PrependInt8Slot", coordinate_type, 0)])

    # Content {content_properties_type, content_properties, range:ValueRange{min, max}}
    def content(self, properties_type, properties, value_range=None):
        rng = None
        if value_range is not None:
            rng = self._table(2, scalars=[(0, "PrependInt32Slot", value_range[0], 0),
                                          (1, "PrependInt32Slot", value_range[1], 0)])
        return self._table(3, [(1, properties), (2, rng)],
                           [(0, "PrependUint8Slot", properties_type, 0)])

    # ProcessUnit {options_type, options}
    def process_unit(self, options_type, options):
        return self._table(2, [(1, options)], [(0, "PrependUint8Slot", options_type, 0)])

    def normalization(self, mean, std):  # {mean:[float], std:[float]}
        return self.process_unit(NORMALIZATION, self._table(
            2, [(0, self._floats(mean)), (1, self._floats(std))]))

    def score_calibration(self, transformation, default_score):
        return self.process_unit(SCORE_CALIBRATION, self._table(
            2, scalars=[(0, "PrependInt8Slot", transformation, 0),
                        (1, "PrependFloat32Slot", default_score, 0.0)]))

    def score_thresholding(self, threshold):
        return self.process_unit(SCORE_THRESHOLDING, self._table(
            1, scalars=[(0, "PrependFloat32Slot", threshold, 0.0)]))

    def bert_tokenizer(self, vocab_files):
        return self.process_unit(BERT, self._table(1, [(0, self.files(vocab_files))]))

    def sentence_piece_tokenizer(self, models, vocab_files):
        return self.process_unit(SENTENCE_PIECE, self._table(
            2, [(0, self.files(models)), (1, self.files(vocab_files))]))

    def regex_tokenizer(self, pattern, vocab_files):
        return self.process_unit(REGEX, self._table(
            2, [(0, self._s(pattern)), (1, self.files(vocab_files))]))

    # TensorMetadata {name, description, dimension_names, content, process_units, stats,
    #                 associated_files}
    def tensor(self, name, description=None, dimension_names=None, content=None,
               process_units=None, stats=None, files=None):
        stats_off = None
        if stats is not None:  # Stats {max:[float], min:[float]}
            stats_off = self._table(2, [(0, self._floats(stats[1])), (1, self._floats(stats[0]))])
        refs = [
            (0, self._s(name)), (1, self._s(description)),
            (2, None if dimension_names is None else self._strings(dimension_names)),
            (3, content),
            (4, None if process_units is None else self._tables(process_units)),
            (5, stats_off),
            (6, None if files is None else self.files(files)),
        ]
        return self._table(7, refs)

    # TensorGroup {name, tensor_names:[string]}
    def tensor_group(self, name, tensor_names):
        return self._table(2, [(0, self._s(name)), (1, self._strings(tensor_names))])

    # CustomMetadata {name, data:[ubyte]}
    def custom_metadata(self, name, data):
        return self._table(2, [(0, self._s(name)), (1, self.b.CreateByteVector(data))])

    # SubGraphMetadata {name, description, input_tensor_metadata, output_tensor_metadata,
    #   associated_files, input_process_units, output_process_units, input_tensor_groups,
    #   output_tensor_groups, custom_metadata}
    def subgraph(self, name=None, description=None, inputs=(), outputs=(), files=None,
                 input_units=None, output_units=None, input_groups=None, output_groups=None,
                 custom=None):
        def vec(items):
            return None if items is None else self._tables(list(items))

        refs = [(0, self._s(name)), (1, self._s(description)), (2, vec(inputs)),
                (3, vec(outputs)), (4, vec(files)), (5, vec(input_units)),
                (6, vec(output_units)), (7, vec(input_groups)), (8, vec(output_groups)),
                (9, vec(custom))]
        return self._table(10, refs)

    # ModelMetadata {name, description, version, subgraph_metadata, author, license,
    #                associated_files, min_parser_version}
    def finish(self, subgraphs, name=None, description=None, version=None, author=None,
               license=None, files=None, min_parser_version=None) -> bytes:
        refs = [(0, self._s(name)), (1, self._s(description)), (2, self._s(version)),
                (3, self._tables(subgraphs)), (4, self._s(author)), (5, self._s(license)),
                (6, None if files is None else self.files(files)),
                (7, self._s(min_parser_version))]
        root = self._table(8, refs)
        self.b.Finish(root, file_identifier=b"M001")
        return bytes(self.b.Output())


def attach(model: bytes, metadata: bytes | None, files: dict[str, bytes] | None = None,
           name: str = "TFLITE_METADATA") -> bytes:
    """Add ``metadata`` as a model buffer + Metadata entry, then zip ``files`` after it."""
    out = model
    if metadata is not None:
        m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
        buf = schema.BufferT()
        buf.data = np.frombuffer(metadata, dtype=np.uint8)
        m.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(m.buffers) - 1
        m.metadata = [e for e in (m.metadata or []) if e.name != name.encode()] + [entry]
        b = flatbuffers.Builder(0)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        out = bytes(b.Output())
    if files:
        archive = io.BytesIO()
        archive.write(out)
        with zipfile.ZipFile(archive, "a") as z:
            for file_name, data in files.items():
                z.writestr(file_name, data)
        out = archive.getvalue()
    return out


def image_classifier_metadata() -> bytes:
    w = Writer()
    labels = w.file("labels.txt", AXIS_LABELS, "Digit names.", locale="en", version="2")
    value_labels = w.file("labels.txt", VALUE_LABELS)
    vocab = w.file("vocab.txt", VOCABULARY, "Word pieces.")
    readme = w.file("README.md", DESCRIPTIONS, "How to use.")
    image = w.tensor(
        "image", "An 8x8 grayscale digit.", dimension_names=["batch", "h", "w", "c"],
        content=w.content(IMAGE, w.image_properties(2, width=8, height=8)),
        process_units=[w.normalization([0.5], [0.25])], stats=([0.0], [1.0]))
    probs = w.tensor(
        "probability", "Softmax over 10 digits.",
        content=w.content(FEATURE, w.feature_properties()),
        process_units=[w.score_thresholding(0.3)], stats=([0.0], [1.0]),
        files=[labels, value_labels])
    subgraph = w.subgraph(
        "main", "Digit classifier.", inputs=[image], outputs=[probs], files=[readme],
        input_units=[w.bert_tokenizer([vocab])],
        output_groups=[w.tensor_group("result", ["probability"])],
        custom=[w.custom_metadata("extra_config", b"\x01\x02\x03")])
    model_files = [w.file("README.md", DESCRIPTIONS)]
    return w.finish([subgraph], name="digits", description="Classifies 8x8 digits.",
                    version="v1", author="tests", license="Apache-2.0", files=model_files,
                    min_parser_version="1.2.0")


@pytest.fixture(scope="module")
def classifier_with_metadata(model_bytes) -> bytes:
    return attach(model_bytes, image_classifier_metadata(),
                  {"labels.txt": LABELS, "vocab.txt": b"[PAD]\nhello\n",
                   "README.md": b"# digits\n"})


# ---- tests ------------------------------------------------------------------------------------

def test_extract_metadata_of_an_image_classifier(classifier_with_metadata):
    files = mm.extract_metadata(TFLiteModel(classifier_with_metadata))
    assert sorted(files) == ["README.md", "labels.txt", "metadata.json", "vocab.txt"]
    assert files["labels.txt"] == LABELS
    assert files["vocab.txt"] == b"[PAD]\nhello\n"
    meta = json.loads(files["metadata.json"])
    assert "error" not in meta
    assert (meta["name"], meta["description"], meta["version"]) == \
        ("digits", "Classifies 8x8 digits.", "v1")
    assert (meta["author"], meta["license"], meta["min_parser_version"]) == \
        ("tests", "Apache-2.0", "1.2.0")
    assert meta["associated_files"] == [{"name": "README.md", "type": "DESCRIPTIONS"}]

    [sg] = meta["subgraph_metadata"]
    assert (sg["name"], sg["description"]) == ("main", "Digit classifier.")
    [image] = sg["input_tensor_metadata"]
    assert image["name"] == "image" and image["description"] == "An 8x8 grayscale digit."
    assert image["dimension_names"] == ["batch", "h", "w", "c"]
    assert image["content"] == {
        "content_properties_type": "ImageProperties",
        "content_properties": {"color_space": "GRAYSCALE",
                               "default_size": {"width": 8, "height": 8}},
    }
    assert image["process_units"] == [{"options_type": "NormalizationOptions",
                                       "options": {"mean": [0.5], "std": [0.25]}}]
    assert image["stats"] == {"min": [0.0], "max": [1.0]}

    [probs] = sg["output_tensor_metadata"]
    assert probs["content"]["content_properties_type"] == "FeatureProperties"
    assert probs["process_units"] == [{"options_type": "ScoreThresholdingOptions",
                                       "options": {"global_score_threshold": 0.3}}]
    assert probs["associated_files"] == [
        {"name": "labels.txt", "description": "Digit names.", "type": "TENSOR_AXIS_LABELS",
         "locale": "en", "version": "2"},
        {"name": "labels.txt", "type": "TENSOR_VALUE_LABELS"},
    ]
    assert sg["associated_files"] == [
        {"name": "README.md", "description": "How to use.", "type": "DESCRIPTIONS"}]
    assert sg["input_process_units"] == [{
        "options_type": "BertTokenizerOptions",
        "options": {"vocab_file": [{"name": "vocab.txt", "description": "Word pieces.",
                                    "type": "VOCABULARY"}]},
    }]
    assert "output_process_units" not in sg and "input_tensor_groups" not in sg
    assert sg["output_tensor_groups"] == [{"name": "result", "tensor_names": ["probability"]}]
    assert sg["custom_metadata"] == [{"name": "extra_config", "data_size": 3}]

    assert meta["packed_files"]["labels.txt"] == {"size": len(LABELS), "artifact": "labels.txt"}
    assert "missing_associated_files" not in meta
    # The converter's own entries, decoded.
    entries = meta["metadata_entries"]
    assert entries["TFLITE_METADATA"]["size"] > 0
    assert isinstance(entries["min_runtime_version"], str)
    assert entries["min_runtime_version"][0].isdigit()
    environment = entries["CONVERSION_METADATA"]["environment"]
    assert environment["model_type"] in ("KERAS_MODEL", "TF_SAVED_MODEL", "TF_CONCRETE_FUNCTIONS")
    assert environment["tensorflow_version"][0].isdigit()
    # read_metadata gives the same dict (and takes bytes too).
    assert mm.read_metadata(classifier_with_metadata) == meta


def test_other_content_and_process_units(model_bytes):
    w = Writer()
    spm = w.file("sp.model", VOCABULARY)
    words = w.file("words.txt", VOCABULARY)
    calibration = w.file("calibration.csv", SCORE_CALIBRATION_FILE)
    audio = w.tensor("audio", content=w.content(AUDIO, w.audio_properties(16000, 2)),
                     process_units=[w.sentence_piece_tokenizer([spm], [words])])
    boxes = w.tensor("boxes", content=w.content(
        BOUNDING_BOX, w.bounding_box_properties([1, 0, 3, 2], 1, 1), value_range=(2, 2)))
    scores = w.tensor("scores", process_units=[w.score_calibration(2, 0.25)],
                      files=[calibration, w.file("index.ldb", SCANN)])
    sg = w.subgraph(inputs=[audio], outputs=[boxes, scores],
                    output_units=[w.regex_tokenizer(r"[^\w']+", [words])],
                    input_groups=[w.tensor_group("in", ["audio"])])
    data = attach(model_bytes, w.finish([sg]), {"words.txt": b"a\nb\n"})
    meta = mm.read_metadata(data)
    assert "error" not in meta and "name" not in meta
    [sg] = meta["subgraph_metadata"]
    [audio] = sg["input_tensor_metadata"]
    assert audio["content"]["content_properties"] == {"sample_rate": 16000, "channels": 2}
    assert audio["process_units"][0] == {
        "options_type": "SentencePieceTokenizerOptions",
        "options": {"sentencePiece_model": [{"name": "sp.model", "type": "VOCABULARY"}],
                    "vocab_file": [{"name": "words.txt", "type": "VOCABULARY"}]},
    }
    boxes, scores = sg["output_tensor_metadata"]
    assert boxes["content"] == {
        "content_properties_type": "BoundingBoxProperties",
        "content_properties": {"index": [1, 0, 3, 2], "type": "BOUNDARIES",
                               "coordinate_type": "PIXEL"},
        "range": {"min": 2, "max": 2},
    }
    assert scores["process_units"] == [{
        "options_type": "ScoreCalibrationOptions",
        "options": {"score_transformation": "INVERSE_LOGISTIC", "default_score": 0.25}}]
    assert [f["type"] for f in scores["associated_files"]] == \
        ["TENSOR_AXIS_SCORE_CALIBRATION", "SCANN_INDEX_FILE"]
    assert sg["output_process_units"] == [{
        "options_type": "RegexTokenizerOptions",
        "options": {"delim_regex_pattern": r"[^\w']+",
                    "vocab_file": [{"name": "words.txt", "type": "VOCABULARY"}]}}]
    assert sg["input_tensor_groups"] == [{"name": "in", "tensor_names": ["audio"]}]
    # Named by the metadata but not packed.
    assert meta["missing_associated_files"] == ["calibration.csv", "index.ldb", "sp.model"]


def test_interpreter_loads_a_model_with_metadata(model_bytes, classifier_with_metadata):
    from ai_edge_litert.interpreter import Interpreter

    x = digits()[0][:1]
    results = []
    for data in (model_bytes, classifier_with_metadata):
        interp = Interpreter(model_content=data)
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        results.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(results[0], results[1])
    assert TFLiteModel(classifier_with_metadata).metadata["TFLITE_METADATA"] >= 0


def test_no_metadata_gives_nothing(model_bytes):
    model = TFLiteModel(model_bytes)
    # Converted models carry min_runtime_version / CONVERSION_METADATA, which alone are not
    # worth a tflite_metadata/ directory.
    assert "min_runtime_version" in model.metadata
    assert mm.extract_metadata(model) == {}
    assert mm.read_metadata(model) is None
    assert mm.associated_files(model_bytes) == {}


def test_associated_files_without_metadata_buffer(model_bytes):
    data = attach(model_bytes, None, {"labels.txt": LABELS})
    files = mm.extract_metadata(TFLiteModel(data))
    assert files["labels.txt"] == LABELS
    meta = json.loads(files["metadata.json"])
    assert "TFLITE_METADATA" not in meta["metadata_entries"] and "error" not in meta
    assert meta["packed_files"] == {"labels.txt": {"size": len(LABELS),
                                                   "artifact": "labels.txt"}}


def test_artifact_names_are_unique_basenames(model_bytes):
    data = attach(model_bytes, None, {"labels.txt": b"a", "de/labels.txt": b"b",
                                      "metadata.json": b"{}", "../.hidden": b"h"})
    files = mm.extract_metadata(TFLiteModel(data))
    assert json.loads(files["metadata.json"])["packed_files"]["metadata.json"]["artifact"] == \
        "metadata_1.json"
    assert files["metadata_1.json"] == b"{}"
    assert sorted(files[n] for n in files if n.startswith("labels")) == [b"a", b"b"]
    assert all("/" not in n and not n.startswith(".") for n in files)


@pytest.mark.parametrize("garbage", [
    b"",
    b"not a flatbuffer at all",
    b"\x08\x00\x00\x00M001",  # identifier right, no table
    b"\xff\xff\xff\x7fM001" + b"\x00" * 32,  # root offset far outside
    bytes(range(256)) * 4,
])
def test_garbage_metadata_gives_an_error_entry(model_bytes, garbage):
    data = attach(model_bytes, garbage, {"labels.txt": LABELS})
    files = mm.extract_metadata(TFLiteModel(data))
    meta = json.loads(files["metadata.json"])
    assert meta["error"].startswith("Could not decode the TFLITE_METADATA buffer")
    assert files["labels.txt"] == LABELS
    assert meta["metadata_entries"]["TFLITE_METADATA"] == {"size": len(garbage)}


def test_corrupted_metadata_never_raises():
    good = image_classifier_metadata()
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            buf[rng.randrange(8, len(buf))] = rng.randrange(256)
        if rng.random() < 0.2:
            buf = buf[:rng.randrange(8, len(buf))]
        try:
            result = mm.parse_model_metadata(bytes(buf))
        except mm.MalformedMetadata:
            outcomes["error"] += 1
        else:
            json.dumps(result)
            outcomes["ok"] += 1
    assert outcomes["ok"] and outcomes["error"]


def test_lying_vector_length_is_bounded():
    w = Writer()
    stats_tensor = w.tensor("t", stats=([0.0] * 4, [1.0] * 4))
    good = bytearray(w.finish([w.subgraph(inputs=[stats_tensor])]))
    assert mm.parse_model_metadata(bytes(good))["subgraph_metadata"][0][
        "input_tensor_metadata"][0]["stats"] == {"min": [0.0] * 4, "max": [1.0] * 4}
    # The float vectors are the only ones of length 4 holding 0.0 / 1.0: claim 2**31 items.
    needle = struct.pack("<I4f", 4, *[1.0] * 4)
    at = bytes(good).index(needle)
    good[at:at + 4] = struct.pack("<I", 2**31 - 1)
    with pytest.raises(mm.MalformedMetadata, match="outside"):
        mm.parse_model_metadata(bytes(good))
    # And a budget bounds what a valid but huge (or self-repeating) buffer may cost.
    w = Writer()
    big = w.tensor("t", stats=([0.0] * 5000, [1.0] * 5000))
    buf = w.finish([w.subgraph(inputs=[big])])
    with pytest.raises(mm.MalformedMetadata, match="limit"):
        mm.decode_flatbuffer(buf, mm.MODEL_METADATA, b"M001", max_items=1000)


def test_save_model_writes_metadata_artifacts(tmp_path, classifier_with_metadata):
    from mlflow_tflite_keras import flavor

    path = tmp_path / "m"
    flavor.save_model(classifier_with_metadata, path)
    meta = json.loads((path / "tflite_metadata" / "metadata.json").read_text())
    assert meta["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"][0][
        "options"] == {"mean": [0.5], "std": [0.25]}
    assert (path / "tflite_metadata" / "labels.txt").read_bytes() == LABELS
    conf = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["tflite_keras"]
    assert sorted(conf["tflite_metadata"]) == [
        "tflite_metadata/README.md", "tflite_metadata/labels.txt",
        "tflite_metadata/metadata.json", "tflite_metadata/vocab.txt"]


# ---- hostile archives -------------------------------------------------------------------------


def lying_archive(model_bytes: bytes, declared: int, actual: int) -> bytes:
    """The model with a zip member whose headers (local and central) declare ``declared``
    bytes but which inflates to ``actual`` zero bytes (about 1 MB compressed per GiB)."""
    import struct
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(2**20)
    deflated = b"".join(compressor.compress(block) for _ in range(actual // len(block)))
    deflated += compressor.compress(bytes(actual % len(block))) + compressor.flush()
    archive = io.BytesIO()
    archive.write(model_bytes)
    with zipfile.ZipFile(archive, "a") as z:
        info = zipfile.ZipInfo("labels.txt")
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, b"x" * declared)  # placeholders, patched below
    data = bytearray(archive.getvalue())
    local = data.index(b"PK\x03\x04", len(model_bytes))
    name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
    start = local + 30 + name_len + extra_len
    old_size = struct.unpack_from("<I", data, local + 18)[0]
    data[start:start + old_size] = deflated
    crc = zlib.crc32(b"\0" * min(declared, actual))
    struct.pack_into("<III", data, local + 14, crc, len(deflated), declared)
    central = data.index(b"PK\x01\x02", start + len(deflated))
    struct.pack_into("<III", data, central + 16, crc, len(deflated), declared)
    end = data.index(b"PK\x05\x06", central)
    # The central directory moved with the member's new length: shift its recorded offset.
    (offset,) = struct.unpack_from("<I", data, end + 16)
    struct.pack_into("<I", data, end + 16, offset + len(deflated) - old_size)
    return bytes(data)


def test_lying_member_is_refused_with_bounded_memory(tmp_path, model_bytes):
    """A member declaring 1 KiB that inflates to 1 GiB: save_model refuses the model with
    INVALID_PARAMETER_VALUE, leaves nothing behind, and its peak memory stays far below the
    gigabyte (measured in a fresh process)."""
    data = lying_archive(model_bytes, 1024, 2**30)
    assert len(data) < len(model_bytes) + 2 * 2**20
    source = tmp_path / "lying.tflite"
    source.write_bytes(data)
    script = f"""
from mlflow.exceptions import MlflowException
from mlflow_tflite_keras import flavor
def high_water_kb():  # VmHWM: this process's peak RSS (ru_maxrss survives exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1])
before = high_water_kb()
try:
    flavor.save_model({str(source)!r}, {str(tmp_path / "saved")!r})
    print("SAVED")
except MlflowException as e:
    print("REFUSED", e.error_code, e.message)
print("PEAK_KB", high_water_kb() - before, before)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED INVALID_PARAMETER_VALUE" in proc.stdout, proc.stdout
    assert "labels.txt" in proc.stdout
    assert not (tmp_path / "saved").exists()
    peak_kb = int(proc.stdout.split("PEAK_KB ")[1].split()[0])
    assert peak_kb < 200 * 1024, proc.stdout  # the member would take 1024 MiB


def test_honest_members_stream_within_limits(model_bytes, monkeypatch):
    """Reading in chunks returns the same bytes; members declared over the limit are skipped."""
    big = bytes(range(256)) * 8192  # 2 MiB
    data = attach(model_bytes, None, {"big.bin": big, "labels.txt": LABELS})
    monkeypatch.setattr(mm, "_READ_CHUNK", 4096)
    assert mm.associated_files(data) == {"big.bin": big, "labels.txt": LABELS}
    monkeypatch.setattr(mm, "MAX_FILE_BYTES", 2**20)
    assert mm.associated_files(data) == {"labels.txt": LABELS}


def test_member_smaller_than_declared_is_refused(model_bytes):
    data = lying_archive(model_bytes, 4096, 100)
    with pytest.raises(MlflowException, match="labels.txt") as e:
        mm.associated_files(data)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_over_long_member_names_are_shortened_and_unique(tmp_path, model_bytes):
    from mlflow_tflite_keras import flavor

    long_a = "a" * 300 + ".txt"
    long_b = "a" * 299 + "b.txt"  # differs only past the cut
    deep = "dir/" * 100 + "é" * 200 + ".json"
    data = attach(model_bytes, None, {long_a: b"A", long_b: b"B", deep: b"{}",
                                      "labels.txt": LABELS})
    names = mm._artifact_names([long_a, long_b, deep, "labels.txt"])
    assert len(set(names.values())) == 4
    assert all(len(n.encode()) <= mm.MAX_ARTIFACT_NAME_BYTES for n in names.values())
    assert names[long_a].endswith(".txt") and names[deep].endswith(".json")
    assert names["labels.txt"] == "labels.txt"
    path = tmp_path / "saved"
    flavor.save_model(data, path)
    meta = json.loads((path / "tflite_metadata" / "metadata.json").read_text())
    assert (path / "tflite_metadata" / meta["packed_files"][long_a]["artifact"]).read_bytes() \
        == b"A"
    assert (path / "tflite_metadata" / meta["packed_files"][long_b]["artifact"]).read_bytes() \
        == b"B"
