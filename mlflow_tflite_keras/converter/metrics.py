"""How far a Keras result is from the interpreter's: the figures every parity check reports."""

from __future__ import annotations

import numpy as np


def error_metrics(expected: np.ndarray, actual: np.ndarray, err: np.ndarray
                  ) -> tuple[float, float, float]:
    """``(max_abs_error, max_rel_error, cosine)`` of ``actual`` against ``expected`` (float64,
    one shape), ``err`` the absolute errors judged (e.g. with saturation forgiven): the one
    definition of the figures every parity report shows. NaN in both is agreement, NaN in
    one an infinite error. The relative error divides by the larger of the finite expected
    values' range and magnitude; the cosine reads non-finite values as numbers."""
    err = np.where(np.isnan(expected) & np.isnan(actual), 0.0, err)
    max_abs = float(np.max(np.where(np.isnan(err), np.inf, err))) if err.size else 0.0
    finite = expected[np.isfinite(expected)]
    scale = max(float(np.ptp(finite)) if finite.size else 0.0,
                float(np.abs(finite).max(initial=0.0)), 1e-12)
    e, a = np.nan_to_num(expected.ravel()), np.nan_to_num(actual.ravel())
    denom = np.linalg.norm(e) * np.linalg.norm(a)
    cosine = float(np.dot(e, a) / denom) if denom else (1.0 if max_abs == 0 else 0.0)
    return max_abs, max_abs / scale, cosine
