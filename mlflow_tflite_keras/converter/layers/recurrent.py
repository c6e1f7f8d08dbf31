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
