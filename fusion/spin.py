"""A spinning barrier for a team of numba threads that meet once per RNN step.

libgomp's own barrier sleeps at once under ``OMP_WAIT_POLICY=PASSIVE`` (which :mod:`kernels` sets,
so that numba's and OpenBLAS's pools do not spin against each other between kernels), and on a
virtual machine every wake-up costs tens of microseconds: a step of an H=256, B=16 LSTM is about
60 us of work per thread.  Inside one layer's step loop the team's threads run nothing else, so
they wait by spinning there (a ``pause`` per try), and yield the core after ``SPINS`` tries in case
the thread they wait for was descheduled.  Between calls the team's threads sleep as usual.

The spin is bounded.  On a quiet machine the threads of a step arrive within microseconds of each
other, well inside the bound.  When another process holds a core, the thread waited for can be
off the CPU for a whole scheduler slice (milliseconds), and a waiter that keeps spinning and
yielding keeps its own core busy: ``sched_yield`` gives the core only to threads queued on that
same core, so the descheduled team member, queued behind the competing process elsewhere, still
waits (``lstm --fused`` at H256 B16 went from 4.3 to 20 ms per call beside one busy process).
Past ``SPIN_CYCLES`` of the time-stamp counter (x86-64; elsewhere ``SPIN_ROUNDS`` rounds of
``SPINS`` tries) the waiter sleeps in ``SLEEP_US`` naps (``usleep``) instead: its core goes idle,
the scheduler moves the waiting thread (or the competitor) onto it, and the barrier's added
latency stays one nap.  The run-queue wait this leaves is what :mod:`microbench.contention`
reports.

Each thread writes only its own slot of ``arrive`` (64 bytes apart, so no two share a cache line)
with a release store after its step's writes, and reads the others' with acquire loads before
its next step's reads: the LLVM atomics numba would not otherwise emit (a plain load in a spin
loop may be hoisted out of it, and plain stores may move past the flag; fusion/native.py).

The barrier (:func:`meet`) is compiled with the loops that use it and kept in the kernel cache;
the addresses of ``sched_yield`` and ``usleep`` are arguments, since a constant address would
differ in the next process.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from kernels.jit import njit

from .native import call_int, cycles, load_acquire, relax, store_release

SLOT = 8            # int64s per thread's slot: one 64-byte cache line
SPINS = 1 << 12     # tries before each yield of the core
SPIN_CYCLES = 1 << 19   # time-stamp counter ticks (about 0.1-0.5 ms) of spinning before napping
SPIN_ROUNDS = 8         # without a readable counter: rounds of SPINS tries before napping
SLEEP_US = 50           # one nap once the spin is over


def sched_yield_address() -> int:
    """Where this process's ``sched_yield`` is (the barrier calls it by address)."""
    return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value


def usleep_address() -> int:
    """Where this process's ``usleep`` is (the barrier naps through it, by address)."""
    return ctypes.cast(ctypes.CDLL(None).usleep, ctypes.c_void_p).value


@njit(inline="always")
def meet(arrive, p, n, k, yield_at, nap_at):
    """Thread p of n has finished phase k; returns once every thread has (module docstring): spins,
    yields the core (``sched_yield`` at ``yield_at``) every SPINS tries, and once the spin bound
    is spent naps (``usleep`` at ``nap_at``) instead, so a partner descheduled behind another
    process can have the waiter's core."""
    store_release(arrive, p * SLOT, k)
    start = cycles()
    rounds = 0
    napping = False
    for q in range(n):
        tries = 0
        while load_acquire(arrive, q * SLOT) < k:
            if napping:             # long past a step's imbalance: the core is given away
                call_int(nap_at, (np.int32(SLEEP_US),))
                continue
            tries += 1
            if tries < SPINS:
                relax()
                continue
            tries = 0
            rounds += 1
            spun = cycles() - start if start >= 0 else -1
            napping = spun > SPIN_CYCLES or (spun < 0 and rounds > SPIN_ROUNDS)
            if not napping:
                call_int(yield_at, ())


@functools.lru_cache(maxsize=1)
def barrier():
    """``wait(arrive, p, n, k)``: thread p of n has finished phase k (k = 1, 2, ...; ``arrive``
    zeroed before the team starts, ``n * SLOT`` int64s); returns once every thread has; a waiter
    spins, yielding every ``SPINS`` tries, then naps (see above).  For numba code of one process
    (the addresses of ``sched_yield`` and ``usleep`` are bound in): the cached loops call
    :func:`meet` with them as arguments."""
    import numba
    yield_at, nap_at = sched_yield_address(), usleep_address()

    @numba.njit(inline="always")
    def wait(arrive, p, n, k):
        meet(arrive, p, n, k, yield_at, nap_at)
    return wait
