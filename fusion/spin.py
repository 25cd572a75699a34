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
``SPINS`` tries) the waiter sleeps in ``SLEEP_US`` naps instead: its core goes idle, the
scheduler moves the waiting thread (or the competitor) onto it, and the barrier's added latency
stays one nap.  The run-queue wait this leaves is what :mod:`microbench.contention` reports.

Each thread writes only its own slot of ``arrive`` (64 bytes apart, so no two share a cache line)
with a release store after its step's writes, and reads the others' with acquire loads before
its next step's reads: the LLVM atomics numba would not otherwise emit (a plain load in a spin
loop may be hoisted out of it, and plain stores may move past the flag).
"""
from __future__ import annotations

import ctypes
import functools
import platform

SLOT = 8            # int64s per thread's slot: one 64-byte cache line
SPINS = 1 << 12     # tries before each yield of the core
SPIN_CYCLES = 1 << 19   # time-stamp counter ticks (about 0.1-0.5 ms) of spinning before napping
SPIN_ROUNDS = 8         # without a readable counter: rounds of SPINS tries before napping
SLEEP_US = 50           # one nap once the spin is over


def _intrinsics():
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def _pointer(context, builder, aryty, ary, idx):
        arr = context.make_array(aryty)(context, builder, ary)
        return cgutils.get_item_pointer(context, builder, aryty, arr, [idx])

    @intrinsic
    def load_acquire(typingctx, arr, idx):
        if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
            return None

        def codegen(context, builder, sig, args):
            ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
            return builder.load_atomic(ptr, ordering="acquire", align=8)
        return types.int64(arr, types.intp), codegen

    @intrinsic
    def store_release(typingctx, arr, idx, val):
        if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
            return None

        def codegen(context, builder, sig, args):
            ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
            builder.store_atomic(args[2], ptr, ordering="release", align=8)
            return context.get_dummy_value()
        return types.void(arr, types.intp, types.int64), codegen

    @intrinsic
    def cycles(typingctx):
        """The time-stamp counter on x86-64 (rdtsc: readable in user mode); -1 elsewhere (an
        arm64 cycle counter read may trap), where the spin is bounded by rounds instead."""
        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            if platform.machine().lower() in ("x86_64", "amd64"):
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, []),
                                                    "llvm.readcyclecounter")
                return builder.call(fn, [])
            return ir.Constant(i64, -1)
        return types.int64(), codegen

    @intrinsic
    def relax(typingctx):
        def codegen(context, builder, sig, args):
            if platform.machine().lower() in ("x86_64", "amd64"):     # numba's JIT has no inline asm
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse2.pause")
                builder.call(fn, [])
            return context.get_dummy_value()
        return types.void(), codegen

    return load_acquire, store_release, relax, cycles


@functools.lru_cache(maxsize=1)
def barrier():
    """``wait(arrive, p, n, k)``: thread p of n has finished phase k (k = 1, 2, ...; ``arrive``
    zeroed before the team starts, ``n * SLOT`` int64s); returns once every thread has.  A waiter
    spins (yielding every ``SPINS`` tries), then naps once the spin bound is spent (see above)."""
    import numba
    load_acquire, store_release, relax, cycles = _intrinsics()
    libc = ctypes.CDLL(None)
    sched_yield = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(libc.sched_yield, ctypes.c_void_p).value)
    usleep = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint)(ctypes.cast(libc.usleep, ctypes.c_void_p).value)

    @numba.njit(inline="always")
    def wait(arrive, p, n, k):
        store_release(arrive, p * SLOT, k)
        start = cycles()
        rounds = 0
        napping = False
        for q in range(n):
            tries = 0
            while load_acquire(arrive, q * SLOT) < k:
                if napping:             # long past a step's imbalance: the core is given away
                    usleep(SLEEP_US)
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
                    sched_yield()
    return wait
