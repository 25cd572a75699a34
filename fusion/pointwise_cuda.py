"""``fuse_pointwise`` on NVIDIA GPUs: the same fused step kernel launched three ways.

Same signatures as :mod:`kernels.cells` (``xp`` is CuPy: every GPU backend keeps its arrays and
cuBLAS GEMMs in CuPy, and only the pointwise launch differs):

- ``cupy``:       ``kernels/cuda/rnn_pointwise.cu`` compiled by NVRTC through ``cupy.RawModule``,
  launched on CuPy's current stream.
- ``pycuda``:     the same source compiled by PyCUDA's ``SourceModule`` (nvcc; NVRTC when nvcc is
  absent), loaded into the primary context that CuPy uses, so both see the same memory.
- ``numba-cuda``: the same math written in ``numba.cuda`` (:func:`numba_cuda_kernels`).

One thread per unit ``(b, j)``; the gate views are read in place with their strides (see the
comment at the top of the ``.cu``).  Bytes per step: reads G*B*H (gx) + G*B*H (gh) + B*H (c or h),
writes 2*B*H (LSTM) or B*H (GRU), times the storage size.

Nothing here imports CuPy, PyCUDA or numba at import time: :mod:`fusion.pointwise` can register
these providers on a machine without them, and a backend without its modules is skipped by
:meth:`kernels.backends.Backend.missing` before any provider is called.

Compilation happens on first use (the harness's warm-up): once per process and device for the
CUDA C module (all storage types in one NVRTC run, 0.2-0.3 s on the CPU machine, through
:mod:`kernels.cudasrc`), once per storage type for numba.  A compile error raises
:class:`~kernels.errors.KernelCompileError` with the compiler's log.
"""
from __future__ import annotations

import atexit
import functools
import math
import shutil

import numpy as np

from kernels import cudasrc
from kernels.errors import BadInput, KernelCompileError, MissingDependency, Unsupported

SOURCE = cudasrc.CUDA_DIR / "rnn_pointwise.cu"

# Must equal MB_POINTWISE_THREADS in the .cu (its __launch_bounds__); tests/test_cuda_sources.py checks.
THREADS = 256
MAX_GRID_Y = 65535

# storage dtype name -> suffix of the extern "C" symbol
SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}

# Argument layouts of the two entries, in PyCUDA's prepare() codes: P pointer, q int64, i int32.
_LSTM_ARGS = "PqqPqqPPPqPqPqii"
_GRU_ARGS = "PqqPqqPPPqPqii"


# -- source ----------------------------------------------------------------------------------
def read_source() -> str:
    """The .cu as every compiler gets it (its shared header inlined by :func:`kernels.cudasrc.read`)."""
    return cudasrc.read(SOURCE)


