"""``direct``: the seven nested loops of the definition, compiled by numba, no data rearranged.

    for n, k              (parallel: one task per output plane y[n, k])
      for c in group(k)
        for r, s          filter taps
          for p, q        the output plane, accumulated in place
            y[n,k,p,q] += x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]

The loops run in this order, not the textbook ``n,k,p,q,c,r,s``, so the inner loop walks one row of
input and output with unit stride (when stride is 1) and LLVM can vectorize it; the range of ``p``
and ``q`` whose input coordinate falls inside the image is computed once per tap, so the inner loop
has no bounds test and padding costs nothing.  Each output plane (P*Q elements) is written by one
task only, so there are no races.  Traffic: x is read K/groups times (from cache when a plane's
inputs fit), w once per image, y read and written C/groups*R*S times in cache.

NHWC activations are passed as NCHW-ordered strided views: same loops, non-unit strides.
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
DTYPES = CONV_VARIANTS["direct"].dtypes


@njit
def inside(off, stride, size, n):
    """The output rows ``[i0, i1)`` of ``n`` whose input row ``i*stride + off`` lies in ``[0, size)``:
    ``i0 = ceil(-off/stride)``, ``i1 = floor((size-1-off)/stride) + 1``, clipped to ``[0, n]``.  Computed
    once per tap, so the loops over the plane need no bounds test (the backward kernels use it too)."""
    i0 = max(0, -(off // stride)) if off < 0 else 0
    i1 = min(n, (size - 1 - off) // stride + 1) if size - 1 - off >= 0 else 0
    return i0, i1


@njit(parallel=True)
def _direct_kernel(x, w, b, y, sh, sw, ph, pw, dh, dw, groups):
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = y.shape[2], y.shape[3]
    Kg = K // groups
    for task in numba.prange(N * K):
        n, k = task // K, task % K
        g = k // Kg
        plane = y[n, k]
        bias = b[k]
        for i in range(P):
            for j in range(Q):
                plane[i, j] = bias
        for cc in range(Cg):
            c = g * Cg + cc
            for r in range(R):
                off_h = r * dh - ph
                i0, i1 = inside(off_h, sh, H, P)
                for s in range(S):
                    wv = w[k, cc, r, s]
                    off_w = s * dw - pw
                    j0, j1 = inside(off_w, sw, W, Q)
                    for i in range(i0, i1):
                        hi = i * sh + off_h
                        for j in range(j0, j1):
                            plane[i, j] += x[n, c, hi, j * sw + off_w] * wv
    return y


# -- launcher ---------------------------------------------------------------------------------
def accepts(problem: ConvProblem, dtype) -> str | None:
    """Any geometry; fp32 and fp64 only."""
    name = canonical(dtype)
    if name not in DTYPES:
        return f"direct computes in {', '.join(DTYPES)}, not {name}"
    return None


def conv2d_direct(x, w, b, problem: ConvProblem) -> np.ndarray:
    dt = check_inputs(x, w, b, problem)
    reason = accepts(problem, dt)
    if reason:
        raise Unsupported(reason)
    p = problem
    bias = np.asarray(b, dtype=dt) if p.bias else np.zeros(p.K, dtype=dt)
    y = np.empty(p.y_shape, dtype=dt)
    _direct_kernel(to_nchw(np.asarray(x), p.layout), np.ascontiguousarray(w), bias,
                   to_nchw(y, p.layout), *p.stride, *p.pad, *p.dilation, p.groups)
    return y


run = conv2d_direct


# -- the backward phases of the same loops (kernels.conv.backward) ---------------------------------
@njit(parallel=True)
def _direct_bwd_data(dy, w, dx, sh, sw, ph, pw, dh, dw_, groups):
    N, C, H, W = dx.shape
    K, Cg, R, S = w.shape
    P, Q = dy.shape[2], dy.shape[3]
    Kg = K // groups
    for task in numba.prange(N * C):                  # one input plane per task: no races
        n, c = task // C, task % C
        g, cc = c // Cg, c % Cg
        plane = dx[n, c]
        for i in range(H):
            for j in range(W):
                plane[i, j] = 0.0
        for kk in range(Kg):
            k = g * Kg + kk
            for r in range(R):
                off_h = r * dh - ph
                i0, i1 = inside(off_h, sh, H, P)
                for s in range(S):
                    wv = w[k, cc, r, s]
                    off_w = s * dw_ - pw
                    j0, j1 = inside(off_w, sw, W, Q)
                    for i in range(i0, i1):
                        hi = i * sh + off_h
                        for j in range(j0, j1):
                            plane[hi, j * sw + off_w] += dy[n, k, i, j] * wv

@njit(parallel=True)
def _direct_bwd_weights(x, dy, dwt, sh, sw, ph, pw, dh, dw_, groups):
    N, C, H, W = x.shape
    K, Cg, R, S = dwt.shape
    P, Q = dy.shape[2], dy.shape[3]
    Kg = K // groups
    for task in numba.prange(K * Cg):                 # one (k, c) filter slice per task
        k, cc = task // Cg, task % Cg
        c = (k // Kg) * Cg + cc
        for r in range(R):
            off_h = r * dh - ph
            i0, i1 = inside(off_h, sh, H, P)
            for s in range(S):
                off_w = s * dw_ - pw
                j0, j1 = inside(off_w, sw, W, Q)
                acc = 0.0            # float64: a sum over N*P*Q terms (10^5 in DeepBench rows)
                for n in range(N):
                    for i in range(i0, i1):
                        hi = i * sh + off_h
                        for j in range(j0, j1):
                            acc += dy[n, k, i, j] * x[n, c, hi, j * sw + off_w]
                dwt[k, cc, r, s] = acc
