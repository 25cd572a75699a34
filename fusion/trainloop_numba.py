"""The compiled step loops of the training step (used by :mod:`fusion.trainloop`, which says what
they do and when): the forward that keeps the tape and the backward, each issued from one
thread or run by a team of threads over all steps.

As in :mod:`fusion.cpuloop_numba`: module-level code kept in the kernel cache, oneDNN's and
libgomp's functions called by address (:func:`fusion.native.call_int`), the cell a number
(:data:`CELL`), the team's barrier :func:`fusion.spin.meet`.  Arrays a cell does not
use are passed as small stand-ins of the right type (every branch is compiled).

Layouts (one layer, T steps, B rows, G gates, H units): ``hs (T+1, B, H)`` h_0 .. h_T;
``cs (T+1, B, H)`` the LSTM's c_0 .. c_T; ``gx (T*B, G*H)`` the hoisted input part of the gates,
then (forward) the activated gates, then (backward) the pre-activation gradients dG;
``hn (T, B, H)`` the GRU's W_hn h + b_hn, then dn r; ``dys (T, B, H)`` the gradient of each
h_t from above.  A failing oneDNN call returns (or records) its step, status and which call
(an index into :data:`fusion.cpuloop.CALLS`).
"""
from __future__ import annotations

import numba
import numpy as np

from kernels.jit import njit

from .backward_numba import (gru_bwd_units, gru_fwd_units, lnlstm_bwd_units, lnlstm_fwd_units, lstm_bwd_units,
                             lstm_fwd_units, rnn_bwd_units)
from .cpuloop_numba import CELL   # noqa: F401  (the cells' numbers, shared)
from .spin import meet
from .native import call_int
from .pointwise_numba import rnn_relu_units, rnn_tanh_units


@njit(inline="always")
def fwd_cell(cell, g, r, b1, b2, has_b, hs, cs, hn, t, j0):
    """Step t's forward kernel on the units j0.. that ``r`` (the GEMM's output, ``(B, G, U)``)
    holds; ``g`` the step's gate rows ``(B, G, H)``."""
    if cell == 0:
        lstm_fwd_units(g, r, b1, has_b, cs[t], cs[t + 1], hs[t + 1], j0)
    elif cell == 1:
        gru_fwd_units(g, r, b1, has_b, b2, hs[t], hn[t], hs[t + 1], j0)
    elif cell == 2:
        rnn_relu_units(g, r, b1, has_b, hs[t + 1], j0)
    else:
        rnn_tanh_units(g, r, b1, has_b, hs[t + 1], j0)


@njit(inline="always")
def bwd_cell(cell, g, dy, dr, hs, cs, hn, dc, dd, dgh, db, t, j0):
    """Step t's backward kernel on the units j0.. that ``dr`` (``(B, U)``) holds."""
    if cell == 0:
        lstm_bwd_units(g, dy, dr, cs[t], cs[t + 1], dc, db, j0)
    elif cell == 1:
        gru_bwd_units(g, hn[t], dy, dr, dd, hs[t], dgh, db, j0)
    else:
        rnn_bwd_units(g, dy, dr, hs[t + 1], cell == 2, db, j0)


@njit(inline="always")
def gemm(calls, prim, stream, nargs, args, src, address):
    """One packed GEMM with its source pointed at ``address``: (status, which call)."""
    set_handle, execute, wait = calls[0], calls[1], calls[2]
    st = call_int(set_handle, (src, address))
    if st != 0:
        return st, 0
    st = call_int(execute, (prim, stream, nargs, args))
    if st != 0:
        return st, 1
    return call_int(wait, (stream,)), 2


