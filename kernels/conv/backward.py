"""2-D convolution backward: backward-data (dx) and backward-weights (dw, db).

For ``y = conv(x, w) + b`` and an upstream gradient ``dy`` (shape of y):

    dx[n, c, h, v] = sum_{k in group(c), r, s, p, q : h = p*sh - ph + r*dh, v = q*sw - pw + s*dw}
                     dy[n, k, p, q] * w[k, c', r, s]
    dw[k, c', r, s] = sum_{n, p, q} dy[n, k, p, q] * x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw]
    db[k]           = sum_{n, p, q} dy[n, k, p, q]

(``c' = c - g*C/G``, out-of-range input coordinates contribute nothing.)  These are what
DeepBench's training table times besides the forward pass (cuDNN's ``BackwardData`` and
``BackwardFilter``), and what autograd computes.

- float64 references, tap by tap like :func:`kernels.conv.reference.conv2d_reference`: for each
  filter tap ``(r, s)`` the strided slice of the padded input that tap meets; backward-data
  scatters ``dy`` through the tap's weights into that slice, backward-weights contracts the slice
  with ``dy``.  Checked in the tests against torch autograd and by the adjoint identity
  ``<conv(x, w), dy> = <x, dx> = <w, dw>`` on the forward definition.
- ``im2col``: backward-weights is one GEMM per group with the forward's column matrix,
  ``dW_g (K/G, C/G*R*S) = dY_g (K/G, N*P*Q) @ cols_g^T``; backward-data is one GEMM per group
  into a column-matrix gradient, ``dcols_g = W_g^T @ dY_g``, then ``col2im``: R*S strided adds
  into the padded dx (the reverse of the forward's copy).
- ``direct``: numba loops, no data rearranged.  Backward-data parallel over (n, c) input planes,
  backward-weights parallel over the K*C/G filter slices, each written by one task only (its
  N*P*Q-term sums accumulated in float64, then rounded once).

Activations in ``problem.layout``; NHWC inputs go through NCHW views (direct) or one transposed
copy each way (im2col).  Variants compute fp32 and fp64.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..dtypes import canonical
from ..errors import BadInput, Unsupported
from .geometry import ConvProblem
from .im2col import columns
from .reference import from_nchw, to_nchw

DTYPES = ("fp32", "fp64")
PHASES = ("bwd_data", "bwd_weights")


def check_grad_inputs(a, name: str, shape: tuple) -> np.dtype:
    if tuple(np.shape(a)) != tuple(shape):
        raise BadInput(f"{name} has shape {tuple(np.shape(a))}; expected {tuple(shape)}")
    return np.asarray(a).dtype


# -- float64 references ---------------------------------------------------------------------------
def taps(p: ConvProblem):
    """(r, s, row slice, column slice) of the padded input each filter tap meets."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    for r in range(p.R):
        for s in range(p.S):
            h0, w0 = r * dh, s * dw
            yield r, s, slice(h0, h0 + sh * (p.P - 1) + 1, sh), slice(w0, w0 + sw * (p.Q - 1) + 1, sw)


def dy_rows(xp, dy, p: ConvProblem):
    """dY as (K, N*P*Q), the forward GEMM's output order (a contiguous copy; ``xp`` NumPy or CuPy)."""
    return xp.ascontiguousarray(to_nchw(xp.asarray(dy), p.layout).transpose(1, 0, 2, 3)).reshape(p.K, p.N * p.P * p.Q)


def col2im(xp, dcols, p: ConvProblem, dtype):
    """dx (N, C, H, W) from the column-matrix gradient ``dcols`` (C, R, S, N, P, Q): each tap's
    (C, N, P, Q) block added into the strided slice of the padded gradient (the reverse of the
    forward's copy); ``xp`` NumPy or CuPy."""
    ph, pw = p.pad
    dxpad = xp.zeros((p.N, p.C, p.H + 2 * ph, p.W + 2 * pw), dtype=dtype)
    for r, s, rows, cols in taps(p):
        dxpad[:, :, rows, cols] += dcols[:, r, s].transpose(1, 0, 2, 3)
    return dxpad[:, :, ph:ph + p.H, pw:pw + p.W]


def conv2d_backward_data_reference(dy, w, problem: ConvProblem) -> np.ndarray:
    """``dx`` in ``problem.layout``, float64."""
    p = problem
    check_grad_inputs(dy, "dy", p.y_shape)
    check_grad_inputs(w, "w", p.w_shape)
    (ph, pw), G = p.pad, p.groups
    dyg = to_nchw(np.asarray(dy, dtype=np.float64), p.layout).reshape(p.N, G, p.Kg, p.P, p.Q)
    wg = np.asarray(w, dtype=np.float64).reshape(G, p.Kg, p.Cg, p.R, p.S)
    dxpad = np.zeros((p.N, G, p.Cg, p.H + 2 * ph, p.W + 2 * pw))
    for r, s, rows, cols in taps(p):
        dxpad[..., rows, cols] += np.einsum("ngkpq,gkc->ngcpq", dyg, wg[..., r, s])
    dx = dxpad[..., ph:ph + p.H, pw:pw + p.W].reshape(p.N, p.C, p.H, p.W)
    return from_nchw(dx, p.layout)


