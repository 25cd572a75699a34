"""The correctness gate: outputs against the float64 reference, tolerance by precision."""
from __future__ import annotations

import numpy as np

from kernels import dtypes

from .registry import Check


def compare(outputs, reference, precision: str, names=("y", "h_n", "c_n"), tol: float | None = None) -> Check:
    """Largest error of any output, relative to that output's largest magnitude; NaN never passes."""
    tol = dtypes.tolerance(precision) if tol is None else tol
    worst, where = 0.0, ""
    for name, got, want in zip(names, outputs, reference):
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape:
            return Check(float("inf"), tol, False, f"{name} has shape {got.shape}, expected {want.shape}")
        if not np.all(np.isfinite(got)):
            return Check(float("nan"), tol, False, f"{name} contains NaN or Inf")
        scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
        err = float(np.max(np.abs(got - want))) / scale
        if err > worst or not where:
            worst, where = err, name
    passed = worst <= tol
    return Check(worst, tol, passed, "" if passed else f"{where}: max relative error {worst:.2e} > {tol:.0e}")


def to_host(a):
    """A NumPy array from a NumPy or CuPy array (a device-to-host copy for the latter)."""
    return np.asarray(a.get() if hasattr(a, "get") else a)
