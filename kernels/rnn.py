"""LSTM and GRU forward passes as ``naive`` and ``fused`` variants, generic over the array module.

The step loop below is the whole algorithm; the variant and the fusion plan only decide how the
GEMMs are arranged (:mod:`fusion.gemm`) and which pointwise stage runs (op by op from
:mod:`kernels.cells`, or one fused kernel from :mod:`fusion.pointwise`)::

    for each layer:
        gemm_x:  GX = X @ W_ih.T (+ biases)        once for all T (hoist_input) or per step
        for t in range(T):                          NVTX "step"
            gemm_h:    GH = h @ W_hh.T             1 GEMM (group_gemm) or G GEMMs
            pointwise: h, c = cell(GX[t], GH, ...)  1 kernel (fuse_pointwise) or ~15-30 ops

Build once (weights arranged, kernels compiled), call many times::

    run = RNN(params, variant="fused", backend="numba", dtype="fp32")
    y, (h_n, c_n) = run(x)
"""
from __future__ import annotations

import numpy as np

from fusion import gemm as fgemm
from fusion import pointwise as fpointwise
from fusion.steps import Plan
from profiles import nvtx

from . import cells
from .backends import get_backend
from .dtypes import canonical, storage
from .errors import BadInput
from .params import GRUParams, LSTMParams, RNNParams
from .reference import check_sequence

VARIANTS = ("naive", "fused")


class _LayerExec:
    """One layer's weights arranged for a plan, plus the biases the pointwise stage still adds."""

    def __init__(self, xp, cell: str, layer, G: int, plan: Plan, dtype, fused: bool):
        w_ih, w_hh, b_ih, b_hh = (xp.asarray(a, dtype=dtype) for a in layer.arrays())
        grouped, pre_t = "group_gemm" in plan, "pretranspose" in plan
        self.proj_x = fgemm.Projection(xp, w_ih, G, grouped=grouped, pretransposed=pre_t)
        self.proj_h = fgemm.Projection(xp, w_hh, G, grouped=grouped, pretransposed=pre_t)
        H = w_hh.shape[1]
        b_ih, b_hh = b_ih.reshape(G, H), b_hh.reshape(G, H)
        self.hoist = "hoist_input" in plan
        # Which biases are folded into the hoisted input GEMM and which the pointwise stage adds.
        # LSTM: b_ih + b_hh can always be summed; GRU: b_hn sits inside r * (...), so only b_ih moves.
        if cell == "lstm":
            summed = xp.ascontiguousarray(b_ih + b_hh)
            if self.hoist:
                self.b_fold, self.bx, self.bh = summed, None, None
            elif fused:
                self.b_fold, self.bx, self.bh = None, summed, None
            else:
                self.b_fold, self.bx, self.bh = None, b_ih, b_hh
        else:
            self.b_fold, self.bx, self.bh = (b_ih, None, b_hh) if self.hoist else (None, b_ih, b_hh)


