"""The CPU step loop compiled: one native call runs every step of a layer.

With ``pretranspose`` (oneDNN packed GEMMs) and ``fuse_pointwise`` on the numba backend, a step is
two native calls: the recurrent GEMM (one packed oneDNN primitive, ``inner_product`` or
``matmul``, whichever :func:`fusion.gemm.find_fastest` kept) and the fused cell kernel.  Issued from Python, each step also pays the interpreter: the loop, the projection's
argument checks, two ctypes calls, the kernel's dispatch.  At small shapes (one step's GEMM is
8 MFLOP at H=256, B=16, about 100 us) that is a large share of the step.  Here the loop itself is
compiled by numba: it calls oneDNN's C API directly (``dnnl_memory_set_data_handle`` to point the
primitive's source at h_{t-1}, ``dnnl_primitive_execute``, ``dnnl_stream_wait``) and then the cell
kernel, T times, without returning to Python: the CPU's counterpart of replaying a CUDA graph.

Used by :class:`kernels.recurrent.RNN` under the ``graph`` step when it applies (:func:`why_not`).  :class:`StepLoop` issues every
step from one thread: its numbers are the same as the Python loop's (the same primitive, the same
kernel, in the same order: tests/test_cpuloop.py), and its cell kernel runs serially below
``PARALLEL_MIN_UNITS`` units, as in the Python loop, and as numba's parallel kernel above it.
:class:`TeamLoop` runs a layer's steps on a team of threads (below); its numbers differ from the
Python loop's by the rounding of its per-thread GEMMs only.
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


def why_not(plan, backend: str, cell_mode: str, generated: bool, provider: str) -> str | None:
    """None when a layer's steps run as one compiled call (the CPU's ``graph`` step): numba's
    hand-written fused kernel, the oneDNN packed GEMM, the grouped layout (one GEMM per step) and
    a hoisted or given input; else why they run as a Python loop."""
    if "graph" not in plan:
        return "the plan has no graph step"
    need = [s for s in ("group_gemm", "hoist_input", "pretranspose", "fuse_pointwise") if s not in plan]
    if need:
        return f"the compiled step loop needs step {', '.join(need)} too"
    if "streams" in plan or "wavefront" in plan:     # GPU steps, run serially on NumPy in tests
        return "the compiled step loop runs a layer's steps in order, not split by streams or wavefront"
    if backend != "numba" or generated or cell_mode not in CELLS:
        return "the compiled step loop runs numba's hand-written kernels of " + ", ".join(CELLS)
    if provider != "onednn":
        return "the compiled step loop calls oneDNN's packed GEMMs, and this plan's GEMMs are BLAS's"
    return None


@functools.lru_cache(maxsize=None)
def _step_calls(lib_path: str) -> tuple:
    """The addresses of the oneDNN calls of one step (:data:`CALLS`), which the compiled loops
    call by address (fusion/native.py: an address is an argument, so the loops stay cached)."""
    from kernels.onednn import lib as L
    lib = L.load()
    if lib.path != lib_path:      # pragma: no cover - one library per process
        raise BadInput(f"oneDNN was loaded from {lib.path}, not {lib_path}")
    return tuple(ctypes.cast(lib.fn(name), ctypes.c_void_p).value for name in CALLS)


def _check(name: str, a, shape: tuple, dtype) -> None:
    if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
        raise BadInput(f"{name} must be a C-contiguous {np.dtype(dtype).name} array of shape {shape}; got "
                       f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}")


def _loop_args(cell_mode: str, dtype, G: int, h0, y, gx, bx, bh, c, t0: int, t1: int) -> tuple:
    """Check what a compiled loop reads and writes and return the cell's (b1, b2, has_b, c).
    numba does not check bounds: the state and the biases are read (and c written) B x H and
    G x H at a time, so a wrong shape would reach memory the arrays do not own."""
    B, H = h0.shape
    for name, a, shape in (("h0", h0, (B, H)), ("y", y, (y.shape[0], B, H)), ("gx", gx, (gx.shape[0], G * H))):
        _check(name, a, shape, dtype)
    if not 0 <= t0 <= t1 or gx.shape[0] < t1 * B or y.shape[0] < t1:
        raise BadInput(f"step loop shapes disagree: gx {gx.shape}, y {y.shape}, steps {t0}..{t1}, B={B}, H={H}")
    if cell_mode == "lstm":
        if c is None:
            raise BadInput("an LSTM's compiled step loop needs its cell state c; got None")
        _check("c", c, (B, H), dtype)
    for name, b in (("bx", bx), ("bh", bh)):
        if b is not None:
            _check(name, b, (G, H), dtype)
    if cell_mode == "gru" and bh is None:
        raise BadInput("a GRU's compiled step loop needs its recurrent bias bh (b_hn sits inside r * (...))")
    name = np.dtype(dtype).name
    b1, b2, has_b = fpw.kernel_biases(cell_mode.split("_")[0], bx, bh, name)
    return b1, b2, has_b, (c if c is not None else fpw._EMPTY[name])


class StepLoop:
    """One layer's compiled recurrent loop over the packed GEMM ``gemm`` (M = B rows: a
    :mod:`kernels.onednn.matmul` primitive, inner product or matmul) and the cell's fused kernel."""

    def __init__(self, gemm, cell_mode: str, dtype):
        if cell_mode not in CELLS:
            raise BadInput(f"the compiled step loop runs cells {', '.join(CELLS)}, not {cell_mode!r}")
        self.gemm, self.cell_mode = gemm, cell_mode
        self.dtype_name = np.dtype(dtype).name
        self._calls = _step_calls(gemm.lib.path)
        step = gemm._step
        self._handles = (step._prim.value, gemm.ctx.stream.value, ctypes.addressof(step._args),
                         step._n, gemm._src.value)

    @property
    def closed(self) -> bool:
        return self.gemm.scope.closed

    def __call__(self, h0, y, gx, gh, bx, bh, c, t0: int, t1: int) -> None:
        """Steps t0..t1: y[t] (and c, in place) from gx rows t*B.. (the hoisted input projection,
        biases folded or in ``bx``), h_{t-1} (h0 at t=0) through the packed GEMM into ``gh``."""
        import numba
        from kernels.onednn import errors as derr
        g = self.gemm
        if g.scope.closed:
            raise BadInput(f"this oneDNN {g.kind} was closed; build a new one")
        B, H = h0.shape
        if g.m != B or g.k != H:
            raise BadInput(f"step loop shapes disagree: h0 {h0.shape}, GEMM {g.m}x{g.k}x{g.n}")
        b1, b2, has_b, state = _loop_args(self.cell_mode, g.dtype, g.n // H, h0, y, gx, bx, bh, c, t0, t1)
        g._check("gh", gh, (B, g.n))
        g._point(1, g._dst, gh.ctypes.data)          # every step writes the same gh buffer
        from .cpuloop_numba import CELL, step_loop
        par = numba.get_num_threads() > 1 and B * H >= fpw.PARALLEL_MIN_UNITS
        prim, stream, args, nargs, src = self._handles
        g._ptrs[0] = None                            # the loop moves the source: re-point next time
        bits = fpw.bits         # bf16 storage as its uint16 bits (numba has no bf16 type)
        t, status, call = step_loop(CELL[self.cell_mode], par, self._calls, prim, stream, args, nargs, src,
                                    bits(h0), bits(y), bits(gx), bits(gh), bits(b1), bits(b2), has_b,
                                    bits(state), t0, t1)
        if status:
            derr.check(f"the compiled step loop at step {t} ({CALLS[call]})", status)


# -- one thread team over all steps -------------------------------------------------------------
# With several threads, the StepLoop's primitive opens an OpenMP parallel region per step (and
# under OMP_WAIT_POLICY=PASSIVE wakes the other threads from sleep every time), while oneDNN's
# own RNN primitive keeps its threads in one region over all steps.  The TeamLoop does the same:
# numba's OpenMP layer starts one team of n threads for the whole layer; thread p owns hidden
# units j0..j1 of every gate: a packed GEMM on its columns of W_hh (built for one thread, so
# oneDNN runs it inside the team without a nested region: oneDNN runs single-threaded when
# omp_in_parallel()), then the fused kernel on its units, then a spinning barrier (fusion/spin.py)
# before the next step reads the whole h_t.  Shares are whole multiples of 16 units (64 bytes)
# where H allows, so neighbouring threads do not write the same cache lines of h and c.

TEAM_MIN_UNITS = 8      # hidden units per thread below which the team is not formed


def _address(handle, name: str) -> int | None:
    try:
        return ctypes.cast(getattr(handle, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _bound(lib_path: str, name: str) -> int | None:
    """The address a library's calls of C function ``name`` bind to, as the dynamic linker binds
    them at load: the global scope first (the program and every library loaded RTLD_GLOBAL, as
    PyTorch loads its bundled libgomp), then the library and its dependencies.  A library loaded
    before such a global one bound to its own dependency: then this answer differs, and the team
    is refused where it might have run (never the other way round)."""
    return _address(ctypes.CDLL(None), name) or _address(ctypes.CDLL(lib_path), name)


def _numba_runtime(paths: list) -> tuple:
    """(path, its omp_get_level address) of the loaded OpenMP runtime numba's threads run in: the
    one whose ``omp_get_level()`` reads 1 inside a numba parallel region (there may be two libgomp
    copies loaded, PyTorch's bundled one and the system's; numba's calls bind to one of them);
    (None, None) when none does."""
    from .cpuloop_numba import level_in_region
    for path in paths:
        own = _address(ctypes.CDLL(path), "omp_get_level")
        if not own:
            continue
        out = np.zeros(2, np.int64)
        level_in_region(own, out)
        if (out >= 1).all():
            return path, own
    return None, None


@functools.lru_cache(maxsize=1)
def _gomp():
    """(runtime path, reason): the OpenMP runtime numba's team runs in, when oneDNN's ``omp_*``
    calls bind to the same one (then oneDNN sees ``omp_in_parallel()`` inside the team and runs
    each thread's GEMM on that thread); reason says why not, else the path is set.  Counting the
    loaded runtimes is not enough: a process that imported PyTorch first has its bundled libgomp
    in the global scope and numba's system libgomp beside it, and both numba and oneDNN bind to
    PyTorch's copy."""
    import numba
    from threadpoolctl import threadpool_info

    from kernels.onednn import lib as L

    from .cpuloop_numba import touch
    touch(np.zeros(2))                  # starts numba's thread pool, so its layer is known
    layer = numba.threading_layer()
    if layer != "omp":
        return None, f"numba's threading layer is {layer}, not omp (NUMBA_THREADING_LAYER=omp)"
    paths = [p["filepath"] for p in threadpool_info() if p["user_api"] == "openmp"]
    mine, level = _numba_runtime(paths)
    if mine is None:
        return None, f"numba's threads are in none of the OpenMP runtimes loaded ({paths or 'none'})"
    if _bound(L.load().path, "omp_get_level") != level:
        return None, (f"oneDNN's OpenMP calls bind to another runtime than numba's ({mine}): "
                      f"oneDNN would not see the team")
    return mine, None


def team_reason(H: int, threads: int) -> str | None:
    """None when a layer of H hidden units runs its steps as one team of ``threads`` threads,
    else why not."""
    import numba

    from kernels.onednn import lib as L
    if threads < 2:
        return "one thread"
    if H // threads < TEAM_MIN_UNITS:
        return f"H={H} gives fewer than {TEAM_MIN_UNITS} units to each of {threads} threads"
    if numba.config.NUMBA_NUM_THREADS < threads:
        return f"numba has {numba.config.NUMBA_NUM_THREADS} threads"
    runtime = L.load().version_info["cpu_runtime"]
    if runtime != "OpenMP":     # a TBB build would not see the team and fan out on every thread
        return f"oneDNN was built for {runtime} threading, not OpenMP"
    return _gomp()[1]


@functools.lru_cache(maxsize=None)
def _team_calls(lib_path: str, gomp_path: str) -> tuple:
    """The addresses the team loop calls (fusion.cpuloop_numba.team_loop): oneDNN's step calls,
    the team's runtime's omp_get_num_threads, and sched_yield for the barrier."""
    from .spin import sched_yield_address
    size = ctypes.cast(ctypes.CDLL(gomp_path).omp_get_num_threads, ctypes.c_void_p).value
    return _step_calls(lib_path) + (size, sched_yield_address())


def shares(H: int, threads: int) -> np.ndarray:
    """The first unit of each thread's share, and H: equal shares, each boundary a multiple of
    16 units when every share then still has at least 64."""
    align = 16 if H // threads >= 64 else 1
    return np.array([min(H, round(H * p / threads / align) * align) for p in range(threads)] + [H], np.int64)


class TeamLoop:
    """One layer's steps on a team of ``threads`` threads (see the comment above
    :data:`TEAM_MIN_UNITS`).  ``w`` is W_hh pretransposed and grouped, ``(H, G*H)``; ``packer``
    the GEMM provider's (:func:`fusion.gemm.provider_for`), called once per thread's columns
    while oneDNN is limited to one thread."""

    def __init__(self, w, B: int, cell_mode: str, dtype, threads: int, packer):
        from threadpoolctl import threadpool_limits

        from kernels.onednn import lib as L
        if cell_mode not in CELLS:
            raise BadInput(f"the compiled step loop runs cells {', '.join(CELLS)}, not {cell_mode!r}")
        H = w.shape[0]
        why = team_reason(H, threads)
        if why:
            raise BadInput(f"a step-loop team of {threads} threads cannot run here: {why}")
        G = w.shape[1] // H
        self.cell_mode, self.dtype, self.threads, self.B, self.H, self.G = (
            cell_mode, np.dtype(dtype), threads, B, H, G)
        self.bounds = shares(H, threads)
        self.stride = -(-B * G * int(np.diff(self.bounds).max()) // 16) * 16     # 64-byte aligned
        self.gh = np.zeros(threads * self.stride, self.dtype)      # each thread's GEMM output
        cols = w.reshape(H, G, H)
        self.gemms = []
        try:
            with threadpool_limits(limits=1, user_api="openmp"):
                for p in range(threads):
                    j0, j1 = self.bounds[p], self.bounds[p + 1]
                    mat = np.ascontiguousarray(cols[:, :, j0:j1].reshape(H, G * (j1 - j0)))
                    self.gemms.append(packer(mat, B))
            for p, g in enumerate(self.gemms):
                g._point(1, g._dst, self.gh[p * self.stride:].ctypes.data)
            self._calls = _team_calls(L.load().path, _gomp()[0])
        except BaseException:
            self.close()
            raise
        u64 = lambda f: np.array([f(g) for g in self.gemms], np.uint64)      # noqa: E731
        self._handles = (u64(lambda g: g._step._prim.value), u64(lambda g: g.ctx.stream.value),
                         u64(lambda g: ctypes.addressof(g._step._args)),
                         np.array([g._step._n for g in self.gemms], np.int64), u64(lambda g: g._src.value))
        self.runs = 0               # calls the team ran (a call it handed back does not count)

    @property
    def closed(self) -> bool:
        return any(g.scope.closed for g in self.gemms)

    def close(self) -> None:
        for g in self.gemms:
            g.close()

    def info(self) -> dict:
        """Per thread: its units and its GEMM (each thread's was found on its own shape)."""
        return {"threads": self.threads, "units": np.diff(self.bounds).tolist(),
                "gemms": [g.info() for g in self.gemms]}

    def __call__(self, h0, y, gx, bx, bh, c, t0: int, t1: int) -> bool:
        """Steps t0..t1 as :meth:`StepLoop.__call__` (no gh: each thread has its own).  False when
        the team was not one thread per share (nothing ran: the caller runs the steps another
        way): numba set to another thread count than the team was built for, a parallel chunk
        size set (numba's scheduler then splits the range itself; kept out rather than relied
        on), or OpenMP starting a smaller team (OMP_THREAD_LIMIT, OMP_DYNAMIC, a call from
        inside another parallel region), which every thread sees before any barrier."""
        import numba
        from kernels.onednn import errors as derr
        if self.closed:
            raise BadInput("this step-loop team's oneDNN GEMMs were closed; build a new one")
        if h0.shape != (self.B, self.H):
            raise BadInput(f"step loop shapes disagree: h0 {h0.shape}, team built for B={self.B}, H={self.H}")
        b1, b2, has_b, state = _loop_args(self.cell_mode, self.dtype, self.G, h0, y, gx, bx, bh, c, t0, t1)
        if numba.get_num_threads() != self.threads or numba.get_parallel_chunksize() != 0:
            return False
        for g in self.gemms:
            g._ptrs[0] = None           # the loop moves the sources: re-point next time
        status = np.zeros(self.threads, np.int64)
        failed_at = np.zeros((self.threads, 2), np.int64)
        from .cpuloop_numba import CELL, team_loop
        from .spin import SLOT
        arrive = np.zeros(self.threads * SLOT, np.int64)
        prims, streams, args, nargs, srcs = self._handles
        bits = fpw.bits         # bf16 storage as its uint16 bits (numba has no bf16 type)
        team_loop(CELL[self.cell_mode], self._calls, prims, streams, args, nargs, srcs, self.bounds,
                  bits(self.gh), self.stride, bits(h0), bits(y), bits(gx), bits(b1), bits(b2), has_b,
                  bits(state), t0, t1, status, failed_at, arrive)
        if (status == -1).any():
            return False
        for p in np.flatnonzero(status):
            t, call = failed_at[p]
            derr.check(f"the compiled step loop at step {t} ({CALLS[call]}, thread {p})", int(status[p]))
        self.runs += 1
        return True
