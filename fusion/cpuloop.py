"""The CPU step loop compiled: one native call runs every step of a layer.

With ``pretranspose`` (oneDNN packed GEMMs) and ``fuse_pointwise`` on the numba backend, a step is
two native calls: the recurrent GEMM (one packed oneDNN primitive, ``inner_product`` or
``matmul``, whichever :func:`fusion.gemm.find_fastest` kept) and the fused cell kernel.  Issued from Python, each step also pays the interpreter: the loop, the projection's
argument checks, two ctypes calls, the kernel's dispatch.  At small shapes (one step's GEMM is
8 MFLOP at H=256, B=16, about 100 us) that is a large share of the step.  Here the loop itself is
compiled by numba: it calls oneDNN's C API directly (``dnnl_memory_set_data_handle`` to point the
primitive's source at h_{t-1}, ``dnnl_primitive_execute``, ``dnnl_stream_wait``) and then the cell
kernel, T times, without returning to Python: the CPU's counterpart of replaying a CUDA graph.

Used by :class:`kernels.rnn.RNN` when it applies (:func:`applies`); the numbers are the same as the
Python loop's (the same primitive, the same kernel, in the same order: tests/test_cpuloop.py).
The cell kernel runs serially below ``PARALLEL_MIN_UNITS`` units, as in the Python loop, and as
numba's parallel kernel above it.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from kernels.errors import BadInput
from . import pointwise as fpw

# Cells with a hand-written numba kernel the loop can call (the pointwise module's kernels).
CELLS = ("lstm", "gru", "rnn_relu", "rnn_tanh")
# The oneDNN calls of one step, in order (a failing status names its call).
CALLS = ("dnnl_memory_set_data_handle", "dnnl_primitive_execute", "dnnl_stream_wait")


def applies(plan, backend: str, cell_mode: str, generated: bool, provider: str) -> bool:
    """True when a layer's steps can run as one compiled call: numba's hand-written fused kernel,
    the oneDNN packed GEMM, the grouped layout (one GEMM per step) and a hoisted or given input."""
    return (backend == "numba" and not generated and cell_mode in CELLS and provider == "onednn"
            and all(s in plan for s in ("group_gemm", "hoist_input", "pretranspose", "fuse_pointwise"))
            and "streams" not in plan and "wavefront" not in plan)


def _u64_fn(lib, name: str, nargs: int, int_at: tuple = ()):
    """A ctypes function over oneDNN's ``name`` whose pointer arguments are typed as 64-bit
    integers (the same ABI on x86-64), so numba's nopython mode can pass addresses it computed."""
    addr = ctypes.cast(lib.fn(name), ctypes.c_void_p).value
    args = [ctypes.c_int if i in int_at else ctypes.c_uint64 for i in range(nargs)]
    return ctypes.CFUNCTYPE(ctypes.c_int, *args)(addr)


@functools.lru_cache(maxsize=None)
def _loops(lib_path: str, dtype_name: str, cell_mode: str):
    """(serial-kernel loop, parallel-kernel loop) for one library, dtype and cell, compiled once."""
    import numba

    from kernels.onednn import lib as L
    lib = L.load()
    if lib.path != lib_path:      # pragma: no cover - one library per process
        raise BadInput(f"oneDNN was loaded from {lib.path}, not {lib_path}")
    set_handle = _u64_fn(lib, "dnnl_memory_set_data_handle", 2)
    execute = _u64_fn(lib, "dnnl_primitive_execute", 4, int_at=(2,))
    wait = _u64_fn(lib, "dnnl_stream_wait", 1)
    if cell_mode == "lstm":
        par = fpw._numba_kernels(dtype_name)[0]
    elif cell_mode == "gru":
        par = fpw._numba_kernels(dtype_name)[1]
    else:
        par = fpw._numba_rnn_kernel(dtype_name, cell_mode.split("_")[1])
    ser = fpw.serial(par)
    return tuple(_compile(kernel, cell_mode, set_handle, execute, wait) for kernel in (ser, par))


