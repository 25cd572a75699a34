"""Custom LSTM cells: peephole and layer-norm, with parameters, float64 references and a runner.

Parameters extend the canonical LSTM layout (:mod:`kernels.params`: ``w_ih, w_hh, b_ih, b_hh``
per layer, gates i, f, g, o) with per-unit arrays, one dict per layer, named and shaped as the
cell's declaration in :mod:`fusion.cellexpr` says:

- peephole (``PEEPHOLE_LSTM``): ``peep (3, H)``: rows i, f, o; i and f see c_{t-1}, o sees c_t;
- layer norm (``LAYERNORM_LSTM``, Ba et al. 2016): ``lnx_g, lnx_b (4, H)``: gain and bias of the
  layer norm over the 4H input pre-activations ``x W_ih^T``; ``lnh_g, lnh_b (4, H)``: the same
  for ``h W_hh^T``; ``lnc_g, lnc_b (H,)``: layer norm of c before the output tanh.  The canonical
  biases are added after the normalisation (so they are not folded into the input GEMM).

The containers derive from :class:`~kernels.params.CellParams` (a cell declared with
:mod:`fusion.cellexpr`), not from ``LSTMParams``: the plain :func:`kernels.lstm` refuses them
instead of silently dropping the extra parameters.

The runner is :class:`kernels.recurrent.RNN`, the plain cells' one (:class:`CustomLSTM` is ``RNN`` with
the defaults these cells always had: backend ``numba``, every fusion step of the backend).
Variants: ``naive``: per-gate GEMMs every step and the cell's op-by-op NumPy pointwise code
(generated from the same declaration); ``fused``: the fusion plan (``opts``, as for the plain
cells) with the generated fused kernel (``numba``, ``cupy``: CUDA C through
:class:`fusion.cellexpr_gpu.CupyCell`, ``numba-cuda``: :class:`fusion.cellexpr_gpu.NumbaCudaCell`)
or the op-by-op code (``numpy``).  The biases fold into the input GEMM where the declaration
allows it (peephole: both; layer norm: neither).
GPU precisions fp32, tf32 (TF32 cuBLAS math) and fp16 (fp16 storage, fp32 math in the kernel).
Without a GPU, building one raises :class:`~kernels.errors.Unsupported` with the reason, except
``numba-cuda`` under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which runs the same step
loop with NumPy arrays and GEMMs (how the CPU tests check it).
Inputs may be NumPy or CuPy arrays; outputs are CuPy arrays.
"""
from __future__ import annotations

import numpy as np

from fusion import cellexpr

from .backends import step_backends
from .errors import BadInput
from .params import CellParams
from .reference import _initial, check_sequence, sigmoid
from .recurrent import RNN

CUSTOM_CELLS = ("peephole", "layernorm")
# The runner's backends of generated kernels, by device (the CLI's --cell backends)
CPU_BACKENDS = step_backends("cpu", generated=True)
GPU_BACKENDS = step_backends("cuda", generated=True)
BACKENDS = CPU_BACKENDS + GPU_BACKENDS


class _CustomLSTMParams(CellParams):
    kind = ""             # "peephole" or "layernorm"


class PeepholeLSTMParams(_CustomLSTMParams):
    kind, expr = "peephole", cellexpr.PEEPHOLE_LSTM   # extras drawn as the weights


class LayerNormLSTMParams(_CustomLSTMParams):
    kind, expr = "layernorm", cellexpr.LAYERNORM_LSTM

    @staticmethod
    def _draw_extra(rng, name, shape):
        # gains near 1, biases near 0 (the usual init is exactly 1 and 0; random values make the
        # checks see every parameter)
        if name.endswith("_g"):
            return rng.uniform(0.75, 1.25, size=shape)
        return rng.uniform(-0.1, 0.1, size=shape)


CUSTOM_PARAMS = {"peephole": PeepholeLSTMParams, "layernorm": LayerNormLSTMParams}


# -- float64 references, step by step ----------------------------------------------------------
def _states(params, h0, c0, B):
    return _initial(h0, params, B), _initial(c0, params, B)


