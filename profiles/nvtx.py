"""NVTX naming for the whole package: domain ``microbench``, one range per case and per phase.

Case ranges are *nested* push/pop ranges ``{op}`` > ``{variant}`` > ``{backend}``, so the path
``lstm/fused/numpy`` is both what Nsight Systems shows and what Nsight Compute's filter takes:
``ncu --nvtx --nvtx-include "microbench@lstm/fused/"``.  Inside an implementation the phases are
``gemm_x``, ``step`` (with ``gemm_h`` and ``pointwise`` nested in it).

Ranges cost a little even with no profiler attached (a Python call and a C call per push and
pop); :func:`cost_per_range` measures it and the harness reports it per case.  ``set_level``
switches ranges off (``--nvtx off``) or keeps only the case ranges (``--nvtx case``).
"""
from __future__ import annotations

import contextlib
import time

DOMAIN = "microbench"
LEVELS = ("on", "case", "off")

_level = "on"
_count = 0          # ranges pushed since the last reset: the harness counts ranges per run
_push = _pop = None


def _load():
    global _push, _pop
    if _push is None:
        try:
            import nvtx
            dom = nvtx.get_domain(DOMAIN)
            attrs = {}  # one registered attribute object per range name: pushes then cost ~0.1 us

            def _push(name):
                a = attrs.get(name)
                if a is None:
                    a = attrs[name] = dom.get_event_attributes(message=name)
                dom.push_range(a)

            _pop = dom.pop_range
        except Exception:  # nvtx missing or its C library unloadable: ranges become no-ops
            _push = lambda name: None  # noqa: E731
            _pop = lambda: None  # noqa: E731
    return _push, _pop


def set_level(level: str) -> None:
    global _level
    if level not in LEVELS:
        from kernels.errors import BadInput
        raise BadInput(f"--nvtx {level!r} is unknown; allowed: {', '.join(LEVELS)}")
    _level = level


def level() -> str:
    return _level


def available() -> bool:
    try:
        import nvtx  # noqa: F401
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _range(name: str):
    global _count
    push, pop = _load()
    push(name)
    _count += 1
    try:
        yield
    finally:
        pop()


_NULL = contextlib.nullcontext()


def phase(name: str):
    """A range inside an implementation (``gemm_x``, ``step``, ...); on only at level ``on``."""
    return _range(name) if _level == "on" else _NULL


@contextlib.contextmanager
def case(op: str, variant: str, backend: str):
    """Nested ranges ``op`` > ``variant`` > ``backend`` around a measured region."""
    if _level == "off":
        yield
        return
    with _range(op), _range(variant), _range(backend):
        yield


def reset_count() -> int:
    global _count
    n, _count = _count, 0
    return n


def cost_per_range(n: int = 20000) -> float:
    """Seconds one push+pop pair costs here, with whatever tool is (or is not) attached."""
    global _count
    saved = _count
    push, pop = _load()
    with contextlib.suppress(Exception):
        for _ in range(200):
            with _range("calibrate"):
                pass
    t0 = time.perf_counter()
    for _ in range(n):
        with _range("calibrate"):
            pass
    dt = (time.perf_counter() - t0) / n
    _count = saved
    return dt
