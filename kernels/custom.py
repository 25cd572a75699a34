"""Custom LSTM cells: peephole and layer-norm, with parameters, float64 references and a runner.

Parameters extend the canonical LSTM layout (:mod:`kernels.params`: ``w_ih, w_hh, b_ih, b_hh``
per layer, gates i, f, g, o) with per-unit arrays, one dict per layer, named and shaped as the
cell's declaration in :mod:`fusion.cellexpr` says:

- peephole (``PEEPHOLE_LSTM``): ``peep (3, H)``: rows i, f, o; i and f see c_{t-1}, o sees c_t;
- layer norm (``LAYERNORM_LSTM``, Ba et al. 2016): ``lnx_g, lnx_b (4, H)``: gain and bias of the
  layer norm over the 4H input pre-activations ``x W_ih^T``; ``lnh_g, lnh_b (4, H)``: the same
  for ``h W_hh^T``; ``lnc_g, lnc_b (H,)``: layer norm of c before the output tanh.  The canonical
  biases are added after the normalisation (so they are not folded into the input GEMM).

The containers derive from :class:`~kernels.params.RNNParams`, not from ``LSTMParams``: the
plain :func:`kernels.lstm` refuses them instead of silently dropping the extra parameters.

Variants (:func:`custom_lstm`): ``naive``: per-gate GEMMs every step and the cell's op-by-op
NumPy pointwise code (generated from the same declaration); ``fused``: input GEMM hoisted over
all T (one GEMM with M = T*B), one grouped recurrent GEMM per step, and the generated fused
kernel (``backend="numba"``) or the op-by-op code (``backend="numpy"``).

GPU backends (``cupy``, ``numba-cuda``; :data:`kernels.gpu.CUDA_BACKENDS`): CuPy arrays and
cuBLAS GEMMs (the same hoisted input GEMM and grouped recurrent GEMM), the generated CUDA C
kernel launched by :class:`fusion.cellexpr_gpu.CupyCell` or the generated numba.cuda kernel by
:class:`fusion.cellexpr_gpu.NumbaCudaCell`; ``naive`` runs the op-by-op code on CuPy arrays.
Precisions fp32, tf32 (TF32 cuBLAS math) and fp16 (fp16 storage, fp32 math in the kernel).
Without a GPU, building one raises :class:`~kernels.errors.Unsupported` with the reason, except
``numba-cuda`` under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which runs the same step
loop with NumPy arrays and GEMMs (how the CPU tests check it).
Inputs may be NumPy or CuPy arrays; outputs are CuPy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion import cellexpr
from fusion import gemm as fgemm
from fusion.steps import Plan

from .dtypes import canonical, storage
from .errors import BadInput, Unsupported
from .params import Layer, LSTMParams, RNNParams
from .reference import _initial, check_sequence, sigmoid

CUSTOM_CELLS = ("peephole", "layernorm")
VARIANTS = ("naive", "fused")
CPU_BACKENDS = ("numpy", "numba")
GPU_BACKENDS = ("cupy", "numba-cuda")
BACKENDS = CPU_BACKENDS + GPU_BACKENDS


@dataclass(frozen=True)
class _CustomLSTMParams(RNNParams):
    extras: tuple = ()

    cell = "lstm"
    kind = ""             # "peephole" or "layernorm"
    expr = None           # the fusion.cellexpr.Cell

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "extras", tuple(dict(e) for e in self.extras))
        if len(self.extras) != len(self.layers):
            raise BadInput(f"{type(self).__name__}: {len(self.extras)} extra-parameter sets for "
                           f"{len(self.layers)} layers")
        for l, e in enumerate(self.extras):
            want = {p: self.expr.param_shape(p, self.hidden_size) for p, _ in self.expr.params}
            if set(e) != set(want):
                raise BadInput(f"layer {l}: extra parameters {sorted(e)}; expected {sorted(want)}")
            for name, shape in want.items():
                if np.shape(e[name]) != shape:
                    raise BadInput(f"layer {l}: {name} has shape {np.shape(e[name])}; expected {shape}")

    @classmethod
    def random(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, seed: int = 0,
               dtype=np.float64):
        """Canonical weights as :meth:`LSTMParams.random` (same seed, same numbers), extras from
        a second stream of the same seed (see :meth:`_draw_extra`)."""
        base = LSTMParams.random(input_size, hidden_size, num_layers, seed=seed, dtype=dtype)
        rng = np.random.default_rng([seed, 1])
        extras = tuple({p: cls._draw_extra(rng, p, cls.expr.param_shape(p, hidden_size)).astype(dtype)
                        for p, _ in cls.expr.params} for _ in range(num_layers))
        return cls(input_size, hidden_size, base.layers, extras)

    def astype(self, dtype):
        conv = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return type(self)(self.input_size, self.hidden_size,
                          tuple(Layer(*map(conv, layer.arrays())) for layer in self.layers),
                          tuple({k: conv(v) for k, v in e.items()} for e in self.extras))

    def extra_arrays(self, layer: int) -> tuple:
        """The layer's extra arrays in the cell declaration's order (the kernel's argument order)."""
        return tuple(self.extras[layer][p] for p, _ in self.expr.params)

    def num_weights(self) -> int:
        return super().num_weights() + sum(np.size(a) for e in self.extras for a in e.values())


class PeepholeLSTMParams(_CustomLSTMParams):
    kind, expr = "peephole", cellexpr.PEEPHOLE_LSTM

    @staticmethod
    def _draw_extra(rng, name, shape):
        k = 1.0 / np.sqrt(shape[-1])
        return rng.uniform(-k, k, size=shape)


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
    for l, layer in enumerate(params.layers):
        weights = tuple(np.asarray(a, dtype=np.float64) for a in layer.arrays())
        extras = {k: np.asarray(v, dtype=np.float64) for k, v in params.extras[l].items()}
        h, c = h_all[l], c_all[l]
        out = np.empty((T, B, params.hidden_size))
        for t in range(T):
            h, c = step(seq[t], h, c, *weights, extras)
            out[t] = h
        h_n[l], c_n[l] = h, c
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


# -- the runner --------------------------------------------------------------------------------
class CustomLSTM:
    """Built once (weights arranged, kernel compiled on first call), called many times::

        run = CustomLSTM(params, variant="fused", backend="numba", dtype="fp32")
        y, (h_n, c_n) = run(x, h0, c0)
    """

    def __init__(self, params: _CustomLSTMParams, *, cell: str | None = None, variant: str = "fused",
                 backend: str = "numba", dtype=None):
        if not isinstance(params, _CustomLSTMParams):
            raise BadInput(f"params must be PeepholeLSTMParams or LayerNormLSTMParams, got {type(params).__name__}")
        cell = params.kind if cell is None else cell
        if cell not in CUSTOM_CELLS:
            raise BadInput(f"cell {cell!r} is unknown; allowed: {', '.join(CUSTOM_CELLS)}")
        if cell != params.kind:
            raise BadInput(f"cell {cell!r} given {type(params).__name__} (a {params.kind} cell)")
        if variant not in VARIANTS:
            raise BadInput(f"variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
        if backend not in BACKENDS:
            raise BadInput(f"backend {backend!r} is unknown; allowed: {', '.join(BACKENDS)}")
        self.precision = canonical(dtype if dtype is not None else params.dtype)
        self.on_gpu = backend in GPU_BACKENDS
        if self.on_gpu:
            from fusion.cellexpr_gpu import simulator_active

            from .backends import get_backend
            be = get_backend(backend)
            if backend == "numba-cuda" and simulator_active():
                self.xp = np   # numba's CUDA simulator (tests): NumPy arrays, kernels run on the CPU
            else:
                self.xp = be.xp()                  # Unsupported (with the reason) without a GPU
            if self.precision not in be.dtypes:
                raise Unsupported(f"custom cells on {backend} run in {', '.join(be.dtypes)}, not {self.precision}")
        else:
            self.xp = np
            if self.precision not in ("fp32", "fp64"):
                raise BadInput(f"custom cells run in fp32 or fp64 on the CPU, not {self.precision}")
        xp = self.xp
        self.dtype = dt = storage(self.precision)
        self.cell, self.variant, self.backend, self.params = cell, variant, backend, params
        self.expr = params.expr
        self.fused_kernel = variant == "fused" and backend != "numpy"
        self.op_by_op = cellexpr.numpy_step(self.expr)
        if not self.fused_kernel:
            self.provider = None
        elif self.on_gpu:
            from fusion import cellexpr_gpu
            self.provider = cellexpr_gpu.provider(self.expr, backend)
        else:
            self.provider = cellexpr.NumbaCell(self.expr)
        H = params.hidden_size
        fold = cell != "layernorm"   # LN normalises x W_ih^T alone: its biases come after
        # The fused layer runs grouped, hoisted and pretransposed GEMMs: on the CPU in fp32 the
        # same packed oneDNN provider as the fused plan of kernels.rnn (gemm_info says which).
        packer, self.gemm_info = (None, {}) if variant != "fused" else fgemm.provider_for(
            xp, "cuda" if self.on_gpu else "cpu", self.precision, Plan(frozenset({"pretranspose"})))
        self.layers = []
        for l, layer in enumerate(params.layers):
            w_ih, w_hh, b_ih, b_hh = (xp.ascontiguousarray(xp.asarray(a, dtype=dt)) for a in layer.arrays())
            lay = {"w_ih": w_ih, "w_hh": w_hh, "extra": tuple(xp.ascontiguousarray(xp.asarray(a, dtype=dt))
                                                              for a in params.extra_arrays(l))}
            if variant == "naive":
                lay["w_ih_k"] = [xp.ascontiguousarray(w_ih[k * H:(k + 1) * H]) for k in range(4)]
                lay["w_hh_k"] = [xp.ascontiguousarray(w_hh[k * H:(k + 1) * H]) for k in range(4)]
                lay["bx"], lay["bh"], lay["fold"] = b_ih.reshape(4, H), b_hh.reshape(4, H), None
            elif fold:
                lay["bx"], lay["bh"], lay["fold"] = None, None, (b_ih + b_hh).reshape(4, H)
            else:
                lay["bx"], lay["bh"], lay["fold"] = b_ih.reshape(4, H), b_hh.reshape(4, H), None
            if packer is not None:
                lay["proj_x"], lay["proj_h"] = (fgemm.Projection(xp, w, 4, grouped=True, pretransposed=True,
                                                                 packer=packer) for w in (w_ih, w_hh))
            self.layers.append(lay)

    def gemm_step_info(self) -> dict:
        """The packed primitives of the last layer's recurrent GEMM (empty without packing)."""
        lay = self.layers[-1]
        return lay["proj_h"].info() if "proj_h" in lay else {}

    def prepare(self, T: int, B: int) -> "CustomLSTM":
        """Pack the weights for a call with T steps and batch B now (a no-op without packing)."""
        for lay in self.layers:
            if "proj_h" in lay:
                lay["proj_x"].prepare(T * B)
                lay["proj_h"].prepare(B)
        return self

    def __call__(self, x, h0=None, c0=None):
        from .gpu import cublas_math
        p, xp = self.params, self.xp
        T, B = check_sequence(tuple(x.shape) if hasattr(x, "shape") else np.shape(x), p, False,
                              {"h0": h0, "c0": c0}, x=x)
        dt, H, L = self.dtype, p.hidden_size, p.num_layers
        seq = xp.asarray(x, dtype=dt)
        h_n, c_n = xp.empty((L, B, H), dt), xp.empty((L, B, H), dt)
        with cublas_math(xp, self.precision):      # TF32 GEMMs for tf32 only; a no-op on the CPU
            for l, lay in enumerate(self.layers):
                h = xp.zeros((B, H), dt) if h0 is None else xp.asarray(h0[l], dtype=dt)
                c = xp.zeros((B, H), dt) if c0 is None else xp.array(c0[l], dtype=dt)  # a copy: updated in place
                run = self._naive_layer if self.variant == "naive" else self._fused_layer
                seq, h, c = run(lay, seq, h, c, T, B, H)
                h_n[l], c_n[l] = h, c
        return seq, (h_n, c_n)

    def _naive_layer(self, lay, seq, h, c, T, B, H):
        xp = self.xp
        y = xp.empty((T, B, H), self.dtype)
        for t in range(T):
            gx = xp.stack([seq[t] @ w.T for w in lay["w_ih_k"]], axis=1)   # 4 GEMMs
            gh = xp.stack([h @ w.T for w in lay["w_hh_k"]], axis=1)        # 4 GEMMs
            h, c = self.op_by_op(xp, gx, gh, lay["bx"], lay["bh"], h, c, *lay["extra"])
            h, c = h.astype(self.dtype, copy=False), c.astype(self.dtype, copy=False)
            y[t] = h
        return y, h, c

    def _fused_layer(self, lay, seq, h, c, T, B, H):
        dt, xp = self.dtype, self.xp
        y = xp.empty((T, B, H), dt)
        rows = xp.ascontiguousarray(seq).reshape(T * B, -1)
        packed = "proj_h" in lay
        if packed:                                                                   # hoisted: M = T*B
            gx_all = lay["proj_x"](rows, xp.empty((T * B, 4 * H), dt))
        else:
            gx_all = rows @ lay["w_ih"].T
        if lay["fold"] is not None:
            gx_all.reshape(T * B, 4, H)[...] += lay["fold"]
        gh_buf = xp.empty((B, 4 * H), dt)
        gh = gh_buf.reshape(B, 4, H)
        for t in range(T):
            gx = gx_all[t * B:(t + 1) * B].reshape(B, 4, H)
            if packed:                                                               # 1 GEMM
                lay["proj_h"](h, gh_buf)
            else:
                xp.matmul(h, lay["w_hh"].T, out=gh_buf)
            if self.fused_kernel:
                self.provider(xp, gx, gh, lay["bx"], lay["bh"], h, (c,), lay["extra"], y[t], (c,))
                h = y[t]
            else:
                h, c = self.op_by_op(xp, gx, gh, lay["bx"], lay["bh"], h, c, *lay["extra"])
                y[t] = h
        return y, h, c


def custom_lstm(x, params, h0=None, c0=None, *, cell: str | None = None, variant: str = "fused",
                backend: str = "numba", dtype=None):
    """Forward pass of a peephole or layer-norm LSTM: ``y, (h_n, c_n)``; see :class:`CustomLSTM`."""
    dtype = dtype if dtype is not None else (x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    return CustomLSTM(params, cell=cell, variant=variant, backend=backend, dtype=dtype)(x, h0, c0)
