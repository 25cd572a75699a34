"""PyTorch wrappers: our kernels as ``torch.autograd.Function`` and ``nn.Module`` (LSTM, GRU,
LayerNormLSTM), with our backward (:mod:`kernels.backward`).

CPU (tested): tensors are shared with NumPy through ``.numpy()`` / ``torch.from_numpy`` (no
copies for contiguous tensors).  With autograd recording, forward is
:func:`kernels.backward.forward_train` (fused GEMM arrangement, NumPy pointwise, keeps the
tape) and backward is ours.  Without (``torch.no_grad()`` or nothing requires grad), forward is
the fused numba path: :class:`kernels.rnn.RNN` for LSTM/GRU, :class:`kernels.custom.CustomLSTM`
with the generated kernel for the layer-norm LSTM; the same weights run CPU inference.

GPU (UNVERIFIED: written for CuPy, never run here): tensors go to CuPy through DLPack (zero
copy), and every CuPy call runs inside ``cupy.cuda.ExternalStream(torch.cuda.current_stream())``
so our kernels and GEMMs are ordered with PyTorch's work; forward and backward are the same
xp-generic code in :mod:`kernels.backward` with ``xp = cupy``.

Parameters are named as in ``torch.nn.LSTM`` (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``), gates in the canonical order (PyTorch's), so
``load_canonical`` fills a ``torch.nn.LSTM``/``GRU`` with our weights and back.  The layer-norm
LSTM adds ``{lnx_g, lnx_b, lnh_g, lnh_b}_l{k}`` (4, H) and ``{lnc_g, lnc_b}_l{k}`` (H,).
Time-major input ``(T, B, I)`` only.
"""
from __future__ import annotations

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - the module is only imported where torch is
    from .errors import MissingDependency
    raise MissingDependency("torch", "kernels.torch", "pip install torch") from e

from . import backward as bw
from .custom import LayerNormLSTMParams
from .errors import BadInput
from .params import GRUParams, Layer, LSTMParams

_CANON = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LN = tuple(p for p, _ in LayerNormLSTMParams.expr.params)
_PARAMS = {"lstm": LSTMParams, "gru": GRUParams, "layernorm": LayerNormLSTMParams}
_GATES = {"lstm": 4, "gru": 3, "layernorm": 4}


# -- helpers shared with the tests and the benchmarks ------------------------------------------
def load_canonical(module, params) -> None:
    """Copy our canonical weights into a ``torch.nn.LSTM``/``GRU`` (same names, same gate order)."""
    with torch.no_grad():
        for l, layer in enumerate(params.layers):
            for name, a in zip(_CANON, layer.arrays()):
                t = getattr(module, f"{name}_l{l}")
                t.copy_(torch.from_numpy(np.asarray(a)).to(t.dtype))


def params_to_tensors(params, requires_grad: bool = False, dtype=None) -> list:
    """Per layer a dict of tensors: ``w_ih, w_hh, b_ih, b_hh`` (+ the layer-norm extras)."""
    out = []
    for l, layer in enumerate(params.layers):
        d = dict(zip(("w_ih", "w_hh", "b_ih", "b_hh"), layer.arrays()))
        d.update(getattr(params, "extras", ({},) * len(params.layers))[l])
        out.append({k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=requires_grad) for k, v in d.items()})
    return out


