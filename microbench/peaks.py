"""Measured ceilings, so tables can show a fraction of what this machine actually reaches.

The compute ceiling is a large square GEMM through NumPy's BLAS (all cores), the one kernel every
CPU variant leans on; it is measured once per process and precision, in about a second.  The
memory ceiling is a streaming add (``a = b + c``, STREAM's "add" kernel) over arrays well beyond
the last-level cache, counted as 3 arrays of traffic.  On a GPU both come from CuPy (a cuBLAS GEMM
and the same add on the device; written for CuPy, run only where a GPU is).  :func:`roofs`
returns both with what was run and when, for the roofline.
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


@functools.lru_cache(maxsize=None)
def cpu_stream_gbps(mib: int = 96, repeats: int = 5) -> float:
    """GB/s of ``np.add(b, c, out=a)`` over float32 arrays of ``mib`` MiB each (3 arrays moved)."""
    n = mib * 2**20 // 4
    b, c = np.ones(n, np.float32), np.ones(n, np.float32)
    a = np.empty(n, np.float32)
    np.add(b, c, out=a)               # pages touched
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.add(b, c, out=a)
        best = min(best, time.perf_counter() - t0)
    return 3 * n * 4 / best / 1e9


def gpu_roofs(n: int = 8192, mib: int = 1024, repeats: int = 10) -> dict:  # pragma: no cover - GPU
    """cuBLAS fp32 GEMM GFLOP/s and device streaming-add GB/s, timed with CUDA events."""
    import cupy as cp
    a = cp.ones((n, n), cp.float32)
    x = cp.ones(mib * 2**20 // 4, cp.float32)
    y, z = cp.ones_like(x), cp.empty_like(x)

    def best(fn):
        fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        out = float("inf")
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            out = min(out, cp.cuda.get_elapsed_time(start, end) / 1e3)
        return out
    gemm = best(lambda: a @ a)
    add = best(lambda: cp.add(x, y, out=z))
    return {"gflops": 2 * n ** 3 / gemm / 1e9, "gbps": 3 * x.nbytes / add / 1e9,
            "gemm": f"cuBLAS fp32 {n}^3 GEMM", "stream": f"streaming add, 3 x {mib} MiB"}


def roofs(device: str = "cpu", dtype: str = "float32") -> dict:
    """The machine's measured ceilings for the roofline, with what was run and when."""
    import datetime
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if device == "cuda":
        out = gpu_roofs()
        out.update(where="this GPU", date=date)
        return out
    return {"gflops": cpu_gemm_gflops(dtype), "gbps": cpu_stream_gbps(), "date": date,
            "where": "this machine's CPU", "gemm": f"NumPy BLAS {dtype} 1024^3 GEMM",
            "stream": "NumPy streaming add, 3 x 96 MiB"}
