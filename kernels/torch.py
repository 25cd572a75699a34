"""PyTorch wrappers: our kernels as ``torch.autograd.Function`` and ``nn.Module`` (LSTM, GRU, RNN,
LayerNormLSTM), with our backward (:mod:`kernels.backward`).

CPU (tested): tensors are shared with NumPy through ``.numpy()`` / ``torch.from_numpy`` (no
copies for contiguous tensors).  With autograd recording, forward is
:func:`kernels.backward.forward_train` (fused GEMM arrangement, NumPy pointwise, keeps the
tape) and backward is ours.  Without (``torch.no_grad()`` or nothing requires grad), forward is
the fused numba path: :class:`kernels.recurrent.RNN` for LSTM/GRU/RNN, :class:`kernels.custom.CustomLSTM`
with the generated kernel for the layer-norm LSTM; the same weights run CPU inference.

GPU (UNVERIFIED: written for CuPy, never run here): tensors go to CuPy through DLPack (zero
copy), and every CuPy call runs inside ``cupy.cuda.ExternalStream(torch.cuda.current_stream())``
so our kernels and GEMMs are ordered with PyTorch's work; forward and backward are the same
xp-generic code in :mod:`kernels.backward` with ``xp = cupy``.

The modules take ``torch.nn.LSTM``'s / ``GRU``'s / ``RNN``'s arguments in the same positions
(``input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional``, the LSTM's
``proj_size``, which must be 0, and the RNN's ``nonlinearity`` fourth), then ``device, dtype``;
``seed`` and ``params`` are ours, keyword only.  Parameters are named as in ``torch.nn.LSTM``
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, with ``_reverse``
for a bidirectional module's reverse direction), gates in the canonical order (PyTorch's), so
``load_canonical`` fills a ``torch.nn`` module with our weights and back.  The layer-norm LSTM
adds ``{lnx_g, lnx_b, lnh_g, lnh_b}_l{k}`` (4, H) and ``{lnc_g, lnc_b}_l{k}`` (H,).
Input ``(T, B, I)``, ``(B, T, I)`` with ``batch_first=True``, or unbatched ``(T, I)`` (states
then ``(num_layers * D, H)``); ``bias=False`` keeps zero biases that are not trained.
``dropout`` is torch's between layers: in training mode, each layer's output but the last is
multiplied by a mask of 0 (probability p) and 1/(1-p), drawn with ``torch.empty(...).bernoulli_``
as ``torch.nn.LSTM`` draws it on the CPU (the same seed gives the same masks; on a GPU torch's
fused dropout kernel draws differently).  A batch of 0 gives empty outputs, as torch's does; a
sequence of length 0 is refused, as torch refuses it.  Inputs are checked as ``nn.LSTM`` checks
them (shapes of ``x``, ``h0``, ``c0``; one dtype and device with the parameters): a wrong one is a
one-line BadInput.  bf16/fp16 tensors are computed in fp32 and rounded once.
``LSTM.from_torch(nn_lstm)`` / ``.to_torch()`` move weights and settings from and to
``torch.nn`` modules; :func:`params_from_torch` (also ``LSTMParams.from_torch``) gives our
canonical parameters.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, replace

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
from .params import (NONLINEARITIES, GRUParams, Layer, LSTMParams, VanillaRNNParams, params_from_torch,  # noqa: F401
                     torch_suffixes)

_CANON = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LN = tuple(p for p, _ in LayerNormLSTMParams.expr.params)
_PARAMS = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams, "layernorm": LayerNormLSTMParams}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1, "layernorm": 4}
_ONE_STATE = ("gru", "rnn")          # cells called with h0 only


_suffixes = torch_suffixes


# -- helpers shared with the tests and the benchmarks ------------------------------------------
def load_canonical(module, params) -> None:
    """Copy our canonical weights into a ``torch.nn.LSTM``/``GRU``/``RNN`` (same names, same gate order)."""
    if bool(module.bidirectional) != params.bidirectional:
        raise BadInput(f"load_canonical: the module has bidirectional={module.bidirectional}, "
                       f"the parameters bidirectional={params.bidirectional}")
    with torch.no_grad():
        for suffix, layer in zip(_suffixes(params.num_layers, params.bidirectional), params.layers):
            for name, a in zip(_CANON, layer.arrays()):
                t = getattr(module, f"{name}{suffix}")
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


def _build_params(cell, I, H, arrays, bidirectional: bool = False, nonlinearity: str = "tanh"):
    """Our container from per-entry flat arrays (views, no copies; NumPy or CuPy): per layer
    and direction, in the order of :func:`_suffixes`."""
    n = 4 + (len(_LN) if cell == "layernorm" else 0)
    layers, extras = [], []
    for k in range(len(arrays) // n):
        a = arrays[k * n:(k + 1) * n]
        layers.append(Layer(*a[:4]))
        extras.append(dict(zip(_LN, a[4:])))
    if cell == "layernorm":
        return LayerNormLSTMParams(I, H, tuple(layers), tuple(extras), bidirectional=bidirectional)
    if cell == "rnn":
        return VanillaRNNParams(I, H, tuple(layers), nonlinearity, bidirectional=bidirectional)
    return _PARAMS[cell](I, H, tuple(layers), bidirectional=bidirectional)


@dataclass(frozen=True)
class Spec:
    """What :class:`RNNFunction` computes besides its tensors: the cell, its directions, the vanilla
    cell's nonlinearity, and the dropout masks between layers (tensors ``(T, B, D*H)``, not
    differentiated)."""

    cell: str
    bidirectional: bool = False
    nonlinearity: str = "tanh"
    masks: tuple = ()


# Storage dtypes the kernels compute in directly; half-precision tensors are computed in fp32
# and rounded once on the way out (the CPU has no bf16/fp16 BLAS, and DLPack has no bf16 in CuPy).
_DIRECT = (torch.float32, torch.float64)


class RNNFunction(torch.autograd.Function):
    """``RNNFunction.apply(spec, x, h0, c0, *flat_weights) -> (y, h_n[, c_n])`` with our backward.

    ``spec``: a :class:`Spec`, or a cell name (``lstm``, ``gru``, ``layernorm``: unidirectional,
    no dropout).  Time-major ``x (T, B, I)``; tensors of one dtype (fp32, fp64, or bf16/fp16, which
    are computed in fp32 and rounded once).  The tape is kept until the graph is freed, so a second
    backward with ``retain_graph=True`` works as it does for ``nn.LSTM``.
    """

    @staticmethod
    def forward(ctx, spec, x, h0, c0, *weights):
        spec = spec if isinstance(spec, Spec) else Spec(spec)
        cell, masks = spec.cell, spec.masks
        out_dtype = x.dtype
        if out_dtype not in _DIRECT:
            x, h0, c0 = (None if t is None else t.float() for t in (x, h0, c0))
            weights = tuple(w.float() for w in weights)
            masks = tuple(m.float() for m in masks)
        H = weights[1].shape[1]
        with _ctx_for(x) as dev:
            arrays = [dev.to_array(w) for w in weights]
            params = _build_params(cell, x.shape[2], H, arrays, spec.bidirectional, spec.nonlinearity)
            # the dtype is passed: params.dtype of CuPy arrays must not go through NumPy
            y, states, tape = bw.forward_train(dev.to_array(x), params, dev.to_array(h0),
                                               dev.to_array(c0) if cell not in _ONE_STATE else None, xp=dev.xp,
                                               dtype=arrays[0].dtype,
                                               dropout_masks=[dev.to_array(m) for m in masks] or None)
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


_TORCH_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _torch_params(module, cell: str):
    """Our parameters (float64 copies) of an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` of ``cell``."""
    return params_from_torch(module, cell)


def torch_module(params, *, bias: bool = True, batch_first: bool = False, dtype=torch.float32, device=None):
    """A ``torch.nn.LSTM``/``GRU``/``RNN`` holding ``params`` (the way back of :func:`params_from_torch`)."""
    if params.cell not in _TORCH_CLASS or getattr(params, "kind", ""):
        raise BadInput(f"torch has no built-in module for {type(params).__name__}")
    cls = getattr(nn, _TORCH_CLASS[params.cell])
    extra = {"nonlinearity": params.nonlinearity} if params.cell == "rnn" else {}
    m = cls(params.input_size, params.hidden_size, params.num_layers, bias=bias,
            batch_first=batch_first, bidirectional=params.bidirectional, dtype=dtype, device=device, **extra)
    if not bias and any(np.any(np.asarray(a) != 0) for layer in params.layers for a in layer.arrays()[2:]):
        raise BadInput("bias=False, but these parameters have non-zero biases")
    with torch.no_grad():
        for suffix, layer in zip(_suffixes(params.num_layers, params.bidirectional), params.layers):
            for name, a in zip(_CANON if bias else _CANON[:2], layer.arrays()):
                getattr(m, f"{name}{suffix}").copy_(torch.from_numpy(np.asarray(a)))
    return m


def _flag(name: str, value, ints: bool = False) -> bool:
    """A bool argument (torch refuses other types for bias and batch_first; for bidirectional it
    takes anything, we take 0 and 1 too)."""
    if not isinstance(value, (bool, np.bool_)) and not (ints and isinstance(value, int) and value in (0, 1)):
        raise BadInput(f"{name}={value!r} must be True or False")
    return bool(value)


class _Base(nn.Module):
    cell = ""

    def _setup(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
               proj_size, device, dtype, seed, params, nonlinearity="tanh"):
        """The arguments ``torch.nn.RNNBase`` takes, checked (a one-line BadInput each), and the
        parameters registered under torch's names."""
        super().__init__()
        if proj_size != 0:
            raise BadInput(f"proj_size={proj_size!r} is not supported (LSTM projections are not "
                           "implemented); allowed: 0")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise BadInput(f"dropout={dropout!r} must be a number in [0, 1] (the probability of zeroing "
                           "an element between layers)")
        if nonlinearity not in NONLINEARITIES:
            raise BadInput(f"nonlinearity {nonlinearity!r} is unknown; allowed: {', '.join(NONLINEARITIES)}")
        bias, batch_first = _flag("bias", bias), _flag("batch_first", batch_first)
        bidirectional = _flag("bidirectional", bidirectional, ints=True)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise BadInput(f"dtype {dtype} is not supported; allowed: torch.float32, float64, bfloat16, float16")
        if dropout > 0 and num_layers == 1:   # torch's own warning: there is no layer to drop between
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        extra = {"nonlinearity": nonlinearity} if self.cell == "rnn" else {}
        if params is None:
            params = _PARAMS[self.cell].random(input_size, hidden_size, num_layers, seed=seed,
                                               bidirectional=bidirectional, **extra)
            if not bias:     # random weights without biases (they are drawn, then zeroed)
                params = replace(params, layers=tuple(Layer(w.w_ih, w.w_hh, 0 * w.b_ih, 0 * w.b_hh)
                                                      for w in params.layers))
        if (params.input_size, params.hidden_size, params.num_layers) != (input_size, hidden_size, num_layers):
            raise BadInput("params do not match input_size, hidden_size, num_layers")
        if params.bidirectional != bidirectional:
            raise BadInput(f"params have bidirectional={params.bidirectional}, "
                           f"the module bidirectional={bidirectional}")
        if self.cell == "rnn" and params.nonlinearity != nonlinearity:
            raise BadInput(f"params have nonlinearity {params.nonlinearity!r}, the module {nonlinearity!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout, self.proj_size = float(dropout), 0
        if self.cell == "rnn":
            self.nonlinearity = nonlinearity
        kw = {"dtype": dtype, "device": device}
        for suffix, layer, extras in zip(self._suffixes(), params.layers,
                                         getattr(params, "extras", ({},) * len(params.layers))):
            for name, a in zip(_CANON, layer.arrays()):
                t = torch.tensor(np.asarray(a), **kw)
                if name.startswith("bias") and not self.bias:
                    if torch.any(t != 0):
                        raise BadInput("bias=False, but params has non-zero biases")
                    self.register_buffer(f"{name}{suffix}", t, persistent=False)  # zeros, not trained
                else:
                    self.register_parameter(f"{name}{suffix}", nn.Parameter(t))
            for name in (_LN if self.cell == "layernorm" else ()):
                self.register_parameter(f"{name}{suffix}", nn.Parameter(torch.tensor(np.asarray(extras[name]), **kw)))

    def _suffixes(self) -> list:
        return _suffixes(self.num_layers, self.bidirectional)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def extra_repr(self) -> str:
        """As ``torch.nn.LSTM``'s: the sizes, then every argument that is not its default."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s

    @classmethod
    def from_params(cls, params, dtype=torch.float32, **kw):
        extra = {"nonlinearity": params.nonlinearity} if cls.cell == "rnn" else {}
        return cls(params.input_size, params.hidden_size, params.num_layers, params=params, dtype=dtype,
                   bidirectional=params.bidirectional, **extra, **kw)

    @classmethod
    def from_torch(cls, module):
        """Our module with a copy of an ``nn.LSTM``/``nn.GRU``/``nn.RNN``'s weights and settings
        (bias, batch_first, dropout, bidirectional, nonlinearity, dtype, device, training mode)."""
        if cls.cell not in _TORCH_CLASS:
            raise BadInput(f"{cls.__name__} has no torch.nn counterpart to take weights from")
        params = _torch_params(module, cls.cell)
        ref = module.weight_ih_l0
        extra = {"nonlinearity": module.nonlinearity} if cls.cell == "rnn" else {}
        with warnings.catch_warnings():     # torch warned about dropout with one layer when it was made
            warnings.simplefilter("ignore")
            m = cls(params.input_size, params.hidden_size, params.num_layers, bias=bool(module.bias),
                    batch_first=bool(module.batch_first), dropout=module.dropout,
                    bidirectional=bool(module.bidirectional), params=params, dtype=ref.dtype,
                    device=ref.device, **extra)
        return m.train(module.training)

    def to_torch(self):
        """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with a copy of these weights and settings."""
        if self.cell not in _TORCH_CLASS:
            raise BadInput(f"{type(self).__name__} has no torch.nn counterpart")
        ref = self.weight_ih_l0
        extra = {"nonlinearity": self.nonlinearity} if self.cell == "rnn" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = getattr(nn, _TORCH_CLASS[self.cell])(self.input_size, self.hidden_size, self.num_layers,
                                                     bias=self.bias, batch_first=self.batch_first,
                                                     dropout=self.dropout, bidirectional=self.bidirectional,
                                                     dtype=ref.dtype, device=ref.device, **extra)
        with torch.no_grad():
            for name, t in m.named_parameters():
                t.copy_(getattr(self, name))
        return m.train(self.training)

    def flat_weights(self) -> list:
        names = _CANON + (_LN if self.cell == "layernorm" else ())
        return [getattr(self, f"{n}{suffix}") for suffix in self._suffixes() for n in names]

    def _spec(self, masks=()) -> Spec:
        return Spec(self.cell, self.bidirectional, getattr(self, "nonlinearity", "tanh"), tuple(masks))

    def to_params(self):
        """Our container over NumPy views of the (CPU, fp32/fp64) parameters."""
        return _build_params(self.cell, self.input_size, self.hidden_size,
                             [w.detach().numpy() for w in self.flat_weights()], self.bidirectional,
                             getattr(self, "nonlinearity", "tanh"))

    def _inference(self, x, h0, c0, masks=()):
        """No autograd: the fused numba kernels (CPU, fp32/fp64)."""
        xa = x.detach().numpy()
        h0a = None if h0 is None else h0.detach().numpy()
        c0a = None if c0 is None else c0.detach().numpy()
        drop = [m.numpy() for m in masks] or None
        p = self.to_params()
        if self.cell == "layernorm":
            from .custom import CustomLSTM
            run = CustomLSTM(p, variant="fused", backend="numba", dtype=xa.dtype)
            y, (h, c) = run(xa, h0a, c0a, dropout_masks=drop)
            return y, (h, c)
        from .recurrent import RNN
        run = RNN(p, variant="fused", backend="numba", dtype=xa.dtype, track_params=False)  # built per call
        if self.cell in _ONE_STATE:
            y, h = run(xa, h0a, dropout_masks=drop)
            return y, (h,)
        y, (h, c) = run(xa, h0a, c0a, dropout_masks=drop)
        return y, (h, c)

    def _dropout_masks(self, T: int, B: int, like) -> tuple:
        """torch's dropout between layers in training mode: per layer but the last, a (T, B, D*H)
        mask drawn as ``torch.nn.LSTM`` draws it on the CPU (``bernoulli_(1 - p)`` on a tensor of
        the layer output's shape and dtype, then ``div_(1 - p)``; p = 1: zeros, nothing drawn), so
        the same seed gives the same masks."""
        p = self.dropout
        if not self.training or p == 0 or self.num_layers == 1 or T * B == 0:
            return ()
        shape = (T, B, self.num_directions * self.hidden_size)
        if p == 1:
            return tuple(like.new_zeros(shape) for _ in range(self.num_layers - 1))
        return tuple(like.new_empty(shape).bernoulli_(1 - p).div_(1 - p) for _ in range(self.num_layers - 1))

    def _states_shape(self, B=None) -> tuple:
        L = self.num_layers * self.num_directions
        return (L, self.hidden_size) if B is None else (L, B, self.hidden_size)

    def _check_inputs(self, x, h0, c0):
        """The checks ``nn.LSTM`` makes (and a few it does not): rank, sizes, dtype, device."""
        order = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if not isinstance(x, torch.Tensor):
            raise BadInput(f"input is a {type(x).__name__}; expected a torch.Tensor {order}")
        if x.dim() != 3:
            raise BadInput(f"input has shape {tuple(x.shape)}; expected {order} or unbatched (T, I)")
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
        want = self._states_shape(B)
        what = "(num_layers * 2, batch, hidden)" if self.bidirectional else "(num_layers, batch, hidden)"
        for name, s in (("h0", h0), ("c0", c0)):
            if s is None:
                continue
            if not isinstance(s, torch.Tensor):
                raise BadInput(f"{name} is a {type(s).__name__}; expected a torch.Tensor of shape {want}")
            if tuple(s.shape) != want:
                raise BadInput(f"{name} has shape {tuple(s.shape)}; expected {what} = {want}")
            if s.dtype != x.dtype or s.device != x.device:
                raise BadInput(f"{name} is {s.dtype} on {s.device}; the input is {x.dtype} on {x.device}")

    def _unbatched_states(self, h0, c0):
        """Unbatched input: states are 2-D ``(num_layers * D, hidden)`` (torch refuses 3-D ones);
        returned with a batch dimension of one."""
        want = self._states_shape()
        for name, s in (("h0", h0), ("c0", c0)):
            if s is not None and (not isinstance(s, torch.Tensor) or tuple(s.shape) != want):
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise BadInput(f"unbatched 2-D input (T, I) takes 2-D states: {name} has shape {got}; "
                               f"expected (num_layers * directions, hidden) = {want}")
        return tuple(None if s is None else s.unsqueeze(1) for s in (h0, c0))

    def forward(self, x, hx=None):
        if self.cell in _ONE_STATE:
            if isinstance(hx, (tuple, list)):
                raise BadInput(f"a {type(self).__name__} takes one initial state h0 (num_layers, batch, hidden), "
                               "not a tuple")
            h0, c0 = hx, None
        elif hx is None:
            h0, c0 = None, None
        elif not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise BadInput(f"{type(self).__name__} takes hx = (h0, c0), each (num_layers, batch, hidden)")
        else:
            h0, c0 = hx
        unbatched = isinstance(x, torch.Tensor) and x.dim() == 2
        if unbatched:                 # as torch: a batch of one, squeezed off the outputs
            h0, c0 = self._unbatched_states(h0, c0)
            x = x.unsqueeze(0 if self.batch_first else 1)
        self._check_inputs(x, h0, c0)
        if self.batch_first:
            x = x.transpose(0, 1)
        x = x.contiguous()
        T, B = x.shape[:2]
        if T == 0:
            raise BadInput(f"input has shape {tuple(x.shape)}: a sequence of length 0 (torch.nn.{type(self).__name__} "
                           "refuses it too); give at least one step")
        weights = self.flat_weights()
        masks = self._dropout_masks(T, B, x)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)
                                                  or any(s is not None and s.requires_grad for s in (h0, c0)))
        if B == 0 and not needs_grad:     # as torch: empty outputs (the runner takes B >= 1)
            outs = self._empty_values(x, h0, c0)
        elif not needs_grad and x.device.type == "cpu" and x.dtype in _DIRECT:
            y, states = self._inference(x, h0, c0, masks)
            outs = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (y, *states))
        else:
            outs = RNNFunction.apply(self._spec(masks), x, h0, c0, *weights)
        y = outs[0].transpose(0, 1) if self.batch_first else outs[0]
        states = outs[1:]
        if unbatched:
            y = y.squeeze(0 if self.batch_first else 1)
            states = tuple(s.squeeze(1) for s in states)
        return (y, states[0]) if self.cell in _ONE_STATE else (y, tuple(states))

    def _empty_values(self, x, h0, c0) -> tuple:
        """A batch of 0, as torch: y (T, 0, D*H) and the states (L*D, 0, H), all empty."""
        T, B = x.shape[:2]
        n = 1 if self.cell in _ONE_STATE else 2
        return (x.new_zeros((T, B, self.num_directions * self.hidden_size)),
                *(x.new_zeros(self._states_shape(B)) for _ in range(n)))


class LSTM(_Base):
    """``torch.nn.LSTM`` on our kernels, with its arguments in its order (``proj_size`` must be 0);
    ``seed``/``params``: random weights from a seed, or our parameters."""
    cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, seed: int = 0, params=None):
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    proj_size, device, dtype, seed, params)


class GRU(_Base):
    """``torch.nn.GRU`` on our kernels (reset after the GEMM, as torch's), with its arguments in its order."""
    cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, seed: int = 0, params=None):
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    0, device, dtype, seed, params)


class RNN(_Base):
    """``torch.nn.RNN`` (Elman, ``nonlinearity`` tanh or relu) on our kernels, with its arguments in its order."""
    cell = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, seed: int = 0, params=None):
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    0, device, dtype, seed, params, nonlinearity)


class LayerNormLSTM(_Base):
    """Layer-norm LSTM (Ba et al. 2016, see :mod:`kernels.custom`) on our kernels; the LSTM's arguments."""
    cell = "layernorm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, seed: int = 0, params=None):
        self._setup(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                    proj_size, device, dtype, seed, params)