def _compile(kernel, cell_mode: str, set_handle, execute, wait):
    """The loop for one cell kernel.  ``b1``/``b2``/``has_b``: the biases the kernel adds (the
    GRU's input bias and its recurrent bias, else one combined bias); ``c``: the LSTM's cell
    state, updated in place (unused otherwise).  Returns (step, oneDNN status, which call: an
    index into :data:`CALLS`); status 0 when every step ran."""
    import numba

    if cell_mode == "lstm":
        @numba.njit(inline="always")
        def cell(x, r, b1, b2, has_b, c, hp, h):
            kernel(x, r, b1, has_b, c, h)
    elif cell_mode == "gru":
        @numba.njit(inline="always")
        def cell(x, r, b1, b2, has_b, c, hp, h):
            kernel(x, r, b1, has_b, b2, hp, h)
    else:
        @numba.njit(inline="always")
        def cell(x, r, b1, b2, has_b, c, hp, h):
            kernel(x, r, b1, has_b, h)

    @numba.njit
    def loop(prim, stream, args, nargs, src_mem, h0, y, gx, gh, b1, b2, has_b, c, t0, t1):
        B, H = h0.shape
        G = gh.shape[1] // H
        r = gh.reshape((B, G, H))
        for t in range(t0, t1):
            hp = h0 if t == 0 else y[t - 1]
            st = set_handle(src_mem, hp.ctypes.data)
            if st != 0:
                return t, st, 0
            st = execute(prim, stream, nargs, args)
            if st != 0:
                return t, st, 1
            st = wait(stream)
            if st != 0:
                return t, st, 2
            cell(gx[t * B:(t + 1) * B].reshape((B, G, H)), r, b1, b2, has_b, c, hp, y[t])
        return t1, 0, 0
    return loop


class StepLoop:
    """One layer's compiled recurrent loop over the packed GEMM ``gemm`` (M = B rows: a
    :mod:`kernels.onednn.matmul` primitive, inner product or matmul) and the cell's fused kernel."""

    def __init__(self, gemm, cell_mode: str, dtype):
        if cell_mode not in CELLS:
            raise BadInput(f"the compiled step loop runs cells {', '.join(CELLS)}, not {cell_mode!r}")
        self.gemm, self.cell_mode = gemm, cell_mode
        self.dtype_name = np.dtype(dtype).name
        self._loops = _loops(gemm.lib.path, self.dtype_name, cell_mode)
        step = gemm._step
        self._handles = (step._prim.value, gemm.ctx.stream.value, ctypes.addressof(step._args),
                         step._n, gemm._src.value)

    def __call__(self, h0, y, gx, gh, bx, bh, c, t0: int, t1: int) -> None:
        """Steps t0..t1: y[t] (and c, in place) from gx rows t*B.. (the hoisted input projection,
        biases folded or in ``bx``), h_{t-1} (h0 at t=0) through the packed GEMM into ``gh``."""
        import numba
        from kernels.onednn import errors as derr
        g = self.gemm
        if g.scope.closed:
            raise BadInput(f"this oneDNN {g.kind} was closed; build a new one")
        B, H = h0.shape
        for name, a, shape in (("h0", h0, (B, H)), ("y", y, (y.shape[0], B, H)),
                               ("gh", gh, (B, g.n)), ("gx", gx, (gx.shape[0], g.n))):
            g._check(name, a, shape)
        if not 0 <= t0 <= t1 or gx.shape[0] < t1 * B or y.shape[0] < t1 or g.m != B or g.k != H:
            raise BadInput(f"step loop shapes disagree: gx {gx.shape}, y {y.shape}, steps {t0}..{t1}, "
                           f"GEMM {g.m}x{g.k}x{g.n}")
        # numba does not check bounds: the state and the biases are read (and c written) B x H and
        # G x H at a time, so a wrong shape would reach memory the arrays do not own
        G = g.n // H
        if self.cell_mode == "lstm":
            if c is None:
                raise BadInput("an LSTM's compiled step loop needs its cell state c; got None")
            g._check("c", c, (B, H))
        for name, b in (("bx", bx), ("bh", bh)):
            if b is not None:
                g._check(name, b, (G, H))
        if self.cell_mode == "gru" and bh is None:
            raise BadInput("a GRU's compiled step loop needs its recurrent bias bh (b_hn sits inside r * (...))")
        g._point(1, g._dst, gh.ctypes.data)          # every step writes the same gh buffer
        empty = fpw._EMPTY[self.dtype_name]
        if self.cell_mode == "gru":
            b1, b2, has_b = (bx if bx is not None else empty), bh, bx is not None
        else:
            b = bx if bx is not None else bh
            b1, b2, has_b = (b if b is not None else empty), empty, b is not None
        state = c if c is not None else empty
        units = B * H
        par = numba.get_num_threads() > 1 and units >= fpw.PARALLEL_MIN_UNITS
        loop = self._loops[1 if par else 0]
        prim, stream, args, nargs, src = self._handles
        g._ptrs[0] = None                            # the loop moves the source: re-point next time
        t, status, call = loop(prim, stream, args, nargs, src, h0, y, gx, gh, b1, b2, has_b, state, t0, t1)
        if status:
            derr.check(f"the compiled step loop at step {t} ({CALLS[call]})", status)
