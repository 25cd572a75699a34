"""Cold samples: evict the last-level cache between samples by writing a buffer larger than it.

Warm mode (the default) times a kernel whose weights and inputs are still in cache from the
previous call, which is what a steady training or inference loop sees.  Cold mode (``--cold``)
writes ``2 x`` the last-level cache between samples, outside the timed region, so each sample
starts from DRAM/HBM, as a layer does when other layers ran in between.
"""
from __future__ import annotations

import glob

DEFAULT_CPU_LLC = 32 << 20   # when the size cannot be read from sysfs


def cpu_llc_bytes() -> int:
    """Largest cache of cpu0 from sysfs (e.g. L3), in bytes."""
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if text[-1:].isalpha() else text
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or DEFAULT_CPU_LLC


class CpuFlusher:
    def __init__(self, llc: int | None = None):
        import numpy as np
        self.bytes = 2 * (llc or cpu_llc_bytes())
        self._buf = np.ones(self.bytes // 8, dtype=np.float64)

    def __call__(self):
        self._buf += 1.0   # read and write every line: evicts whatever the case left in cache


class GpuFlusher:
    def __init__(self):
        import cupy
        self._cp = cupy
        l2 = cupy.cuda.Device().attributes["L2CacheSize"]
        self.bytes = 2 * l2
        self._buf = cupy.empty(self.bytes // 4, dtype=cupy.float32)

    def __call__(self):
        # memset through the L2 on the current stream; the timer's start event is recorded after it
        self._buf.fill(1.0)


def flusher_for(device: str):
    return GpuFlusher() if device == "cuda" else CpuFlusher()
