"""TFLite metadata (the ``TFLITE_METADATA`` buffer and associated files) as readable files."""

from __future__ import annotations

import io
import json
import zipfile

from mlflow_tflite_keras.tflite_model import TFLiteModel


def associated_files(model_bytes: bytes) -> dict[str, bytes]:
    """Files packed after the flatbuffer as a zip archive (label maps, vocabularies...)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()
                    if not info.is_dir() and info.file_size < 64 * 2**20}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return {}


def extract_metadata(model: TFLiteModel) -> dict[str, bytes]:
    """File name -> content: ``metadata.json`` plus each associated file; empty if none."""
    files = associated_files(model.model_bytes)
    entries = {name: len(model.metadata_bytes(name) or b"") for name in model.metadata}
    if not files and "TFLITE_METADATA" not in entries:
        return {}
    summary = {"metadata_entries": entries, "associated_files": sorted(files)}
    files["metadata.json"] = json.dumps(summary, indent=2, sort_keys=True).encode()
    return files
