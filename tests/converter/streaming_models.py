"""Streaming models built the way streaming keyword spotters are: each invoke takes one frame,
ring buffers live in ``tf.Variable``s updated with ``assign`` (a streaming convolution keeps
its last ``kernel - 1`` frames: ``concat(buffer, frame) -> conv -> buffer.assign(window[1:])``),
converted by TFLiteConverter with resource variables (``VAR_HANDLE`` / ``READ_VARIABLE`` /
``ASSIGN_VARIABLE``, initialised by a ``CALL_ONCE`` subgraph). Weights are random (seeded), so
every output depends on the input and on the past frames. Cached by ``model_factory``.
"""

from __future__ import annotations

import inspect

import numpy as np

from model_factory import cached

FEATURES = 8  # features per frame (e.g. MFCCs)


def frames(n: int, time: int, seed: int = 0) -> np.ndarray:
    """``[n, time, 1, FEATURES]`` frames: a stationary, smooth random process (each feature
    ``x_t = 0.6 x_(t-1) + noise``, standard deviation 0.5, clipped to [-1.4, 1.4])."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.4, (n, time, 1, FEATURES))
    x = np.zeros_like(noise)
    x[:, 0] = noise[:, 0] / 0.8
    for t in range(1, time):
        x[:, t] = 0.6 * x[:, t - 1] + noise[:, t]
    return np.clip(x, -1.4, 1.4).astype(np.float32)


def calibration_frames() -> np.ndarray:
    """The frames full-int8 models are calibrated on (sources and exports)."""
    return frames(32, 32, seed=11)


def _convert(make_module, recipe: str) -> bytes:
    """Save ``make_module() -> (module, step function)`` and convert it with resource
    variables; ``full-int8`` quantizes everything (variables too) with int8 I/O, calibrated
    on frame sequences so the state ranges are realistic."""
    import tempfile

    import tensorflow as tf

    module, step = make_module()
    with tempfile.TemporaryDirectory() as d:
        tf.saved_model.save(module, d, signatures={"serving_default": step})
        converter = tf.lite.TFLiteConverter.from_saved_model(d)
        converter.experimental_enable_resource_variables = True
        if recipe == "full-int8":
            def representative():
                for sequence in calibration_frames():
                    for frame in sequence:
                        yield {"frame": frame[None]}

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            converter._experimental_variable_quantization = True
        return converter.convert()


def _build(name: str, make_module, recipe: str) -> bytes:
    return cached(f"streaming-{name}-{recipe}", lambda: _convert(make_module, recipe),
                  inspect.getsource(make_module), inspect.getsource(_convert), recipe)


def make_streaming_conv():
    """One streaming conv (kernel 3 over time, 8 -> 16 channels, a 2-frame ring buffer)
    and a dense classifier: scores [1, 4]."""
    import tensorflow as tf

    rng = np.random.default_rng(21)
    kernel = tf.constant(rng.normal(0, 0.4, (3, FEATURES, 16)).astype(np.float32))
    bias = tf.constant(rng.normal(0, 0.1, (16,)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 0.4, (16, 4)).astype(np.float32))

    class StreamingConv(tf.Module):
        def __init__(self):
            self.buffer = tf.Variable(tf.zeros([1, 2, FEATURES]), name="conv_buffer")

        @tf.function(input_signature=[tf.TensorSpec([1, 1, FEATURES], tf.float32,
                                                    name="frame")])
        def step(self, frame):
            window = tf.concat([self.buffer, frame], axis=1)  # [1, 3, F]
            self.buffer.assign(window[:, 1:])
            h = tf.nn.relu(tf.nn.conv1d(window, kernel, 1, "VALID") + bias)  # [1, 1, 16]
            return {"scores": tf.reshape(h, [1, 16]) @ dense}

    module = StreamingConv()
    return module, module.step


def make_streaming_multi_state():
    """Three state variables of different shapes: two streaming convs with ring buffers
    [1, 2, 8] and [1, 4, 12] (kernel 5, dilated by one frame), and a running average [1, 12]
    (initialised to non-zero values) mixed into the classifier: scores [1, 5]."""
    import tensorflow as tf

    rng = np.random.default_rng(22)
    k1 = tf.constant(rng.normal(0, 0.4, (3, FEATURES, 12)).astype(np.float32))
    b1 = tf.constant(rng.normal(0, 0.1, (12,)).astype(np.float32))
    k2 = tf.constant(rng.normal(0, 0.3, (5, 12, 12)).astype(np.float32))
    b2 = tf.constant(rng.normal(0, 0.1, (12,)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 0.3, (24, 5)).astype(np.float32))
    initial_average = rng.uniform(0.1, 0.5, (1, 12)).astype(np.float32)

    class MultiState(tf.Module):
        def __init__(self):
            self.buffer1 = tf.Variable(tf.zeros([1, 2, FEATURES]), name="buffer1")
            self.buffer2 = tf.Variable(tf.zeros([1, 4, 12]), name="buffer2")
            self.average = tf.Variable(initial_average, name="average")

        @tf.function(input_signature=[tf.TensorSpec([1, 1, FEATURES], tf.float32,
                                                    name="frame")])
        def step(self, frame):
            window1 = tf.concat([self.buffer1, frame], axis=1)  # [1, 3, 8]
            self.buffer1.assign(window1[:, 1:])
            h1 = tf.nn.relu(tf.nn.conv1d(window1, k1, 1, "VALID") + b1)  # [1, 1, 12]
            window2 = tf.concat([self.buffer2, h1], axis=1)  # [1, 5, 12]
            self.buffer2.assign(window2[:, 1:])
            h2 = tf.nn.relu(tf.nn.conv1d(window2, k2, 1, "VALID") + b2)  # [1, 1, 12]
            h2 = tf.reshape(h2, [1, 12])
            average = 0.8 * self.average + 0.2 * h2
            self.average.assign(average)
            return {"scores": tf.concat([h2, average], axis=1) @ dense}

    module = MultiState()
    return module, module.step


def streaming_conv(recipe: str = "float32") -> bytes:
    return _build("conv", make_streaming_conv, recipe)


def streaming_multi_state(recipe: str = "float32") -> bytes:
    return _build("multi-state", make_streaming_multi_state, recipe)


def make_streaming_with_controls():
    """A streaming conv with two more signatures, as apps ship them: ``reset`` (zero the ring
    buffer) and ``set_gain`` (a variable the step only reads). The step is
    ``serving_default``; the other signatures' assignments are not part of it."""
    import tensorflow as tf

    rng = np.random.default_rng(23)
    kernel = tf.constant(rng.normal(0, 0.4, (3, FEATURES, 6)).astype(np.float32))

    class WithControls(tf.Module):
        def __init__(self):
            self.buffer = tf.Variable(tf.zeros([1, 2, FEATURES]), name="ring_buffer")
            self.gain = tf.Variable(rng.uniform(0.5, 1.5, (6,)).astype(np.float32),
                                    name="gain")

        @tf.function(input_signature=[tf.TensorSpec([1, 1, FEATURES], tf.float32,
                                                    name="frame")])
        def step(self, frame):
            window = tf.concat([self.buffer, frame], axis=1)
            self.buffer.assign(window[:, 1:])
            h = tf.reshape(tf.nn.conv1d(window, kernel, 1, "VALID"), [1, 6])
            return {"scores": tf.tanh(h) * self.gain}

        @tf.function(input_signature=[])
        def reset(self):
            self.buffer.assign(tf.zeros([1, 2, FEATURES]))
            return {"done": tf.constant(1)}

        @tf.function(input_signature=[tf.TensorSpec([6], tf.float32, name="gain")])
        def set_gain(self, gain):
            self.gain.assign(gain)
            return {"gain": gain + 0.0}

    module = WithControls()
    return module, {"serving_default": module.step, "reset": module.reset,
                    "set_gain": module.set_gain}


