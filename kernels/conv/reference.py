"""float64 NumPy definitions of the 2-D convolution forward pass: the spec every variant meets.

Two formulations that share no code, so a mistake in one shows up against the other:

- :func:`conv2d_reference`: one tap at a time.  For each filter tap ``(r, s)`` the input pixels it
  meets form a strided slice of the zero-padded input; the layer is the sum over the R*S taps of a
  channel contraction of that slice.  Vectorized, so it is the reference the tests and the
  benchmark's ``check`` use on real layer sizes.
- :func:`conv2d_slow`: one output pixel at a time, straight from the definition
  ``y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]``
  with out-of-range input coordinates skipped (no padded copy).  For small test shapes only.
"""
from __future__ import annotations

import numpy as np

from .geometry import ConvProblem, check_inputs


def to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    """A view of an activation in NCHW order."""
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def from_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW activation as a contiguous array in ``layout``."""
    return np.ascontiguousarray(a if layout == "NCHW" else a.transpose(0, 2, 3, 1))


def conv2d_reference(x, w, b, problem: ConvProblem) -> np.ndarray:
    """``y`` in ``problem.layout``, float64, whatever the inputs' dtype."""
    check_inputs(x, w, b, problem)
    p = problem
    (sh, sw), (ph, pw), (dh, dw), G = p.stride, p.pad, p.dilation, p.groups
    xc = to_nchw(np.asarray(x, dtype=np.float64), p.layout)
    xpad = np.pad(xc, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    # Channels split into groups: x (N, G, C/G, Hp, Wp), w (G, K/G, C/G, R, S).
    xg = xpad.reshape(p.N, G, p.Cg, *xpad.shape[2:])
    wg = np.asarray(w, dtype=np.float64).reshape(G, p.Kg, p.Cg, p.R, p.S)
    y = np.zeros((p.N, G, p.Kg, p.P, p.Q))
    for r in range(p.R):
        for s in range(p.S):
            # Tap (r, s) meets padded rows r*dh, r*dh + sh, ... (P of them); columns likewise.
            h0, w0 = r * dh, s * dw
            patch = xg[..., h0:h0 + sh * (p.P - 1) + 1:sh, w0:w0 + sw * (p.Q - 1) + 1:sw]
            y += np.einsum("ngcpq,gkc->ngkpq", patch, wg[..., r, s])
    y = y.reshape(p.N, p.K, p.P, p.Q)
    if p.bias:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return from_nchw(y, p.layout)


def conv2d_slow(x, w, b, problem: ConvProblem) -> np.ndarray:
    """The definition, one output pixel at a time (Python loop over P*Q: tiny shapes only)."""
    check_inputs(x, w, b, problem)
    p = problem
    xc = to_nchw(np.asarray(x, dtype=np.float64), p.layout)
    wf = np.asarray(w, dtype=np.float64)
    y = np.empty((p.N, p.K, p.P, p.Q))
    k_group = np.arange(p.K) // p.Kg            # group of each output channel
    for i in range(p.P):
        for j in range(p.Q):
            hs = i * p.stride[0] - p.pad[0] + np.arange(p.R) * p.dilation[0]
            ws = j * p.stride[1] - p.pad[1] + np.arange(p.S) * p.dilation[1]
            r_ok = (hs >= 0) & (hs < p.H)
            s_ok = (ws >= 0) & (ws < p.W)
            for k in range(p.K):
                cs = k_group[k] * p.Cg + np.arange(p.Cg)
                # window (N, Cg, R', S') of the taps that land inside the input
                window = xc[:, cs][:, :, hs[r_ok]][:, :, :, ws[s_ok]]
                taps = wf[k][:, r_ok][:, :, s_ok]
                y[:, k, i, j] = (window * taps).sum(axis=(1, 2, 3))
    if p.bias:
        y += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return from_nchw(y, p.layout)
