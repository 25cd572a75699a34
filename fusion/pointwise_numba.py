"""The numba CPU cell kernels (``fuse_pointwise`` on the numba backend), compiled once per dtype
and kept in the private cache (:mod:`kernels.jit`).

Every function is at module level and generic over the dtype: numba compiles one specialization
per argument type, and constants take the type of the data they meet (:func:`typed`), so fp32
stays fp32.  A closure capturing another jitted function would change its cache key in every
process, which is why nothing here is built by a factory.

Each cell has one row function (one batch row, the inner loop over contiguous units, so LLVM
vectorizes it) used in two kernel forms:

- ``*_block``: a whole ``(B, G, H)`` block, parallel over the batch rows (``prange``), and its
  one-thread twin :data:`SERIAL` (the same Python function compiled without ``parallel``: below
  ``PARALLEL_MIN_UNITS`` units waking numba's workers costs more than the step);
- ``*_units``: serial over a block of U hidden units starting at ``j0`` (``gh`` is ``(B, G, U)``,
  every other array the layer's whole and C-contiguous), which a thread of
  :class:`fusion.cpuloop.TeamLoop` runs on its share.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from kernels.jit import njit

# the fp32 tanh's rational approximation (why and how accurate: fusion/pointwise.py)
from .tanh import TANH_CLAMP, TANH_P, TANH_Q


def typed(like, value):
    """``value`` as the element type of ``like`` (an array or a scalar), inside numba code."""
    raise NotImplementedError("typed() runs inside numba code only")


@overload(typed, inline="always")
def _typed(like, value):
    ft = like.dtype if isinstance(like, types.Array) else like

    def impl(like, value):
        return ft(value)
    return impl


def tanh(x):
    """tanh inside numba code: the rational fp32 approximation for float32, libm's otherwise."""
    raise NotImplementedError("tanh() runs inside numba code only")


@overload(tanh, inline="always")
def _tanh(x):
    if x == types.float32:
        lo, hi, inv = np.float32(-TANH_CLAMP), np.float32(TANH_CLAMP), np.float32(1 / TANH_CLAMP)
        P0, P1, P2, P3, P4 = (np.float32(a) for a in TANH_P)
        Q0, Q1, Q2, Q3, Q4, Q5 = (np.float32(a) for a in TANH_Q)
        one = np.float32(1.0)

        def tanh32(x):
            xc = min(max(x, lo), hi)
            u = (xc * inv) * (xc * inv)
            p = (((P4 * u + P3) * u + P2) * u + P1) * u + P0
            q = ((((Q5 * u + Q4) * u + Q3) * u + Q2) * u + Q1) * u + Q0
            return min(max(xc * p / q, -one), one)
        return tanh32

    def tanh64(x):
        return np.tanh(x)
    return tanh64


@njit(inline="always")
def sig(a):
    half = typed(a, 0.5)
    return half * tanh(half * a) + half


