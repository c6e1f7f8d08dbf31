"""Whole-model test cases: Keras applications (random weights, batch-norm statistics
calibrated on data so that their outputs depend on the input), LSTM/GRU text models, a small
transformer encoder and a U-Net, each converted with TFLiteConverter in several recipes."""

from __future__ import annotations

import numpy as np

from model_factory import calibrate_batch_norm, keras_model_tflite

IMAGE = 64  # small inputs keep conversion and calibration fast; the graphs are the real ones


def _app(name, **kwargs):
    import keras

    keras.utils.set_random_seed(0)
    cls = getattr(keras.applications, name)
    model = cls(weights=None, input_shape=(IMAGE, IMAGE, 3), classes=10, **kwargs)
    return calibrate_batch_norm(model, image_batch(32, seed=2))


def make_mobilenet_v2():
    return _app("MobileNetV2")


def make_mobilenet_v3_small():
    return _app("MobileNetV3Small")


def make_efficientnet_b0():
    return _app("EfficientNetB0")


def make_resnet50():
    return _app("ResNet50")


def make_densenet121():
    return _app("DenseNet121")


APPS = {
    "MobileNetV2": make_mobilenet_v2,
    "MobileNetV3Small": make_mobilenet_v3_small,
    "EfficientNetB0": make_efficientnet_b0,
    "ResNet50": make_resnet50,
    "DenseNet121": make_densenet121,
}


def image_batch(n=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, IMAGE, IMAGE, 3)) \
        .astype(np.float32)


def app_tflite(name: str, recipe: str) -> bytes:
    return keras_model_tflite(f"app-calibrated-{name}", APPS[name], recipe,
                              representative=lambda: image_batch(16, seed=1))


def train_on_token_task(model, epochs=3):
    """Fit a text classifier a few epochs on a learnable rule (the class of the first and last
    tokens): untrained recurrent models answer near-uniform scores whatever the input."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 50, (384, 12)).astype(np.int32)
    y = (x[:, 0] // 13 + x[:, -1] // 25) % 4
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=model.inputs[0].shape[0] or 32, verbose=0)
    return model


def make_lstm_text():
    import keras

    keras.utils.set_random_seed(0)
    # Batch 1: TFLiteConverter lowers Keras 3 RNN loops (WHILE) only with a static batch.
    tokens = keras.Input((12,), dtype="int32", batch_size=1)
    x = keras.layers.Embedding(50, 16)(tokens)
    x = keras.layers.LSTM(24, return_sequences=True)(x)
    x = keras.layers.LSTM(16)(x)
    return train_on_token_task(
        keras.Model(tokens, keras.layers.Dense(4, activation="softmax")(x)))


def make_gru_text():
    import keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input((12,), dtype="int32", batch_size=1)
    x = keras.layers.Embedding(50, 16)(tokens)
    x = keras.layers.GRU(16)(x)
    return train_on_token_task(
        keras.Model(tokens, keras.layers.Dense(4, activation="softmax")(x)))


def make_transformer_encoder():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 32))
    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(inputs, inputs)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(inputs + attention)
    ff = keras.layers.Dense(64, activation="gelu")(x)
    ff = keras.layers.Dense(32)(ff)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x + ff)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def make_unet():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    p1 = keras.layers.MaxPooling2D()(c1)
    c2 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(p1)
    p2 = keras.layers.MaxPooling2D()(c2)
    b = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(p2)
    u2 = keras.layers.Conv2DTranspose(16, 2, strides=2, padding="same")(b)
    c3 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(
        keras.layers.Concatenate()([u2, c2]))
    u1 = keras.layers.UpSampling2D(interpolation="bilinear")(c3)
    c4 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(
        keras.layers.Concatenate()([u1, c1]))
    resized = keras.layers.Resizing(48, 48)(c4)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="sigmoid")(resized))


SMALL = {
    "lstm-text": (make_lstm_text, lambda n: np.random.default_rng(0).integers(0, 50, (n, 12))
                  .astype(np.int32)),
    "gru-text": (make_gru_text, lambda n: np.random.default_rng(0).integers(0, 50, (n, 12))
                 .astype(np.int32)),
    "transformer": (make_transformer_encoder, lambda n: np.random.default_rng(0)
                    .normal(size=(n, 10, 32)).astype(np.float32)),
    "unet": (make_unet, lambda n: np.random.default_rng(0).uniform(0, 1, (n, 32, 32, 3))
             .astype(np.float32)),
}


def small_tflite(name: str, recipe: str = "float32") -> bytes:
    make, data = SMALL[name]
    return keras_model_tflite(f"small-{name}", make, recipe, representative=lambda: data(16))
