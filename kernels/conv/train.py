"""Conv2d training step through the column matrix, generic over ``xp`` (NumPy on the CPU, CuPy on a GPU):
what ``microbench scale conv`` runs on every rank.  The per-phase references and timed CPU variants
(backward-data, backward-weights) are :mod:`kernels.conv.backward`; this step uses its tap slices,
its dY layout and its ``col2im``, with one batched GEMM over the groups where the timed CPU
variants loop over them.

Forward keeps the column matrix as its tape; backward is three GEMM-shaped pieces per group:

    dW_g (K/G, C/G*R*S) = dY_g (K/G, N*P*Q) @ cols_g^T        weight gradient, one GEMM
    db   (K)            = dY summed over N, P, Q
    dcols_g             = W_g^T (C/G*R*S, K/G) @ dY_g          then col2im: every (r, s) tap's
    dX                  = sum over taps of dcols scattered back  slice added into the padded dX

Columns are built tap by tap from strided slices of the padded input (R*S slice copies, no
``as_strided``), so the same code runs on CuPy.  Any stride, padding, dilation and groups; NHWC
goes through NCHW (transposes outside the GEMMs).  ``on_params(grads)`` is called once dW and db
are final and before dX is computed, so a data-parallel step can start their all-reduce while dX
is still being computed (what DDP overlaps for a convolution).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backward import taps, col2im, dy_rows
from .geometry import ConvProblem


@dataclass
class ConvTape:
    problem: ConvProblem
    x_shape: tuple
    cols: object          # (C, R, S, N, P, Q) as (G, C/G*R*S, N*P*Q) after reshape
    w: object


def _nchw(xp, a, layout):
    return a if layout == "NCHW" else xp.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _back(xp, a, layout):
    return a if layout == "NCHW" else xp.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _columns(xp, x, p: ConvProblem):
    """(C, R, S, N, P, Q) receptive fields of an NCHW input, copied tap by tap."""
    ph, pw = p.pad
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = xp.empty((p.C, p.R, p.S, p.N, p.P, p.Q), dtype=x.dtype)
    for r, s, hs, ws in taps(p):
        cols[:, r, s] = xpad[:, :, hs, ws].transpose(1, 0, 2, 3)
    return cols


def forward_train(x, w, b, problem: ConvProblem, *, xp=np):
    """``y`` (problem.layout) and the tape: the im2col forward, column matrix kept."""
    p = problem
    G, Cg, Kg, RS, NPQ = p.groups, p.Cg, p.Kg, p.R * p.S, p.N * p.P * p.Q
    cols = _columns(xp, _nchw(xp, xp.asarray(x), p.layout), p).reshape(G, Cg * RS, NPQ)
    wg = xp.asarray(w).reshape(G, Kg, Cg * RS)
    yk = xp.matmul(wg, cols).reshape(p.K, NPQ)
    if b is not None:
        yk = yk + xp.asarray(b)[:, None]
    y = xp.ascontiguousarray(yk.reshape(p.K, p.N, p.P, p.Q).transpose(1, 0, 2, 3))
    return _back(xp, y, p.layout), ConvTape(p, tuple(x.shape), cols, wg)


def backward(tape: ConvTape, dy, *, xp=np, on_params=None) -> dict:
    """``{"x", "w", "b"}`` gradients of ``sum(y * dy)`` (b None without bias)."""
    p = tape.problem
    G, Kg, NPQ = p.groups, p.Kg, p.N * p.P * p.Q
    dyk = dy_rows(xp, dy, p).reshape(G, Kg, NPQ)
    dw = xp.matmul(dyk, tape.cols.transpose(0, 2, 1)).reshape(p.K, p.C // G, p.R, p.S)
    db = dyk.reshape(p.K, NPQ).sum(axis=1) if p.bias else None
    grads = {"w": dw, "b": db}
    if on_params is not None:
        on_params(grads)
    dcols = xp.matmul(tape.w.transpose(0, 2, 1), dyk).reshape(p.C, p.R, p.S, p.N, p.P, p.Q)
    dx = col2im(xp, dcols, p, dyk.dtype)
    grads["x"] = _back(xp, xp.ascontiguousarray(dx), p.layout)
    return grads
