"""Silence what is noise for a converted model; nothing here imports TensorFlow or Keras.

* :func:`keras_noise_silenced`: around this package's own calls into Keras, drops the warnings
  Keras and TensorFlow print for a model that is correct: the input-structure ``UserWarning``
  (MLflow's Keras pyfunc feeds a dict to a single-input model) and TensorFlow's "casting
  complex64 ... discard the imaginary part" (spectral layers take magnitudes on purpose;
  parity is checked).
* :func:`quiet_native_logs`: for the CLI, before TensorFlow is imported: TensorFlow's and
  absl's C++ log lines (``I0000 ...``, ``W0000 ...``, ``E0000 ... failed call to cuInit``)
  are written to file descriptor 2 by native code before absl is initialized, so neither
  ``TF_CPP_MIN_LOG_LEVEL`` nor Python can turn them off; a filter on that descriptor drops
  them and passes everything else through.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings

__all__ = ["keras_noise_silenced", "quiet_native_logs"]

_KERAS_WARNINGS = (r"The structure of `inputs` doesn't match the expected structure",)
_TF_LOG_NOISE = ("discard the imaginary part", "Casting complex to real discards")


class _DropMessages(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        return not any(text in message for text in _TF_LOG_NOISE)


@contextlib.contextmanager
def keras_noise_silenced():
    """Context manager (and decorator) around calls into Keras made by this package."""
    tf_logger = logging.getLogger("tensorflow")
    drop = _DropMessages()
    tf_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in _KERAS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            yield
    finally:
        tf_logger.removeFilter(drop)


# absl / TensorFlow C++ log lines: "I0000 00:00:1700000000.123456   1234 file.cc:12] ..."
_NATIVE_LOG = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_NATIVE_NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
)
# Continuation lines of a dropped multi-line record (cpu_feature_guard.cc).
_CONTINUATIONS = (b"To enable the following instructions:",)


def quiet_native_logs() -> None:
    """Drop TensorFlow's/absl's C++ log lines from this process's stderr (fd 2) from now on;
    also quiets TensorFlow's Python-side logs. Call before TensorFlow is imported. Idempotent;
    a no-op when fd 2 cannot be redirected."""
    global _installed
    if _installed:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        original = os.dup(2)
        writer = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # pragma: no cover - e.g. no fd 2
        return
    _installed = True
    pump = threading.Thread(target=_pump, args=(read_end, writer), daemon=True,
                            name="native-log-filter")
    pump.start()

    def restore():
        try:
            sys.stderr.flush()
            os.dup2(original, 2)  # closes our write end: the pump sees EOF and drains
        except OSError:  # pragma: no cover
            return
        pump.join(timeout=2)

    atexit.register(restore)


_installed = False


def _pump(read_end: int, writer: int) -> None:
    with os.fdopen(read_end, "rb") as source, \
            os.fdopen(writer, "wb", buffering=0) as sink:
        dropped = False
        for line in iter(source.readline, b""):
            body = line.rstrip(b"\r\n")
            if _NATIVE_LOG.match(body) or body in _NATIVE_NOISE or (
                    dropped and body.startswith(_CONTINUATIONS)):
                dropped = True
                continue
            dropped = False
            sink.write(line)
