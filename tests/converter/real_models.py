"""Test models shaped like real vendor models, generated and cached (model_factory).

``blazeface``: a MediaPipe-style face detector: depthwise 3x3 + 1x1 convolution added to a
max-pooled, channel-padded shortcut (the pattern that crashes TensorFlow 2.21's oneDNN graph
rewrite when emitted as a zero Pad), two heads at two scales reshaped and concatenated into
``regressors [1, 896, 16]`` and ``classificators [1, 896, 1]``, fixed batch 1 as shipped.
Weights are random but the outputs depend on the input (checked by the tests).
"""

from __future__ import annotations

import numpy as np

from model_factory import cached, keras_model_tflite

BLAZEFACE_INPUT = (128, 128, 3)


def make_blazeface():
    import keras
    from keras import ops

    class ChannelPad(keras.layers.Layer):
        """The shortcut's zero channels (TFLite PAD), as MediaPipe's models have it."""

        def __init__(self, extra, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

        def call(self, x):
            return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def blaze_block(x, out, stride=1):
        cin = x.shape[-1]
        h = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same")(x)
        h = keras.layers.Conv2D(out, 1)(h)
        shortcut = keras.layers.MaxPooling2D()(x) if stride == 2 else x
        if out > cin:
            shortcut = ChannelPad(out - cin)(shortcut)
        return keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))

    keras.utils.set_random_seed(7)
    image = keras.Input(BLAZEFACE_INPUT, batch_size=1, name="input")
    x = keras.layers.Conv2D(24, 5, strides=2, padding="same", activation="relu")(image)
    for out, stride in [(24, 1), (28, 1), (32, 2), (36, 1), (42, 1), (48, 2), (56, 1),
                        (64, 1), (72, 1), (80, 1), (88, 1)]:
        x = blaze_block(x, out, stride)
    fine = x  # 16 x 16 x 88: 2 anchors per cell
    for out, stride in [(96, 2), (96, 1), (96, 1)]:
        x = blaze_block(x, out, stride)
    coarse = x  # 8 x 8 x 96: 6 anchors per cell

    def head(features, anchors, width, name):
        y = keras.layers.Conv2D(anchors * width, 1, name=f"{name}_{anchors}")(features)
        return keras.layers.Reshape((-1, width))(y)

    regressors = keras.layers.Concatenate(axis=1, name="regressors")(
        [head(fine, 2, 16, "reg"), head(coarse, 6, 16, "reg")])
    classificators = keras.layers.Concatenate(axis=1, name="classificators")(
        [head(fine, 2, 1, "cls"), head(coarse, 6, 1, "cls")])
    return keras.Model(image, {"regressors": regressors, "classificators": classificators})


