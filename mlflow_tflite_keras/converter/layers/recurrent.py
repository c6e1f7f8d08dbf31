"""Layers of the recurrent family (``converter/ops/recurrent.py``)."""

from __future__ import annotations

import keras
from keras import ops

from mlflow_tflite_keras.converter.layers.keras_op import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClippedLSTMCell(keras.layers.LSTMCell):
    """``keras.layers.LSTMCell`` whose cell state is clipped to ``[-cell_clip, cell_clip]``
    after each update, as TFLite's LSTM kernels do when ``cellClip > 0``."""

    def __init__(self, units, cell_clip: float = 0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.cell_clip = float(cell_clip)

    def _clip(self, c):
        return ops.clip(c, -self.cell_clip, self.cell_clip) if self.cell_clip > 0 else c

    def _compute_carry_and_output(self, x, h_tm1, c_tm1):
        c, o = super()._compute_carry_and_output(x, h_tm1, c_tm1)
        return self._clip(c), o

    def _compute_carry_and_output_fused(self, z, c_tm1):
        c, o = super()._compute_carry_and_output_fused(z, c_tm1)
        return self._clip(c), o

    def get_config(self):
        return {**super().get_config(), "cell_clip": self.cell_clip}


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntegerLSTMCell(keras.layers.LSTMCell):
    """``keras.layers.LSTMCell`` on the grids of TFLite's integer LSTM kernel (int8 input and
    hidden state, int16 gates and cell; lstm_eval.cc, 8x8_16 without layer norm), for
    emulated reconstructions: each gate's input and recurrent matmuls rounded to int16 Q3.12
    and added saturating; sigmoid / tanh outputs on Q0.15; ``f * c`` and ``i * g`` each
    rounded to the cell state's scale, added saturating, clipped to ``cell_clip``; the hidden
    state ``o * tanh(c)`` on the int8 output-state grid. Rounding half away from zero,
    straight-through gradients. The kernel's fixed-point sigmoid / tanh approximations are
    not replayed (float functions rounded to Q0.15)."""

    def __init__(self, units, cell_scale: float, hidden_scale: float,
                 hidden_zero_point: int, cell_clip: float = 0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.cell_scale = float(cell_scale)
        self.hidden_scale = float(hidden_scale)
        self.hidden_zero_point = int(hidden_zero_point)
        self.cell_clip = float(cell_clip)

    def call(self, inputs, states, training=False):
        from mlflow_tflite_keras.converter.layers.quantization import fake_quantize

        def q(v, scale, low=-32768, high=32767, zero_point=0):
            return fake_quantize(v, scale, zero_point, low, high)

        h_tm1, c_tm1 = states[0], states[1]
        gate_scale, unit = 2.0 ** -12, 2.0 ** -15  # Q3.12 pre-activations, Q0.15 gates
        x_part = ops.matmul(inputs, self.kernel)
        if self.use_bias:
            x_part = x_part + self.bias
        z = ops.clip(q(x_part, gate_scale) + q(ops.matmul(h_tm1, self.recurrent_kernel),
                                                gate_scale),
                     -32768 * gate_scale, 32767 * gate_scale)
        zi, zf, zc, zo = ops.split(z, 4, axis=-1)
        i = q(self.recurrent_activation(zi), unit)
        f = q(self.recurrent_activation(zf), unit)
        g = q(self.activation(zc), unit)
        o = q(self.recurrent_activation(zo), unit)
        c = q(f * c_tm1, self.cell_scale) + q(i * g, self.cell_scale)
        limit = 32767 * self.cell_scale
        if self.cell_clip > 0:
            limit = min(limit, round(self.cell_clip / self.cell_scale) * self.cell_scale)
        c = ops.clip(c, -min(limit, 32768 * self.cell_scale), limit)
        h = q(o * q(self.activation(c), unit), self.hidden_scale, -128, 127,
              self.hidden_zero_point)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "cell_scale": self.cell_scale,
                "hidden_scale": self.hidden_scale,
                "hidden_zero_point": self.hidden_zero_point, "cell_clip": self.cell_clip}
