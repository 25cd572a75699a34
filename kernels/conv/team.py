"""A team of numba threads, each running its own single-threaded oneDNN GEMMs on its own chunks.

The ``_packed`` convolutions split a layer into chunks whose operands fit a core's L2 (a few tile
rows of Winograd's transformed input, a slice of im2col's column matrix).  Issued from Python,
each chunk costs a call per stage and an OpenMP region per GEMM; run this way, the stages of a
chunk run back to back on one thread, on data that stays in that core's cache:

    for p in prange(threads):               # numba's OpenMP team
        while (c := fetch_add(counter)) < chunks:     # the next chunk, whoever is free takes it
            prepare the chunk's GEMM operand          # numba code
            oneDNN matmul p on it                     # built for one thread, called by address
            finish the chunk                          # numba code

Chunks are claimed from a shared counter (one atomic add each), so a thread that the OS
deschedules on a busy machine leaves its share to the others instead of holding up the team.
Each thread's GEMM is its own primitive, built while oneDNN was limited to one thread, with its
own memories and stream: the threads never share a oneDNN object.  Inside the region oneDNN sees
``omp_in_parallel()`` and runs on the calling thread; that needs numba's threads and oneDNN to be
in the same OpenMP runtime, which :func:`team_reason` checks as the RNN step-loop team does
(fusion.cpuloop).  Where it is not, the layers run their chunks from Python instead.

The compiled loops call oneDNN's ``dnnl_memory_set_data_handle``, ``dnnl_primitive_execute`` and
``dnnl_stream_wait`` by address (fusion.native.call_int), so they stay in the kernel cache.
"""
from __future__ import annotations

import ctypes

import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..errors import BadInput
from ..onednn import errors as derr

CALLS = ("dnnl_memory_set_data_handle", "dnnl_primitive_execute", "dnnl_stream_wait")


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """``old = arr[idx]; arr[idx] += val`` atomically (int64); returns ``old``."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")
    return types.int64(arr, types.intp, types.int64), codegen


def team_reason(threads: int) -> str | None:
    """None when a team of ``threads`` can run oneDNN GEMMs inside numba's parallel region here,
    else why not (then the layer runs its chunks from Python)."""
    import numba

    from ..onednn import lib as L
    if numba.config.NUMBA_NUM_THREADS < threads:
        return f"numba has {numba.config.NUMBA_NUM_THREADS} threads"
    runtime = L.load().version_info["cpu_runtime"]
    if runtime != "OpenMP":
        return f"oneDNN was built for {runtime} threading, not OpenMP"
    from fusion.cpuloop import _gomp        # the RNN team's check: same runtime for both
    return _gomp()[1]


class TeamGemms:
    """One single-threaded oneDNN GEMM per thread (``build(p)`` makes thread p's, a
    :class:`kernels.onednn.strided.StridedMatmul`), and the handles the compiled loops pass to
    oneDNN: ``handles`` = (primitives, streams, argument arrays, argument counts, src memories,
    dst memories) as arrays indexed by thread, ``calls`` the addresses of :data:`CALLS`."""

    def __init__(self, threads: int, build):
        from threadpoolctl import threadpool_limits

        from fusion.cpuloop import _step_calls
        self.gemms = []
        try:
            with threadpool_limits(limits=1, user_api="openmp"):
                for p in range(threads):
                    self.gemms.append(build(p))
            lib = self.gemms[0].lib
            self.calls = np.array(_step_calls(lib.path), np.uint64)
        except BaseException:
            self.close()
            raise
        u64 = lambda f: np.array([f(g) for g in self.gemms], np.uint64)      # noqa: E731
        self.handles = (u64(lambda g: g._step._prim.value), u64(lambda g: g.ctx.stream.value),
                        u64(lambda g: ctypes.addressof(g._step._args)),
                        np.array([g._step._n for g in self.gemms], np.int32),
                        u64(lambda g: g._src.value), u64(lambda g: g._dst.value))

    def unpoint(self) -> None:
        """The compiled loops move the memories: the Python-side cache of addresses is stale."""
        for g in self.gemms:
            g._ptrs = [None, None, None]

    def check(self, status: np.ndarray, failed_at: np.ndarray, what: str) -> None:
        for p in np.flatnonzero(status):
            derr.check(f"{what} (thread {p}, chunk {failed_at[p, 0]}, {CALLS[failed_at[p, 1]]})", int(status[p]))

    @property
    def closed(self) -> bool:
        return any(g.scope.closed for g in self.gemms)

    def ensure_open(self) -> None:
        if self.closed:
            raise BadInput("this layer's oneDNN GEMMs were closed; build a new layer")

    def info(self) -> dict:
        return self.gemms[0].info()

    def close(self) -> None:
        for g in self.gemms:
            g.close()
