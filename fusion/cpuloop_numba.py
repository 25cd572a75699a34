"""The compiled CPU step loops themselves (used by :mod:`fusion.cpuloop`, which says what they
do and when), the team's barrier, and the probes that find numba's OpenMP runtime.

All of it is module-level numba code kept in the kernel cache (kernels.jit): what differs from
process to process (the addresses of oneDNN's and libgomp's functions, of ``sched_yield``) is
passed in as arguments and called through :func:`fusion.native.call_int`, and the cell is a
number (:data:`CELL`) rather than a kernel captured in a closure.  The branch on it is taken
once per step and costs nothing next to the step's GEMM.  The storage type picks the kernels when
a loop is compiled (:func:`cell_step`, :func:`cell_share`): bf16 arrays arrive as their uint16
bits and run fusion.pointwise_bf16's kernels, float arrays fusion.pointwise_numba's.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from kernels.jit import njit

from . import pointwise_bf16 as bf
from .native import call_int
from .pointwise_numba import (gru_block, gru_block_serial, gru_units, lstm_block, lstm_block_serial,
                              lstm_units, rnn_relu_block, rnn_relu_block_serial, rnn_relu_units,
                              rnn_tanh_block, rnn_tanh_block_serial, rnn_tanh_units)
from .spin import meet

# The cells the loops run (fusion.cpuloop.CELLS), as the number the loops branch on.
CELL = {"lstm": 0, "gru": 1, "rnn_relu": 2, "rnn_tanh": 3}


@njit(inline="always")
def cell_block(cell, par, x, r, b1, b2, has_b, c, hp, h):
    """One step's cell kernel over the whole block: ``b1``/``b2``/``has_b`` the biases the kernel
    adds (the GRU's input bias and its recurrent bias, else one combined bias); ``c`` the LSTM's
    cell state, updated in place (unused otherwise); ``hp`` h_{t-1} (the GRU reads it); ``par``:
    numba's parallel kernel, else its serial twin."""
    if cell == 0:
        if par:
            lstm_block(x, r, b1, has_b, c, h)
        else:
            lstm_block_serial(x, r, b1, has_b, c, h)
    elif cell == 1:
        if par:
            gru_block(x, r, b1, has_b, b2, hp, h)
        else:
            gru_block_serial(x, r, b1, has_b, b2, hp, h)
    elif cell == 2:
        if par:
            rnn_relu_block(x, r, b1, has_b, h)
        else:
            rnn_relu_block_serial(x, r, b1, has_b, h)
    else:
        if par:
            rnn_tanh_block(x, r, b1, has_b, h)
        else:
            rnn_tanh_block_serial(x, r, b1, has_b, h)


@njit(inline="always")
def cell_units(cell, x, r, b1, b2, has_b, c, hp, h, j0):
    """The same over units j0..j0+U of the whole-layer arrays, U from the thread's own ``r``."""
    if cell == 0:
        lstm_units(x, r, b1, has_b, c, h, j0)
    elif cell == 1:
        gru_units(x, r, b1, has_b, b2, hp, h, j0)
    elif cell == 2:
        rnn_relu_units(x, r, b1, has_b, h, j0)
    else:
        rnn_tanh_units(x, r, b1, has_b, h, j0)


@njit(inline="always")
def cell_block_bf16(cell, par, x, r, b1, b2, has_b, c, hp, h):
    """:func:`cell_block` on bf16 storage (every array its uint16 bits: fusion.pointwise_bf16)."""
    if cell == 0:
        if par:
            bf.lstm_block(x, r, b1, has_b, c, h)
        else:
            bf.lstm_block_serial(x, r, b1, has_b, c, h)
    elif cell == 1:
        if par:
            bf.gru_block(x, r, b1, has_b, b2, hp, h)
        else:
            bf.gru_block_serial(x, r, b1, has_b, b2, hp, h)
    elif cell == 2:
        if par:
            bf.rnn_relu_block(x, r, b1, has_b, h)
        else:
            bf.rnn_relu_block_serial(x, r, b1, has_b, h)
    else:
        if par:
            bf.rnn_tanh_block(x, r, b1, has_b, h)
        else:
            bf.rnn_tanh_block_serial(x, r, b1, has_b, h)


@njit(inline="always")
def cell_units_bf16(cell, x, r, b1, b2, has_b, c, hp, h, j0):
    """:func:`cell_units` on bf16 storage."""
    if cell == 0:
        bf.lstm_units(x, r, b1, has_b, c, h, j0)
    elif cell == 1:
        bf.gru_units(x, r, b1, has_b, b2, hp, h, j0)
    elif cell == 2:
        bf.rnn_relu_units(x, r, b1, has_b, h, j0)
    else:
        bf.rnn_tanh_units(x, r, b1, has_b, h, j0)


def _bf16(x) -> bool:
    """Typing time: arrays of uint16 are bf16 bits (numba has no bf16 type)."""
    return isinstance(x, types.Array) and x.dtype == types.uint16


def cell_step(cell, par, x, r, b1, b2, has_b, c, hp, h):
    """:func:`cell_block` or, on bf16 bits, :func:`cell_block_bf16`: chosen when compiled."""
    raise NotImplementedError("cell_step() runs inside numba code only")


@overload(cell_step, inline="always")
def _cell_step(cell, par, x, r, b1, b2, has_b, c, hp, h):
    if _bf16(x):
        def impl(cell, par, x, r, b1, b2, has_b, c, hp, h):
            cell_block_bf16(cell, par, x, r, b1, b2, has_b, c, hp, h)
        return impl

    def impl(cell, par, x, r, b1, b2, has_b, c, hp, h):
        cell_block(cell, par, x, r, b1, b2, has_b, c, hp, h)
    return impl


def cell_share(cell, x, r, b1, b2, has_b, c, hp, h, j0):
    """:func:`cell_units` or, on bf16 bits, :func:`cell_units_bf16`: chosen when compiled."""
    raise NotImplementedError("cell_share() runs inside numba code only")


@overload(cell_share, inline="always")
def _cell_share(cell, x, r, b1, b2, has_b, c, hp, h, j0):
    if _bf16(x):
        def impl(cell, x, r, b1, b2, has_b, c, hp, h, j0):
            cell_units_bf16(cell, x, r, b1, b2, has_b, c, hp, h, j0)
        return impl

    def impl(cell, x, r, b1, b2, has_b, c, hp, h, j0):
        cell_units(cell, x, r, b1, b2, has_b, c, hp, h, j0)
    return impl


@njit
def step_loop(cell, par, calls, prim, stream, args, nargs, src_mem, h0, y, gx, gh, b1, b2, has_b, c, t0, t1):
    """Steps t0..t1 issued from this thread.  ``calls``: the addresses of oneDNN's
    (set_data_handle, primitive_execute, stream_wait).  Returns (step, oneDNN status, which call:
    an index into fusion.cpuloop.CALLS); status 0 when every step ran."""
    set_handle, execute, wait = calls
    B, H = h0.shape
    G = gh.shape[1] // H
    r = gh.reshape((B, G, H))
    n = np.int32(nargs)
    for t in range(t0, t1):
        hp = h0 if t == 0 else y[t - 1]
        st = call_int(set_handle, (src_mem, hp.ctypes.data))
        if st != 0:
            return t, st, 0
        st = call_int(execute, (prim, stream, n, args))
        if st != 0:
            return t, st, 1
        st = call_int(wait, (stream,))
        if st != 0:
            return t, st, 2
        cell_step(cell, par, gx[t * B:(t + 1) * B].reshape((B, G, H)), r, b1, b2, has_b, c, hp, y[t])
    return t1, 0, 0


@njit(parallel=True)
def team_loop(cell, calls, prims, streams, argss, nargss, srcs, bounds, gh, stride, h0, y, gx, b1, b2,
              has_b, c, t0, t1, status, failed_at, arrive):
    """Thread p: units bounds[p]..bounds[p+1], its GEMM's output at gh[p*stride:].  ``calls``: the
    addresses of oneDNN's (set_data_handle, primitive_execute, stream_wait), libgomp's
    omp_get_num_threads, sched_yield and usleep.  status[p]: a failing oneDNN status (its call in
    failed_at[p, 1], its step in failed_at[p, 0]), or -1 when the team is not one thread per p
    (nothing ran: no thread waits at a barrier then).  ``arrive``: the spinning barrier's slots,
    zero at the start."""
    set_handle, execute, wait, team_size, yield_at, nap_at = calls
    n = prims.shape[0]
    B, H = h0.shape
    G = gx.shape[1] // H
    for p in numba.prange(n):
        if call_int(team_size, ()) != n:    # every thread sees the same team: all return here
            status[p] = -1
            continue
        j0, j1 = bounds[p], bounds[p + 1]
        r = gh[p * stride:p * stride + B * G * (j1 - j0)].reshape((B, G, j1 - j0))
        nargs = np.int32(nargss[p])
        for t in range(t0, t1):
            hp = h0 if t == 0 else y[t - 1]
            if status[p] == 0:      # after a failure the thread still meets every barrier
                call = 0
                st = call_int(set_handle, (srcs[p], hp.ctypes.data))
                if st == 0:
                    call = 1
                    st = call_int(execute, (prims[p], streams[p], nargs, argss[p]))
                if st == 0:
                    call = 2
                    st = call_int(wait, (streams[p],))
                if st != 0:
                    status[p] = st
                    failed_at[p, 0] = t
                    failed_at[p, 1] = call
                else:
                    cell_share(cell, gx[t * B:(t + 1) * B].reshape((B, G, H)), r, b1, b2, has_b, c, hp,
                               y[t], j0)
            if t + 1 < t1:          # h_t is whole before any thread's next GEMM reads it
                meet(arrive, p, n, t + 1 - t0, yield_at, nap_at)    # (after the last step: the region's end)


@njit(parallel=True)
def touch(a):
    """A parallel region: starts numba's thread pool, so its threading layer is known."""
    for i in numba.prange(a.shape[0]):
        a[i] = i


@njit(parallel=True)
def level_in_region(level_at, out):
    """``omp_get_level()`` of the runtime at ``level_at``, read by each thread of a numba
    parallel region: 1 in the runtime numba's threads run in."""
    for i in numba.prange(out.shape[0]):
        out[i] = call_int(level_at, ())
