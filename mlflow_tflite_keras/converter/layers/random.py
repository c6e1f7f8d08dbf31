"""Seeded random sampling for RANDOM_STANDARD_NORMAL, RANDOM_UNIFORM and MULTINOMIAL
(parity is on distribution, not values)."""

from __future__ import annotations

import keras
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE


# ---- random sampling ---------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomSample(keras.layers.Layer):
    """TFLite RANDOM_STANDARD_NORMAL / RANDOM_UNIFORM / MULTINOMIAL as a seeded Keras random
    draw (``keras.random`` with a ``SeedGenerator``, saved with the model). The samples
    follow the same distribution as LiteRT's, not the same values: LiteRT uses Philox with
    its own stream. ``shape`` is the sample shape (normal/uniform): static, the layer's input
    is then only an anchor (a model input) so the draw is a node of the graph; with ``None``
    entries, the input is the run-time shape tensor. For ``categorical`` the input is the
    logits and ``num_samples`` the draws per row."""

    def __init__(self, distribution: str, shape=None, seed=None, num_samples: int = 1,
                 output_dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if distribution not in ("normal", "uniform", "categorical"):
            raise ValueError(f"RandomSample: unknown distribution {distribution!r}.")
        self.distribution = distribution
        self.shape = None if shape is None else \
            tuple(None if d is None or int(d) < 0 else int(d) for d in shape)
        self.seed = None if seed is None else int(seed)
        self.num_samples = int(num_samples)
        self.output_dtype = output_dtype
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, x):
        if self.distribution == "categorical":
            return keras.random.categorical(ops.cast(x, "float32"), self.num_samples,
                                            dtype=self.output_dtype, seed=self.seed_generator)
        draw = keras.random.normal if self.distribution == "normal" else keras.random.uniform
        # A static shape (None in it: the run-time shape tensor ``x`` gives the sample shape).
        shape = self.shape if None not in self.shape else ops.cast(x, "int32")
        return draw(shape, dtype=self.output_dtype, seed=self.seed_generator)

    def compute_output_spec(self, x):
        if self.distribution == "categorical":
            return keras.KerasTensor((x.shape[0], self.num_samples), dtype=self.output_dtype)
        return keras.KerasTensor(self.shape, dtype=self.output_dtype)

    def get_config(self):
        return {**super().get_config(), "distribution": self.distribution,
                "shape": None if self.shape is None else [-1 if d is None else d
                                                          for d in self.shape],
                "seed": self.seed,
                "num_samples": self.num_samples, "output_dtype": self.output_dtype}