@njit
def fwd_loop(cell, calls, prim, stream, args, nargs, src, hs, gx, gh, b1, b2, has_b, cs, hn, t0, t1):
    """Forward steps t0..t1 issued from this thread: GEMM h_{t-1} -> gh, then the kernel.
    Returns (step, status, call); status 0 when every step ran."""
    B, H = hs.shape[1], hs.shape[2]
    G = gh.shape[1] // H
    r = gh.reshape((B, G, H))
    n = np.int32(nargs)
    for t in range(t0, t1):
        st, call = gemm(calls, prim, stream, n, args, src, hs[t].ctypes.data)
        if st != 0:
            return t, st, call
        fwd_cell(cell, gx[t * B:(t + 1) * B].reshape((B, G, H)), r, b1, b2, has_b, hs, cs, hn, t, 0)
    return t1, 0, 0


@njit
def bwd_loop(cell, calls, prim, stream, args, nargs, src, dys, dr, gx, hs, cs, hn, dc, dd, dgh, db, t0, t1):
    """Backward steps t1-1 down to t0 issued from this thread: the kernel (reading dh from ``dr``,
    the GEMM's output, which holds dh_n's part at the start), then the GEMM dG_t W_hh -> dr.  At
    the end ``dr`` holds the GEMM's part of the gradient of h_{t0-1}."""
    B, H = dr.shape
    G = gx.shape[1] // H
    n = np.int32(nargs)
    for t in range(t1 - 1, t0 - 1, -1):
        g = gx[t * B:(t + 1) * B]
        bwd_cell(cell, g.reshape((B, G, H)), dys[t], dr, hs, cs, hn, dc, dd, dgh, db, t, 0)
        st, call = gemm(calls, prim, stream, n, args, src, dgh.ctypes.data if cell == 1 else g.ctypes.data)
        if st != 0:
            return t, st, call
    return t0, 0, 0


@njit(inline="always")
def _joined(team_size, n, status, p) -> bool:
    """Whether the OpenMP team is one thread per share (every thread sees the same answer, before
    any barrier): else status[p] = -1 and nothing runs."""
    if call_int(team_size, ()) != n:
        status[p] = -1
        return False
    return True


@njit(parallel=True)
def fwd_team(cell, calls, prims, streams, argss, nargss, srcs, bounds, gh, stride, hs, gx, b1, b2, has_b,
             cs, hn, t0, t1, status, failed_at, arrive):
    """Forward steps t0..t1 on a team: thread p owns units bounds[p]..bounds[p+1] of every gate,
    its GEMM (W_hh's columns of those units) writes gh[p*stride:], its kernel those units, and
    the team meets after each step (the next GEMMs read the whole h_t).  ``calls``: oneDNN's
    (set_data_handle, primitive_execute, stream_wait), omp_get_num_threads, sched_yield, usleep.
    status[p]: a failing oneDNN status (step and call in failed_at[p]), -1 when the team is not
    one thread per share."""
    team_size, yield_at, nap_at = calls[3], calls[4], calls[5]
    n = prims.shape[0]
    B, H = hs.shape[1], hs.shape[2]
    G = gx.shape[1] // H
    for p in numba.prange(n):
        if not _joined(team_size, n, status, p):
            continue
        j0, j1 = bounds[p], bounds[p + 1]
        r = gh[p * stride:p * stride + B * G * (j1 - j0)].reshape((B, G, j1 - j0))
        na = np.int32(nargss[p])
        for t in range(t0, t1):
            if status[p] == 0:          # after a failure the thread still meets every barrier
                st, call = gemm(calls, prims[p], streams[p], na, argss[p], srcs[p], hs[t].ctypes.data)
                if st != 0:
                    status[p] = st
                    failed_at[p, 0] = t
                    failed_at[p, 1] = call
                else:
                    fwd_cell(cell, gx[t * B:(t + 1) * B].reshape((B, G, H)), r, b1, b2, has_b, hs, cs, hn,
                             t, j0)
            if t + 1 < t1:
                meet(arrive, p, n, t + 1 - t0, yield_at, nap_at)


