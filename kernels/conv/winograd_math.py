"""Winograd's transforms, exact: the Toom-Cook matrices ``(A^T, G, B^T)`` of F(m x m, 3x3) on
small points, as fractions and as arrays.  A leaf of kernels.conv: the NumPy form
(:mod:`kernels.conv.winograd`), the numba transforms (:mod:`kernels.conv.winograd_numba`) and the
packed layer (:mod:`kernels.conv.winograd_packed`) all take their matrices from here."""
from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

from ..errors import BadInput

R_FILTER = 3

# Output tile m -> the alpha - 1 finite Toom-Cook points; the last point is infinity.
# Small-magnitude points keep the transforms' entries small, which bounds the rounding error: with
# 0, +-1, +-2 (F4) the entries grow to 8 in A^T and the error is ~10x that of F2 (tests measure it).
# F(6x6, 3x3) would add +-1/2 (alpha = 8); it is not offered.
POINTS = {
    2: (0, 1, -1),
    4: (0, 1, -1, 2, -2),
}
TILES = tuple(POINTS)


@functools.lru_cache(maxsize=None)
def toom_cook(m: int, r: int = R_FILTER) -> tuple:
    """Exact ``(A^T, G, B^T)`` as tuples of Fraction rows for F(m, r) on ``POINTS[m]`` + infinity.

    Derivation.  Linear convolution of a filter polynomial g (r coefficients) with a data
    polynomial h (m coefficients) has n = m + r - 1 = alpha coefficients, so it is fixed by its
    values at alpha points.  Toom-Cook: evaluate both at the points (matrices E_r, E_m; the point
    at infinity evaluates to the leading coefficient), multiply pointwise, interpolate (V^-1,
    V = E_alpha):  conv(g, h) = V^-1 [ (E_r g) (.) (E_m h) ].  For fixed g this is the linear map
    h -> T_g h with T_g[k, i] = g[k - i].  Correlation, which CNNs compute, is its transpose:
    y_i = sum_j g_j d_{i+j} = (T_g^T d)_i, so (transposition principle)
    y = E_m^T [ (E_r g) (.) (V^-T d) ]:  A^T = E_m^T, G = E_r, B^T = V^-T.
    Finally each row u of B^T is scaled by the least common multiple of its denominators
    and the matching row of G by the inverse, so B^T is an integer matrix (Lavin's choice: the
    input transform, run on every tile, is adds only) and the fractions sit in G.
    """
    pts = POINTS[m]
    alpha = m + r - 1
    if len(pts) != alpha - 1:
        raise BadInput(f"F({m},{r}) needs {alpha - 1} finite points, have {len(pts)}")

    def evaluation(cols):
        rows = [[Fraction(a) ** j for j in range(cols)] for a in pts]
        return rows + [[Fraction(int(j == cols - 1)) for j in range(cols)]]   # infinity

    E_m, E_r, V = evaluation(m), evaluation(r), evaluation(alpha)
    BT = [list(row) for row in zip(*_inverse(V))]          # V^-T
    G = [list(row) for row in E_r]
    for u in range(alpha):
        scale = 1
        for f in BT[u]:
            scale = scale * f.denominator // np.gcd(scale, f.denominator)
        BT[u] = [f * scale for f in BT[u]]
        G[u] = [f / scale for f in G[u]]
    AT = [list(col) for col in zip(*E_m)]
    return tuple(map(tuple, AT)), tuple(map(tuple, G)), tuple(map(tuple, BT))


def _inverse(M):
    """Exact Gauss-Jordan inverse of a small Fraction matrix."""
    n = len(M)
    A = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(M)]
    for col in range(n):
        piv = next(i for i in range(col, n) if A[i][col] != 0)
        A[col], A[piv] = A[piv], A[col]
        A[col] = [v / A[col][col] for v in A[col]]
        for i in range(n):
            if i != col and A[i][col] != 0:
                A[i] = [a - A[i][col] * c for a, c in zip(A[i], A[col])]
    return [row[n:] for row in A]


def matrices(m: int, dtype=np.float64) -> tuple:
    """``(A^T, G, B^T)`` as NumPy arrays of ``dtype`` (fractions rounded once, here)."""
    return tuple(np.array([[float(v) for v in row] for row in M], dtype=dtype) for M in toom_cook(m))
