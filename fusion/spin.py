"""A spinning barrier for a team of numba threads that meet once per RNN step.

libgomp's own barrier sleeps at once under ``OMP_WAIT_POLICY=PASSIVE`` (which :mod:`kernels` sets,
so that numba's and OpenBLAS's pools do not spin against each other between kernels), and on a
virtual machine every wake-up costs tens of microseconds: a step of an H=256, B=16 LSTM is about
60 us of work per thread.  Inside one layer's step loop the team's threads run nothing else, so
they wait by spinning there (a ``pause`` per try), and yield the core after ``SPINS`` tries in case
the thread they wait for was descheduled.  Between calls the team's threads sleep as usual.

Each thread writes only its own slot of ``arrive`` (64 bytes apart, so no two share a cache line)
with a release store after its step's writes, and reads the others' with acquire loads before
its next step's reads: the LLVM atomics numba would not otherwise emit (a plain load in a spin
loop may be hoisted out of it, and plain stores may move past the flag; fusion/native.py).

The barrier (:func:`fusion.cpuloop_numba.meet`) is compiled with the loops that use it and kept
in the kernel cache; the address of ``sched_yield`` is an argument, since a constant address
would differ in the next process.
"""
from __future__ import annotations

import ctypes
import functools

SLOT = 8            # int64s per thread's slot: one 64-byte cache line
SPINS = 1 << 12     # tries before each yield of the core


def sched_yield_address() -> int:
    """Where this process's ``sched_yield`` is (the barrier calls it by address)."""
    return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value


@functools.lru_cache(maxsize=1)
def barrier():
    """``wait(arrive, p, n, k)``: thread p of n has finished phase k (k = 1, 2, ...; ``arrive``
    zeroed before the team starts, ``n * SLOT`` int64s); returns once every thread has.  For
    numba code of one process (the address of ``sched_yield`` is bound in): the cached loops call
    :func:`fusion.cpuloop_numba.meet` with it as an argument."""
    import numba

    from .cpuloop_numba import meet
    yield_at = sched_yield_address()

    @numba.njit(inline="always")
    def wait(arrive, p, n, k):
        meet(arrive, p, n, k, yield_at)
    return wait