def layernorm_lstm_eager(x, weights, h0=None, c0=None, eps: float = 1e-5):
    """The layer-norm LSTM in plain PyTorch ops (what a researcher writes today): ``y, (h_n, c_n)``.

    ``weights``: :func:`params_to_tensors` of LayerNormLSTMParams.  Input GEMM per step, as a cell
    module would do it; autograd gives its backward.
    """
    T, B, _ = x.shape
    H = weights[0]["w_hh"].shape[1]
    seq, hs, cs = x, [], []
    for l, w in enumerate(weights):
        h = x.new_zeros(B, H) if h0 is None else h0[l]
        c = x.new_zeros(B, H) if c0 is None else c0[l]
        out = []
        for t in range(T):
            ax = torch.nn.functional.layer_norm(seq[t] @ w["w_ih"].T, (4 * H,), w["lnx_g"].reshape(-1),
                                                w["lnx_b"].reshape(-1), eps)
            ah = torch.nn.functional.layer_norm(h @ w["w_hh"].T, (4 * H,), w["lnh_g"].reshape(-1),
                                                w["lnh_b"].reshape(-1), eps)
            i, f, g, o = (ax + ah + w["b_ih"] + w["b_hh"]).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(torch.nn.functional.layer_norm(c, (H,), w["lnc_g"], w["lnc_b"], eps))
            out.append(h)
        seq = torch.stack(out)
        hs.append(h)
        cs.append(c)
    return seq, (torch.stack(hs), torch.stack(cs))


# -- array module per device -----------------------------------------------------------------
class _Host:
    """CPU: NumPy views of the tensors."""

    xp = np

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def to_array(t):
        return None if t is None else t.detach().numpy()

    @staticmethod
    def to_tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a))


class _Device:
    """CUDA (UNVERIFIED): CuPy views through DLPack, on PyTorch's current stream."""

    def __init__(self, device):
        try:
            import cupy
        except ImportError as e:
            from .errors import MissingDependency
            raise MissingDependency("cupy", "kernels.torch on a GPU", "pip install cupy-cuda13x") from e
        self.xp = cupy
        self.device = device
        self.stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index or 0)
        self.dev = cupy.cuda.Device(device.index or 0)

    def __enter__(self):
        self.dev.__enter__()
        self.stream.__enter__()      # every CuPy launch below goes on torch's current stream
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.dev.__exit__(*exc)
        return False

    def to_array(self, t):
        return None if t is None else self.xp.from_dlpack(t.detach().contiguous())

    def to_tensor(self, a):
        return torch.from_dlpack(self.xp.ascontiguousarray(a))


def _ctx_for(t):
    return _Host() if t.device.type == "cpu" else _Device(t.device)


def _build_params(cell, I, H, arrays):
    """Our container from per-layer flat arrays (views, no copies; NumPy or CuPy)."""
    n = 4 + (len(_LN) if cell == "layernorm" else 0)
    L = len(arrays) // n
    layers, extras = [], []
    for l in range(L):
        a = arrays[l * n:(l + 1) * n]
        layers.append(Layer(*a[:4]))
        extras.append(dict(zip(_LN, a[4:])))
    if cell == "layernorm":
        return LayerNormLSTMParams(I, H, tuple(layers), tuple(extras))
    return _PARAMS[cell](I, H, tuple(layers))


class RNNFunction(torch.autograd.Function):
    """``RNNFunction.apply(cell, x, h0, c0, *flat_weights) -> (y, h_n[, c_n])`` with our backward."""

    @staticmethod
    def forward(ctx, cell, x, h0, c0, *weights):
        H = weights[1].shape[1]
        with _ctx_for(x) as dev:
            arrays = [dev.to_array(w) for w in weights]
            params = _build_params(cell, x.shape[2], H, arrays)
            y, states, tape = bw.forward_train(dev.to_array(x), params, dev.to_array(h0),
                                               dev.to_array(c0) if cell != "gru" else None, xp=dev.xp)
            outs = tuple(dev.to_tensor(a) for a in (y, *states))
        ctx.tape, ctx.cell = tape, cell
        ctx.has = (h0 is not None, c0 is not None)
        return outs

    @staticmethod
    def backward(ctx, dy, *dstates):
        with _ctx_for(dy) as dev:
            ds = tuple(None if d is None else dev.to_array(d) for d in dstates)
            g = bw.backward(ctx.tape, dev.to_array(dy), ds, xp=dev.xp)
            names = ("w_ih", "w_hh", "b_ih", "b_hh") + (_LN if ctx.cell == "layernorm" else ())
            dw = [dev.to_tensor(gl[k]) for gl in g.layers for k in names]
            dx = dev.to_tensor(g.x)
            dh0 = dev.to_tensor(g.h0) if ctx.has[0] else None
            dc0 = dev.to_tensor(g.c0) if ctx.has[1] and g.c0 is not None else None
        ctx.tape = None
        return (None, dx, dh0, dc0, *dw)


