"""``fuse_pointwise``: one pass per step for everything between the GEMMs and the next step.

Two CPU providers, same signatures as :mod:`kernels.cells`:

- ``numpy``: NumPy cannot fuse, so the best it can do is to run the ops in place in
  preallocated scratch (no temporaries, no allocator).  Still one pass over memory per op.
- ``numba``: a real fused kernel, ``@njit(parallel=True)``, one loop over the B*H units that
  reads each gate pre-activation once, keeps every intermediate in registers and writes h and c.
  Bytes per step: reads G*B*H (gx) + G*B*H (gh) + B*H (c or h) , writes 2*B*H (LSTM) or B*H (GRU).
  On bf16 storage the kernels are :mod:`fusion.pointwise_bf16`'s (arrays passed as their uint16
  bits, :func:`bits`; fp32 math, each stored value rounded once, as the CUDA bf16 kernel).

The vanilla RNN (``rnn_relu``, ``rnn_tanh``) has the GRU's signature with G = 1 and one combined
bias: one add of the two GEMM results, the bias and the nonlinearity, written into h.

The GPU providers (CUDA C in ``kernels/cuda/``, numba.cuda) plug into :func:`get` the same way.
"""
from __future__ import annotations

import functools

import numpy as np

from kernels.backends import get_backend, step_backends
from kernels.errors import MissingDependency


# -- NumPy: in place, no temporaries ------------------------------------------------------
def _sigmoid_(a):
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def _work_dtype(dt):
    """bf16 storage is widened to fp32 for the arithmetic and rounded once per stored value, as the
    CUDA kernel does; rounding after every in-place op would add an error per op and per step."""
    return np.dtype(np.float32) if dt.kind == "V" else dt    # V: ml_dtypes' bfloat16


class _Scratch:
    """Preallocated buffers, reallocated only when the shape or dtype changes."""

    def __init__(self):
        self.bufs = {}

    def get(self, key, shape, dtype):
        b = self.bufs.get(key)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = self.bufs[key] = np.empty(shape, dtype=dtype)
        return b


class NumpyLSTM:
    def __init__(self):
        self.scratch = _Scratch()

    def __call__(self, xp, gx, gh, bx, bh, c_prev, h_out, c_out):
        wd = _work_dtype(gx.dtype)
        s = self.scratch.get("gates", gx.shape, wd)
        narrow = wd != c_out.dtype
        # With narrow storage c and h are computed in fp32 scratch and stored once at the end.
        c_w = self.scratch.get("c", c_out.shape, wd) if narrow else c_out
        h_w = self.scratch.get("h", h_out.shape, wd) if narrow else h_out
        if narrow:
            s[...] = gx
            s += gh
        else:
            np.add(gx, gh, out=s)
        if bx is not None:
            s += bx
        if bh is not None:
            s += bh
        _sigmoid_(s[:, 0:2])       # i, f
        _sigmoid_(s[:, 3])         # o
        np.tanh(s[:, 2], out=s[:, 2])  # g
        np.multiply(s[:, 1], c_prev, out=c_w)
        np.multiply(s[:, 0], s[:, 2], out=s[:, 0])
        c_w += s[:, 0]
        np.tanh(c_w, out=h_w)
        h_w *= s[:, 3]
        if narrow:
            c_out[...] = c_w
            h_out[...] = h_w
        return h_out, c_out


class NumpyGRU:
    def __init__(self):
        self.scratch = _Scratch()

    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        wd = _work_dtype(gx.dtype)
        s = self.scratch.get("gates", gx.shape, wd)
        narrow = wd != h_out.dtype
        h_w = self.scratch.get("h", h_out.shape, wd) if narrow else h_out
        if narrow:
            s[...] = gh
            s += bh
        else:
            np.add(gh, bh, out=s)                  # recurrent part with its bias
        rz = s[:, 0:2]
        rz += gx[:, 0:2]
        if bx is not None:
            rz += bx[0:2]
        _sigmoid_(rz)                              # r, z
        n = s[:, 2]
        n *= s[:, 0]                               # r * (W_hn h + b_hn)
        n += gx[:, 2]
        if bx is not None:
            n += bx[2]
        np.tanh(n, out=n)
        # h = n + z * (h_prev - n)
        np.subtract(h_prev, n, out=h_w)
        h_w *= s[:, 1]
        h_w += n
        if narrow:
            h_out[...] = h_w
        return (h_out,)


