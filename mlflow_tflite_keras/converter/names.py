"""Keras names for TFLite tensors, signatures and variables."""

from __future__ import annotations

import re


def keras_name(name, default: str = "tensor") -> str:
    """A valid Keras layer / input name from a TFLite name: the ``:<index>`` output suffix
    dropped, every run of other characters than letters, digits and ``_`` made one ``_``
    (``default`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", str(name).split(":")[0]).strip("_") or default
