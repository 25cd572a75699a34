"""numba intrinsics the compiled CPU step loops need and numba does not offer: LLVM atomics with
acquire/release ordering, the x86 ``pause`` hint, the time-stamp counter, and a call of a C
function by its address.

A C function reached through ctypes inside numba code is baked into the machine code as a
constant address, which differs from process to process: numba refuses to cache such code.
:func:`call_int` takes the address as an argument instead, so the loops that call oneDNN and
libgomp are cached like any other kernel (kernels.jit) and given this process's addresses at
each call.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _pointer(context, builder, aryty, ary, idx):
    arr = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [idx])


def _int64_vector(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` (int64) read with acquire ordering: never hoisted out of a spin loop, and no
    later read moves before it."""
    if not _int64_vector(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return types.int64(arr, types.intp), codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """``arr[idx] = val`` (int64) with release ordering: no earlier write moves after it."""
    if not _int64_vector(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.int64), codegen


@intrinsic
def relax(typingctx):
    """The CPU's spin-wait hint (``pause`` on x86; nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if platform.machine().lower() in ("x86_64", "amd64"):     # numba's JIT has no inline asm
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def cycles(typingctx):
    """The time-stamp counter on x86-64 (``rdtsc``, readable in user mode); -1 elsewhere (an arm64
    cycle-counter read may trap), where a caller bounds its spin by rounds instead."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        if platform.machine().lower() in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, []), "llvm.readcyclecounter")
            return builder.call(fn, [])
        return ir.Constant(i64, -1)
    return types.int64(), codegen


@intrinsic
def call_int(typingctx, addr, args):
    """``int f(args...)`` for the C function at address ``addr``; ``args`` a tuple of integers,
    each passed as its own type (a 64-bit integer for a pointer, ``np.int32`` for a C int: the
    same ABI on x86-64 and AArch64)."""
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    if not all(isinstance(t, types.Integer) for t in args.types):
        return None

    def codegen(context, builder, sig, llargs):
        fn_addr, tup = llargs
        arg_types = sig.args[1].types
        vals = [builder.extract_value(tup, i) for i in range(len(arg_types))]
        fnty = ir.FunctionType(ir.IntType(32), [context.get_value_type(t) for t in arg_types])
        return builder.call(builder.inttoptr(fn_addr, fnty.as_pointer()), vals)
    return types.int32(addr, args), codegen