def _reference(x, params, cls, step, h0, c0):
    """The layer/time loop of the custom-cell references, float64: ``step(x_t, h, c, w_ih, w_hh,
    b_ih, b_hh, extras) -> (h, c)`` is the cell.  Returns ``y (T, B, H)`` and ``(h_n, c_n)``."""
    if not isinstance(params, cls):
        raise BadInput(f"needs {cls.__name__}, got {type(params).__name__}")
    T, B = check_sequence(np.shape(x), params, False, {"h0": h0, "c0": c0}, x=x)
    h_all, c_all = _states(params, h0, c0, B)
    h_n, c_n = np.empty_like(h_all), np.empty_like(c_all)
    seq = np.asarray(x, dtype=np.float64)
    D, H = params.num_directions, params.hidden_size
    for l in range(params.num_layers):
        out = np.empty((T, B, D * H))
        for d in range(D):          # bidirectional: the reverse direction walks t = T-1..0
            k = l * D + d
            weights = tuple(np.asarray(a, dtype=np.float64) for a in params.layers[k].arrays())
            extras = {n: np.asarray(v, dtype=np.float64) for n, v in params.extras[k].items()}
            h, c = h_all[k], c_all[k]
            for t in (reversed(range(T)) if d else range(T)):
                h, c = step(seq[t], h, c, *weights, extras)
                out[t, :, d * H:(d + 1) * H] = h
            h_n[k], c_n[k] = h, c
        seq = out
    return seq, (h_n, c_n)


def _peephole_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, e):
    w_ci, w_cf, w_co = e["peep"]
    a_i, a_f, a_g, a_o = np.split(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=1)
    i = sigmoid(a_i + w_ci * c)          # peepholes on the previous cell state
    f = sigmoid(a_f + w_cf * c)
    g = np.tanh(a_g)
    c = f * c + i * g
    o = sigmoid(a_o + w_co * c)          # the output gate sees the new cell state
    return o * np.tanh(c), c


def peephole_lstm_reference(x, params: PeepholeLSTMParams, h0=None, c0=None):
    """Returns ``y (T, B, H)`` and ``(h_n, c_n)``, float64; time-major input."""
    return _reference(x, params, PeepholeLSTMParams, _peephole_step, h0, c0)


def layer_norm(a, gain, bias, eps: float = cellexpr.LN_EPS):
    """Over the last axis, biased variance (as torch.nn.LayerNorm)."""
    mu = a.mean(axis=-1, keepdims=True)
    var = ((a - mu) ** 2).mean(axis=-1, keepdims=True)
    return (a - mu) / np.sqrt(var + eps) * gain + bias


def _layernorm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, e):
    ax = layer_norm(x_t @ w_ih.T, e["lnx_g"].ravel(), e["lnx_b"].ravel())   # over 4H
    ah = layer_norm(h @ w_hh.T, e["lnh_g"].ravel(), e["lnh_b"].ravel())     # over 4H
    a_i, a_f, a_g, a_o = np.split(ax + ah + b_ih + b_hh, 4, axis=1)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c = f * c + i * g
    return o * np.tanh(layer_norm(c, e["lnc_g"], e["lnc_b"])), c            # over H


def layernorm_lstm_reference(x, params: LayerNormLSTMParams, h0=None, c0=None):
    """Returns ``y (T, B, H)`` and ``(h_n, c_n)``, float64; time-major input."""
    return _reference(x, params, LayerNormLSTMParams, _layernorm_step, h0, c0)


CUSTOM_REFERENCES = {"peephole": peephole_lstm_reference, "layernorm": layernorm_lstm_reference}


# -- the runner: kernels.recurrent.RNN with the custom cells' defaults ------------------------------
class CustomLSTM(RNN):
    """:class:`kernels.recurrent.RNN` for the shipped custom LSTM cells, with their defaults (backend
    ``numba``, every fusion step of the backend) and the ``cell`` name checked against the
    parameters.  Built once, called many times::

        run = CustomLSTM(params, variant="fused", backend="numba", dtype="fp32")
        y, (h_n, c_n) = run(x, h0, c0)
    """

    def __init__(self, params: _CustomLSTMParams, *, cell: str | None = None, variant: str = "fused",
                 backend: str = "numba", dtype=None, opts=None, **kw):
        if not isinstance(params, _CustomLSTMParams):
            raise BadInput(f"params must be PeepholeLSTMParams or LayerNormLSTMParams, got {type(params).__name__}")
        cell = params.kind if cell is None else cell
        if cell not in CUSTOM_CELLS:
            raise BadInput(f"cell {cell!r} is unknown; allowed: {', '.join(CUSTOM_CELLS)}")
        if cell != params.kind:
            raise BadInput(f"cell {cell!r} given {type(params).__name__} (a {params.kind} cell)")
        super().__init__(params, variant=variant, backend=backend, dtype=dtype, opts=opts, **kw)


def custom_lstm(x, params, h0=None, c0=None, *, cell: str | None = None, variant: str = "fused",
                backend: str = "numba", dtype=None, opts=None):
    """Forward pass of a peephole or layer-norm LSTM: ``y, (h_n, c_n)``; see :class:`CustomLSTM`."""
    dtype = dtype if dtype is not None else (x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    return CustomLSTM(params, cell=cell, variant=variant, backend=backend, dtype=dtype, opts=opts)(x, h0, c0)
