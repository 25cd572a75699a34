"""The correctness gate: outputs against the float64 reference, tolerance by precision."""
from __future__ import annotations

import numpy as np

from kernels import dtypes

from .registry import Check


def compare(outputs, reference, precision: str, names=("y", "h_n", "c_n"), tol=None) -> Check:
    """Every output against its reference, error relative to the reference's largest magnitude;
    NaN never passes, in the outputs or in the reference (with a NaN reference every error is NaN
    and ``NaN > tol`` is false, so it is refused explicitly).  ``tol``: one tolerance for all
    outputs, or a sequence with one per output (default: the precision's).  A failure reports the
    output furthest past its tolerance, a pass the largest error."""
    per_output = isinstance(tol, (list, tuple))
    tols = list(tol) if per_output else [dtypes.tolerance(precision) if tol is None else tol] * len(reference)
    fmt = ".1e" if per_output else ".0e"
    outputs = list(outputs)
    if len(outputs) != len(reference):
        return Check(float("inf"), tols[0], False,
                     f"{len(outputs)} arrays returned; expected {len(reference)} ({', '.join(names)})")
    if not outputs:
        return Check(float("inf"), tols[0] if tols else float("nan"), False, "no output to check")
    rows = []
    for name, got, want, t in zip(names, outputs, reference, tols):
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            return Check(float("inf"), t, False, f"{name} has shape {got.shape}, expected {want.shape}")
        if not np.all(np.isfinite(want)):
            return Check(float("nan"), t, False,
                         f"reference {name} contains NaN or Inf: no output can be checked against it")
        if not np.all(np.isfinite(got)):
            return Check(float("nan"), t, False, f"{name} contains NaN or Inf")
        scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
        err = float(np.max(np.abs(got - want))) / scale if got.size else 0.0
        rows.append((name, err, t))
    failed = [r for r in rows if not r[1] <= r[2]]   # "not <=": a NaN error or tolerance fails
    if failed:
        name, err, t = max(failed, key=lambda r: r[1] / r[2])
        return Check(err, t, False, f"{name}: max relative error {err:.2e} > {t:{fmt}}")
    name, err, t = max(rows, key=lambda r: r[1])
    return Check(err, t, True, "")


def to_host(a):
    """A NumPy array from a NumPy or CuPy array (a device-to-host copy for the latter)."""
    return np.asarray(a.get() if hasattr(a, "get") else a)
