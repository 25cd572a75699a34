"""The numba CPU kernels of the training step (:mod:`kernels.train`): one fused pass per step
for the forward that keeps the tape, and one for the backward's pointwise part.

The same rules as :mod:`fusion.pointwise_numba`, whose helpers (``sig``, the fp32 ``tanh``,
``typed``) these use: module-level functions, generic over the dtype (one compilation per
argument type, kept in the private cache by :mod:`kernels.jit`), one row function per cell with
the inner loop over contiguous units, and unsigned indices so LLVM vectorizes it.  Unlike
those, a row function here is compiled as a function of its own, not inlined into the loop over
the rows: it stores into two rows of one array (the gates), and once inlined LLVM hoists its
runtime alias checks out of the row loop, where they compare the whole arrays' extents, find
them overlapping and take the scalar loop every time (about ten times slower, LSTM forward at
B=64, H=512).

Each row function serves one batch row of the units ``j0 .. j0+U``.  Arrays of the whole layer
(the hoisted gate buffer, the tape, h, c, the upstream gradient) are indexed by ``j = j0 + u``;
the recurrent GEMM's output of the step (``r`` forward, ``dr`` backward) is the thread's own,
``(G, U)`` or ``(U,)``, indexed by ``u``: a thread of a team (:mod:`fusion.trainloop`) holds only
its share's columns, one thread alone holds them all (``j0 = 0``).

The gate buffer ``gx (B, G, H)`` of a step holds the hoisted input part of the pre-activations;
the forward overwrites it with the activated gates (that is the tape: no second buffer), and the
backward overwrites those with the gradients of the pre-activations (the ``dG`` the weight
gradients and the recurrent GEMM read).  So a tape is consumed by its backward pass.

Per cell, forward (what is kept) and backward (what the step reads and writes):

- LSTM: i, f, g, o activated in gx; c_t kept for every t.  Backward: dh = dy + dr;
  dc += dh o (1 - tanh(c)^2); the four gate gradients into gx; dc <- dc f for the step before.
- GRU: r, z, n activated in gx; ``hn = W_hn h + b_hn`` (the recurrent part of n) in its own
  buffer.  Backward: dh = dy + dr + dd (``dd`` = dh_{t+1} z_{t+1}, the direct path); the input
  gate gradients into gx, the recurrent ones (which differ in n: dn r) into ``dgh`` (the step's
  GEMM source) and dn r over hn (for the weight gradient); dd <- dh z.
- vanilla RNN: h only (the forward kernels of :mod:`fusion.pointwise_numba`); backward reads the
  derivative off h (ReLU: h > 0; tanh: 1 - h^2) and writes dP over gx.

``db`` accumulates the bias gradients (the column sums of dG) as the steps go: each unit belongs
to one thread, so no two threads add into one entry.  Its rows: LSTM i, f, g, o; GRU r, z, n of
the input side and dn r of the recurrent side; vanilla one row.
"""
from __future__ import annotations

import numba
import numpy as np

from kernels.jit import njit

from .pointwise_numba import sig, tanh, typed


