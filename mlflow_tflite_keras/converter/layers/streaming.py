"""Layers of streaming (stateful) models (``converter/streaming.py``): :class:`StreamingCell`
(one step, the step model and the initial state) run over time by :class:`StreamingRNN`."""

from __future__ import annotations


import keras
import numpy as np
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE, extra_op
from mlflow_tflite_keras.converter.names import keras_name

# ---- layers -----------------------------------------------------------------------------------


def _call_list(model, xs):
    out = model(list(xs))
    return list(out) if isinstance(out, (list, tuple)) else [out]


@keras.saving.register_keras_serializable(package=PACKAGE)
class StreamingCell(keras.layers.Layer):
    """One step of a streaming model: ``step_model([frame, *states]) -> [output,
    *new_states]``. ``state_shapes`` are the states' shapes per example (the RNN adds the
    batch dimension); their initial values are stored as non-trainable weights (the
    ``CALL_ONCE`` values).

    ``per_example=False``: the step model takes the batch (the ``.tflite``'s batch of 1 made
    dynamic; each state's leading 1 is that batch). ``per_example=True``: the step model is
    the ``.tflite``'s graph at its exact shapes (one frame ``[1, *frame]``, states at their
    variable shapes) and runs once per example of the batch, as the interpreter does (one
    interpreter per stream).

    ``n_outputs``: the step model's first ``n_outputs`` outputs are the model's (the rest the
    new states). A ``keras.layers.RNN`` carries one output per step, so several are flattened
    and concatenated (:attr:`output_slices`) and split again after it
    (:func:`streaming_output`).
    """

    def __init__(self, step_model, state_shapes, state_names=None, initial_state=None,
                 per_example: bool = False, n_outputs: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.step_model = step_model
        self.per_example = bool(per_example)
        self.n_outputs = int(n_outputs)
        self.state_shapes = [tuple(int(d) for d in s) for s in state_shapes]
        self.state_names = list(state_names or [f"state_{i}" for i in
                                                range(len(self.state_shapes))])
        values = initial_state if initial_state is not None else \
            [np.zeros(s, np.float32) for s in self.state_shapes]
        self.initial_weights = [
            self.add_weight(name=f"initial_{keras_name(n, 'state')}", shape=s, dtype="float32",
                            trainable=False,
                            initializer=keras.initializers.Constant(np.asarray(v, np.float32)))
            for n, s, v in zip(self.state_names, self.state_shapes, values)]

    @property
    def state_size(self):
        return [list(s) for s in self.state_shapes]

    @property
    def output_shapes(self) -> list[tuple]:
        """Each output's shape per example (the step model's, without its batch)."""
        return [tuple(t.shape[1:]) for t in self.step_model.outputs[:self.n_outputs]]

    @property
    def output_slices(self) -> list[tuple[int, int]]:
        """Where each output lies in the concatenated step output (several outputs)."""
        sizes = [int(np.prod(shape)) for shape in self.output_shapes]
        ends = np.cumsum(sizes).tolist()
        return [(end - size, end) for size, end in zip(sizes, ends)]

    @property
    def output_shape_per_step(self):
        if self.n_outputs == 1:
            return self.output_shapes[0]
        return (self.output_slices[-1][1],)

    def _pack(self, outputs):
        if self.n_outputs == 1:
            return outputs[0]
        return ops.concatenate([ops.reshape(o, (ops.shape(o)[0], -1)) for o in outputs],
                               axis=-1)

    def build(self, *args, **kwargs):
        self.built = True

    def get_initial_state(self, batch_size=None):
        return [ops.broadcast_to(ops.expand_dims(ops.convert_to_tensor(w), 0),
                                 (batch_size, *s))
                for w, s in zip(self.initial_weights, self.state_shapes)]

    def call(self, inputs, states):
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        if self.per_example:
            return self._per_example(inputs, states)
        out = _call_list(self.step_model, [inputs, *states])
        return self._pack(out[:self.n_outputs]), out[self.n_outputs:]

    def _per_example(self, inputs, states):
        def one(args):
            frame, *state = args
            out = _call_list(self.step_model, [ops.expand_dims(frame, 0), *state])
            return (ops.squeeze(self._pack(out[:self.n_outputs]), 0), *out[self.n_outputs:])

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            signature = (tf.TensorSpec(self.output_shape_per_step, self.compute_dtype),
                         *[tf.TensorSpec(s, self.compute_dtype) for s in self.state_shapes])
            out = list(tf.map_fn(one, (inputs, *states), fn_output_signature=signature))
        else:
            out = list(ops.map(one, (inputs, *states)))
        return out[0], out[1:]

    def get_config(self):
        config = super().get_config()
        config.update(step_model=keras.saving.serialize_keras_object(self.step_model),
                      state_shapes=[list(s) for s in self.state_shapes],
                      state_names=self.state_names, per_example=self.per_example,
                      n_outputs=self.n_outputs)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["step_model"] = keras.saving.deserialize_keras_object(config["step_model"])
        return cls(**config)  # initial values come back with the weights


@keras.saving.register_keras_serializable(package=PACKAGE)
class StreamingRNN(keras.layers.RNN):
    """``keras.layers.RNN`` over a :class:`StreamingCell`: states and per-step outputs of
    any rank, and :meth:`reset_state` back to the cell's initial state."""

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch = sequences_shape[0]
        step = self.cell.output_shape_per_step
        out = (batch, sequences_shape[1], *step) if self.return_sequences else (batch, *step)
        if self.return_state:
            return out, *[(batch, *s) for s in self.cell.state_shapes]
        return out

    def reset_state(self):
        if self.states is not None:
            batch = int(self.states[0].shape[0])
            for variable, value in zip(self.states, self.cell.get_initial_state(batch)):
                variable.assign(value)


@extra_op
def streaming_output(x, start=0, stop=None, shape=()):
    """One output of a several-output :class:`StreamingCell`: its slice of the last axis,
    reshaped to its shape (the leading batch / time dimensions kept)."""
    y = x[..., int(start):int(stop)]
    lead = [ops.shape(x)[i] for i in range(len(x.shape) - 1)]
    return ops.reshape(y, (*lead, *[int(d) for d in shape]))
