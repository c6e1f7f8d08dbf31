"""Test models: generated with Keras / tf.function and TFLiteConverter, cached on disk.

The cache key is the model's name, recipe and the source of its builder, so editing a builder
regenerates its models. Nothing is downloaded: Keras applications use ``weights=None`` and
data comes from ``sklearn.datasets.load_digits``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path

import numpy as np

# Outside the checkout so fresh clones on the same machine (CI) reuse generated models.
CACHE_DIR = Path(os.environ.get("TFLITE_TEST_MODEL_CACHE",
                                Path.home() / ".cache" / "mlflow-tflite-keras" / "test-models"))


def fingerprint(obj) -> str:
    """A stable description of what a builder depends on: its source, and recursively the
    values it closes over and its defaults (so parametrized lambdas get distinct keys)."""
    if callable(obj) and hasattr(obj, "__code__"):
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            source = obj.__code__.co_code.hex()
        cells = [c.cell_contents for c in (obj.__closure__ or ()) if _filled(c)]
        return source + fingerprint(cells) + fingerprint(obj.__defaults__)
    if isinstance(obj, np.ndarray):
        return f"nd{obj.dtype}{obj.shape}{hashlib.sha256(obj.tobytes()).hexdigest()}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(fingerprint(o) for o in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{k!r}:{fingerprint(v)}" for k, v in sorted(obj.items(),
                                                                          key=lambda i: repr(i[0]))) + "}"
    if isinstance(obj, type(np)):  # modules: their name is enough
        return obj.__name__
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))  # addresses change every run


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def cached(name: str, build, *key_parts) -> bytes:
    """Return ``build()`` (tflite bytes), cached under ``name`` + the builder's fingerprint."""
    digest = hashlib.sha256("|".join([fingerprint(build), *map(str, key_parts)]).encode()
                            ).hexdigest()[:16]
    path = CACHE_DIR / f"{name}-{digest}.tflite"
    if path.exists():
        return path.read_bytes()
    data = build()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def digits():
    """(x, y): sklearn digits as 8x8x1 float32 images in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return x, d.target.astype(np.int64)


def calibrate_batch_norm(model, x):
    """Set every BatchNormalization's moving statistics to those of ``x`` (one training-mode
    pass with momentum 0). Freshly initialized statistics make the signal vanish through deep
    networks, so their outputs would not depend on the input and parity would prove nothing."""
    import keras

    bns = [layer for layer in model._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model


def keras_model_tflite(name: str, make_model, recipe: str = "float32", representative=None,
                       **convert_kwargs) -> bytes:
    """Build a Keras model with ``make_model()`` and convert it with a recipe, cached."""

    def build():
        from mlflow_tflite_keras.export import keras_to_tflite

        model = make_model()
        rep = representative() if callable(representative) else representative
        return keras_to_tflite(model, recipe, representative_data=rep, **convert_kwargs)

    return cached(f"{name}-{recipe}", build, inspect.getsource(make_model) if callable(make_model)
                  else "", recipe, sorted(convert_kwargs.items()))


def concrete_functions_tflite(name: str, make_functions, **converter_attrs) -> bytes:
    """Convert ``make_functions() -> (functions, trackable)`` (tf.function concrete functions,
    several give a multi-signature model), cached."""

    def build():
        import tensorflow as tf

        functions, trackable = make_functions()
        converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, trackable)
        for k, v in converter_attrs.items():
            setattr(converter, k, v)
        return converter.convert()

    return cached(name, build, inspect.getsource(make_functions), sorted(converter_attrs))


def saved_model_tflite(name: str, make_module, signature_keys=None, **converter_attrs) -> bytes:
    """Save ``make_module()`` (a tf.Module with signatures) and convert it, cached."""

    def build():
        import tempfile

        import tensorflow as tf

        module, signatures = make_module()
        with tempfile.TemporaryDirectory() as d:
            tf.saved_model.save(module, d, signatures=signatures)
            converter = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=signature_keys)
            for k, v in converter_attrs.items():
                setattr(converter, k, v)
            return converter.convert()

    return cached(name, build, inspect.getsource(make_module), signature_keys,
                  sorted(converter_attrs))
