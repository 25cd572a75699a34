"""NumPy emulations of the kernels of ``kernels/cuda/conv2d.cu``, used by tests/test_conv_gpu.py
to check the kernels' index math without a GPU.  Each follows its kernel slot by slot, in both
layouts, with the launcher's constants and tile sizes (:mod:`kernels.conv.gpu`):

- :func:`emulate_direct`: the thread -> output map and the flat offsets.
- :func:`emulate_implicit_gemm`: block tiles, the thread -> shared-memory-slot maps, the carried
  reduction digits, the im2col gather with padding zeros, groups, the thread -> output map.
- :func:`emulate_winograd`: F(2x2) and F(4x4): tile enumeration, the input patch gather, the
  transforms written as the kernels write them, the GEMM operand layouts, the crop of partial tiles.

The tests compare them with :func:`kernels.conv.conv2d_reference`, and plant bugs (a wrong offset,
a lost reduction digit) that must make them fail.
"""
from __future__ import annotations

import numpy as np

from ..errors import BadInput, Unsupported
from .geometry import ConvProblem
from .gpu import (BK, BM, BN, LAYOUT_TAG, THREADS, WARP, WINO_M, WINOGRAD, _tile, accepts_gpu,
                  winograd_filter_transform, winograd_tiles)


# -- flat offsets of activations, as the kernels compute them ------------------------------------
def x_offset(p: ConvProblem, n, c, h, w):
    """Offset of x[n, c, h, w] (logical NCHW coordinates) in the layout's memory order."""
    if p.layout == "NHWC":
        return ((n * p.H + h) * p.W + w) * p.C + c
    return ((n * p.C + c) * p.H + h) * p.W + w


def y_offset(p: ConvProblem, n, k, pp, q):
    """Offset of y[n, k, p, q] (logical NCHW coordinates) in the layout's memory order."""
    if p.layout == "NHWC":
        return ((n * p.P + pp) * p.Q + q) * p.K + k
    return ((n * p.K + k) * p.P + pp) * p.Q + q


def _flat(a) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


# -- NumPy emulation of the direct kernel --------------------------------------------------------
def direct_thread_coords(p: ConvProblem, idx) -> tuple:
    """``(n, k, p, q)`` of the output element thread ``idx`` computes: the output's own order
    (NCHW q fastest, NHWC k fastest), so ``idx`` is also its offset in y."""
    if p.layout == "NHWC":
        k, t = idx % p.K, idx // p.K
        q, t = t % p.Q, t // p.Q
        return t // p.P, k, t % p.P, q
    q, t = idx % p.Q, idx // p.Q
    pp, t = t % p.P, t // p.P
    return t // p.K, t % p.K, pp, q


