"""The one tolerance rule, shared by the tests, the benchmarks and ``python -m fastlstm check``.

Errors are relative norm errors ``||a - b|| / ||b||`` against the NumPy reference (or torch).
"""
from __future__ import annotations

import numpy as np

__all__ = ["TOLERANCES", "rel_err", "tolerance", "assert_close"]

#: Relative norm error allowed, per compute dtype and quantity ("forward" = y, h, c;
#: "grad" = dx, dh0, dc0 and every parameter gradient). The float32 bounds hold for
#: reasonably conditioned problems, not for every input: float32 rounding alone can exceed
#: them (over 300 seeds of a 3-layer LSTM projected to one unit, torch's own float32 forward
#: is up to 3.7e-5 from the float64 result, ours up to 2.5e-5). Tests use fixed seeds.
TOLERANCES = {
    np.dtype(np.float64): {"forward": 1e-10, "grad": 1e-10},
    np.dtype(np.float32): {"forward": 2e-5, "grad": 1e-4},
}


def rel_err(actual, expected) -> float:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs {b.shape}")
    denom = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    if denom == 0.0:
        return float(num)
    return float(num / denom)


def tolerance(dtype, kind: str) -> float:
    return TOLERANCES[np.dtype(dtype)][kind]


def assert_close(actual, expected, dtype, kind: str, what: str = "") -> float:
    """Assert ``rel_err(actual, expected) <= tolerance(dtype, kind)``; return the error."""
    err = rel_err(actual, expected)
    tol = tolerance(dtype, kind)
    if not np.all(np.isfinite(np.asarray(actual, dtype=np.float64))):
        raise AssertionError(f"{what}: non-finite values in result")
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.1e} ({np.dtype(dtype).name}, {kind})")
    return err
