"""Host memory a CPU conv variant allocates per call besides x, w, b and y: each
:class:`kernels.conv.ConvVariant` row names one of these estimates (``workspace``), as the GPU
table has :func:`kernels.conv.gpu.workspace_bytes`.  The planner adds the largest over the chosen
variants to a case's memory need.  Geometry only: nothing here imports a variant's module (or
numba).  Each takes ``(problem, itemsize)`` and returns bytes.
"""
from __future__ import annotations

from .geometry import ConvProblem


def none(p: ConvProblem, item: int) -> int:
    """Nothing beyond a few per-thread tiles (implicit GEMM's live in L1; the direct loops read
    either layout in place)."""
    return 0


def column_matrix(p: ConvProblem, item: int) -> int:
    """im2col: the zero-padded input, the column matrix (C*R*S rows, N*P*Q columns) and the GEMM's
    output before its transpose into y (the NCHW form; NHWC writes y directly, counted anyway)."""
    padded = p.N * p.C * (p.H + 2 * p.pad[0]) * (p.W + 2 * p.pad[1])
    return item * (padded + p.C * p.R * p.S * p.N * p.P * p.Q + p.K * p.N * p.P * p.Q)


def winograd(m: int):
    """F(m x m, 3x3) on the CPU (kernels.conv.winograd_numba): the padded NHWC input covering
    whole tiles, the transformed input V and GEMM output M (alpha^2 x tiles x C, K), the output
    tiles before cropping, the transformed filter U and its tap matrix."""
    alpha = m + 2

    def estimate(p: ConvProblem, item: int) -> int:
        tP, tQ = -(-p.P // m), -(-p.Q // m)
        T = p.N * tP * tQ
        padded = p.N * (tP * m + 2) * (tQ * m + 2) * p.C
        tiles = alpha * alpha * T * (p.C + p.K)
        out = p.N * tP * m * tQ * m * p.K
        filt = alpha * alpha * p.C * p.K + p.R * p.S * p.C * p.K
        return item * (padded + tiles + out + filt)
    estimate.__name__ = estimate.__qualname__ = f"winograd_f{m}"
    return estimate
