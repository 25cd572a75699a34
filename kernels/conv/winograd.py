"""``winograd``: F(2x2, 3x3) and F(4x4, 3x3) minimal filtering (Lavin & Gray 2015), NumPy + BLAS.

One output tile of m x m pixels needs an alpha x alpha input tile, alpha = m + 2, and

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) = elementwise

i.e. alpha^2 multiplies per tile and channel instead of m^2 * 9.  Over a layer the elementwise
products summed over input channels become alpha^2 independent GEMMs, one per position (u, v) of
the transformed tile (Lavin & Gray, section 4):

    M[u,v] (K, tiles) = U[u,v] (K, C) @ V[u,v] (C, tiles)

Stages (each in the axis order the next one reads, so the GEMM operands are free reshapes):
filter transform U = G g G^T (once per call here; a built layer would cache it), input
transform V = B^T d B of every overlapping tile (stride m, overlap 2), alpha^2 batched GEMMs,
output transform A^T M A, crop of the last partial tiles (P, Q need not be multiples of m).

The matrices are derived, not copied, by :func:`toom_cook` from the interpolation points below.
"""
from __future__ import annotations


import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dtypes import canonical
from ..errors import BadInput, Unsupported
from . import CONV_VARIANTS
from .geometry import ConvProblem, check_inputs
from .reference import from_nchw, to_nchw

# what the entry points here accept: the registry row's precisions (winograd_f2's row says the same)
DTYPES = CONV_VARIANTS["winograd"].dtypes
# the transforms themselves (exact Toom-Cook matrices), a leaf that the numba and packed forms share
from .winograd_math import POINTS, R_FILTER, TILES, matrices, toom_cook  # noqa: E402,F401


def _transform(T: np.ndarray, a: np.ndarray, axis: int) -> np.ndarray:
    """``out[..i..] = sum_j T[i, j] * a[..j..]`` along ``axis`` (0 or 1), zero entries skipped.

    Elementwise NumPy instead of a tensordot: the transforms are tiny matrices (at most 6 x 6,
    mostly 0 and +-1) applied to long vectors, a GEMM shape BLAS handles badly; with 2 OpenBLAS
    threads the input transform's tensordot took 130 ms against 5 ms single-threaded.  Skipping
    the zeros also gives the adds-only input transform its real cost.
    """
    lead = (slice(None),) * axis
    out = np.empty(a.shape[:axis] + (T.shape[0],) + a.shape[axis + 1:], dtype=a.dtype)
    for i, row in enumerate(T):
        o = out[lead + (i,)]
        o[...] = 0
        for j, c in enumerate(row):
            if c == 1:
                o += a[lead + (j,)]
            elif c == -1:
                o -= a[lead + (j,)]
            elif c != 0:
                o += c * a[lead + (j,)]
    return out


# -- launcher ---------------------------------------------------------------------------------
def accepts(problem: ConvProblem, dtype, tile: int = 4) -> str | None:
    """3x3 filters, stride 1, dilation 1, groups 1, any padding; fp32 and fp64."""
    name = canonical(dtype)
    p = problem
    if name not in DTYPES:
        return f"winograd computes in {', '.join(DTYPES)}, not {name}"
    if tile not in POINTS:
        return f"winograd tile F({tile}x{tile},3x3) is not offered; tiles: {TILES}"
    if (p.R, p.S) != (3, 3):
        return f"winograd F({tile}x{tile},3x3) needs a 3x3 filter, not {p.R}x{p.S}"
    if p.stride != (1, 1):
        return f"winograd needs stride 1, not {p.stride}"
    if p.dilation != (1, 1):
        return f"winograd needs dilation 1, not {p.dilation}"
    if p.groups != 1:
        return f"winograd here serves groups=1 only, not {p.groups}"
    return None


TRANSFORMS = ("numba", "numpy")


def conv2d_winograd(x, w, b, problem: ConvProblem, tile: int = 4, transforms: str = "numpy") -> np.ndarray:
    """F(tile x tile, 3x3); ``tile`` is 2 or 4.  ``transforms``: ``numpy`` (whole-array passes,
    below: the readable formulation) or ``numba`` (fused parallel kernels,
    :mod:`kernels.conv.winograd_numba`); the GEMMs are BLAS in both."""
    dt = check_inputs(x, w, b, problem)
    reason = accepts(problem, dt, tile)
    if reason:
        raise Unsupported(reason)
    if transforms not in TRANSFORMS:
        raise BadInput(f"winograd transforms {transforms!r} are unknown; allowed: {', '.join(TRANSFORMS)}")
    p, m = problem, tile
    if transforms == "numba":
        from .winograd_numba import conv2d_winograd_numba
        return conv2d_winograd_numba(np.asarray(x), np.asarray(w), b if p.bias else None, p, m)
    alpha = m + 2
    AT, G, BT = matrices(m, dt)
    tP, tQ = -(-p.P // m), -(-p.Q // m)                     # tiles per column / row, rounded up
    T = p.N * tP * tQ

    # Zero-padded input large enough for whole tiles: (tP*m + 2) x (tQ*m + 2).
    xc = to_nchw(np.asarray(x), p.layout)
    (ph, pw) = p.pad
    Hp, Wp = tP * m + 2, tQ * m + 2
    xpad = np.zeros((p.N, p.C, Hp, Wp), dtype=dt)
    xpad[:, :, ph:ph + p.H, pw:pw + p.W] = xc[:, :, :Hp - ph, :Wp - pw]
    # Overlapping tiles as a view, in the axis order the GEMMs want: (alpha, alpha, C, N, tP, tQ).
    sN, sC, sH, sW = xpad.strides
    tiles = as_strided(xpad, (alpha, alpha, p.C, p.N, tP, tQ),
                       (sH, sW, sC, sN, sH * m, sW * m), writeable=False)

    # Input transform V = B^T d B, then (alpha^2, C, tiles): a free reshape.
    V = _transform(BT, _transform(BT, tiles, 0), 1).reshape(alpha * alpha, p.C, T)

    # Filter transform U = G g G^T: (alpha^2, K, C).
    wt = np.ascontiguousarray(np.asarray(w).transpose(2, 3, 0, 1))         # (R, S, K, C)
    U = _transform(G, _transform(G, wt, 0), 1).reshape(alpha * alpha, p.K, p.C)

    # alpha^2 GEMMs (K, C) @ (C, tiles).
    M = np.matmul(U, V).reshape(alpha, alpha, p.K, p.N, tP, tQ)

    # Output transform Y = A^T M A, then tiles back into an image, cropped to P x Q.
    Y = _transform(AT, _transform(AT, M, 0), 1)                 # (m, m, K, N, tP, tQ)
    Y = Y.transpose(3, 2, 4, 0, 5, 1).reshape(p.N, p.K, tP * m, tQ * m)[:, :, :p.P, :p.Q]
    if p.bias:
        Y = Y + np.asarray(b)[None, :, None, None]
    return from_nchw(Y, p.layout)


def run(x, w, b, problem: ConvProblem) -> np.ndarray:
    """The registry's entry: F(4x4, 3x3), the usual choice for 3x3 layers, numba transforms."""
    return conv2d_winograd(x, w, b, problem, tile=4, transforms="numba")


def accepts_f2(problem: ConvProblem, dtype) -> str | None:
    return accepts(problem, dtype, tile=2)


def run_f2(x, w, b, problem: ConvProblem) -> np.ndarray:
    """The ``winograd_f2`` variant: F(2x2, 3x3), numba transforms."""
    return conv2d_winograd(x, w, b, problem, tile=2, transforms="numba")