class NumpyRNN:
    """Vanilla cell in place: ``h_out = act(gx + gh + b)``, three passes, no temporaries."""

    def __init__(self, nonlinearity: str):
        self.nonlinearity = nonlinearity
        self.scratch = _Scratch()

    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        wd = _work_dtype(gx.dtype)
        narrow = wd != h_out.dtype
        h_w = self.scratch.get("h", h_out.shape, wd) if narrow else h_out
        if narrow:
            h_w[...] = gx[:, 0]
            h_w += gh[:, 0]
        else:
            np.add(gx[:, 0], gh[:, 0], out=h_w)
        for b in (bx, bh):
            if b is not None:
                h_w += b[0]
        if self.nonlinearity == "relu":
            np.maximum(h_w, 0, out=h_w)       # propagates NaN
        else:
            np.tanh(h_w, out=h_w)
        if narrow:
            h_out[...] = h_w
        return (h_out,)


# -- numba: one fused parallel kernel ------------------------------------------------------
# the fp32 tanh of the numba kernels: a rational approximation (fusion/tanh.py says why)
from .tanh import TANH_CLAMP, TANH_P, TANH_Q, tanh_rational  # noqa: E402,F401


def _numba_cells(dtype_name: str) -> dict:
    """Each cell's (whole-block parallel, unit-block serial) kernels (fusion.pointwise_numba: one
    row function in two forms; compiled per dtype on first call, then kept on disk)."""
    try:
        from . import pointwise_numba
    except ImportError as e:  # pragma: no cover - numba is a base dependency
        raise MissingDependency("numba", "the numba backend", "pip install numba") from e
    # OMP_WAIT_POLICY=PASSIVE is set by kernels/__init__.py: see the comment there.
    if dtype_name == "bfloat16":    # bf16 storage, fp32 math (its arrays passed as uint16: bits())
        from . import pointwise_bf16
        return pointwise_bf16.KERNELS
    return pointwise_numba.KERNELS


def bits(a):
    """What a numba kernel takes for an array: ml_dtypes' bfloat16 as its ``uint16`` view (numba
    has no bf16 type; fusion.pointwise_bf16 converts the bits), any other array as it is."""
    return a.view(np.uint16) if a is not None and a.dtype.kind == "V" else a


def _numba_kernels(dtype_name: str):
    """(lstm, gru): the fused kernels over whole ``(B, G, H)`` blocks, numba-parallel over rows."""
    cells = _numba_cells(dtype_name)
    return cells["lstm"][0], cells["gru"][0]


def _numba_rnn_kernel(dtype_name: str, nonlinearity: str):
    """The vanilla cell's fused kernel: one pass, h = act(gx + gh + b)."""
    return _numba_rnn_kernels(dtype_name, nonlinearity)[0]


def _numba_rnn_kernels(dtype_name: str, nonlinearity: str) -> tuple:
    """The vanilla cell's (whole-block parallel, unit-block serial) kernels."""
    return _numba_cells(dtype_name)[f"rnn_{nonlinearity}"]


# Units (batch x hidden) below which a step's kernel runs on the calling thread alone.  Waking
# numba's workers costs ~65 us per call here (OMP_WAIT_POLICY=PASSIVE lets them sleep, so they do
# not spin on the cores the GEMM needs); measured on 2 cores, LSTM kernel, 1 vs 2 threads:
# B*H = 8: 3 vs 68 us; 32768: 85 vs 126 us; 65536: 167 vs 153 us; 131072: 340 vs 240 us.
PARALLEL_MIN_UNITS = 1 << 16


def _launch(kernel, units: int, *args):
    import numba
    if numba.get_num_threads() == 1 or units < PARALLEL_MIN_UNITS:
        serial(kernel)(*args)
    else:
        kernel(*args)


def serial(kernel):
    """The whole-block kernel's twin compiled without ``parallel`` (fusion.pointwise_numba.SERIAL:
    why it exists and why ``error_model="numpy"``)."""
    from .pointwise_numba import SERIAL
    if kernel not in SERIAL:
        from .pointwise_bf16 import SERIAL
    return SERIAL[kernel]