def conv2d_backward_weights_reference(x, dy, problem: ConvProblem) -> tuple:
    """``(dw (K, C/G, R, S), db (K,) or None without bias)``, float64."""
    p = problem
    check_grad_inputs(x, "x", p.x_shape)
    check_grad_inputs(dy, "dy", p.y_shape)
    (ph, pw), G = p.pad, p.groups
    xc = to_nchw(np.asarray(x, dtype=np.float64), p.layout)
    xg = np.pad(xc, ((0, 0), (0, 0), (ph, ph), (pw, pw))).reshape(p.N, G, p.Cg, p.H + 2 * ph, p.W + 2 * pw)
    dyc = to_nchw(np.asarray(dy, dtype=np.float64), p.layout)
    dyg = dyc.reshape(p.N, G, p.Kg, p.P, p.Q)
    dw = np.empty((G, p.Kg, p.Cg, p.R, p.S))
    for r, s, rows, cols in taps(p):
        dw[..., r, s] = np.einsum("ngcpq,ngkpq->gkc", xg[..., rows, cols], dyg)
    db = dyc.sum(axis=(0, 2, 3)) if p.bias else None
    return dw.reshape(p.w_shape), db


# -- im2col -----------------------------------------------------------------------------------------
def accepts(problem: ConvProblem, dtype) -> str | None:
    """Any geometry; fp32 and fp64 only (the same for every backward variant here)."""
    name = canonical(dtype)
    if name not in DTYPES:
        return f"the conv backward variants compute {', '.join(DTYPES)}, not {name}"
    return None


def _nchw(problem: ConvProblem) -> ConvProblem:
    return problem if problem.layout == "NCHW" else dataclasses.replace(problem, layout="NCHW")


def _dtype(a, problem) -> np.dtype:
    dt = np.asarray(a).dtype
    reason = accepts(problem, dt)
    if reason:
        raise Unsupported(reason)
    return dt


def backward_data_im2col(dy, w, problem: ConvProblem) -> np.ndarray:
    p = problem
    dt = _dtype(dy, p)
    check_grad_inputs(dy, "dy", p.y_shape)
    check_grad_inputs(w, "w", p.w_shape)
    G, Cg, Kg, RS = p.groups, p.Cg, p.Kg, p.R * p.S
    dyk = dy_rows(np, dy, p)
    w = np.asarray(w)
    dcols = np.empty((p.C * RS, dyk.shape[1]), dtype=dt)   # (C, R, S) x (N, P, Q), the column layout
    for g in range(G):
        wg = w[g * Kg:(g + 1) * Kg].reshape(Kg, Cg * RS)
        np.matmul(wg.T, dyk[g * Kg:(g + 1) * Kg], out=dcols[g * Cg * RS:(g + 1) * Cg * RS])
    dx = col2im(np, dcols.reshape(p.C, p.R, p.S, p.N, p.P, p.Q), p, dt)
    return from_nchw(dx, p.layout)


def backward_weights_im2col(x, dy, problem: ConvProblem) -> tuple:
    p = problem
    dt = _dtype(x, p)
    check_grad_inputs(x, "x", p.x_shape)
    check_grad_inputs(dy, "dy", p.y_shape)
    G, Cg, Kg, RS = p.groups, p.Cg, p.Kg, p.R * p.S
    NPQ = p.N * p.P * p.Q
    q = _nchw(p)
    view = columns(np.ascontiguousarray(to_nchw(np.asarray(x), p.layout)), q)   # (C, R, S, N, P, Q)
    dyk = dy_rows(np, dy, p)
    dw = np.empty((p.K, Cg * RS), dtype=dt)
    for g in range(G):
        cols = view[g * Cg:(g + 1) * Cg].reshape(Cg * RS, NPQ)          # the forward's copy
        np.matmul(dyk[g * Kg:(g + 1) * Kg], cols.T, out=dw[g * Kg:(g + 1) * Kg])
    db = dyk.sum(axis=1) if p.bias else None
    return dw.reshape(p.w_shape), db


# -- direct (numba) -----------------------------------------------------------------------------------
def _direct_kernels():
    """(backward-data, backward-weights) of the direct loops (kernels.conv.direct, which imports
    numba: importing this module does not)."""
    from .direct import _direct_bwd_data, _direct_bwd_weights
    return _direct_bwd_data, _direct_bwd_weights


def backward_data_direct(dy, w, problem: ConvProblem) -> np.ndarray:
    p = problem
    dt = _dtype(dy, p)
    check_grad_inputs(dy, "dy", p.y_shape)
    check_grad_inputs(w, "w", p.w_shape)
    dx = np.empty(p.x_shape, dtype=dt)
    _direct_kernels()[0](to_nchw(np.asarray(dy), p.layout), np.ascontiguousarray(w, dtype=dt),
                         to_nchw(dx, p.layout), *p.stride, *p.pad, *p.dilation, p.groups)
    return dx


def backward_weights_direct(x, dy, problem: ConvProblem) -> tuple:
    p = problem
    dt = _dtype(x, p)
    check_grad_inputs(x, "x", p.x_shape)
    check_grad_inputs(dy, "dy", p.y_shape)
    dw = np.empty(p.w_shape, dtype=dt)
    dyc = to_nchw(np.asarray(dy), p.layout)
    _direct_kernels()[1](to_nchw(np.asarray(x), p.layout), dyc, dw, *p.stride, *p.pad, *p.dilation, p.groups)
    return dw, (dyc.sum(axis=(0, 2, 3)) if p.bias else None)


# variant -> (backward-data, backward-weights)
BACKWARD = {"im2col": (backward_data_im2col, backward_weights_im2col),
            "direct": (backward_data_direct, backward_weights_direct)}


def backward(variant: str, phase: str, x, w, dy, problem: ConvProblem):
    """One phase of one variant: ``bwd_data -> dx``, ``bwd_weights -> (dw, db)``."""
    if variant not in BACKWARD:
        raise BadInput(f"conv backward variant {variant!r} is unknown; allowed: {', '.join(BACKWARD)}")
    if phase not in PHASES:
        raise BadInput(f"conv backward phase {phase!r} is unknown; allowed: {', '.join(PHASES)}")
    data, weights = BACKWARD[variant]
    return data(dy, w, problem) if phase == "bwd_data" else weights(x, dy, problem)
