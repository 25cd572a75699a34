"""The correctness gate beyond the first and the last call: a random sample of the timed calls,
and a second set of inputs.

**Sampled calls.**  The full check (every output against the float64 reference) runs on the
first call and on the last timed call; a kernel wrong on some call in between (stale state, a
buffer reused too early, a race with the previous call) would pass both.  Copying every call's
outputs would disturb the timing (memory, caches), so :class:`CallSampler` keeps a uniform random
sample of at most :data:`KEEP` calls (reservoir sampling), each as :data:`PER_ARRAY` elements read
at random positions of each output array.  Whether a call is kept, and where it is read, is drawn
after the call returned and its clock was read (from ``os.urandom``, not the case's seed), so no
kernel can know which of its calls are looked at; reading 64 elements costs microseconds and
touches 64 cache lines, outside the sample.  After timing, :meth:`CallSampler.check` compares the
kept calls with the last call's outputs at the same positions (within twice the case's tolerance
of each array's largest magnitude): the inputs never change between timed calls, and the last
call passes the full check.  A kernel wrong on one call in ten million may be missed; one wrong
on a tenth of its calls is caught with probability 1 - 0.9^8 per run (8 kept calls), and one that
is wrong from some call on, always (the last call is checked in full).

**Second inputs.**  A kernel that computes once and returns the cached arrays passes all of that.
A builder that offers it (``Prepared.vary``) gives a second set of inputs and the check against
their reference; :func:`vary_check` copies them into the arrays the timed call reads, calls it
once, checks, and copies the first inputs back (the runner then checks one more call on them).

Standard library and NumPy only (CuPy arrays are read through their own module).
"""
from __future__ import annotations

import dataclasses
import os
import random

import numpy as np

KEEP = 8           # calls kept per case
PER_ARRAY = 64     # positions read per output array of a kept call


def arrays_in(out) -> list:
    """The arrays of a call's return value (nested tuples, lists, dict values and dataclass
    fields), in order."""
    if out is None:
        return []
    if isinstance(out, (tuple, list)):
        return [a for part in out for a in arrays_in(part)]
    if isinstance(out, dict):
        return [a for part in out.values() for a in arrays_in(part)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):    # e.g. a gradients record
        return [a for f in dataclasses.fields(out) for a in arrays_in(getattr(out, f.name))]
    return [out] if hasattr(out, "shape") and hasattr(out, "dtype") else []


def _module(a):
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def _host(a) -> np.ndarray:
    a = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a
    return np.asarray(a).astype(np.float64)


def read_at(a, positions: np.ndarray) -> np.ndarray:
    """The elements of ``a`` at flat (row-major) ``positions``, as float64 on the host; any
    strides, no copy of the array."""
    xp = _module(a)
    index = tuple(xp.asarray(i) for i in np.unravel_index(positions, a.shape))
    return _host(a[index])