def emulate_direct(x, w, b, problem: ConvProblem) -> np.ndarray:
    """conv2d_direct{,_nhwc} for every thread at once: decomposition of the thread index, taps
    skipped outside the input, x and w read at the kernel's flat offsets, y written at ``idx``."""
    p = problem
    x, w = np.asarray(x), np.asarray(w)
    xf, wf = _flat(x), _flat(w)
    idx = np.arange(p.N * p.K * p.P * p.Q)
    n, k, pp, q = direct_thread_coords(p, idx)
    if not np.array_equal(y_offset(p, n, k, pp, q), idx):
        raise AssertionError("a thread's output element is not at its index")
    g = k // p.Kg
    h0, w0 = pp * p.stride[0] - p.pad[0], q * p.stride[1] - p.pad[1]
    acc = np.asarray(b, dtype=x.dtype)[k] if b is not None else np.zeros(idx.shape, dtype=x.dtype)
    RS = p.R * p.S
    for r in range(p.R):
        hi = h0 + r * p.dilation[0]
        for s in range(p.S):
            wi = w0 + s * p.dilation[1]
            ok = (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
            for c in range(p.Cg):
                xv = np.zeros(idx.shape, dtype=x.dtype)
                xv[ok] = xf[x_offset(p, n[ok], g[ok] * p.Cg + c, hi[ok], wi[ok])]
                acc = acc + xv * wf[k * p.Cg * RS + c * RS + r * p.S + s]
    y = np.full(idx.shape, np.nan, dtype=x.dtype)
    y[idx] = acc
    return y.reshape(p.y_shape)


# -- NumPy emulation of the implicit-GEMM kernel -------------------------------------------------
def a_slots(threads: int = THREADS, bm: int = BM, bk: int = BK, layout: str = "NCHW") -> tuple:
    """Per (thread, i): the A-tile slot ``(ml, kl)`` the kernel's fetch/stash fills.
    NCHW ``ml = idx % bm, kl = idx // bm`` (consecutive threads, consecutive pixels); NHWC
    ``kl = idx % bk, ml = idx // bk`` (consecutive threads, consecutive channels)."""
    idx = np.arange(threads)[:, None] + np.arange(bm * bk // threads)[None, :] * threads
    if layout == "NHWC":
        return idx // bk, idx % bk
    return idx % bm, idx // bm


def a_pad(bk: int, layout: str = "NCHW") -> int:
    """Words of padding per row of the A tile (the .cu's APAD): NHWC writes the tile down its
    columns, and 32/BK spreads a warp's 32 stores over the 32 banks."""
    return WARP // bk if layout == "NHWC" else 0


def b_slots(threads: int = THREADS, bn: int = BN, bk: int = BK) -> tuple:
    """Per (thread, i): the B-tile slot ``(kl, jl)``."""
    idx = np.arange(threads)[:, None] + np.arange(bn * bk // threads)[None, :] * threads
    return idx % bk, idx // bk


def out_slots(threads: int = THREADS, bm: int = BM, bn: int = BN) -> tuple:
    """Per (thread, i, j): the output slot ``(ml, jl)`` = (tm + 16 i, 64 (j // 4) + tn*4 + j % 4),
    tm = tid % 16, tn = tid // 16 (256 threads; BM a multiple of 16, BN of 64)."""
    tid = np.arange(threads)
    tm, tn = tid % 16, tid // 16
    i, j = np.arange(bm // 16), np.arange(bn // 16)
    ml = tm[:, None, None] + 16 * i[None, :, None] + 0 * j[None, None, :]
    jl = tn[:, None, None] * 4 + 0 * i[None, :, None] + (64 * (j // 4) + j % 4)[None, None, :]
    return ml, jl


def reduction_column(p: ConvProblem, c, r, s):
    """The GEMM reduction column of filter tap ``(c, r, s)``: NCHW ``(c*R + r)*S + s`` (taps of one
    channel plane adjacent), NHWC ``(r*S + s)*Cg + c`` (channels of one pixel adjacent)."""
    if p.layout == "NHWC":
        return (r * p.S + s) * p.Cg + c
    return (c * p.R + r) * p.S + s


def a_start(p: ConvProblem, kl) -> tuple:
    """``(c, r, s)`` of reduction column ``kl`` (the kernel's divisions, done once)."""
    if p.layout == "NHWC":
        t = kl // p.Cg
        return kl % p.Cg, t // p.S, t % p.S
    RS = p.R * p.S
    c, rs = kl // RS, kl % RS
    return c, rs // p.S, rs % p.S


def _add_digits(digits: tuple, radices: tuple, steps: tuple) -> list:
    """Mixed-radix ``digits + steps``, least significant digit first, one carry per digit (the
    most significant digit has no radix and takes the last carry)."""
    out, carry = [], 0
    for d, radix, step in zip(digits, radices + (None,), steps):
        d = d + step + carry
        if radix is None:
            out.append(d)
            break
        carry = d >= radix
        out.append(np.where(carry, d - radix, d))
    return out


def a_advance(p: ConvProblem, c, r, s, BK: int = BK) -> tuple:
    """The kernel's step of ``(c, r, s)`` by BK reduction columns: one carry per digit, least
    significant digit first (NCHW s, r, c; NHWC c, s, r)."""
    if p.layout == "NHWC":
        c, s, r = _add_digits((c, s, r), (p.Cg, p.S), (BK % p.Cg, (BK // p.Cg) % p.S, BK // (p.Cg * p.S)))
        return c, r, s
    RS = p.R * p.S
    s, r, c = _add_digits((s, r, c), (p.S, p.R), (BK % p.S, (BK % RS) // p.S, BK // RS))
    return c, r, s


def _a_gather(xc, p: ConvProblem, g: int, m, c, r, s):
    """The values the kernel loads for A slots at GEMM row ``m`` and reduction coordinates
    ``(c, r, s)`` (arrays of one shape): x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] at
    its flat offset in the layout, zero for padding, rows past M and reduction columns past Kgemm
    (the tail of the last slice: c past C/groups in NCHW, r past R in NHWC)."""
    M = p.N * p.P * p.Q
    ok = (m < M) & (c < p.Cg) & (r < p.R)
    q, t = m % p.Q, m // p.Q
    pp, n = t % p.P, t // p.P
    hi = pp * p.stride[0] - p.pad[0] + r * p.dilation[0]
    wi = q * p.stride[1] - p.pad[1] + s * p.dilation[1]
    ok &= (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
    vals = np.zeros(m.shape, dtype=xc.dtype)
    vals[ok] = _flat(xc)[x_offset(p, n[ok], g * p.Cg + c[ok], hi[ok], wi[ok])]
    return vals


def emulate_implicit_gemm(x, w, b, problem: ConvProblem, BM: int = BM, BN: int = BN, BK: int = BK,
                          threads: int = THREADS, stats: dict | None = None) -> np.ndarray:
    """conv2d_implicit_gemm{,_nhwc} as the kernel computes it, block by block and slice by slice.

    For every block (m tile, channel tile, group) and every BK-slice of the reduction, the A and B
    tiles are filled through the kernel's thread -> slot maps (:func:`a_slots` for the layout,
    :func:`b_slots`), each slot holding exactly the element the kernel's fetch reads (zero for
    padding and for slots past M, Kg or Kgemm) from the reduction digits the kernel carries; the
    accumulator gets ``A^T @ B`` of the slice; the output goes through the kernel's thread ->
    output map (:func:`out_slots`; tiles it cannot serve are stored whole) to its flat offset in
    the layout.  Accumulates in x's dtype (pass float64 to check the index math exactly).
    ``stats`` (a dict) receives counts: blocks, slices, padding zeros loaded.
    """
    p = problem
    nhwc = p.layout == "NHWC"
    if p.layout not in LAYOUT_TAG:
        raise Unsupported(f"the implicit-GEMM kernel takes {' or '.join(LAYOUT_TAG)}, not {p.layout}")
    if (BM * BK) % threads or (BN * BK) % threads or (threads % BK if nhwc else threads % BM):
        need = "threads % BK == 0" if nhwc else "threads % BM == 0"
        raise BadInput(f"tile BM={BM} BN={BN} BK={BK} does not split over {threads} threads "
                       f"(the kernel needs {need} and BM*BK, BN*BK multiples of threads)")
    x, w = np.asarray(x), np.asarray(w)
    dt = x.dtype
    M, Kg, Kgemm = p.N * p.P * p.Q, p.Kg, p.Cg * p.R * p.S
    wf = _flat(w)
    y = np.full(p.N * p.K * p.P * p.Q, np.nan, dtype=dt)  # NaN: a slot never written shows up
    am_l, ak_l = a_slots(threads, BM, BK, p.layout)
    bk_l, bj_l = b_slots(threads, BN, BK)
    if nhwc and not (np.all(ak_l == ak_l[:, :1]) and np.all(bk_l == ak_l[:, :1])):
        raise AssertionError("NHWC: a thread's A and B slots must share one reduction column")
    use_map = threads == 256 and BM % 16 == 0 and BN % 64 == 0
    om_l, oj_l = out_slots(threads, BM, BN) if use_map else (None, None)
    st = {"blocks": 0, "slices": 0, "a_zero_slots": 0, "a_slots": 0}
    for g in range(p.groups):
        for m0 in range(0, M, BM):
            for j0 in range(0, Kg, BN):
                st["blocks"] += 1
                acc = np.zeros((BM, BN), dtype=dt)
                c, r, s = a_start(p, ak_l)                 # per (thread, i), carried over slices
                for k0 in range(0, Kgemm, BK):
                    st["slices"] += 1
                    if np.any(reduction_column(p, c, r, s) != k0 + ak_l):
                        raise AssertionError("carried (c, r, s) left the reduction column")
                    A = np.full((BK, BM), np.nan, dtype=dt)
                    vals = _a_gather(x, p, g, m0 + am_l, c, r, s)
                    A[ak_l, am_l] = vals
                    st["a_slots"] += vals.size
                    st["a_zero_slots"] += int(np.count_nonzero(vals == 0))
                    B = np.full((BK, BN), np.nan, dtype=dt)
                    j = j0 + bj_l
                    if nhwc:
                        # the B slots reuse the thread's carried digits: tap (c*R + r)*S + s of KCRS
                        c1, r1, s1 = (np.broadcast_to(a[:, :1], j.shape) for a in (c, r, s))
                        ok = (r1 < p.R) & (j < Kg)
                        off = (g * Kg + j) * Kgemm + (c1 * p.R + r1) * p.S + s1
                    else:
                        kk = k0 + bk_l
                        ok = (kk < Kgemm) & (j < Kg)
                        off = (g * Kg + j) * Kgemm + kk
                    bv = np.zeros(j.shape, dtype=dt)
                    bv[ok] = wf[off[ok]]
                    B[bk_l, bj_l] = bv
                    c, r, s = a_advance(p, c, r, s, BK)
                    acc += A.T @ B                        # NaN if a slot was never filled
                if use_map:
                    ml, jl = om_l.ravel(), oj_l.ravel()
                else:
                    ml, jl = (a.ravel() for a in np.meshgrid(np.arange(BM), np.arange(BN), indexing="ij"))
                m, jj = m0 + ml, j0 + jl
                ok = (m < M) & (jj < Kg)
                m, jj, ml, jl = m[ok], jj[ok], ml[ok], jl[ok]
                k = g * Kg + jj
                bias = np.asarray(b, dtype=dt)[k] if b is not None else 0
                if nhwc:
                    off = m * p.K + k
                else:
                    n, pq = m // (p.P * p.Q), m % (p.P * p.Q)
                    off = (n * p.K + k) * (p.P * p.Q) + pq
                y[off] = acc[ml, jl] + bias
    if stats is not None:
        stats.update(st)
    return y.reshape(p.y_shape)


# -- NumPy emulation of the Winograd kernels ---------------------------------------------------
def _bt(d0, d1, d2, d3):
    """WinoF2::bt of the .cu: B^T applied to one 4-vector."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _at(m0, m1, m2, m3):
    """WinoF2::at of the .cu: A^T applied to one 4-vector."""
    return m0 + m1 + m2, m1 - m2 - m3


def _bt4(d0, d1, d2, d3, d4, d5):
    """WinoF4::bt of the .cu: B^T of F(4x4,3x3) applied to one 6-vector, with its shared sums."""
    a, b = 4 * d2 - d4, 4 * d1 - d3
    c, e = d4 - d2, d3 - d1
    return 4 * d0 - 5 * d2 + d4, a + b, a - b, 2 * e + c, c - 2 * e, 4 * d1 - 5 * d3 + d5


def _at4(m0, m1, m2, m3, m4, m5):
    """WinoF4::at of the .cu: A^T of F(4x4,3x3) applied to one 6-vector."""
    a, b, c, e = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + a + c, 2 * e + b, 4 * c + a, 8 * e + b + m5


TRANSFORMS = {2: (_bt, _at), 4: (_bt4, _at4)}


def _tile_coords(p: ConvProblem, idx, count: int, T: int, tP: int, tQ: int) -> tuple:
    """``(ch, n, tp, tq)`` of Winograd thread ``idx``: NCHW ``idx = ch*T + t`` (t fastest), NHWC
    ``idx = t*count + ch`` (the channel fastest); ``count`` is C (input) or K (output)."""
    if p.layout == "NHWC":
        ch, t = idx % count, idx // count
    else:
        t, ch = idx % T, idx // T
    return ch, t // (tQ * tP), (t // tQ) % tP, t % tQ


def emulate_winograd_input(x, problem: ConvProblem, m: int = WINO_M) -> np.ndarray:
    """conv2d_winograd{_f2,}_input{,_nhwc}_f32 for every thread at once: V in x's dtype,
    (alpha^2, C, T) for NCHW, (alpha^2, T, C) for NHWC."""
    p, bt = problem, TRANSFORMS[_tile(m).m][0]
    A = m + 2
    xf = _flat(x)
    tP, tQ, T = winograd_tiles(p, m)
    idx = np.arange(p.C * T)
    c, n, tp, tq = _tile_coords(p, idx, p.C, T, tP, tQ)
    h0, w0 = tp * m - p.pad[0], tq * m - p.pad[1]
    d = [[None] * A for _ in range(A)]
    for i in range(A):
        for j in range(A):
            hi, wi = h0 + i, w0 + j
            ok = (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
            v = np.zeros(idx.shape, dtype=xf.dtype)
            v[ok] = xf[x_offset(p, n[ok], c[ok], hi[ok], wi[ok])]
            d[i][j] = v
    tmp = [[None] * A for _ in range(A)]
    for j in range(A):
        col = bt(*(d[i][j] for i in range(A)))
        for u in range(A):
            tmp[u][j] = col[u]
    V = np.full((A * A, p.C * T), np.nan, dtype=xf.dtype)
    for u in range(A):
        row = bt(*tmp[u])
        for v in range(A):
            V[u * A + v, idx] = row[v]
    return V.reshape(A * A, *((T, p.C) if p.layout == "NHWC" else (p.C, T)))


def emulate_winograd_output(Mt, b, problem: ConvProblem, m: int = WINO_M) -> np.ndarray:
    """conv2d_winograd{_f2,}_output{,_nhwc}_f32 for every thread at once: y in the layout from M,
    (alpha^2, K, T) for NCHW, (alpha^2, T, K) for NHWC."""
    p, at = problem, TRANSFORMS[_tile(m).m][1]
    A = m + 2
    tP, tQ, T = winograd_tiles(p, m)
    Mt = np.asarray(Mt).reshape(A * A, p.K * T)
    idx = np.arange(p.K * T)
    k, n, tp, tq = _tile_coords(p, idx, p.K, T, tP, tQ)
    mm = [[Mt[u * A + v, idx] for v in range(A)] for u in range(A)]
    tmp = [[None] * A for _ in range(m)]
    for v in range(A):
        o = at(*(mm[u][v] for u in range(A)))
        for i in range(m):
            tmp[i][v] = o[i]
    bias = np.asarray(b)[k] if b is not None else 0
    y = np.full(p.N * p.K * p.P * p.Q, np.nan, dtype=Mt.dtype)
    for i in range(m):
        o = at(*tmp[i])
        pp = tp * m + i
        for j in range(m):
            q = tq * m + j
            ok = (pp < p.P) & (q < p.Q)
            y[y_offset(p, n[ok], k[ok], pp[ok], q[ok])] = (o[j] + bias)[ok]
    return y.reshape(p.y_shape)


def emulate_winograd(x, w, b, problem: ConvProblem, variant: str = "winograd_f2") -> np.ndarray:
    """A GPU Winograd path in NumPy: filter transform, input kernel, the alpha^2 GEMMs in the
    layout's operand order, output kernel."""
    if variant not in WINOGRAD:
        raise BadInput(f"Winograd variant {variant!r} is unknown; allowed: {', '.join(WINOGRAD)}")
    reason = accepts_gpu(variant, problem, "fp32")
    if reason:
        raise Unsupported(reason)
    m = WINOGRAD[variant].m
    U = winograd_filter_transform(np.asarray(w), np, m, problem.layout)
    V = emulate_winograd_input(x, problem, m)
    M = np.matmul(V, U) if problem.layout == "NHWC" else np.matmul(U, V)
    return emulate_winograd_output(M, b, problem, m)