def kernel_biases(cell: str, bx, bh, dtype_name: str) -> tuple:
    """``(b1, b2, has_b)`` as the numba kernels take them: the GRU's input bias (or a typed
    stand-in) and its recurrent bias (b_hn sits inside r * (...)); the LSTM's and the vanilla
    cell's one combined bias, which the folding gives as bx or bh but never both."""
    empty = _EMPTY[dtype_name]
    if cell == "gru":
        return (bx if bx is not None else empty), bh, bx is not None
    if bx is not None and bh is not None:
        raise ValueError(f"the fused {cell} kernel takes one combined bias")
    b = bx if bx is not None else bh
    return (b if b is not None else empty), empty, b is not None


class NumbaLSTM:
    def __call__(self, xp, gx, gh, bx, bh, c_prev, h_out, c_out):
        kernel = _numba_kernels(gx.dtype.name)[0]
        b, _, has_b = kernel_biases("lstm", bx, bh, gx.dtype.name)
        if c_out is not c_prev:
            c_out[...] = c_prev
        _launch(kernel, c_out.size, bits(gx), bits(gh), bits(b), has_b, bits(c_out), bits(h_out))
        return h_out, c_out


class NumbaGRU:
    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        kernel = _numba_kernels(gx.dtype.name)[1]
        b1, b2, has_b = kernel_biases("gru", bx, bh, gx.dtype.name)
        _launch(kernel, h_out.size, bits(gx), bits(gh), bits(b1), has_b, bits(b2), bits(h_prev), bits(h_out))
        return (h_out,)


class NumbaRNN:
    def __init__(self, nonlinearity: str):
        self.nonlinearity = nonlinearity

    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        kernel = _numba_rnn_kernel(gx.dtype.name, self.nonlinearity)
        b, _, has_b = kernel_biases("rnn", bx, bh, gx.dtype.name)
        _launch(kernel, h_out.size, bits(gx), bits(gh), bits(b), has_b, bits(h_out))
        return (h_out,)


# A typed stand-in for an absent bias, so one compiled specialization serves both cases.
_EMPTY = {name: np.zeros((1, 1), dtype=name) for name in ("float32", "float64")}
_EMPTY["bfloat16"] = np.zeros((1, 1), np.uint16)       # bf16 kernels take bits (see bits())

# The CPU providers' kernels, by the provider name a backend's ``pointwise`` field names
# (kernels.backends); the vanilla cell's kernel takes its activation.
_CPU_KERNELS = {"numpy": (NumpyLSTM, NumpyGRU, NumpyRNN), "numba": (NumbaLSTM, NumbaGRU, NumbaRNN)}
_PROVIDERS = {}
for _name in (get_backend(b).pointwise for b in step_backends("cpu")):
    _lstm, _gru, _rnn = _CPU_KERNELS[_name]
    _PROVIDERS.update({("lstm", _name): _lstm, ("gru", _name): _gru})
    for _act in ("relu", "tanh"):
        _PROVIDERS[(f"rnn_{_act}", _name)] = functools.partial(_rnn, _act)


def get(cell: str, provider: str):
    """A fresh fused pointwise callable for ``cell`` on ``provider`` (it may own scratch memory)."""
    try:
        return _PROVIDERS[(cell, provider)]()
    except KeyError:
        allowed = sorted({p for c, p in _PROVIDERS if c == cell})
        raise ValueError(f"no fused pointwise kernel for {cell} on {provider!r}; have: {', '.join(allowed)}") from None


# GPU providers (CuPy RawModule, PyCUDA, numba.cuda): registering them imports nothing heavy.
from .pointwise_cuda import PROVIDERS as _CUDA_PROVIDERS  # noqa: E402

_PROVIDERS.update(_CUDA_PROVIDERS)


class GeneratedRNN:
    """The vanilla cell on a GPU backend: the kernel fusion.cellexpr generates from ``RNN_RELU`` /
    ``RNN_TANH`` (CUDA C through CuPy, or numba.cuda), behind the GRU's signature.  Imported on
    first use: cellexpr_gpu imports nothing heavy, but it is only needed on a GPU."""

    def __init__(self, nonlinearity: str, backend: str):
        from . import cellexpr, cellexpr_gpu
        self.launch = cellexpr_gpu.provider(cellexpr.get(f"rnn_{nonlinearity}"), backend)

    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        return self.launch(xp, gx, gh, bx, bh, h_prev, (), (), h_out, ())


for _act in ("relu", "tanh"):
    for _gpu in step_backends("cuda", generated=True):     # PyCUDA has no launcher for them: naive there
        _PROVIDERS[(f"rnn_{_act}", _gpu)] = functools.partial(GeneratedRNN, _act, _gpu)