class CallSampler:
    """Offered every call's outputs (:meth:`offer`), keeps a uniform random sample of them."""

    def __init__(self, keep: int = KEEP, per_array: int = PER_ARRAY, rng: random.Random | None = None):
        self.keep, self.per_array = keep, per_array
        self._rng = rng or random.Random(int.from_bytes(os.urandom(16), "little"))
        self.calls = 0
        self._kept: dict = {}       # slot -> (call number, [(positions, values) per array])

    @property
    def kept(self) -> int:
        return len(self._kept)

    def offer(self, out) -> None:
        """Called after each call, outside its timing, with what it returned."""
        self.offer_lazy(lambda: out)

    def offer_lazy(self, outputs) -> None:
        """As :meth:`offer`, with a callable that returns the call's outputs, called only when
        the call is kept (a framework worker's outputs are a conversion)."""
        self.calls += 1
        if len(self._kept) < self.keep:
            slot = len(self._kept)
        else:                           # reservoir: keep call n with probability keep/n
            slot = self._rng.randrange(self.calls)
            if slot >= self.keep:
                return
        reads = []
        for a in arrays_in(outputs()):
            n = int(np.prod(a.shape))
            pos = np.array(sorted(self._rng.sample(range(n), min(n, self.per_array))), dtype=np.int64)
            reads.append((pos, read_at(a, pos) if n else np.empty(0)))
        self._kept[slot] = (self.calls, reads)

    def export(self) -> list:
        """The kept reads as JSON-ready lists (a framework worker sends them to the runner)."""
        return [[call, [[pos.tolist(), got.tolist()] for pos, got in reads]]
                for call, reads in self._kept.values()]

    def merge(self, exported: list, calls: int) -> None:
        """Add the reads a worker exported (of ``calls`` calls) to this sampler's."""
        for call, reads in exported:
            self._kept[len(self._kept)] = (self.calls + int(call), [
                (np.asarray(pos, dtype=np.int64), np.asarray(got, dtype=np.float64)) for pos, got in reads])
        self.calls += int(calls)

    def check(self, last, tol: float) -> tuple | None:
        """None when every kept call agrees with ``last`` (the last call's outputs, which the full
        check passed) at the positions read, within ``2 * tol`` of each array's largest
        magnitude; else (one line saying which call and element differ, the relative error).
        NaN never agrees."""
        arrays = arrays_in(last)
        scales: dict = {}
        for call, reads in sorted(self._kept.values(), key=lambda kv: kv[0]):
            if len(reads) != len(arrays):
                return f"call {call} of {self.calls} returned {len(reads)} arrays, the last call {len(arrays)}", None
            for j, ((pos, got), a) in enumerate(zip(reads, arrays)):
                if not pos.size:
                    continue
                if pos[-1] >= int(np.prod(a.shape)):
                    return f"call {call} of {self.calls}: output {j} is smaller in the last call", None
                if j not in scales:
                    xp = _module(a)
                    scales[j] = max(float(xp.max(xp.abs(a.astype(xp.float64)))) if a.size else 0.0,
                                    np.finfo(np.float64).tiny)
                want = read_at(a, pos)
                err = np.abs(got - want) / scales[j]
                bad = ~(err <= 2 * tol)                # NaN is bad
                if bad.any():
                    i = int(np.argmax(bad))
                    return (f"call {call} of {self.calls} (one of {len(self._kept)} sampled at random) differs "
                            f"from the last call at output {j}, element {int(pos[i])}: {got[i]:.6g} vs "
                            f"{want[i]:.6g} (relative {err[i]:.1e} > 2 x tol {tol:.0e})"), float(err[i])
        return None


class SampledTimer:
    """A harness timer that offers each call's outputs to a :class:`CallSampler` after its clock
    was read (the harness's timers keep them in ``last``)."""

    def __init__(self, timer, sampler: CallSampler):
        self.timer, self.sampler = timer, sampler
        self.name = timer.name

    @property
    def last(self):
        return getattr(self.timer, "last", None)

    def sample(self, fn) -> float:
        seconds = self.timer.sample(fn)
        out = self.last
        if out is not None:
            self.sampler.offer(out)
        return seconds

    def overhead(self, *args, **kw) -> float:
        return self.timer.overhead(*args, **kw)


def _assign(dst, src) -> None:
    dst[...] = _module(dst).asarray(src)


def _copy(a):
    return a.copy()


def vary_check(prepared, run, sync=None):
    """Run ``run`` once on ``prepared.vary()``'s second inputs (copied into the arrays it reads)
    and return their check; the first inputs are copied back on every path."""
    new, check = prepared.vary()
    saved = {k: _copy(prepared.inputs[k]) for k in new}
    try:
        for k, v in new.items():
            _assign(prepared.inputs[k], v)
        out = run()
        if sync is not None:
            sync()
        return check(out)
    finally:
        for k, v in saved.items():
            _assign(prepared.inputs[k], v)
