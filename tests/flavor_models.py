"""Models for the flavor tests (generated, cached on disk by model_factory)."""

from __future__ import annotations

import numpy as np

from model_factory import cached, concrete_functions_tflite, digits, keras_model_tflite, \
    saved_model_tflite

RECIPES = ["float32", "float16", "dynamic-range", "full-int8"]


def make_cnn(batch_size=None):
    """A small CNN trained 4 epochs on sklearn's digits (~0.95 accuracy): its outputs depend
    on the input, so comparisons against it can fail."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((8, 8, 1), batch_size=batch_size),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        # Big enough (16k weights) for dynamic-range quantization to quantize it.
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    x, y = digits()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x[:1500], y[:1500], epochs=4, batch_size=32, verbose=0)
    return model


def cnn(recipe: str = "float32") -> bytes:
    """Dynamic batch (shape_signature [-1, 8, 8, 1])."""
    return keras_model_tflite("flavor-cnn", make_cnn, recipe,
                              representative=lambda: digits()[0][:64])


def fixed_batch_cnn() -> bytes:
    """A small CNN traced at a fixed [1, 8, 8, 1] input (shape_signature without -1), as
    many real models are. (Keras's ``model.export`` would make the batch dynamic again.)"""

    def make():
        import numpy as np
        import tensorflow as tf

        rng = np.random.default_rng(8)
        kernel = tf.constant(rng.normal(0, 0.5, (3, 3, 1, 4)).astype(np.float32))
        dense = tf.constant(rng.normal(0, 0.2, (8 * 8 * 4, 10)).astype(np.float32))

        @tf.function
        def cnn(x):
            h = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
            return {"probs": tf.nn.softmax(tf.reshape(h, [1, -1]) @ dense)}

        module = tf.Module()
        module.cnn = cnn
        return [cnn.get_concrete_function(tf.TensorSpec([1, 8, 8, 1], tf.float32))], module

    return concrete_functions_tflite("flavor-fixed-batch-cnn", make)


def make_multi_io():
    import keras

    keras.utils.set_random_seed(2)
    image = keras.Input((8, 8, 1), name="image")
    extra = keras.Input((4,), name="extra")
    h = keras.layers.Flatten()(image)
    h = keras.layers.Concatenate()([h, extra])
    h = keras.layers.Dense(16, activation="relu")(h)
    scores = keras.layers.Dense(3, name="scores")(h)
    value = keras.layers.Dense(1, name="value")(h)
    return keras.Model({"image": image, "extra": extra}, {"scores": scores, "value": value})


def multi_io(recipe: str = "float32") -> bytes:
    def representative():
        rng = np.random.default_rng(0)
        return lambda: ([rng.uniform(0, 1, (1, 4)).astype(np.float32),
                         rng.uniform(0, 1, (1, 8, 8, 1)).astype(np.float32)] for _ in range(32))

    return keras_model_tflite("flavor-multi-io", make_multi_io, recipe,
                              representative=representative)


def multi_signature() -> bytes:
    """Two signature keys: ``double`` (x * 2) and ``affine`` (x * 3 + 1), same input shape."""

    def make():
        import tensorflow as tf

        class Module(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
            def double(self, x):
                return {"y": x * 2.0}

            @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
            def affine(self, x):
                return {"y": x * 3.0 + 1.0}

        m = Module()
        return m, {"double": m.double, "affine": m.affine}

    return saved_model_tflite("flavor-multi-signature", make, signature_keys=["double", "affine"])


def stateful_accumulator() -> bytes:
    """A resource variable that sums its inputs: out_t = x_1 + ... + x_t (VAR_HANDLE ...)."""

    def make():
        import tensorflow as tf

        class Accumulator(tf.Module):
            def __init__(self):
                self.total = tf.Variable(tf.zeros([1, 3]))

            @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name="x")])
            def step(self, x):
                self.total.assign_add(x)
                return {"total": self.total + 0.0}

        m = Accumulator()
        return m, {"serving_default": m.step}

    return saved_model_tflite("flavor-stateful", make,
                              experimental_enable_resource_variables=True)


def tabular() -> bytes:
    """A single [N, 5] float input, for DataFrame scoring."""

    def make():
        import keras

        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])

    return keras_model_tflite("flavor-tabular", make)


def images(n, seed=0):
    """n random 8x8x1 images in [0, 1] (the CNN's input)."""
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


def multi_feeds(n, seed=0):
    """n rows of random inputs for multi_io()."""
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32),
            "extra": rng.uniform(0, 1, (n, 4)).astype(np.float32)}


__all__ = ["RECIPES", "cnn", "fixed_batch_cnn", "multi_io", "multi_signature",
           "stateful_accumulator", "tabular", "cached", "digits", "images", "multi_feeds"]