@njit(parallel=True)
def bwd_team(cell, calls, prims, streams, argss, nargss, srcs, bounds, drs, stride, dys, gx, hs, cs, hn, dc,
             dd, dgh2, db, t0, t1, status, failed_at, arrive):
    """Backward steps t1-1 down to t0 on a team: thread p runs the kernel on its units, the team
    meets (the step's dG is whole), then p's GEMM dG_t W_hh[:, its units] writes its part of dh
    into ``drs[p*stride:]`` (B, U), which only p's next kernel reads.  The GRU's recurrent-side
    gradients alternate between ``dgh2[0]`` and ``dgh2[1]``: the next step's kernel may write
    while a slower thread's GEMM still reads this step's."""
    team_size, yield_at, nap_at = calls[3], calls[4], calls[5]
    n = prims.shape[0]
    H = hs.shape[2]
    B = hs.shape[1]
    G = gx.shape[1] // H
    for p in numba.prange(n):
        if not _joined(team_size, n, status, p):
            continue
        j0, j1 = bounds[p], bounds[p + 1]
        dr = drs[p * stride:p * stride + B * (j1 - j0)].reshape((B, j1 - j0))
        na = np.int32(nargss[p])
        k = 0
        for t in range(t1 - 1, t0 - 1, -1):
            g = gx[t * B:(t + 1) * B]
            dgh = dgh2[t % 2]
            if status[p] == 0:
                bwd_cell(cell, g.reshape((B, G, H)), dys[t], dr, hs, cs, hn, dc, dd, dgh, db, t, j0)
            k += 1
            meet(arrive, p, n, k, yield_at, nap_at)
            if status[p] == 0:
                st, call = gemm(calls, prims[p], streams[p], na, argss[p], srcs[p],
                                dgh.ctypes.data if cell == 1 else g.ctypes.data)
                if st != 0:
                    status[p] = st
                    failed_at[p, 0] = t
                    failed_at[p, 1] = call


# -- the layer-norm LSTM, issued from one thread ---------------------------------------------------
# Per step the recurrent part is normalised over its whole 4H row and c over its H units, so a
# row is one thread's: these loops run the kernels of fusion/backward_numba.py row by row on the
# issuing thread (oneDNN may use its own threads inside each GEMM).  ``hh (T*B, 4H)`` holds the
# normalised recurrent parts, then (backward) their inputs' gradients dAH, the GEMM's source;
# ``sh``, ``sc (T, B)`` the inverse deviations; ``ch``, ``tl (T, B, H)`` LN(c) and tanh of its
# affine map.


@njit
def ln_fwd_loop(calls, prim, stream, args, nargs, src, hs, gx, gh, hh, sh, cs, ch, sc, tl, lnh_g, lnh_b,
                lnc_g, lnc_b, eps, t0, t1):
    B, H = hs.shape[1], hs.shape[2]
    r = gh.reshape((B, 4, H))
    n = np.int32(nargs)
    for t in range(t0, t1):
        st, call = gemm(calls, prim, stream, n, args, src, hs[t].ctypes.data)
        if st != 0:
            return t, st, call
        lnlstm_fwd_units(gx[t * B:(t + 1) * B].reshape((B, 4, H)), r, hh[t * B:(t + 1) * B].reshape((B, 4, H)),
                         sh[t], lnh_g, lnh_b, cs[t], cs[t + 1], ch[t], sc[t], tl[t], hs[t + 1], lnc_g, lnc_b, eps)
    return t1, 0, 0


@njit
def ln_bwd_loop(calls, prim, stream, args, nargs, src, dys, dr, gx, hh, sh, cs, ch, sc, tl, dc, lnc_g, lnh_g,
                db, dlnh_g, dlnc_g, dlnc_b, t0, t1):
    B, H = dr.shape
    n = np.int32(nargs)
    for t in range(t1 - 1, t0 - 1, -1):
        a = hh[t * B:(t + 1) * B]
        lnlstm_bwd_units(gx[t * B:(t + 1) * B].reshape((B, 4, H)), a.reshape((B, 4, H)), dys[t], dr, cs[t], ch[t],
                         tl[t], sc[t], sh[t], dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b)
        st, call = gemm(calls, prim, stream, n, args, src, a.ctypes.data)
        if st != 0:
            return t, st, call
    return t0, 0, 0
