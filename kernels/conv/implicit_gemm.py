"""``implicit_gemm``: the im2col GEMM, computed tile by tile without ever building the column matrix.

The GEMM is the one of :mod:`kernels.conv.im2col`, per group ``g``:

    Y (M = N*P*Q pixels, K/G channels) = cols (M, C/G*R*S) @ W_g^T (C/G*R*S, K/G)

Each parallel task owns one output tile: ``TP`` consecutive pixels of one image times ``KB``
output channels of one group, accumulated in a local ``acc (KB, TP)`` buffer.  The reduction axis
``j = (c, r, s)`` is walked in chunks of ``KC``: for each chunk the task *gathers* the ``KC x TP``
slice of the column matrix it needs straight from the input (zeros where a tap falls in the
padding) into a small local ``col`` buffer, then adds ``W[k, j] * col[j, :]`` into every ``acc``
row.  The inner loop runs over the ``TP`` pixels with unit stride, so LLVM vectorizes it; ``acc``
(KB*TP) and ``col`` (KC*TP) together are 16 KiB in fp32 and stay in L1.

Bytes: the input is read once per channel block (``K/G / KB`` times) instead of a column matrix of
R*S times its size being written and read again; the filter is read once per pixel tile (from L2).
This is the structure of cuDNN's IMPLICIT_GEMM / CUTLASS's implicit-GEMM kernels, where the
``col`` tile lives in shared memory; here it lives in L1.

NHWC activations are passed as NCHW-ordered strided views: same code, strided gathers and stores.
"""
from __future__ import annotations

import numba
import numpy as np

from ..dtypes import canonical
from ..errors import Unsupported
from ..jit import njit
from . import CONV_VARIANTS
from .geometry import ConvProblem, check_inputs
from .reference import to_nchw

# what the entry points here accept: the registry row's precisions
DTYPES = CONV_VARIANTS["implicit_gemm"].dtypes

# Tile sizes: module constants, so numba compiles them as literals (fixed trip counts unroll and
# vectorize).  TP: pixels per tile; KB: output channels per tile; KC: reduction chunk.
TP = 64
KB = 32
KC = 32


@njit(parallel=True)
def _implicit_gemm_kernel(x, wg, b, y, R, S, sh, sw, ph, pw, dh, dw):
    N, C, H, W = x.shape
    G, Kg, CRS = wg.shape            # filter as (groups, K/G, C/G*R*S): rows contiguous in j
    Cg = C // G
    P, Q = y.shape[2], y.shape[3]
    PQ = P * Q
    RS = R * S
    n_pt = (PQ + TP - 1) // TP
    n_kb = (Kg + KB - 1) // KB
    for task in numba.prange(N * n_pt * G * n_kb):
        kb = task % n_kb
        rest = task // n_kb
        g = rest % G
        rest //= G
        pt = rest % n_pt
        n = rest // n_pt
        m0, k0 = pt * TP, kb * KB
        tp, kn = min(TP, PQ - m0), min(KB, Kg - k0)
        # top-left input coordinate of each pixel's receptive field
        hb = np.empty(TP, np.int64)
        wb = np.empty(TP, np.int64)
        for t in range(tp):
            hb[t] = ((m0 + t) // Q) * sh - ph
            wb[t] = ((m0 + t) % Q) * sw - pw
        acc = np.zeros((KB, TP), x.dtype)
        col = np.zeros((KC, TP), x.dtype)   # columns t >= tp stay zero: they feed nothing
        for j0 in range(0, CRS, KC):
            jn = min(KC, CRS - j0)
            # gather the (jn, tp) slice of the column matrix
            for jj in range(jn):
                j = j0 + jj
                c = g * Cg + j // RS
                r = (j % RS) // S
                s = j % S
                for t in range(tp):
                    hi = hb[t] + r * dh
                    wi = wb[t] + s * dw
                    if hi >= 0 and hi < H and wi >= 0 and wi < W:
                        col[jj, t] = x[n, c, hi, wi]
                    else:
                        col[jj, t] = 0
            # acc (kn, TP) += W[k0:k0+kn, j0:j0+jn] @ col (jn, TP)
            for kk in range(kn):
                wrow = wg[g, k0 + kk]
                arow = acc[kk]
                for jj in range(jn):
                    wv = wrow[j0 + jj]
                    crow = col[jj]
                    for t in range(TP):
                        arow[t] += wv * crow[t]
        for kk in range(kn):
            k = g * Kg + k0 + kk
            for t in range(tp):
                m = m0 + t
                y[n, k, m // Q, m % Q] = acc[kk, t] + b[k]
    return y


# -- launcher ---------------------------------------------------------------------------------
def accepts(problem: ConvProblem, dtype) -> str | None:
    """Any geometry; fp32 and fp64 only."""
    name = canonical(dtype)
    if name not in DTYPES:
        return f"implicit_gemm computes in {', '.join(DTYPES)}, not {name}"
    return None


def conv2d_implicit_gemm(x, w, b, problem: ConvProblem) -> np.ndarray:
    dt = check_inputs(x, w, b, problem)
    reason = accepts(problem, dt)
    if reason:
        raise Unsupported(reason)
    p = problem
    wg = np.ascontiguousarray(w).reshape(p.groups, p.Kg, p.Cg * p.R * p.S)   # a view: no copy
    bias = np.asarray(b, dtype=dt) if p.bias else np.zeros(p.K, dtype=dt)
    y = np.empty(p.y_shape, dtype=dt)
    _implicit_gemm_kernel(to_nchw(np.asarray(x), p.layout), wg, bias, to_nchw(y, p.layout),
                          p.R, p.S, *p.stride, *p.pad, *p.dilation)
    return y


run = conv2d_implicit_gemm
