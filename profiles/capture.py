"""The profiler capture range: ``--profile`` brackets only the measured samples with
cudaProfilerStart/Stop, so ``nsys profile --capture-range=cudaProfilerApi`` records exactly the
timed kernels (no warm-up, no compilation, no reference check).  Without a GPU it does nothing.
"""
from __future__ import annotations

import contextlib

_enabled = False


def enable(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def capture_range(device: str):
    if not (_enabled and device == "cuda"):
        yield
        return
    import cupy
    cupy.cuda.runtime.deviceSynchronize()  # nothing from before the range leaks into it
    cupy.cuda.runtime.profilerStart()
    try:
        yield
    finally:
        cupy.cuda.runtime.deviceSynchronize()
        cupy.cuda.runtime.profilerStop()
