"""Launchers for the GPU kernels that :mod:`fusion.cellexpr` generates from a :class:`~fusion.cellexpr.Cell`.

Two providers with the call of :class:`fusion.cellexpr.NumbaCell`::

    provider(xp, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out) -> (h_out, *states_out)

``gx, gh``: ``(B, G, H)`` gate views (any batch and gate strides, unit stride along H); ``bx, bh``:
contiguous ``(G, H)`` or None; ``h_prev`` and the states: ``(B, H)`` with unit stride along H (a
state may be updated in place: ``states_out[k] is states_prev[k]``); ``params``: contiguous arrays
shaped as the cell declares them.  Arrays are CuPy arrays (``xp`` is cupy); the kernel runs on
CuPy's current stream.

- :class:`CupyCell`: :func:`fusion.cellexpr.cuda_source` compiled by NVRTC through
  ``cupy.RawModule`` by :func:`kernels.cudasrc.function` (which inlines ``kernels/cuda/mb_device.cuh``
  and passes the ``-I`` folders that hold ``cuda_fp16.h``/``cuda_bf16.h`` under CUDA 13).  One
  NVRTC run per cell and device builds the module holding the f32/f16/bf16 entries; the entry of a
  storage type is looked up once.  A compile error raises
  :class:`~kernels.errors.KernelCompileError` with NVRTC's log.
- :class:`NumbaCudaCell`: :func:`fusion.cellexpr.numba_cuda_kernel`, CuPy arrays passed through
  ``__cuda_array_interface__``, launched on an external stream wrapping CuPy's current one.  Under
  the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) it also takes NumPy arrays (wrapped as the
  simulator's device arrays, views kept as they are), which is how the CPU tests run it.

Launch geometry (:func:`cuda_launch` and :func:`numba_cuda_launch`, plain functions of the cell,
B and H, checked on the CPU by tests/test_custom_cells_gpu.py):

- CUDA C, cell without ``rowsum``: one thread per unit, x along H (H rounded up to warps, at most
  ``CUDA_THREADS``), y along B (rows packed so a small H fills the block), grid-stride over B;
  the mapping of ``kernels/cuda/rnn_pointwise.cu``.  No shared memory.
- CUDA C, cell with ``rowsum``: one block per batch row (grid-stride over B when B exceeds the
  grid limit), ``blockDim.x`` = H rounded up to warps, at most ``CUDA_THREADS`` (threads stride
  over H).  Each reduction is a warp-shuffle sum, then one warp over the per-warp sums: the
  kernel's static ``__shared__ float sh[33]`` holds up to 32 warp sums and the total (132 bytes).
- numba.cuda, every cell: one block per batch row, ``blockDim.x`` = the power of two at or above
  min(H, ``NUMBA_CUDA_THREADS``), a shared-memory tree reduction over a static
  ``cuda.shared.array(NUMBA_CUDA_THREADS, float32)`` (1024 bytes).

No dynamic shared memory is requested by either kernel (``shared_mem`` is 0 in every launch).
Nothing here imports CuPy or numba at import time.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from kernels import cudasrc
from kernels.errors import BadInput, MissingDependency, Unsupported

from . import cellexpr as ce

MAX_GRID = 65535          # gridDim.y limit (no-reduction kernel); gridDim.x is kept under it too
CUDA_SHARED_FLOATS = 33   # __shared__ float sh[33] in the generated CUDA C (see _CUDA_PRELUDE)


@dataclass(frozen=True)
class Launch:
    """One launch's geometry: ``grid``, ``block`` (3-tuples), ``shared_mem`` (dynamic bytes
    requested at launch), ``static_shared`` (bytes the kernel declares), ``per_row`` (one block per
    batch row, a block-wide reduction)."""

    grid: tuple
    block: tuple
    shared_mem: int
    static_shared: int
    per_row: bool

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


def cuda_launch(cell: ce.Cell, B: int, H: int, max_grid: int = MAX_GRID) -> Launch:
    """Geometry of the generated CUDA C kernel (what :class:`CupyCell` launches)."""
    if B < 1 or H < 1:
        raise BadInput(f"B={B}, H={H}: both must be >= 1")
    grid, block = ce.cuda_launch_shape(cell, B, H, max_grid)
    red = cell.has_reductions
    return Launch(tuple(grid), tuple(block), 0, 4 * CUDA_SHARED_FLOATS if red else 0, red)


def numba_cuda_launch(B: int, H: int, max_grid: int = MAX_GRID) -> Launch:
    """Geometry of the generated numba.cuda kernel (what :class:`NumbaCudaCell` launches)."""
    if B < 1 or H < 1:
        raise BadInput(f"B={B}, H={H}: both must be >= 1")
    grid, block = ce.numba_cuda_launch_shape(B, H, max_grid)
    return Launch(tuple(grid), tuple(block), 0, 4 * ce.NUMBA_CUDA_THREADS, True)


# -- argument checks (shared by both providers) ---------------------------------------------------
def _strides(a, name: str, shape: tuple, dtype) -> tuple:
    if tuple(a.shape) != shape:
        raise BadInput(f"{name} has shape {tuple(a.shape)}; expected {shape}")
    if a.dtype != dtype:
        raise BadInput(f"{name} is {a.dtype}; expected {dtype} like gx")
    st = tuple(s // a.itemsize for s in a.strides)
    if shape[-1] > 1 and st[-1] != 1:
        raise BadInput(f"{name} must have unit stride along H (strides {st} elements)")
    return st


def _contiguous(a, name: str, shape: tuple, dtype):
    if a is None:
        return None
    if tuple(a.shape) != shape or a.dtype != dtype or not a.flags.c_contiguous:
        raise BadInput(f"{name} must be a contiguous {shape} {dtype} array; got {tuple(a.shape)} {a.dtype}"
                       f"{'' if a.flags.c_contiguous else ' non-contiguous'}")
    return a


def check_args(cell: ce.Cell, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out) -> dict:
    """Shapes, dtypes and strides of one call; returns ``B, H, dtype`` and the element strides."""
    if gx.ndim != 3 or gx.shape[1] != cell.num_gates:
        raise BadInput(f"gx has shape {tuple(gx.shape)}; expected (B, {cell.num_gates}, H) for cell {cell.name}")
    B, G, H = gx.shape
    dt = gx.dtype
    if dt.name not in ce.SUFFIX:
        raise Unsupported(f"the generated GPU kernels take {', '.join(ce.SUFFIX)}, not {dt}")
    n_s = len(cell.states)
    if len(states_prev) != n_s or len(states_out) != n_s:
        raise BadInput(f"cell {cell.name} has {n_s} state(s) besides h ({', '.join(cell.states) or 'none'}); "
                       f"got {len(states_prev)} previous and {len(states_out)} output arrays")
    if len(params) != len(cell.params):
        raise BadInput(f"cell {cell.name} takes parameters {[p for p, _ in cell.params]}; got {len(params)} arrays")
    st = {"gx": _strides(gx, "gx", (B, G, H), dt), "gh": _strides(gh, "gh", (B, G, H), dt),
          "h_prev": _strides(h_prev, "h_prev", (B, H), dt), "h_out": _strides(h_out, "h_out", (B, H), dt)}
    for s, a, o in zip(cell.states, states_prev, states_out):
        st[f"{s}_prev"] = _strides(a, f"{s}_prev", (B, H), dt)
        st[f"{s}_out"] = _strides(o, f"{s}_out", (B, H), dt)
    _contiguous(bx, "bx", (G, H), dt)
    _contiguous(bh, "bh", (G, H), dt)
    for (p, _), a in zip(cell.params, params):
        _contiguous(a, p, cell.param_shape(p, H), dt)
    return {"B": B, "H": H, "dtype": dt, "strides": st}


def cuda_args(cell: ce.Cell, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out, *,
              null=0) -> tuple:
    """The CUDA C kernel's arguments in its order (see :func:`fusion.cellexpr.cuda_source`), scalars
    typed as declared (``long long`` strides -> int64, ``int B, H`` -> int32); arrays stay arrays,
    an absent bias is ``null`` (CuPy takes ``np.uint64(0)`` for a null pointer)."""
    info = check_args(cell, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out)
    st, q = info["strides"], np.int64
    out = [gx, q(st["gx"][0]), q(st["gx"][1]), gh, q(st["gh"][0]), q(st["gh"][1]),
           null if bx is None else bx, null if bh is None else bh, h_prev, q(st["h_prev"][0])]
    for s, a, o in zip(cell.states, states_prev, states_out):
        out += [a, q(st[f"{s}_prev"][0]), o, q(st[f"{s}_out"][0])]
    out += list(params)
    out += [h_out, q(st["h_out"][0]), np.int32(info["B"]), np.int32(info["H"])]
    return tuple(out)


# -- CuPy: RawModule --------------------------------------------------------------------------------
def module_source(cell: ce.Cell) -> str:
    """The CUDA C the launcher compiles for ``cell`` (prelude included)."""
    return ce.cuda_source(cell)


@functools.lru_cache(maxsize=None)
def cupy_function(cell: ce.Cell, dtype_name: str, device: int):
    """The compiled entry of ``cell`` for a storage type, on ``device`` (one NVRTC run per cell and
    device builds the module of all storage types)."""
    return cudasrc.function(module_source(cell), ce.cuda_symbol(cell, dtype_name), device,
                            name=f"the generated kernel of cell {cell.name}", filename=f"{cell.name}_cell.cu")


class CupyCell:
    """The generated CUDA C kernel of ``cell``, launched with CuPy (see the module doc)."""

    def __init__(self, cell: ce.Cell, max_grid: int = MAX_GRID):
        self.cell, self.max_grid = cell, max_grid
        self.kernels = {}

    def __call__(self, xp, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out):
        import cupy
        args = cuda_args(self.cell, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out,
                         null=np.uint64(0))
        key = gx.dtype.name
        k = self.kernels.get(key)
        if k is None:
            k = self.kernels[key] = cupy_function(self.cell, key, cupy.cuda.runtime.getDevice())
        lc = cuda_launch(self.cell, gx.shape[0], gx.shape[2], self.max_grid)
        k(lc.grid, lc.block, args, shared_mem=lc.shared_mem)   # CuPy's current stream
        return (h_out, *states_out)


# -- numba.cuda ---------------------------------------------------------------------------------------
def simulator_active() -> bool:
    """Whether numba's CUDA simulator is on in this process (NUMBA_ENABLE_CUDASIM=1 before numba
    was imported); then :class:`NumbaCudaCell` takes NumPy arrays."""
    try:
        from numba import config
    except ImportError:
        return False
    return bool(getattr(config, "ENABLE_CUDASIM", os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"))


class NumbaCudaCell:
    """The generated numba.cuda kernel of ``cell`` (see the module doc).  Absent biases become
    zero arrays (the kernel indexes them unconditionally)."""

    def __init__(self, cell: ce.Cell, max_grid: int = MAX_GRID):
        self.cell, self.max_grid = cell, max_grid
        self.streams, self.zeros = {}, {}

    def _kernel(self):
        try:
            return ce.numba_cuda_kernel(self.cell)
        except ImportError as e:  # pragma: no cover - numba_cuda_kernel maps the usual case
            raise MissingDependency("numba-cuda", "generated numba.cuda kernels", "pip install numba-cuda[cu13]") from e

    def __call__(self, xp, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out):
        info = check_args(self.cell, gx, gh, bx, bh, h_prev, states_prev, params, h_out, states_out)
        B, H, dt = info["B"], info["H"], info["dtype"]
        if dt.name not in ("float32", "float16"):
            raise Unsupported(f"numba.cuda kernels take float32 and float16, not {dt}")
        on_gpu = hasattr(gx, "__cuda_array_interface__")
        if on_gpu:
            import cupy
            from numba import cuda
            ptr = cupy.cuda.get_current_stream().ptr
            stream = self.streams.get(ptr)
            if stream is None:
                stream = self.streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()

            def dev(a):
                # sync=False: the kernel runs on the stream CuPy wrote the arrays on
                return cuda.as_cuda_array(a, sync=False)
            zeros_of = lambda shape: cupy.zeros(shape, dt)  # noqa: E731
        elif simulator_active():
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
            stream = 0

            def dev(a):
                # wrap the view as it is: a plain NumPy argument would be copied to a contiguous
                # "device" buffer, and the outputs would never come back
                return FakeCUDAArray(a)
            zeros_of = lambda shape: np.zeros(shape, dt)  # noqa: E731
        else:
            raise BadInput("NumbaCudaCell takes device arrays (CuPy); NumPy arrays only under the CUDA "
                           "simulator (NUMBA_ENABLE_CUDASIM=1)")
        if bx is None or bh is None:
            zkey = (on_gpu, dt.name, gx.shape[1], H)
            z = self.zeros.get(zkey)
            if z is None:
                z = self.zeros[zkey] = zeros_of((gx.shape[1], H))   # kept alive beside numba's view
            bx = z if bx is None else bx
            bh = z if bh is None else bh
        args = [gx, gh, bx, bh, h_prev]
        for a, o in zip(states_prev, states_out):
            args += [a, o]
        args += list(params) + [h_out]
        lc = numba_cuda_launch(B, H, self.max_grid)
        kernel = self._kernel()
        kernel[lc.grid, lc.block, stream](*(dev(a) for a in args))
        return (h_out, *states_out)


PROVIDERS = {"cupy": CupyCell, "numba-cuda": NumbaCudaCell}


def provider(cell: ce.Cell, backend: str, **kw):
    """A launcher of ``cell`` for a GPU backend name (``cupy`` or ``numba-cuda``)."""
    try:
        return PROVIDERS[backend](cell, **kw)
    except KeyError:
        raise Unsupported(f"no generated-kernel launcher for backend {backend!r}; have: "
                          f"{', '.join(PROVIDERS)}") from None


def coverage(launch: Launch, B: int, H: int):
    """Emulates the kernels' index mapping on the CPU: a ``(B, H)`` array counting how many times
    each unit is written (every entry must be 1).  Both mappings are separable (a thread's rows
    depend on its y/block index, its units on its x index), so the count is an outer product.

    ``launch.per_row``: block ``k`` handles rows ``k, k + gridDim.x, ...``, thread ``t`` units
    ``t, t + blockDim.x, ...`` (both reduction kernels); otherwise unit
    ``j = blockIdx.x * blockDim.x + threadIdx.x`` (if ``j < H``), rows from
    ``blockIdx.y * blockDim.y + threadIdx.y`` in steps of ``gridDim.y * blockDim.y``."""
    (gx_, gy_, _), (bx_, by_, _) = launch.grid, launch.block
    if launch.per_row:
        rows = [np.arange(k, B, gx_) for k in range(gx_)] if gy_ == 1 and by_ == 1 else None
        if rows is None:
            raise BadInput(f"a per-row launch has grid.y = block.y = 1; got {launch}")
        cols = [np.arange(t, H, bx_) for t in range(bx_)]
    else:
        rows = [np.arange(k * by_ + t, B, gy_ * by_) for k in range(gy_) for t in range(by_)]
        j = np.arange(gx_ * bx_)
        cols = [j[j < H]]
    row_hits = np.bincount(np.concatenate(rows), minlength=B)[:B]
    col_hits = np.bincount(np.concatenate(cols), minlength=H)[:H]
    return np.outer(row_hits, col_hits)