class _Base(nn.Module):
    cell = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, seed: int = 0,
                 dtype=torch.float32, params=None):
        super().__init__()
        if params is None:
            params = _PARAMS[self.cell].random(input_size, hidden_size, num_layers, seed=seed)
        if (params.input_size, params.hidden_size, params.num_layers) != (input_size, hidden_size, num_layers):
            raise BadInput("params do not match input_size, hidden_size, num_layers")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        for l, layer in enumerate(params.layers):
            for name, a in zip(_CANON, layer.arrays()):
                self.register_parameter(f"{name}_l{l}", nn.Parameter(torch.tensor(np.asarray(a), dtype=dtype)))
            for name in (_LN if self.cell == "layernorm" else ()):
                a = params.extras[l][name]
                self.register_parameter(f"{name}_l{l}", nn.Parameter(torch.tensor(np.asarray(a), dtype=dtype)))

    @classmethod
    def from_params(cls, params, dtype=torch.float32):
        return cls(params.input_size, params.hidden_size, params.num_layers, params=params, dtype=dtype)

    def flat_weights(self) -> list:
        names = _CANON + (_LN if self.cell == "layernorm" else ())
        return [getattr(self, f"{n}_l{l}") for l in range(self.num_layers) for n in names]

    def to_params(self):
        """Our container over NumPy views of the (CPU) parameters."""
        return _build_params(self.cell, self.input_size, self.hidden_size,
                             [w.detach().numpy() for w in self.flat_weights()])

    def _inference(self, x, h0, c0):
        """No autograd: the fused numba kernels (CPU, fp32/fp64)."""
        xa = x.detach().numpy()
        h0a = None if h0 is None else h0.detach().numpy()
        c0a = None if c0 is None else c0.detach().numpy()
        p = self.to_params()
        if self.cell == "layernorm":
            from .custom import CustomLSTM
            y, (h, c) = CustomLSTM(p, variant="fused", backend="numba", dtype=xa.dtype)(xa, h0a, c0a)
            return y, (h, c)
        from .rnn import RNN
        run = RNN(p, variant="fused", backend="numba", dtype=xa.dtype)
        if self.cell == "gru":
            y, h = run(xa, h0a)
            return y, (h,)
        y, (h, c) = run(xa, h0a, c0a)
        return y, (h, c)

    def forward(self, x, hx=None):
        if x.dim() != 3:
            raise BadInput(f"input has shape {tuple(x.shape)}; expected (T, B, I)")
        h0, c0 = (hx if self.cell != "gru" else (hx, None)) if hx is not None else (None, None)
        weights = self.flat_weights()
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)
                                                  or any(s is not None and s.requires_grad for s in (h0, c0)))
        if not needs_grad and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            y, states = self._inference(x, h0, c0)
            outs = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (y, *states))
        else:
            outs = RNNFunction.apply(self.cell, x, h0, c0, *weights)
        return (outs[0], outs[1]) if self.cell == "gru" else (outs[0], (outs[1], outs[2]))


class LSTM(_Base):
    """``torch.nn.LSTM``-like (time-major, unidirectional), on our kernels."""
    cell = "lstm"


class GRU(_Base):
    """``torch.nn.GRU``-like (time-major, unidirectional, reset after the GEMM), on our kernels."""
    cell = "gru"


class LayerNormLSTM(_Base):
    """Layer-norm LSTM (Ba et al. 2016, see :mod:`kernels.custom`) on our kernels."""
    cell = "layernorm"
