"""Layers of control flow (``converter/ops/control_flow.py``): :class:`WhileLoop`,
:class:`IfElse` and :class:`PerExample`, each holding the functional models of the subgraphs
it runs, and ``constant_like`` (a constant output of a loop body or branch)."""

from __future__ import annotations

import keras
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import (
    PACKAGE,
    StoredConstants,
    extra_op,
    flat_inputs,
)

# ---- helpers shared by the layers -------------------------------------------------------------

def _call_model(model, xs):
    out = model(xs[0] if len(model.inputs) == 1 else list(xs))
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _merge_shapes(a, b):
    if len(a) != len(b):
        return None
    return tuple(x if x == y else None for x, y in zip(a, b))


# ---- layers -----------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package=PACKAGE)
class WhileLoop(StoredConstants, keras.layers.Layer):
    """TFLite ``WHILE``: ``while cond_model(*vars): vars = body_model(*vars)``.

    ``n_vars`` loop variables; ``constants`` maps positions to initial values stored as
    non-trainable weights (the others are the call's tensors, in order). ``shapes`` are the
    loop variables' shape invariants (``None`` for a dimension that may change or is
    dynamic).
    """

    def __init__(self, cond_model, body_model, n_vars: int, shapes=None, constants=None,
                 trip_count=None, **kwargs):
        super().__init__(**kwargs)
        self.cond_model = cond_model
        self.body_model = body_model
        self.n_vars = int(n_vars)
        # Iterations fixed at build time (a counter against constant bounds): JAX and torch
        # run such loops as a fori_loop, which JAX can differentiate (a while_loop it cannot).
        self.trip_count = None if trip_count is None else int(trip_count)
        self.shapes = [None if s is None else [None if d is None else int(d) for d in s]
                       for s in (shapes or [None] * self.n_vars)]
        self._init_constants(constants or {})

    def build(self, *args, **kwargs):
        self.built = True

    def loop(self, values):
        dtypes = [v.dtype for v in values]

        def cond(*xs):
            out = _call_model(self.cond_model, xs)[0]
            return ops.reshape(ops.cast(out, "bool"), ())

        def body(*xs):
            outs = _call_model(self.body_model, xs)
            return tuple(ops.cast(o, d) if o.dtype != d else o for o, d in zip(outs, dtypes))

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            invariants = [tf.TensorShape(s) if s is not None else tf.TensorShape(None)
                          for s in self.shapes]
            return list(tf.while_loop(cond, body, tuple(values),
                                      shape_invariants=tuple(invariants)))
        if self.trip_count is not None:
            return list(ops.fori_loop(0, self.trip_count, lambda _, xs: body(*xs),
                                      tuple(values)))
        return list(ops.while_loop(cond, body, tuple(values)))

    def call(self, *inputs):
        values = self._with_constants(flat_inputs(inputs), self.n_vars)
        out = self.loop([ops.convert_to_tensor(v) for v in values])
        return out if self.n_vars > 1 else out[0]

    def compute_output_spec(self, *inputs):
        values = self._with_constants(flat_inputs(inputs), self.n_vars, spec_only=True)
        specs = [keras.KerasTensor(tuple(s) if s is not None else v.shape, dtype=v.dtype)
                 for s, v in zip(self.shapes, values)]
        return specs if self.n_vars > 1 else specs[0]

    def get_config(self):
        config = super().get_config()
        config.update(cond_model=keras.saving.serialize_keras_object(self.cond_model),
                      body_model=keras.saving.serialize_keras_object(self.body_model),
                      n_vars=self.n_vars, shapes=self.shapes,
                      constants=self._constants_config(), trip_count=self.trip_count)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cond_model"] = keras.saving.deserialize_keras_object(config["cond_model"])
        config["body_model"] = keras.saving.deserialize_keras_object(config["body_model"])
        config["constants"] = cls._constants_from_config(config.get("constants"))
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class IfElse(keras.layers.Layer):
    """TFLite ``IF``: ``then_model(*xs) if pred else else_model(*xs)`` (``keras.ops.cond``).
    Called as ``layer(pred, *xs)``; the branch models return lists."""

    def __init__(self, then_model, else_model, **kwargs):
        super().__init__(**kwargs)
        self.then_model = then_model
        self.else_model = else_model

    def build(self, *args, **kwargs):
        self.built = True

    def call(self, *inputs):
        pred, *xs = flat_inputs(inputs)
        pred = ops.reshape(ops.cast(pred, "bool"), ())
        out = ops.cond(pred, lambda: _call_model(self.then_model, xs),
                       lambda: _call_model(self.else_model, xs))
        out = list(out)
        return out if len(out) > 1 else out[0]

    def compute_output_spec(self, *inputs):
        specs = []
        for a, b in zip(self.then_model.outputs, self.else_model.outputs):
            shape = _merge_shapes(tuple(a.shape), tuple(b.shape))
            specs.append(keras.KerasTensor(shape, dtype=a.dtype))
        return specs if len(specs) > 1 else specs[0]

    def get_config(self):
        config = super().get_config()
        config.update(then_model=keras.saving.serialize_keras_object(self.then_model),
                      else_model=keras.saving.serialize_keras_object(self.else_model))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("then_model", "else_model"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PerExample(keras.layers.Layer):
    """Runs ``model`` (built for a fixed batch of 1) once per example of the batch, as the
    interpreter runs a fixed-batch model (one invoke per row), and stacks the results."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def build(self, *args, **kwargs):
        self.built = True

    def _one(self, x):
        y = self.model(keras.tree.map_structure(lambda t: ops.expand_dims(t, 0), x))
        return keras.tree.map_structure(lambda t: ops.squeeze(t, 0), y)

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = keras.tree.map_structure(
                lambda t: tf.TensorSpec(tuple(t.shape[1:]), t.dtype), self.model.output)
            return tf.map_fn(self._one, inputs, fn_output_signature=signature)
        return ops.map(self._one, inputs)

    def compute_output_spec(self, inputs):
        return keras.tree.map_structure(
            lambda t: keras.KerasTensor((None, *t.shape[1:]), dtype=t.dtype), self.model.output)

    def get_config(self):
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.model)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def per_example_model(inner: keras.Model, name: str) -> keras.Model:
    """``inner`` (static batch 1) as a model with a dynamic batch, through :class:`PerExample`."""
    def outer_input(t):
        return keras.Input(batch_shape=(None, *t.shape[1:]), dtype=t.dtype,
                           name=t.name if hasattr(t, "name") else None)

    if isinstance(inner.input, dict):
        inputs = {k: keras.Input(batch_shape=(None, *t.shape[1:]), dtype=t.dtype, name=k)
                  for k, t in inner.input.items()}
    else:
        inputs = keras.tree.map_structure(outer_input, inner.input)
    outputs = PerExample(inner, name=f"{name}_per_example")(inputs)
    return keras.Model(inputs, outputs, name=name)


@extra_op
def constant_like(anchor, value):
    """A constant as a graph tensor (an output of a loop body or branch that is constant)."""
    return ops.convert_to_tensor(value)
