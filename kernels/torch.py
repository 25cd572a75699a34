"""PyTorch wrappers: our kernels as ``torch.autograd.Function`` and ``nn.Module`` (LSTM, GRU,
LayerNormLSTM), with our backward (:mod:`kernels.backward`).

CPU (tested): tensors are shared with NumPy through ``.numpy()`` / ``torch.from_numpy`` (no
copies for contiguous tensors).  With autograd recording, forward is
:func:`kernels.backward.forward_train` (fused GEMM arrangement, NumPy pointwise, keeps the
tape) and backward is ours.  Without (``torch.no_grad()`` or nothing requires grad), forward is
the fused numba path: :class:`kernels.recurrent.RNN` for LSTM/GRU, :class:`kernels.custom.CustomLSTM`
with the generated kernel for the layer-norm LSTM; the same weights run CPU inference.

GPU (UNVERIFIED: written for CuPy, never run here): tensors go to CuPy through DLPack (zero
copy), and every CuPy call runs inside ``cupy.cuda.ExternalStream(torch.cuda.current_stream())``
so our kernels and GEMMs are ordered with PyTorch's work; forward and backward are the same
xp-generic code in :mod:`kernels.backward` with ``xp = cupy``.

Parameters are named as in ``torch.nn.LSTM`` (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``), gates in the canonical order (PyTorch's), so
``load_canonical`` fills a ``torch.nn.LSTM``/``GRU`` with our weights and back.  The layer-norm
LSTM adds ``{lnx_g, lnx_b, lnh_g, lnh_b}_l{k}`` (4, H) and ``{lnc_g, lnc_b}_l{k}`` (H,).
Input ``(T, B, I)``, or ``(B, T, I)`` with ``batch_first=True``; ``bias=False`` keeps zero biases
that are not trained.  Inputs are checked as ``nn.LSTM`` checks them (shapes of ``x``, ``h0``,
``c0``; one dtype and device with the parameters): a wrong one is a one-line BadInput.  bf16/fp16
tensors are computed in fp32 and rounded once.  ``LSTM.from_torch(nn_lstm)`` / ``.to_torch()``
move weights from and to ``torch.nn`` modules; :func:`params_from_torch` (also
``LSTMParams.from_torch``) gives our canonical parameters.
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


# Storage dtypes the kernels compute in directly; half-precision tensors are computed in fp32
# and rounded once on the way out (the CPU has no bf16/fp16 BLAS, and DLPack has no bf16 in CuPy).
_DIRECT = (torch.float32, torch.float64)


class RNNFunction(torch.autograd.Function):
    """``RNNFunction.apply(cell, x, h0, c0, *flat_weights) -> (y, h_n[, c_n])`` with our backward.

    Time-major ``x (T, B, I)``; tensors of one dtype (fp32, fp64, or bf16/fp16, which are computed
    in fp32 and rounded once).  The tape is kept until the graph is freed, so a second backward
    with ``retain_graph=True`` works as it does for ``nn.LSTM``.
    """

    @staticmethod
    def forward(ctx, cell, x, h0, c0, *weights):
        out_dtype = x.dtype
        if out_dtype not in _DIRECT:
            x, h0, c0 = (None if t is None else t.float() for t in (x, h0, c0))
            weights = tuple(w.float() for w in weights)
        H = weights[1].shape[1]
        with _ctx_for(x) as dev:
            arrays = [dev.to_array(w) for w in weights]
            params = _build_params(cell, x.shape[2], H, arrays)
            # the dtype is passed: params.dtype of CuPy arrays must not go through NumPy
            y, states, tape = bw.forward_train(dev.to_array(x), params, dev.to_array(h0),
                                               dev.to_array(c0) if cell != "gru" else None, xp=dev.xp,
                                               dtype=arrays[0].dtype)
            outs = tuple(dev.to_tensor(a).to(out_dtype) for a in (y, *states))
        ctx.tape, ctx.cell = tape, cell
        ctx.has = (h0 is not None, c0 is not None)
        ctx.dtypes = (out_dtype, tuple(w.dtype for w in weights))
        return outs

    @staticmethod
    def backward(ctx, dy, *dstates):
        if torch.is_grad_enabled():   # create_graph=True: the gradients would have to be differentiable
            raise BadInput("kernels.torch: double backward (create_graph=True, higher-order gradients) is "
                           "not supported: our backward runs outside autograd, so its gradients cannot be "
                           "differentiated again; use torch.nn.LSTM/GRU (or layernorm_lstm_eager) for them")
        x_dtype, _ = ctx.dtypes
        work = dy.dtype if dy.dtype in _DIRECT else torch.float32
        dy = dy.to(work)
        with _ctx_for(dy) as dev:
            ds = tuple(None if d is None else dev.to_array(d.to(work)) for d in dstates)
            g = bw.backward(ctx.tape, dev.to_array(dy.contiguous()), ds, xp=dev.xp)
            names = ("w_ih", "w_hh", "b_ih", "b_hh") + (_LN if ctx.cell == "layernorm" else ())
            dw = [dev.to_tensor(gl[k]).to(x_dtype) for gl in g.layers for k in names]
            dx = dev.to_tensor(g.x).to(x_dtype)
            dh0 = dev.to_tensor(g.h0).to(x_dtype) if ctx.has[0] else None
            dc0 = dev.to_tensor(g.c0).to(x_dtype) if ctx.has[1] and g.c0 is not None else None
        return (None, dx, dh0, dc0, *dw)


_TORCH_CLASS = {"lstm": "LSTM", "gru": "GRU"}


def _torch_arrays(module, cell: str) -> tuple:
    """(input_size, hidden_size, num_layers, bias, per-layer float64 NumPy arrays) of an
    ``nn.LSTM``/``nn.GRU``; refuses what our kernels do not compute."""
    want = getattr(nn, _TORCH_CLASS.get(cell, ""), None)
    if want is None or not isinstance(module, want):
        raise BadInput(f"from_torch takes a torch.nn.{_TORCH_CLASS.get(cell, cell)}, got {type(module).__name__}")
    if module.bidirectional:
        raise BadInput("from_torch: bidirectional modules are not supported (unidirectional only)")
    if getattr(module, "proj_size", 0):
        raise BadInput(f"from_torch: proj_size={module.proj_size} is not supported (0 only)")
    if module.dropout:
        raise BadInput(f"from_torch: dropout={module.dropout} between layers is not supported (0 only)")
    G, H = _GATES[cell], module.hidden_size
    layers = []
    for l in range(module.num_layers):
        get = lambda n: getattr(module, f"{n}_l{l}").detach().cpu().double().numpy().copy()  # noqa: E731
        b = (get("bias_ih"), get("bias_hh")) if module.bias else (np.zeros(G * H), np.zeros(G * H))
        layers.append((get("weight_ih"), get("weight_hh"), *b))
    return module.input_size, H, module.num_layers, bool(module.bias), layers


def params_from_torch(module):
    """Our canonical parameters (float64 copies) of a ``torch.nn.LSTM``/``torch.nn.GRU``.

    Same names, same gate order (PyTorch's), so nothing is reordered; biases of a ``bias=False``
    module are zeros.  Also reachable as ``LSTMParams.from_torch(module)``."""
    cell = "gru" if isinstance(module, nn.GRU) else "lstm"
    I, H, _, _, layers = _torch_arrays(module, cell)
    return _PARAMS[cell](I, H, tuple(Layer(*a) for a in layers))


def torch_module(params, *, bias: bool = True, batch_first: bool = False, dtype=torch.float32, device=None):
    """A ``torch.nn.LSTM``/``torch.nn.GRU`` holding ``params`` (the way back of :func:`params_from_torch`)."""
    if params.cell not in _TORCH_CLASS or getattr(params, "kind", ""):
        raise BadInput(f"torch has no built-in module for {type(params).__name__}")
    cls = getattr(nn, _TORCH_CLASS[params.cell])
    m = cls(params.input_size, params.hidden_size, params.num_layers, bias=bias,
            batch_first=batch_first, dtype=dtype, device=device)
    if not bias and any(np.any(np.asarray(a) != 0) for layer in params.layers for a in layer.arrays()[2:]):
        raise BadInput("bias=False, but these parameters have non-zero biases")
    with torch.no_grad():
        for l, layer in enumerate(params.layers):
            for name, a in zip(_CANON if bias else _CANON[:2], layer.arrays()):
                getattr(m, f"{name}_l{l}").copy_(torch.from_numpy(np.asarray(a)))
    return m


class _Base(nn.Module):
    cell = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, seed: int = 0, dtype=torch.float32, device=None, params=None):
        super().__init__()
        if params is None:
            params = _PARAMS[self.cell].random(input_size, hidden_size, num_layers, seed=seed)
        if (params.input_size, params.hidden_size, params.num_layers) != (input_size, hidden_size, num_layers):
            raise BadInput("params do not match input_size, hidden_size, num_layers")
        if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise BadInput(f"dtype {dtype} is not supported; allowed: torch.float32, float64, bfloat16, float16")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        kw = {"dtype": dtype, "device": device}
        for l, layer in enumerate(params.layers):
            for name, a in zip(_CANON, layer.arrays()):
                t = torch.tensor(np.asarray(a), **kw)
                if name.startswith("bias") and not self.bias:
                    if torch.any(t != 0):
                        raise BadInput("bias=False, but params has non-zero biases")
                    self.register_buffer(f"{name}_l{l}", t, persistent=False)  # zeros, not trained
                else:
                    self.register_parameter(f"{name}_l{l}", nn.Parameter(t))
            for name in (_LN if self.cell == "layernorm" else ()):
                a = params.extras[l][name]
                self.register_parameter(f"{name}_l{l}", nn.Parameter(torch.tensor(np.asarray(a), **kw)))

    @classmethod
    def from_params(cls, params, dtype=torch.float32, **kw):
        return cls(params.input_size, params.hidden_size, params.num_layers, params=params, dtype=dtype, **kw)

    @classmethod
    def from_torch(cls, module):
        """Our module with a copy of an ``nn.LSTM``/``nn.GRU``'s weights, bias, batch_first,
        dtype and device."""
        if cls.cell not in _TORCH_CLASS:
            raise BadInput(f"{cls.__name__} has no torch.nn counterpart to take weights from")
        I, H, L, bias, layers = _torch_arrays(module, cls.cell)
        ref = module.weight_ih_l0
        params = _PARAMS[cls.cell](I, H, tuple(Layer(*a) for a in layers))
        return cls(I, H, L, bias=bias, batch_first=module.batch_first, params=params,
                   dtype=ref.dtype, device=ref.device)

    def to_torch(self):
        """An ``nn.LSTM``/``nn.GRU`` with a copy of these weights (same bias, batch_first, dtype, device)."""
        if self.cell not in _TORCH_CLASS:
            raise BadInput(f"{type(self).__name__} has no torch.nn counterpart")
        ref = self.weight_ih_l0
        m = getattr(nn, _TORCH_CLASS[self.cell])(self.input_size, self.hidden_size, self.num_layers,
                                                 bias=self.bias, batch_first=self.batch_first,
                                                 dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            for name, t in m.named_parameters():
                t.copy_(getattr(self, name))
        return m

    def flat_weights(self) -> list:
        names = _CANON + (_LN if self.cell == "layernorm" else ())
        return [getattr(self, f"{n}_l{l}") for l in range(self.num_layers) for n in names]

    def to_params(self):
        """Our container over NumPy views of the (CPU, fp32/fp64) parameters."""
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
        from .recurrent import RNN
        run = RNN(p, variant="fused", backend="numba", dtype=xa.dtype, track_params=False)  # built per call
        if self.cell == "gru":
            y, h = run(xa, h0a)
            return y, (h,)
        y, (h, c) = run(xa, h0a, c0a)
        return y, (h, c)

    def _check_inputs(self, x, h0, c0):
        """The checks ``nn.LSTM`` makes (and a few it does not): rank, sizes, dtype, device."""
        order = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if not isinstance(x, torch.Tensor):
            raise BadInput(f"input is a {type(x).__name__}; expected a torch.Tensor {order}")
        if x.dim() != 3:
            raise BadInput(f"input has shape {tuple(x.shape)}; expected {order}")
        if x.shape[2] != self.input_size:
            raise BadInput(f"input has shape {tuple(x.shape)}: last dimension {x.shape[2]}, "
                           f"expected input_size={self.input_size}")
        w = self.weight_ih_l0
        if x.dtype != w.dtype:
            raise BadInput(f"input is {x.dtype}, the module's parameters {w.dtype}; convert one "
                           f"(e.g. x.to({w.dtype}) or module.to({x.dtype}))")
        if x.device != w.device:
            raise BadInput(f"input is on {x.device}, the module's parameters on {w.device}")
        B = x.shape[0] if self.batch_first else x.shape[1]
        want = (self.num_layers, B, self.hidden_size)
        for name, s in (("h0", h0), ("c0", c0)):
            if s is None:
                continue
            if not isinstance(s, torch.Tensor):
                raise BadInput(f"{name} is a {type(s).__name__}; expected a torch.Tensor of shape {want}")
            if tuple(s.shape) != want:
                raise BadInput(f"{name} has shape {tuple(s.shape)}; expected (num_layers, batch, hidden) = {want}")
            if s.dtype != x.dtype or s.device != x.device:
                raise BadInput(f"{name} is {s.dtype} on {s.device}; the input is {x.dtype} on {x.device}")

    def forward(self, x, hx=None):
        if self.cell == "gru":
            if isinstance(hx, (tuple, list)):
                raise BadInput("a GRU takes one initial state h0 (num_layers, batch, hidden), not a tuple")
            h0, c0 = hx, None
        elif hx is None:
            h0, c0 = None, None
        elif not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise BadInput(f"{type(self).__name__} takes hx = (h0, c0), each (num_layers, batch, hidden)")
        else:
            h0, c0 = hx
        self._check_inputs(x, h0, c0)
        if self.batch_first:
            x = x.transpose(0, 1)
        x = x.contiguous()
        weights = self.flat_weights()
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)
                                                  or any(s is not None and s.requires_grad for s in (h0, c0)))
        if not needs_grad and x.device.type == "cpu" and x.dtype in _DIRECT:
            y, states = self._inference(x, h0, c0)
            outs = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (y, *states))
        else:
            outs = RNNFunction.apply(self.cell, x, h0, c0, *weights)
        y = outs[0].transpose(0, 1) if self.batch_first else outs[0]
        return (y, outs[1]) if self.cell == "gru" else (y, (outs[1], outs[2]))


class LSTM(_Base):
    """``torch.nn.LSTM``-like (unidirectional; ``bias``, ``batch_first``), on our kernels."""
    cell = "lstm"


class GRU(_Base):
    """``torch.nn.GRU``-like (unidirectional, reset after the GEMM; ``bias``, ``batch_first``), on our kernels."""
    cell = "gru"


class LayerNormLSTM(_Base):
    """Layer-norm LSTM (Ba et al. 2016, see :mod:`kernels.custom`) on our kernels."""
    cell = "layernorm"
