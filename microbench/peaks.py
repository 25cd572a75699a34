"""Measured ceilings, so tables can show a fraction of what this machine actually reaches.

The compute ceiling is a large square GEMM through NumPy's BLAS (all cores), the one kernel every
CPU variant leans on; it is measured once per process and precision, in about a second.
"""
from __future__ import annotations

import functools
import time

import numpy as np


@functools.lru_cache(maxsize=None)
def cpu_gemm_gflops(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=out)  # warm-up: threads started, pages touched
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9