# One batch row; the inner loop runs over contiguous units, so with C-contiguous (B, G, H) views
# (the group_gemm layout) LLVM vectorizes it.  Indices are unsigned: a signed j0 + u could be
# negative as far as numba knows, and its wraparound branch on every access stops the vectorizer
# (184 us instead of 25 at B=16, H=256).  The cell state is updated in place through one
# argument: passing it as both c_prev and c_out makes LLVM's runtime alias check fail and fall
# back to scalar code (1.5x slower per step).
@njit(inline="always")
def lstm_row(x, r, b, has_b, cn, ho, j0):
    base = numba.uint64(j0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        ai = x[0, j] + r[0, u]
        af = x[1, j] + r[1, u]
        ag = x[2, j] + r[2, u]
        ao = x[3, j] + r[3, u]
        if has_b:
            ai += b[0, j]
            af += b[1, j]
            ag += b[2, j]
            ao += b[3, j]
        cj = sig(af) * cn[j] + sig(ai) * tanh(ag)
        cn[j] = cj
        ho[j] = sig(ao) * tanh(cj)


@njit(inline="always")
def gru_row(x, r, bx, has_bx, bh, hp, ho, j0):
    base = numba.uint64(j0)
    one = typed(ho, 1.0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        xr, xz, xn = x[0, j], x[1, j], x[2, j]
        if has_bx:
            xr += bx[0, j]
            xz += bx[1, j]
            xn += bx[2, j]
        rg = sig(xr + r[0, u] + bh[0, j])
        z = sig(xz + r[1, u] + bh[1, j])
        c = tanh(xn + rg * (r[2, u] + bh[2, j]))
        ho[j] = (one - z) * c + z * hp[j]


@njit(inline="always")
def rnn_relu_row(x, r, b, has_b, ho, j0):
    base = numba.uint64(j0)
    zero = typed(ho, 0.0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        a = x[0, j] + r[0, u]
        if has_b:
            a += b[0, j]
        ho[j] = zero if a < zero else a     # NaN < 0 is false: NaN passes through


@njit(inline="always")
def rnn_tanh_row(x, r, b, has_b, ho, j0):
    base = numba.uint64(j0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        a = x[0, j] + r[0, u]
        if has_b:
            a += b[0, j]
        ho[j] = tanh(a)


# -- whole blocks, parallel over the batch rows --------------------------------------------------
@njit(parallel=True)
def lstm_block(gx, gh, b, has_b, c, h_out):
    for n in numba.prange(gx.shape[0]):
        lstm_row(gx[n], gh[n], b, has_b, c[n], h_out[n], 0)


@njit(parallel=True)
def gru_block(gx, gh, bx, has_bx, bh, h_prev, h_out):
    for n in numba.prange(gx.shape[0]):
        gru_row(gx[n], gh[n], bx, has_bx, bh, h_prev[n], h_out[n], 0)


@njit(parallel=True)
def rnn_relu_block(gx, gh, b, has_b, h_out):
    for n in numba.prange(gx.shape[0]):
        rnn_relu_row(gx[n], gh[n], b, has_b, h_out[n], 0)


@njit(parallel=True)
def rnn_tanh_block(gx, gh, b, has_b, h_out):
    for n in numba.prange(gx.shape[0]):
        rnn_tanh_row(gx[n], gh[n], b, has_b, h_out[n], 0)


# The same kernels compiled without ``parallel``: one thread, no scheduling of numba's thread pool
# (which costs ~10 us a call even with one thread).  ``error_model="numpy"`` is what the parallel
# lowering uses inside its loops: Python's model checks every division for zero, and that branch
# stops LLVM vectorizing the tanh (measured, LSTM B=16 H=256: 130 us with the checks, 27 us
# without, 38 us through the parallel kernel on one thread).
lstm_block_serial = njit(error_model="numpy")(lstm_block.py_func)
gru_block_serial = njit(error_model="numpy")(gru_block.py_func)
rnn_relu_block_serial = njit(error_model="numpy")(rnn_relu_block.py_func)
rnn_tanh_block_serial = njit(error_model="numpy")(rnn_tanh_block.py_func)
SERIAL = {lstm_block: lstm_block_serial, gru_block: gru_block_serial, rnn_relu_block: rnn_relu_block_serial,
          rnn_tanh_block: rnn_tanh_block_serial}


# -- a block of units, serial (a team thread's share) ------------------------------------------
@njit(error_model="numpy")
def lstm_units(gx, gh, b, has_b, c, h_out, j0):
    for n in range(gx.shape[0]):
        lstm_row(gx[n], gh[n], b, has_b, c[n], h_out[n], j0)


@njit(error_model="numpy")
def gru_units(gx, gh, bx, has_bx, bh, h_prev, h_out, j0):
    for n in range(gx.shape[0]):
        gru_row(gx[n], gh[n], bx, has_bx, bh, h_prev[n], h_out[n], j0)


@njit(error_model="numpy")
def rnn_relu_units(gx, gh, b, has_b, h_out, j0):
    for n in range(gx.shape[0]):
        rnn_relu_row(gx[n], gh[n], b, has_b, h_out[n], j0)


@njit(error_model="numpy")
def rnn_tanh_units(gx, gh, b, has_b, h_out, j0):
    for n in range(gx.shape[0]):
        rnn_tanh_row(gx[n], gh[n], b, has_b, h_out[n], j0)


# (whole-block parallel, unit-block serial) per cell mode
KERNELS = {"lstm": (lstm_block, lstm_units), "gru": (gru_block, gru_units),
           "rnn_relu": (rnn_relu_block, rnn_relu_units), "rnn_tanh": (rnn_tanh_block, rnn_tanh_units)}