class RNN:
    """A built LSTM or GRU: ``RNN(params, variant=..., backend=..., dtype=..., opts=...)(x, ...)``.

    ``opts`` (fused only): a :class:`fusion.Plan`, a comma-separated string of step names, or None
    for every step.  ``dtype``: precision name (``fp32``, ``fp64``) or NumPy dtype; default: the
    parameters' dtype.
    """

    def __init__(self, params: RNNParams, *, variant: str = "fused", backend: str = "numpy",
                 dtype=None, opts=None):
        if not isinstance(params, (LSTMParams, GRUParams)):
            raise BadInput(f"params must be LSTMParams or GRUParams, got {type(params).__name__}")
        if variant not in VARIANTS:
            raise BadInput(f"variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
        self.backend = get_backend(backend)
        self.precision = self.backend.check_dtype(canonical(dtype if dtype is not None else params.dtype))
        self.dtype = storage(self.precision)
        self.xp = self.backend.xp()
        if variant == "naive":
            if opts not in (None, "none", Plan()):
                raise BadInput(f"variant 'naive' takes no fusion steps (got opts={opts!r}); "
                               "use variant='fused' with opts")
            self.plan = Plan()
        elif isinstance(opts, Plan):
            self.plan = opts
        else:
            self.plan = Plan.parse(opts, self.backend.device)
        self.variant, self.params, self.cell = variant, params, params.cell
        # A fused stage writes h straight into y[t]; the op-by-op one returns fresh arrays.
        self.fused = "fuse_pointwise" in self.plan
        self.pointwise = (fpointwise.get(self.cell, self.backend.pointwise) if self.fused
                          else cells.NAIVE[self.cell])
        self.layers = [_LayerExec(self.xp, self.cell, layer, params.num_gates, self.plan, self.dtype,
                                  self.fused)
                       for layer in params.layers]

    # ------------------------------------------------------------------------------------------
    def __call__(self, x, h0=None, c0=None, *, batch_first: bool = False):
        xp, p = self.xp, self.params
        states = {"h0": h0, "c0": c0} if self.cell == "lstm" else {"h0": h0}
        if self.cell == "gru" and c0 is not None:
            raise BadInput("a GRU has no cell state: c0 must be None")
        x = xp.asarray(x)
        T, B = check_sequence(x.shape, p, batch_first, states)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)  # outside any timed region: builders pass the built dtype
        seq = x.transpose(1, 0, 2) if batch_first else x
        L, H = p.num_layers, p.hidden_size
        h_n = xp.empty((L, B, H), dtype=self.dtype)
        c_n = xp.empty((L, B, H), dtype=self.dtype) if self.cell == "lstm" else None
        for l, lay in enumerate(self.layers):
            h = xp.zeros((B, H), self.dtype) if h0 is None else xp.asarray(h0[l], dtype=self.dtype)
            if self.cell == "lstm":
                c = xp.zeros((B, H), self.dtype) if c0 is None else xp.array(c0[l], dtype=self.dtype)
            seq, h, c = self._layer(lay, seq, h, c if self.cell == "lstm" else None, T, B, H)
            h_n[l] = h
            if c_n is not None:
                c_n[l] = c
        y = seq.transpose(1, 0, 2) if batch_first else seq
        return (y, (h_n, c_n)) if self.cell == "lstm" else (y, h_n)

    def _layer(self, lay: _LayerExec, seq, h, c, T, B, H):
        xp, dt = self.xp, self.dtype
        y = xp.empty((T, B, H), dtype=dt)
        gh_buf = lay.proj_h.alloc(B, dt)
        gh = lay.proj_h.gates(gh_buf)
        if lay.hoist:
            with nvtx.phase("gemm_x"):
                # One GEMM with M = T*B; needs the sequence contiguous in time-major order.
                flat = xp.ascontiguousarray(seq).reshape(T * B, -1)
                gx_all = lay.proj_x(flat, lay.proj_x.alloc(T * B, dt))
                if lay.b_fold is not None:
                    gates = lay.proj_x.gates(gx_all)
                    gates += lay.b_fold
        else:
            gx_buf = lay.proj_x.alloc(B, dt)
        for t in range(T):
            with nvtx.phase("step"):
                if lay.hoist:
                    gx = lay.proj_x.rows(gx_all, t * B, (t + 1) * B)
                else:
                    with nvtx.phase("gemm_x"):
                        gx = lay.proj_x.gates(lay.proj_x(seq[t], gx_buf))
                with nvtx.phase("gemm_h"):
                    lay.proj_h(h, gh_buf)
                with nvtx.phase("pointwise"):
                    if c is not None:
                        h, c = self.pointwise(xp, gx, gh, lay.bx, lay.bh, c, y[t], c)
                    else:
                        (h,) = self.pointwise(xp, gx, gh, lay.bx, lay.bh, h, y[t])
                if not self.fused:
                    y[t] = h
        return y, h, c


def _dtype_of(x):
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def lstm(x, params: LSTMParams, h0=None, c0=None, *, variant: str = "fused", backend: str = "numpy",
         dtype=None, opts=None, batch_first: bool = False):
    """LSTM forward. Returns ``y`` and ``(h_n, c_n)``. See :class:`RNN` for the keywords."""
    if not isinstance(params, LSTMParams):
        raise BadInput(f"lstm needs LSTMParams, got {type(params).__name__}")
    dtype = dtype if dtype is not None else _dtype_of(x)
    return RNN(params, variant=variant, backend=backend, dtype=dtype, opts=opts)(
        x, h0, c0, batch_first=batch_first)


def gru(x, params: GRUParams, h0=None, *, variant: str = "fused", backend: str = "numpy",
        dtype=None, opts=None, batch_first: bool = False):
    """GRU forward. Returns ``y`` and ``h_n``. See :class:`RNN` for the keywords."""
    if not isinstance(params, GRUParams):
        raise BadInput(f"gru needs GRUParams, got {type(params).__name__}")
    dtype = dtype if dtype is not None else _dtype_of(x)
    return RNN(params, variant=variant, backend=backend, dtype=dtype, opts=opts)(
        x, h0, batch_first=batch_first)