def face_images(n: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth random images in [-1, 1] (MediaPipe's input range), batch of n."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, 16, 16, 3))
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.float32)


def blazeface(recipe: str = "float32") -> bytes:
    return keras_model_tflite("real-blazeface", make_blazeface, recipe,
                              representative=lambda: face_images(16, seed=1))


# ---- a keyword spotter with a dynamic batch (shape arithmetic at run time) ------------------

KWS_FRAMES, KWS_FEATURES, KWS_UNITS = 24, 10, 16


def keyword_spotter_fn():
    """A keyword spotter traced with a dynamic batch, written the way TensorFlow models
    compute shapes: ``tf.shape(x)[0]`` feeds reshapes (SHAPE -> STRIDED_SLICE -> PACK ->
    RESHAPE), the recurrent state's start (FILL) and a broadcast bias (BROADCAST_TO); a
    conv front end over the MFCC frames, two recurrent steps over pooled halves, softmax
    scores over 5 keywords."""
    import tensorflow as tf

    rng = np.random.default_rng(14)
    w = lambda *s: tf.constant(rng.normal(0, 0.3, s).astype(np.float32))  # noqa: E731
    k1, k2 = w(3, 3, 1, 8), w(3, 3, 8, 8)
    w_in, w_rec, bias = w(6 * 5 * 8 // 2, KWS_UNITS), w(KWS_UNITS, KWS_UNITS), w(KWS_UNITS)
    dense = w(KWS_UNITS, 5)

    @tf.function
    def spot(mfcc):
        batch = tf.shape(mfcc)[0]
        x = tf.reshape(mfcc, [batch, KWS_FRAMES, KWS_FEATURES, 1])
        x = tf.nn.relu(tf.nn.conv2d(x, k1, 2, "SAME"))  # [b, 12, 5, 8]
        x = tf.nn.relu(tf.nn.conv2d(x, k2, [2, 1], "SAME"))  # [b, 6, 5, 8]
        halves = tf.reshape(x, [batch, 2, -1])  # [b, 2, 120]
        state = tf.fill([batch, KWS_UNITS], 0.1)  # non-zero: w_rec gets a gradient at t=0
        b = tf.broadcast_to(bias, [batch, KWS_UNITS])
        for t in range(2):
            state = tf.tanh(halves[:, t] @ w_in + state @ w_rec + b)
        return {"scores": tf.nn.softmax(state @ dense)}

    return spot


def mfcc_frames(n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random MFCC-like frames ``[n, frames, features]``."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.3, (n, KWS_FRAMES, KWS_FEATURES)), axis=1)
    return (x / np.sqrt(np.arange(1, KWS_FRAMES + 1))[None, :, None]).astype(np.float32)


def keyword_spotter() -> bytes:
    def build():
        import tensorflow as tf

        fn = keyword_spotter_fn()
        module = tf.Module()
        module.fn = fn
        spec = tf.TensorSpec([None, KWS_FRAMES, KWS_FEATURES], tf.float32, name="mfcc")
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function(spec)], module)
        return converter.convert()

    return cached("real-keyword-spotter", build, keyword_spotter_fn)


# ---- a speech-commands keyword spotter: waveform -> AudioSpectrogram -> Mfcc -> CNN ------------

SPEECH_RATE, SPEECH_SAMPLES, SPEECH_CLASSES = 8000, 4000, 4
SPEECH_FRONT_END = dict(window_size=240, stride=120, magnitude_squared=True)
SPEECH_MFCC = dict(lower_frequency_limit=20.0, upper_frequency_limit=3800.0,
                   filterbank_channel_count=32, dct_coefficient_count=12)


def tones(n: int, seed: int = 0):
    """``(audio [n, samples, 1], labels)``: a tone of one of four pitch ranges per clip with a
    random phase, level and onset, over noise (the speech-commands input layout, 8 kHz)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SPEECH_CLASSES, n)
    t = np.arange(SPEECH_SAMPLES) / SPEECH_RATE
    audio = rng.normal(0, 0.05, (n, SPEECH_SAMPLES))
    for i, label in enumerate(labels):
        freq = 250.0 * 2 ** (label + rng.uniform(0, 0.5))
        onset = rng.integers(0, SPEECH_SAMPLES // 2)
        audio[i, onset:] += rng.uniform(0.2, 1) * np.sin(2 * np.pi * freq * t[onset:]
                                                         + rng.uniform(0, 2 * np.pi))
    return audio[..., None].astype(np.float32), labels


def speech_commands() -> bytes:
    """The layout of TensorFlow's speech-commands models: one clip ``[samples, 1]`` (no batch
    axis), the front end as TFLite's AudioSpectrogram and Mfcc custom operators, a small CNN
    trained on `tones` (the front end has no weights; the classifier is trained on its
    features), softmax scores ``[1, 4]``."""

    def build():
        import keras
        import tensorflow as tf

        def features(clip):
            spectrogram = tf.raw_ops.AudioSpectrogram(input=clip, **SPEECH_FRONT_END)
            return tf.raw_ops.Mfcc(spectrogram=spectrogram, sample_rate=SPEECH_RATE,
                                   **SPEECH_MFCC)[..., None]  # [1, frames, coefficients, 1]

        audio, labels = tones(160, seed=1)
        x = np.concatenate([features(tf.constant(a)).numpy() for a in audio])
        keras.utils.set_random_seed(5)
        classifier = keras.Sequential([
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(SPEECH_CLASSES, activation="softmax")])
        classifier.compile("adam", "sparse_categorical_crossentropy")
        classifier.fit(x, labels, epochs=30, batch_size=16, verbose=0)

        @tf.function(input_signature=[tf.TensorSpec([SPEECH_SAMPLES, 1], tf.float32,
                                                    name="audio")])
        def spot(audio):
            return {"scores": classifier(features(audio))}

        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        # the classifier's weights as constants, as a frozen graph has them
        frozen = convert_variables_to_constants_v2(spot.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
        converter.allow_custom_ops = True  # AudioSpectrogram and Mfcc: LiteRT's own kernels
        return converter.convert()

    return cached("real-speech-commands", build, SPEECH_FRONT_END, SPEECH_MFCC, tones)
