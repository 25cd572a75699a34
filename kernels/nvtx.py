"""NVTX naming for the whole package: domain ``microbench``, one range per case and per phase.

Case ranges are *nested* push/pop ranges ``{op}`` > ``{variant}`` > ``{backend}``, so the path
``lstm/fused/numpy`` is both what Nsight Systems shows and what Nsight Compute's filter takes:
``ncu --nvtx --nvtx-include "microbench@lstm/fused/"``.  Inside an implementation the phases are
``gemm_x``, ``step`` (with ``gemm_h`` and ``pointwise`` nested in it).

Ranges cost a little even with no profiler attached (a Python call and a C call per push and
pop: 11-22% of a small fused LSTM call on a CPU), and framework rows carry none, so the default
level ``auto`` pushes them only when an NVTX tool is attached: Nsight Systems, Nsight Compute
and other NVTX tools announce themselves to the NVTX library through ``NVTX_INJECTION64_PATH``
(without it every NVTX call is a no-op in C and only the Python cost would remain).
``set_level`` forces them on (``--nvtx on``), keeps only the case ranges (``--nvtx case``) or
switches them off; :func:`level` is the level in force (never ``auto``), which records and
tables state.  :func:`cost_per_range` measures a push+pop pair; the harness reports it per case.
"""
from __future__ import annotations

import contextlib
import os
import time

DOMAIN = "microbench"
LEVELS = ("auto", "on", "case", "off")
INJECTION_VARS = ("NVTX_INJECTION64_PATH", "NVTX_INJECTION32_PATH")


def tool_attached() -> bool:
    """Whether an NVTX tool (nsys, ncu, another injection library) will receive our ranges."""
    return any(os.environ.get(v) for v in INJECTION_VARS)


def _resolve(level: str) -> str:
    return ("on" if tool_attached() else "off") if level == "auto" else level


_requested = "auto"
_level = _resolve("auto")
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
    global _requested
    _requested, _level = level, _resolve(level)


def level() -> str:
    """The level in force: on, case or off (``auto`` resolved)."""
    return _level


def requested() -> str:
    """What was asked for (``auto`` by default)."""
    return _requested


def describe() -> str:
    """One line for tables: whether ranges were pushed, and why."""
    why = {"auto": ("an NVTX tool is attached" if tool_attached() else "no NVTX tool attached")}
    reason = why.get(_requested, f"--nvtx {_requested}")
    return f"NVTX ranges {'off' if _level == 'off' else _level} ({reason})"


@contextlib.contextmanager
def forced_on():
    """Ranges on for a block (an in-process trace that records them), the level restored after."""
    global _level
    saved = _level
    _level = "on"
    try:
        yield
    finally:
        _level = saved


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