def streaming_with_controls() -> bytes:
    def build():
        import tempfile

        import tensorflow as tf

        module, signatures = make_streaming_with_controls()
        with tempfile.TemporaryDirectory() as d:
            tf.saved_model.save(module, d, signatures=signatures)
            converter = tf.lite.TFLiteConverter.from_saved_model(
                d, signature_keys=list(signatures))
            converter.experimental_enable_resource_variables = True
            return converter.convert()

    return cached("streaming-with-controls", build, inspect.getsource(make_streaming_with_controls))


def make_streaming_two_heads():
    """A streaming conv with two outputs of different shapes: ``scores`` [1, 4] and a voice
    activity probability ``activity`` [1, 1] from a running average state [1, 6]."""
    import tensorflow as tf

    rng = np.random.default_rng(24)
    kernel = tf.constant(rng.normal(0, 0.4, (3, FEATURES, 6)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 0.4, (6, 4)).astype(np.float32))
    activity = tf.constant(rng.normal(0, 0.6, (6, 1)).astype(np.float32))

    class TwoHeads(tf.Module):
        def __init__(self):
            self.buffer = tf.Variable(tf.zeros([1, 2, FEATURES]), name="buffer")
            self.energy = tf.Variable(tf.zeros([1, 6]), name="energy")

        @tf.function(input_signature=[tf.TensorSpec([1, 1, FEATURES], tf.float32,
                                                    name="frame")])
        def step(self, frame):
            window = tf.concat([self.buffer, frame], axis=1)
            self.buffer.assign(window[:, 1:])
            h = tf.nn.relu(tf.reshape(tf.nn.conv1d(window, kernel, 1, "VALID"), [1, 6]))
            energy = 0.7 * self.energy + 0.3 * h
            self.energy.assign(energy)
            return {"scores": h @ dense, "activity": tf.sigmoid(energy @ activity)}

    module = TwoHeads()
    return module, module.step


def streaming_two_heads(recipe: str = "float32") -> bytes:
    return _build("two-heads", make_streaming_two_heads, recipe)
