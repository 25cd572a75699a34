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
loop may be hoisted out of it, and plain stores may move past the flag).
"""
from __future__ import annotations

import ctypes
import functools
import platform

SLOT = 8            # int64s per thread's slot: one 64-byte cache line
SPINS = 1 << 12     # tries before each yield of the core


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
    def relax(typingctx):
        def codegen(context, builder, sig, args):
            if platform.machine().lower() in ("x86_64", "amd64"):     # numba's JIT has no inline asm
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse2.pause")
                builder.call(fn, [])
            return context.get_dummy_value()
        return types.void(), codegen

    return load_acquire, store_release, relax


@functools.lru_cache(maxsize=1)
def barrier():
    """``wait(arrive, p, n, k)``: thread p of n has finished phase k (k = 1, 2, ...; ``arrive``
    zeroed before the team starts, ``n * SLOT`` int64s); returns once every thread has."""
    import numba
    load_acquire, store_release, relax = _intrinsics()
    sched_yield = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value)

    @numba.njit(inline="always")
    def wait(arrive, p, n, k):
        store_release(arrive, p * SLOT, k)
        for q in range(n):
            tries = 0
            while load_acquire(arrive, q * SLOT) < k:
                tries += 1
                if tries < SPINS:
                    relax()
                else:
                    sched_yield()
                    tries = 0
    return wait
