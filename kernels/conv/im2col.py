"""``im2col``: copy every receptive field into a column matrix, then one BLAS GEMM per group.

The convolution is a GEMM once the input is unrolled (Chellapilla et al. 2006; Caffe):

    NCHW:  Y_g (K/G, N*P*Q)  = W_g (K/G, C/G*R*S)  @ cols_g (C/G*R*S, N*P*Q)
    NHWC:  Y_g (N*P*Q, K/G)  = cols_g (N*P*Q, R*S*C/G) @ W_g^T (R*S*C/G, K/G)

The NHWC form writes its GEMM result straight into the output (rows are pixels, columns channels);
the NCHW form needs one transpose of the output (K, N, P, Q) -> (N, K, P, Q) afterwards.  Caffe
instead runs one GEMM per image to avoid it; here the whole batch is one GEMM so BLAS sees the
largest matrices.

Building ``cols``: a zero-padded copy of the input, a strided view of it with the receptive-field
axes (:func:`numpy.lib.stride_tricks.as_strided`: no copy), then one reshape that copies it.
Traffic: the column matrix has R*S/(sh*sw) times as many elements as the input (9x for a 3x3
stride-1 layer): written once, read once by the GEMM.  That copy is what ``implicit_gemm`` avoids.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..dtypes import canonical
from ..errors import Unsupported
from . import CONV_VARIANTS
from .geometry import ConvProblem, check_inputs

# what the entry points here accept: the registry row's precisions
DTYPES = CONV_VARIANTS["im2col"].dtypes


def _padded(x: np.ndarray, p: ConvProblem) -> np.ndarray:
    (ph, pw) = p.pad
    if p.layout == "NCHW":
        return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw else x


def columns(x: np.ndarray, p: ConvProblem) -> np.ndarray:
    """The receptive fields as a strided view (no copy).

    NCHW -> (C, R, S, N, P, Q); NHWC -> (N, P, Q, R, S, C): in both, reshaping the first three
    and last three axes together gives the GEMM operand of the layout (module docstring).
    """
    xp = np.ascontiguousarray(_padded(x, p))
    (sh, sw), (dh, dw) = p.stride, p.dilation
    if p.layout == "NCHW":
        sN, sC, sH, sW = xp.strides
        return as_strided(xp, (p.C, p.R, p.S, p.N, p.P, p.Q),
                          (sC, sH * dh, sW * dw, sN, sH * sh, sW * sw), writeable=False)
    sN, sH, sW, sC = xp.strides
    return as_strided(xp, (p.N, p.P, p.Q, p.R, p.S, p.C),
                      (sN, sH * sh, sW * sw, sH * dh, sW * dw, sC), writeable=False)


def accepts(problem: ConvProblem, dtype) -> str | None:
    """Any geometry; fp32 and fp64 only."""
    name = canonical(dtype)
    if name not in DTYPES:
        return f"im2col computes in {', '.join(DTYPES)}, not {name}"
    return None


def conv2d_im2col(x, w, b, problem: ConvProblem) -> np.ndarray:
    dt = check_inputs(x, w, b, problem)
    reason = accepts(problem, dt)
    if reason:
        raise Unsupported(reason)
    p = problem
    G, Cg, Kg, RS = p.groups, p.Cg, p.Kg, p.R * p.S
    view = columns(np.asarray(x), p)
    w = np.asarray(w)
    NPQ = p.N * p.P * p.Q
    if p.layout == "NCHW":
        yk = np.empty((p.K, NPQ), dtype=dt)            # (K, N*P*Q): GEMM output order
        for g in range(G):
            cols = view[g * Cg:(g + 1) * Cg].reshape(Cg * RS, NPQ)     # the copy
            np.matmul(w[g * Kg:(g + 1) * Kg].reshape(Kg, Cg * RS), cols, out=yk[g * Kg:(g + 1) * Kg])
        if p.bias:
            yk += np.asarray(b)[:, None]
        return np.ascontiguousarray(yk.reshape(p.K, p.N, p.P, p.Q).transpose(1, 0, 2, 3))
    y = np.empty(p.y_shape, dtype=dt)
    y2 = y.reshape(NPQ, p.K)
    for g in range(G):
        cols = view[..., g * Cg:(g + 1) * Cg].reshape(NPQ, RS * Cg)      # the copy
        # KCRS -> (K, R, S, C): the reduction axis in the order the NHWC columns hold it
        wg = w[g * Kg:(g + 1) * Kg].transpose(0, 2, 3, 1).reshape(Kg, RS * Cg)
        if G == 1:
            np.matmul(cols, wg.T, out=y2)
        else:
            y2[:, g * Kg:(g + 1) * Kg] = cols @ wg.T
    if p.bias:
        y2 += np.asarray(b)
    return y


run = conv2d_im2col
