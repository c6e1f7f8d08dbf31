"""Models shaped like real vendor / zoo models, for the round trip (to_keras -> export like=).

Each is a tf.function traced at a fixed batch of 1, converted with TFLiteConverter (builtins
only), with random but fixed weights so that every output depends on the input:

* ``detector``: an SSD-style two-head detector (BlazeFace-like): ``regressors [1, 160, 8]``
  (box + 2 keypoints per anchor, from two feature scales) and ``classificators [1, 160, 1]``.
* ``landmarks``: a three-head landmark model (hand-landmark-like): ``landmarks [1, 42]``,
  ``presence [1, 1]`` (sigmoid) and ``handedness [1, 1]`` (sigmoid).
* ``spectral``: an audio classifier with an STFT front end: ``tf.signal.stft`` -> ``abs``
  (RFFT2D + COMPLEX_ABS) -> log -> frame pooling -> dense -> ``scores [1, 4]`` (softmax).

The outputs are declared in an order that is *not* alphabetical, as real models have them.
Recipes are made with :func:`mlflow_tflite_keras.export.quantize_tflite` from the float model
where TFLiteConverter cannot make them (weight-only, int4).
"""

from __future__ import annotations

import numpy as np

from model_factory import cached

DETECTOR_INPUT = (1, 16, 16, 3)
LANDMARKS_INPUT = (1, 24, 24, 3)
SPECTRAL_INPUT = (1, 1024)


def _convert(fn, specs, module, recipe: str, representative, order):
    """TFLiteConverter from a concrete function, with the package's recipe code
    (ai-edge-quantizer on the float model for weight-only / int4 recipes)."""
    import tensorflow as tf

    from mlflow_tflite_keras.export import convert_with_recipe

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function(*specs)], module)
    return declared_order(convert_with_recipe(converter, recipe, representative), order)


def declared_order(model_bytes: bytes, order: list) -> bytes:
    """Outputs in the order the model declares them (TFLiteConverter sorts a SignatureDef's
    outputs by name), in the signature and the subgraph, with output tensors named like the
    outputs, as real models have them."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sig = model.signatureDefs[0]
    sg = model.subgraphs[sig.subgraphIndex]
    by_name = {tm.name.decode(): tm for tm in sig.outputs}
    sig.outputs = [by_name[name] for name in order]
    sg.outputs = [by_name[name].tensorIndex for name in order]
    for name in order:
        sg.tensors[by_name[name].tensorIndex].name = name
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def detector_fn():
    import tensorflow as tf

    rng = np.random.default_rng(11)
    w = lambda *s: tf.constant(rng.normal(0, 0.4, s).astype(np.float32))  # noqa: E731
    b = lambda n: tf.constant(rng.normal(0, 0.1, (n,)).astype(np.float32))  # noqa: E731
    k1, b1, k2, b2 = w(3, 3, 3, 16), b(16), w(3, 3, 16, 32), b(32)
    r1, rb1, r2, rb2 = w(1, 1, 16, 16), b(16), w(1, 1, 32, 16), b(16)
    c1, cb1, c2, cb2 = w(1, 1, 16, 2), b(2), w(1, 1, 32, 2), b(2)

    @tf.function
    def detect(image):
        h1 = tf.nn.relu(tf.nn.conv2d(image, k1, 2, "SAME") + b1)  # [1, 8, 8, 16]
        h2 = tf.nn.relu(tf.nn.conv2d(h1, k2, 2, "SAME") + b2)  # [1, 4, 4, 32]
        reg = tf.concat([tf.reshape(tf.nn.conv2d(h1, r1, 1, "SAME") + rb1, [1, 128, 8]),
                         tf.reshape(tf.nn.conv2d(h2, r2, 1, "SAME") + rb2, [1, 32, 8])], 1)
        cls = tf.concat([tf.reshape(tf.nn.conv2d(h1, c1, 1, "SAME") + cb1, [1, 128, 1]),
                         tf.reshape(tf.nn.conv2d(h2, c2, 1, "SAME") + cb2, [1, 32, 1])], 1)
        return {"regressors": reg, "classificators": cls}

    return detect


def landmarks_fn():
    import tensorflow as tf

    rng = np.random.default_rng(12)
    w = lambda *s: tf.constant(rng.normal(0, 0.3, s).astype(np.float32))  # noqa: E731
    k1, k2 = w(3, 3, 3, 8), w(3, 3, 8, 16)
    d_lm, d_p, d_h = w(16 * 6 * 6, 42), w(16 * 6 * 6, 1), w(16 * 6 * 6, 1)

    @tf.function
    def landmarks(image):
        h = tf.nn.relu(tf.nn.conv2d(image, k1, 2, "SAME"))  # [1, 12, 12, 8]
        h = tf.nn.relu(tf.nn.conv2d(h, k2, 2, "SAME"))  # [1, 6, 6, 16]
        flat = tf.reshape(h, [1, -1])
        return {"landmarks": flat @ d_lm, "presence": tf.sigmoid(flat @ d_p),
                "handedness": tf.sigmoid(flat @ d_h)}

    return landmarks


def spectral_fn():
    import tensorflow as tf

    rng = np.random.default_rng(13)
    # 33 x 64 weights: large enough for TFLiteConverter's dynamic range to quantize them.
    hidden = tf.constant(rng.normal(0, 0.3, (33, 64)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 0.3, (64, 4)).astype(np.float32))

    @tf.function
    def classify(waveform):
        spectrum = tf.abs(tf.signal.stft(waveform, frame_length=64, frame_step=32,
                                         fft_length=64))  # [1, 31, 33]
        features = tf.reduce_mean(tf.math.log(spectrum + 0.1), axis=1)  # [1, 33]
        return {"scores": tf.nn.softmax(tf.nn.relu(features @ hidden) @ dense)}

    return classify


BUILDERS = {"detector": (detector_fn, DETECTOR_INPUT, ["regressors", "classificators"]),
            "landmarks": (landmarks_fn, LANDMARKS_INPUT, ["landmarks", "presence", "handedness"]),
            "spectral": (spectral_fn, SPECTRAL_INPUT, ["scores"])}


def inputs(kind: str, n: int = 16, seed: int = 0) -> np.ndarray:
    """n rows for a model (without its batch of 1): images in [0, 1], waveforms (a few sines
    plus noise) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    shape = BUILDERS[kind][1]
    if kind == "spectral":
        t = np.arange(shape[1]) / 8000.0
        freqs = rng.uniform(100, 3000, (n, 3))
        wave = sum(np.sin(2 * np.pi * freqs[:, i:i + 1] * t) for i in range(3)) / 3
        return (wave + rng.normal(0, 0.05, (n, shape[1]))).astype(np.float32)
    return rng.uniform(0, 1, (n, *shape[1:])).astype(np.float32)


def model(kind: str, recipe: str = "float32") -> bytes:
    """The ``.tflite`` of a model kind with a recipe (cached)."""
    make, shape, order = BUILDERS[kind]

    def build():
        import tensorflow as tf

        fn = make()
        module = tf.Module()
        module.fn = fn
        rep = inputs(kind, 32, seed=1)
        return _convert(fn, [tf.TensorSpec(shape, tf.float32, name="input")], module, recipe,
                        rep, order)

    return cached(f"roundtrip-{kind}-{recipe}", build, kind, recipe)
