"""Whether this CPU runs bf16 GEMMs natively: AVX512-BF16 (``vdpbf16ps``) or AMX-BF16.

The numba backend computes bf16 as oneDNN bf16 GEMMs (bf16 operands, fp32 accumulation) plus its
own fp32 cell kernels, so it offers bf16 only where oneDNN dispatches to an ISA with bf16 dot
products.  oneDNN's effective ISA is the judge, not the CPU flags alone: it is what runs the GEMMs,
and ``ONEDNN_MAX_CPU_ISA`` can hold it below what the CPU has.  The flags only make the reason
more precise.  Without those instructions oneDNN would still accept bf16 (converting to fp32 in
its kernels), which is slower than fp32 itself: not a row worth timing.
"""
from __future__ import annotations

import functools

# dnnl_cpu_isa_avx512_core_bf16.  oneDNN's ISA codes are bit masks, each ISA holding the bits of
# those it extends: avx512_core_fp16 (0x1ef) and the AMX ones (0xfef, 0x1fef) contain these bits.
BF16_ISA = 0xE7
CPU_FLAGS = ("avx512_bf16", "amx_bf16")     # /proc/cpuinfo's names of the two


def cpu_flags() -> set:
    """The CPU's feature flags as Linux lists them (empty elsewhere, or when unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def missing() -> str | None:
    """None when oneDNN's bf16 GEMMs run on AVX512-BF16 or AMX here; else why not, in one line."""
    from .errors import MissingDependency
    from .onednn import lib as L
    try:
        lib = L.load()
    except MissingDependency as e:
        return f"bf16 on the CPU runs its GEMMs on oneDNN, which cannot be loaded: {e}"
    if lib.isa_code & BF16_ISA == BF16_ISA:
        return None
    have = sorted(cpu_flags() & set(CPU_FLAGS))
    if have:
        return (f"the CPU has {', '.join(have)} but oneDNN {lib.version} dispatches to {lib.isa} "
                "(is ONEDNN_MAX_CPU_ISA set?); bf16 needs avx512_core_bf16 or above")
    return (f"bf16 on the CPU needs AVX512-BF16 or AMX-BF16 (CPU flag {' or '.join(CPU_FLAGS)}), "
            f"which this CPU lacks (oneDNN {lib.version} dispatches to {lib.isa})")