# -- launch shape and argument checks (shared by all three providers) ------------------------
def launch_shape(B: int, H: int, max_grid_y: int = MAX_GRID_Y):
    """``(grid, block)`` for one thread per unit: x along H (coalesced), y along B.

    A block spans H rounded up to whole warps (at most THREADS) and packs THREADS // that many
    batch rows, so H=1 does not leave 255 of 256 threads idle.  ``max_grid_y`` is only lowered by
    tests, to exercise the kernels' grid-stride loop over B.
    """
    tx = min(THREADS, 32 * math.ceil(H / 32))
    ty = max(1, min(THREADS // tx, B))
    grid = (math.ceil(H / tx), min(math.ceil(B / ty), max_grid_y), 1)
    return grid, (tx, ty, 1)


def _strides(a, name: str, shape: tuple) -> tuple:
    """Element strides of ``a`` after checking its shape and unit stride along H."""
    if tuple(a.shape) != shape:
        raise BadInput(f"{name} has shape {tuple(a.shape)}; expected {shape}")
    st = tuple(s // a.itemsize for s in a.strides)
    if st[-1] != 1 and shape[-1] > 1:
        raise BadInput(f"{name} must have unit stride along H (strides {st} elements)")
    return st


def _bias(b, name: str, G: int, H: int, dtype):
    if b is None:
        return None
    if tuple(b.shape) != (G, H) or not b.flags.c_contiguous or b.dtype != dtype:
        raise BadInput(f"{name} must be a contiguous ({G}, {H}) {dtype} array; got {tuple(b.shape)} "
                       f"{b.dtype}{'' if b.flags.c_contiguous else ' non-contiguous'}")
    return b


def _lstm_args(gx, gh, bx, bh, c_prev, h_out, c_out):
    """The kernel's arguments with arrays left as arrays (each provider turns them into pointers)."""
    B, G, H = gx.shape
    if G != 4:
        raise BadInput(f"LSTM gates view has {G} gates; expected 4 (B, G, H)")
    dt = gx.dtype
    for n, a in (("gh", gh), ("c_prev", c_prev), ("h_out", h_out), ("c_out", c_out)):
        if a.dtype != dt:
            raise BadInput(f"{n} is {a.dtype}; expected {dt} like gx")
    sx, sh = _strides(gx, "gx", (B, G, H)), _strides(gh, "gh", (B, G, H))
    sc, so, sco = (_strides(a, n, (B, H)) for n, a in
                   (("c_prev", c_prev), ("h_out", h_out), ("c_out", c_out)))
    return (gx, sx[0], sx[1], gh, sh[0], sh[1], _bias(bx, "bx", G, H, dt), _bias(bh, "bh", G, H, dt),
            c_prev, sc[0], h_out, so[0], c_out, sco[0], B, H)


def _gru_args(gx, gh, bx, bh, h_prev, h_out):
    B, G, H = gx.shape
    if G != 3:
        raise BadInput(f"GRU gates view has {G} gates; expected 3 (B, G, H)")
    dt = gx.dtype
    for n, a in (("gh", gh), ("h_prev", h_prev), ("h_out", h_out)):
        if a.dtype != dt:
            raise BadInput(f"{n} is {a.dtype}; expected {dt} like gx")
    sx, sh = _strides(gx, "gx", (B, G, H)), _strides(gh, "gh", (B, G, H))
    sp, so = _strides(h_prev, "h_prev", (B, H)), _strides(h_out, "h_out", (B, H))
    return (gx, sx[0], sx[1], gh, sh[0], sh[1], _bias(bx, "bx", G, H, dt), _bias(bh, "bh", G, H, dt),
            h_prev, sp[0], h_out, so[0], B, H)


def _symbol(stem: str, dtype) -> str:
    try:
        return f"{stem}_{SUFFIX[np.dtype(dtype).name]}"
    except KeyError:
        raise Unsupported(f"{stem} has no kernel for {dtype}; have: {', '.join(SUFFIX)}") from None


def _typed(args, layout: str, pointer):
    """Scalars typed as the kernel declares them (int64 strides, int32 sizes); arrays -> pointer()."""
    out = []
    for a, code in zip(args, layout):
        if code == "P":
            out.append(pointer(a))
        elif code == "q":
            out.append(np.int64(a))
        else:
            out.append(np.int32(a))
    return tuple(out)


# -- CuPy: RawModule ------------------------------------------------------------------------
def _cupy_function(symbol: str, device: int):
    return cudasrc.file_function(SOURCE, symbol, device)


def _cupy_pointer(a):
    # CuPy passes an ndarray as its device pointer; an absent bias is a null pointer (8 bytes).
    return np.uint64(0) if a is None else a


class _LSTMCall:
    """The LSTM calling convention of kernels.cells, for any provider with ``_launch``."""
    stem, layout = "lstm_pointwise_fused", _LSTM_ARGS

    def __call__(self, xp, gx, gh, bx, bh, c_prev, h_out, c_out):
        self._launch(_lstm_args(gx, gh, bx, bh, c_prev, h_out, c_out), gx.shape[0], gx.shape[2], gx.dtype)
        return h_out, c_out


class _GRUCall:
    stem, layout = "gru_pointwise_fused", _GRU_ARGS

    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        self._launch(_gru_args(gx, gh, bx, bh, h_prev, h_out), gx.shape[0], gx.shape[2], gx.dtype)
        return (h_out,)


class _CupyProvider:
    stem = layout = ""

    def __init__(self):
        self.kernels = {}

    def _launch(self, args, B, H, dtype):
        k = self.kernels.get(dtype)
        if k is None:
            import cupy
            k = self.kernels[dtype] = _cupy_function(_symbol(self.stem, dtype), cupy.cuda.runtime.getDevice())
        grid, block = launch_shape(B, H)
        k(grid, block, _typed(args, self.layout, _cupy_pointer))  # CuPy's current stream


class CupyLSTM(_LSTMCall, _CupyProvider):
    pass


class CupyGRU(_GRUCall, _CupyProvider):
    pass


# -- PyCUDA: SourceModule in CuPy's primary context -----------------------------------------
def _pop_context(ctx):
    try:
        ctx.pop()
    except Exception:  # the process is exiting; the driver may already be torn down
        pass


@functools.lru_cache(maxsize=None)
def _pycuda_module(device: int):
    try:
        import pycuda.driver as drv
    except ImportError as e:
        raise MissingDependency("pycuda", "the pycuda backend", "pip install pycuda") from e
    drv.init()
    # CuPy (the runtime API) works in the device's primary context; retaining and pushing the same
    # one makes PyCUDA's module, and so its kernels, live beside CuPy's arrays.
    ctx = drv.Device(device).retain_primary_context()
    ctx.push()
    atexit.register(_pop_context, ctx)
    if shutil.which("nvcc") is None:
        major, minor = drv.Device(device).compute_capability()
        return drv.module_from_buffer(cudasrc.nvrtc_compile(SOURCE, arch=f"sm_{major}{minor}"))
    from pycuda.compiler import SourceModule
    try:
        # no_extern_c: the source declares its own extern "C" entries.
        return SourceModule(read_source(), no_extern_c=True, options=["--std=c++17"],
                            include_dirs=list(cudasrc.cuda_include_dirs()))
    except drv.CompileError as e:
        log = "\n".join(s for s in (getattr(e, "stderr", ""), getattr(e, "stdout", "")) if s) or str(e)
        raise KernelCompileError(f"nvcc (PyCUDA SourceModule) could not compile {SOURCE}:\n{log}") from None


@functools.lru_cache(maxsize=None)
def _pycuda_function(symbol: str, layout: str, device: int):
    f = _pycuda_module(device).get_function(symbol)
    f.prepare(layout)  # a prepared call packs arguments without inspecting them: ~1 us less per launch
    return f


def _pycuda_pointer(a):
    return 0 if a is None else a.data.ptr


class _PycudaProvider:
    stem = layout = ""

    def __init__(self):
        self.kernels = {}

    def _launch(self, args, B, H, dtype):
        import cupy
        # PyCUDA cannot wrap a foreign stream handle, so it launches on the legacy default stream;
        # that orders it with CuPy only while CuPy also uses it.
        if cupy.cuda.get_current_stream().ptr != 0:
            raise Unsupported("the pycuda backend launches on the default stream; CuPy's current "
                              "stream is another one (use the cupy backend for streams)")
        f = self.kernels.get(dtype)
        if f is None:
            f = self.kernels[dtype] = _pycuda_function(_symbol(self.stem, dtype), self.layout,
                                                       cupy.cuda.runtime.getDevice())
        grid, block = launch_shape(B, H)
        f.prepared_async_call(grid[:2], block, None, *_typed(args, self.layout, _pycuda_pointer))


class PycudaLSTM(_LSTMCall, _PycudaProvider):
    pass


class PycudaGRU(_GRUCall, _PycudaProvider):
    pass


# -- numba.cuda: the same math in Python ------------------------------------------------------
@functools.lru_cache(maxsize=None)
def numba_cuda_kernels():
    """``(lstm_pointwise_fused, gru_pointwise_fused)`` as ``numba.cuda`` kernels
    (:mod:`fusion.pointwise_numba_cuda`); numba compiles one specialization per argument types
    on first launch.  Under NUMBA_ENABLE_CUDASIM=1 they run in the CUDA simulator
    (tests/cudasim_check.py)."""
    try:
        from . import pointwise_numba_cuda as k
    except ImportError as e:
        raise MissingDependency("numba-cuda", "the numba-cuda backend", "pip install numba-cuda[cu13]") from e
    return k.lstm_pointwise_fused, k.gru_pointwise_fused


def numba_cuda_launch(cell: str, args: tuple, *, stream=0, max_grid_y: int = MAX_GRID_Y, dummy=None):
    """Launch the numba.cuda kernel of ``cell`` on arrays already on the device (or, in the
    simulator, NumPy arrays).  ``args`` is what :func:`_lstm_args` / :func:`_gru_args` return;
    numba reads shapes and strides from the arrays, so only the arrays and bias flags are passed.
    ``dummy`` stands in for an absent bias (numba types each argument, None is not an array).
    """
    lstm_k, gru_k = numba_cuda_kernels()
    gx, gh, bx, bh = args[0], args[3], args[6], args[7]
    B, H = args[-2], args[-1]
    if gx.dtype.name not in ("float32", "float16"):
        raise Unsupported(f"numba-cuda pointwise kernels take float32 and float16, not {gx.dtype}")
    if dummy is None:
        dummy = np.zeros((1, 1), dtype=gx.dtype)
    flags = (dummy if bx is None else bx, bx is not None, dummy if bh is None else bh, bh is not None)
    grid, block = launch_shape(B, H, max_grid_y)
    if cell == "lstm":
        lstm_k[grid, block, stream](gx, gh, *flags, args[8], args[10], args[12])
    else:
        gru_k[grid, block, stream](gx, gh, *flags, args[8], args[10])


class _NumbaCudaProvider:
    def __init__(self):
        self.streams = {}
        self.dummies = {}

    def _launch(self, cell, args):
        import cupy
        from numba import cuda
        ptr = cupy.cuda.get_current_stream().ptr
        stream = self.streams.get(ptr)
        if stream is None:
            stream = self.streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        dt = args[0].dtype
        dummy = self.dummies.get(dt)
        if dummy is None:
            # keep the CuPy array alive beside numba's view of it
            owner = cupy.zeros((1, 1), dtype=dt)
            dummy = self.dummies[dt] = (owner, cuda.as_cuda_array(owner))
        # Converting through __cuda_array_interface__ with sync=False: the kernel runs on the
        # stream CuPy wrote the arrays on, so numba's per-array stream sync is not needed.
        dev = tuple(cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__") else a
                    for a in args)
        numba_cuda_launch(cell, dev, stream=stream, dummy=dummy[1])


class NumbaCudaLSTM(_NumbaCudaProvider):
    def __call__(self, xp, gx, gh, bx, bh, c_prev, h_out, c_out):
        self._launch("lstm", _lstm_args(gx, gh, bx, bh, c_prev, h_out, c_out))
        return h_out, c_out


class NumbaCudaGRU(_NumbaCudaProvider):
    def __call__(self, xp, gx, gh, bx, bh, h_prev, h_out):
        self._launch("gru", _gru_args(gx, gh, bx, bh, h_prev, h_out))
        return (h_out,)


# For fusion.pointwise._PROVIDERS: (cell, provider name) -> provider class.
PROVIDERS = {("lstm", "cupy"): CupyLSTM, ("gru", "cupy"): CupyGRU,
             ("lstm", "pycuda"): PycudaLSTM, ("gru", "pycuda"): PycudaGRU,
             ("lstm", "numba-cuda"): NumbaCudaLSTM, ("gru", "numba-cuda"): NumbaCudaGRU}