# -- forward, keeping the tape -------------------------------------------------------------------
@njit(error_model="numpy")
def lstm_fwd_row(g, r, b, has_b, cp, cn, ho, j0):
    """``g (4, H)``: pre-activations' input part in, activated i, f, g, o out; ``r (4, U)`` the
    recurrent GEMM's; ``cp``/``cn`` c_{t-1} and c_t; ``ho`` h_t."""
    base = numba.uint64(j0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        ai = g[0, j] + r[0, u]
        af = g[1, j] + r[1, u]
        ag = g[2, j] + r[2, u]
        ao = g[3, j] + r[3, u]
        if has_b:
            ai += b[0, j]
            af += b[1, j]
            ag += b[2, j]
            ao += b[3, j]
        i, f, gg, o = sig(ai), sig(af), tanh(ag), sig(ao)
        c = f * cp[j] + i * gg
        g[0, j] = i
        g[1, j] = f
        g[2, j] = gg
        g[3, j] = o
        cn[j] = c
        ho[j] = o * tanh(c)


@njit(error_model="numpy")
def gru_fwd_row(g, r, bx, has_bx, bh, hp, hn, ho, j0):
    """``g (3, H)``: input part in, activated r, z, n out; ``hn`` gets W_hn h + b_hn."""
    base = numba.uint64(j0)
    one = typed(ho, 1.0)
    for u in range(numba.uint64(r.shape[1])):
        j = base + u
        xr, xz, xn = g[0, j], g[1, j], g[2, j]
        if has_bx:
            xr += bx[0, j]
            xz += bx[1, j]
            xn += bx[2, j]
        rg = sig(xr + r[0, u] + bh[0, j])
        z = sig(xz + r[1, u] + bh[1, j])
        hv = r[2, u] + bh[2, j]
        n = tanh(xn + rg * hv)
        g[0, j] = rg
        g[1, j] = z
        g[2, j] = n
        hn[j] = hv
        ho[j] = (one - z) * n + z * hp[j]


# -- backward: one step's pointwise part ---------------------------------------------------------
@njit(error_model="numpy")
def lstm_bwd_row(a, dy, dr, cp, cn, dc, db, j0):
    """``a (4, H)``: activated gates in, pre-activation gradients out; ``dy`` the gradient of h_t
    from above, ``dr (U,)`` from the step after (the recurrent GEMM); ``dc`` in: the gradient
    reaching c_t from the step after, out: the one reaching c_{t-1}; ``db (4, H)`` += the gates'."""
    base = numba.uint64(j0)
    one = typed(dc, 1.0)
    for u in range(numba.uint64(dr.shape[0])):
        j = base + u
        dh = dy[j] + dr[u]
        i, f, g, o = a[0, j], a[1, j], a[2, j], a[3, j]
        tc = tanh(cn[j])
        d = dc[j] + dh * o * (one - tc * tc)
        di = d * g * i * (one - i)
        df = d * cp[j] * f * (one - f)
        dg = d * i * (one - g * g)
        do = dh * tc * o * (one - o)
        a[0, j] = di
        a[1, j] = df
        a[2, j] = dg
        a[3, j] = do
        db[0, j] += di
        db[1, j] += df
        db[2, j] += dg
        db[3, j] += do
        dc[j] = d * f


@njit(error_model="numpy")
def gru_bwd_row(a, hn, dy, dr, dd, hp, dgh, db, j0):
    """``a (3, H)``: activated r, z, n in, input-side gradients out; ``hn`` W_hn h + b_hn in, dn r
    out; ``dd`` the direct part dh_{t+1} z_{t+1} in, dh_t z_t out; ``hp`` h_{t-1}; ``dgh (3, H)``
    the recurrent-side gradients (the step's GEMM source); ``db (4, H)``."""
    base = numba.uint64(j0)
    one = typed(dd, 1.0)
    for u in range(numba.uint64(dr.shape[0])):
        j = base + u
        dh = dy[j] + dr[u] + dd[j]
        r, z, n = a[0, j], a[1, j], a[2, j]
        dn = dh * (one - z) * (one - n * n)
        dz = dh * (hp[j] - n) * z * (one - z)
        drg = dn * hn[j] * r * (one - r)
        dnr = dn * r
        a[0, j] = drg
        a[1, j] = dz
        a[2, j] = dn
        hn[j] = dnr
        dgh[0, j] = drg
        dgh[1, j] = dz
        dgh[2, j] = dnr
        db[0, j] += drg
        db[1, j] += dz
        db[2, j] += dn
        db[3, j] += dnr
        dd[j] = dh * z


@njit(error_model="numpy")
def rnn_bwd_row(p, dy, dr, h, relu, db, j0):
    """``p (H,)``: dP out (over the pre-activation's slot); ``h`` h_t, whose value gives the
    activation's derivative; ``db (H,)``.  ``dh * 0`` rather than 0 where ReLU is off: a NaN
    gradient stays NaN, as in the float64 reference."""
    base = numba.uint64(j0)
    one = typed(h, 1.0)
    zero = typed(h, 0.0)
    for u in range(numba.uint64(dr.shape[0])):
        j = base + u
        dh = dy[j] + dr[u]
        hj = h[j]
        if relu:
            d = dh * (one if hj > zero else zero)
        else:
            d = dh * (one - hj * hj)
        p[j] = d
        db[j] += d


# -- a block of units over every batch row, serial (one thread, or a team thread's share) -------
# error_model="numpy": no division-by-zero branch, which would stop the vectorizer (see
# fusion/pointwise_numba.py).
@njit(error_model="numpy")
def lstm_fwd_units(gx, gh, b, has_b, cp, cn, h, j0):
    for n in range(gx.shape[0]):
        lstm_fwd_row(gx[n], gh[n], b, has_b, cp[n], cn[n], h[n], j0)


@njit(error_model="numpy")
def gru_fwd_units(gx, gh, bx, has_bx, bh, hp, hn, h, j0):
    for n in range(gx.shape[0]):
        gru_fwd_row(gx[n], gh[n], bx, has_bx, bh, hp[n], hn[n], h[n], j0)


@njit(error_model="numpy")
def lstm_bwd_units(gx, dy, dr, cp, cn, dc, db, j0):
    for n in range(gx.shape[0]):
        lstm_bwd_row(gx[n], dy[n], dr[n], cp[n], cn[n], dc[n], db, j0)


@njit(error_model="numpy")
def gru_bwd_units(gx, hn, dy, dr, dd, hp, dgh, db, j0):
    for n in range(gx.shape[0]):
        gru_bwd_row(gx[n], hn[n], dy[n], dr[n], dd[n], hp[n], dgh[n], db, j0)


@njit(error_model="numpy")
def rnn_bwd_units(gx, dy, dr, h, relu, db, j0):
    for n in range(gx.shape[0]):
        rnn_bwd_row(gx[n, 0], dy[n], dr[n], h[n], relu, db[0], j0)


# -- the layer-norm LSTM (Ba et al. 2016; kernels.custom, fusion.cellexpr.LAYERNORM_LSTM) -------
# Each normalisation needs its row's mean and deviation: the rows are whole here (one thread per
# row), and the functions with reductions are compiled with reassociation allowed, so LLVM
# vectorizes the sums (their order then follows the vector width, fixed for a build).  No other
# fast-math flag: a NaN still propagates.
REASSOC = {"reassoc", "nsz"}


@njit(fastmath=REASSOC, error_model="numpy")
def row_stats(a, eps):
    """(mean, 1 / sqrt(biased variance + eps)) of the 1-D ``a``, two passes."""
    n = a.shape[0]
    s = typed(a, 0.0)
    for k in range(numba.uint64(n)):
        s += a[k]
    mu = s / typed(a, n)
    v = typed(a, 0.0)
    for k in range(numba.uint64(n)):
        d = a[k] - mu
        v += d * d
    return mu, typed(a, 1.0) / np.sqrt(v / typed(a, n) + typed(a, eps))


@njit(error_model="numpy")
def ln_row(a, out, s_out, i, gain, bias, eps):
    """``out <- (a - mean) * s`` (the normalised row, kept), ``s_out[i] = s``, and ``a <- out *
    gain + bias`` in place."""
    mu, s = row_stats(a, eps)
    s_out[i] = s
    for k in range(numba.uint64(a.shape[0])):
        xh = (a[k] - mu) * s
        out[k] = xh
        a[k] = xh * gain[k] + bias[k]


@njit(fastmath=REASSOC, error_model="numpy")
def ln_bwd_row(dp, gain, xh, s, acc):
    """``xh <- s * (v - mean(v) - xh * mean(v * xh))`` with ``v = dp * gain`` (the gradient of the
    normalised input, written over it), after ``acc += dp * xh`` (the gain's gradient)."""
    n = numba.uint64(dp.shape[0])
    for k in range(n):
        acc[k] += dp[k] * xh[k]
    s1 = typed(dp, 0.0)
    s2 = typed(dp, 0.0)
    for k in range(n):
        v = dp[k] * gain[k]
        s1 += v
        s2 += v * xh[k]
    m1, m2 = s1 / typed(dp, dp.shape[0]), s2 / typed(dp, dp.shape[0])
    for k in range(n):
        xh[k] = s * (dp[k] * gain[k] - m1 - xh[k] * m2)


@njit(parallel=True, error_model="numpy")
def ln_rows(a, out, s_out, gain, bias, eps):
    """:func:`ln_row` on every row of ``a`` (the hoisted input part, all T*B rows at once)."""
    for r in numba.prange(a.shape[0]):
        ln_row(a[r], out[r], s_out, r, gain, bias, eps)


@njit(parallel=True, error_model="numpy")
def ln_rows_bwd(dp, gain, xh, s, acc):
    """:func:`ln_bwd_row` on every row, in ``acc.shape[0]`` chunks of rows, each with its own
    row of ``acc`` (no two threads add into one entry; the caller sums the rows)."""
    m = dp.shape[0]
    n = acc.shape[0]
    for p in numba.prange(n):
        for r in range(p * m // n, (p + 1) * m // n):
            ln_bwd_row(dp[r], gain, xh[r], s[r], acc[p])


@njit(fastmath=REASSOC, error_model="numpy")
def lnlstm_fwd_row(g, r, hh, lnh_g, lnh_b, cp, cn, ch, tl, ho, lnc_g, lnc_b, eps):
    """One row of a layer-norm LSTM step: ``g (4, H)`` the input part (normalised, gains and every
    bias added) in, activated gates out; ``r (4, H)`` the recurrent GEMM's; ``hh (4, H)`` gets its
    normalised copy; c_t into ``cn``, its normalised copy into ``ch``, tanh(LN(c)) into ``tl``,
    h_t into ``ho``.  Returns the two inverse deviations (recurrent part, c)."""
    H = numba.uint64(cn.shape[0])
    mh, sh = row_stats(r.reshape(r.size), eps)
    for q in range(4):
        for j in range(H):
            v = (r[q, j] - mh) * sh
            hh[q, j] = v
            g[q, j] += v * lnh_g[q, j] + lnh_b[q, j]
    for j in range(H):
        i, f, gg, o = sig(g[0, j]), sig(g[1, j]), tanh(g[2, j]), sig(g[3, j])
        g[0, j] = i
        g[1, j] = f
        g[2, j] = gg
        g[3, j] = o
        cn[j] = f * cp[j] + i * gg
    mc, sc = row_stats(cn, eps)
    for j in range(H):
        v = (cn[j] - mc) * sc
        ch[j] = v
        t = tanh(v * lnc_g[j] + lnc_b[j])
        tl[j] = t
        ho[j] = g[3, j] * t
    return sh, sc


@njit(fastmath=REASSOC, error_model="numpy")
def lnlstm_bwd_row(a, hh, dy, dr, cp, ch, tl, sc, sh, dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b):
    """One row of a layer-norm LSTM step backwards: ``a (4, H)`` activated gates in, dP (the
    gradient of the pre-activations) out; ``hh (4, H)`` the normalised recurrent part in, its
    input's gradient dAH out (the step's GEMM source); ``dc`` in: from the step after, out: for
    c_{t-1}; the gains' and biases' gradients added into ``db``, ``dlnh_g``, ``dlnc_g``, ``dlnc_b``."""
    H = numba.uint64(dc.shape[0])
    one = typed(dc, 1.0)
    s1 = typed(dc, 0.0)
    s2 = typed(dc, 0.0)
    for j in range(H):                  # through h = o tanh(LN(c)): the LN's row moments
        t = tl[j]
        dln = (dy[j] + dr[j]) * a[3, j] * (one - t * t)
        dlnc_g[j] += dln * ch[j]
        dlnc_b[j] += dln
        u = dln * lnc_g[j]
        s1 += u
        s2 += u * ch[j]
    m1, m2 = s1 / typed(dc, dc.shape[0]), s2 / typed(dc, dc.shape[0])
    for j in range(H):
        dh = dy[j] + dr[j]
        t = tl[j]
        i, f, g, o = a[0, j], a[1, j], a[2, j], a[3, j]
        dln = dh * o * (one - t * t)
        d = dc[j] + sc * (dln * lnc_g[j] - m1 - ch[j] * m2)
        a[0, j] = d * g * i * (one - i)
        a[1, j] = d * cp[j] * f * (one - f)
        a[2, j] = d * i * (one - g * g)
        a[3, j] = dh * t * o * (one - o)
        dc[j] = d * f
    for q in range(4):
        for j in range(H):
            db[q, j] += a[q, j]
            dlnh_g[q, j] += a[q, j] * hh[q, j]
    m3, m4 = row_moments_gain(a, lnh_g, hh)
    for q in range(4):
        for j in range(H):
            hh[q, j] = sh * (a[q, j] * lnh_g[q, j] - m3 - hh[q, j] * m4)


@njit(fastmath=REASSOC, error_model="numpy")
def row_moments_gain(dp, gain, x):
    """(mean of v, mean of v * x), v = dp * gain, over (4, H) rows."""
    s1 = typed(dp, 0.0)
    s2 = typed(dp, 0.0)
    for q in range(dp.shape[0]):
        for j in range(numba.uint64(dp.shape[1])):
            v = dp[q, j] * gain[q, j]
            s1 += v
            s2 += v * x[q, j]
    return s1 / typed(dp, dp.size), s2 / typed(dp, dp.size)


@njit(error_model="numpy")
def lnlstm_fwd_units(gx, gh, hh, sh, lnh_g, lnh_b, cp, cn, ch, sc, tl, h, lnc_g, lnc_b, eps):
    """:func:`lnlstm_fwd_row` on every batch row of a step (``gx``, ``gh``, ``hh`` ``(B, 4, H)``;
    ``sh``, ``sc`` ``(B,)``)."""
    for n in range(gx.shape[0]):
        sh[n], sc[n] = lnlstm_fwd_row(gx[n], gh[n], hh[n], lnh_g, lnh_b, cp[n], cn[n], ch[n], tl[n], h[n],
                                      lnc_g, lnc_b, eps)


@njit(error_model="numpy")
def lnlstm_bwd_units(gx, hh, dy, dr, cp, ch, tl, sc, sh, dc, lnc_g, lnh_g, db, dlnh_g, dlnc_g, dlnc_b):
    for n in range(gx.shape[0]):
        lnlstm_bwd_row(gx[n], hh[n], dy[n], dr[n], cp[n], ch[n], tl[n], sc[n], sh[n], dc[n], lnc_g, lnh_g,
                       db, dlnh_g, dlnc_g, dlnc_b)
