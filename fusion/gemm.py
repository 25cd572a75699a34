"""Weight arrangement for the GEMM steps: ``group_gemm`` and ``pretranspose``.

A :class:`Projection` computes ``x @ W.T`` for the G gate blocks of one canonical weight
matrix ``W (G*H, K)`` and leaves the result where the pointwise stage wants it.  Its output
buffer has one of two layouts, both seen by the pointwise stage as a ``(M, G, H)`` view:

- grouped:   ``(M, G*H)``: one GEMM with N = G*H;
- per gate:  ``(G, M, H)``: G GEMMs with N = H, each writing a contiguous block.

The array module ``xp`` (NumPy, CuPy) is a parameter, so the same arrangement serves every backend.

GEMM providers.  The array module's own matmul (BLAS, cuBLAS) runs every GEMM, except on the
CPU under ``pretranspose`` in fp32 (and in bf16 where the CPU has AVX512-BF16 or AMX): there
:func:`provider_for` gives a oneDNN packer, and each
weight block is packed once per row count M into the layout oneDNN's ``inner_product`` prefers
(``brgemm:avx2`` blocks it as ``AB8b16a`` on AVX2), which is what "pre-transposing the weights"
means on a CPU: OpenBLAS has no pre-packed-weights API, so without oneDNN the rung stays a
contiguous transposed copy for BLAS.  A packed call points the primitive at the step loop's own
buffers; nothing is allocated or reordered per step.  When oneDNN cannot be loaded the provider
is BLAS and its info says why.
"""
from __future__ import annotations

import numpy as np


def matmul(xp, a, b, out):
    """``out <- a @ b``.  NumPy has no bf16 GEMM (ml_dtypes' loop is a slow scalar one), so bf16
    operands on NumPy are widened to fp32, multiplied by BLAS and rounded once into ``out``: the
    same fp32-accumulate-then-round result cuBLAS gives bf16 storage with CUBLAS_COMPUTE_32F
    (which is what CuPy's matmul asks for).  Everything else is the array module's own matmul."""
    if xp is np and out.dtype.kind == "V":     # ml_dtypes' bfloat16 (dtype.name is slow per step)
        out[...] = np.matmul(a.astype(np.float32), b.astype(np.float32))
        return out
    return xp.matmul(a, b, out=out)


BLAS = "blas"
ONEDNN = "onednn"
# Precisions of the packed GEMM.  bf16 (where the CPU has AVX512-BF16 or AMX: kernels.cpu_bf16):
# bf16 weights and input, fp32 accumulation and bias, the result rounded once to bf16 storage,
# the rounding points of cuBLAS with bf16 C and CUBLAS_COMPUTE_32F on the GPU bf16 path.
PACKED_PRECISIONS = ("fp32", "bf16")


def provider_for(xp, device: str, precision: str, plan) -> tuple:
    """(packer or None, info) for a plan's GEMMs.  ``packer(mat (K, N), m, bias=None)`` returns a
    callable ``(x (m, K), out (m, N))`` writing ``x @ mat (+ bias)`` into ``out``; None means the array module's
    matmul.  ``info`` is what a case records: ``{"provider": ..., "reason": ...}``, with
    ``fallback`` set when oneDNN would have run but cannot be loaded (the table notes it)."""
    if "pretranspose" not in plan or device != "cpu" or xp is not np:
        return None, {}
    if precision not in PACKED_PRECISIONS:
        return None, {"provider": BLAS, "reason": f"the oneDNN packed GEMM is fp32 and bf16 only ({precision} here)"}
    if precision == "bf16":
        from kernels.cpu_bf16 import missing
        why = missing()
        if why:
            return None, {"provider": BLAS, "reason": f"no oneDNN bf16 GEMM: {why}"}
    from kernels.errors import MissingDependency
    from kernels.onednn import lib as dnnl
    try:
        lib = dnnl.load()
    except MissingDependency as e:
        return None, {"provider": BLAS, "fallback": True, "reason": f"oneDNN not loaded: {e}"}
    from kernels.onednn.matmul import PackedInnerProduct, PackedMatmul

    def pack(mat, m, bias=None):
        return find_fastest([PackedInnerProduct, PackedMatmul], mat, m, bias, lib, precision=precision)
    info = {"provider": ONEDNN, "primitive": "inner_product or matmul, the faster per shape",
            "version": lib.version, "isa": lib.isa}
    if precision == "bf16":
        info["math"] = "bf16 operands, fp32 accumulation and bias, result rounded once to bf16"
    return pack, info


FOUND: dict = {}     # find key -> (kind name, us per kind): what find_fastest chose, per process


def _openmp_threads():
    """The OpenMP pool's thread count now (oneDNN's GOMP build splits its work over it)."""
    from threadpoolctl import threadpool_info
    return tuple(sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"))


FIND_MIN_S = 2e-3    # each kind is timed for at least this long (and ``calls`` calls) in a find


def find_fastest(kinds: list, mat, m: int, bias, lib, calls: int = 5, precision: str = "fp32"):
    """Build every primitive kind for this GEMM and keep the fastest (median of at least ``calls``
    timed calls and ``FIND_MIN_S`` seconds, at most 200 calls, after one warm-up, on zero inputs:
    a single preempted call must not decide a choice the process keeps), like cuDNN's find step: which one wins depends on
    the shape and the ISA.  Measured on an AVX2 CPU, one thread: at M=16 (K=256, N=1024) the
    inner product's brgemm with packed weights takes 108 us and matmul's plain-layout gemm 198 us;
    at M=1 (K=1024, N=4096, a GEMV) matmul takes 330-560 us and the inner product 730-790 us.
    Runs when a case is built (``RNN.prepare``) or, for :class:`PackedWeights`, in the first call
    of a training step, which the harness makes as its check and warm-up: never inside a timed
    sample.  The kept primitive's ``info()`` names every kind's time (``find_us``).

    The choice is remembered per process (:data:`FOUND`, keyed by the kinds, the GEMM's shape,
    its bias, the library and the OpenMP thread count), as PyTorch's ``cudnn.benchmark`` keeps
    cuDNN's: the two kinds sum in different orders, so a second find that chose the other one
    would make two calls of the same layer on the same input differ in their last bits (seen on
    an AVX2 CPU at M=4, K=16, N=24: 1e-6 apart)."""
    import time
    key = (tuple(sorted(k.kind for k in kinds)), m, mat.shape[0], mat.shape[1], bias is not None,
           getattr(lib, "path", None), _openmp_threads(), precision)
    # the kinds take ``precision`` when it is not their default fp32 (kinds that know only fp32
    # are built as before)
    opts = {} if precision == "fp32" else {"precision": precision}
    if key in FOUND:
        name, found = FOUND[key]
        best = next(k for k in kinds if k.kind == name)(mat, m=m, bias=bias, lib=lib, **opts)
        best.found = dict(found)
        return best
    from kernels.dtypes import storage
    x = np.zeros((m, mat.shape[0]), storage(precision))
    out = np.empty((m, mat.shape[1]), storage(precision))
    timed = []
    for kind in kinds:
        prim = kind(mat, m=m, bias=bias, lib=lib, **opts)
        prim(x, out)
        samples = []
        while len(samples) < 200 and (len(samples) < calls or sum(samples) < FIND_MIN_S):
            t0 = time.perf_counter()
            prim(x, out)
            samples.append(time.perf_counter() - t0)
        timed.append((sorted(samples)[len(samples) // 2], prim))
    timed.sort(key=lambda tp: tp[0])
    best = timed[0][1]
    best.found = {p.kind: round(t * 1e6, 1) for t, p in timed}     # us per call, at build time
    for _, p in timed[1:]:
        p.close()
    FOUND[key] = (best.kind, dict(best.found))
    return best


MAX_PACKED = 8     # row counts a Projection keeps packed (a run uses 1-3: B, T*B, a chunk)


class Projection:
    def __init__(self, xp, w, num_gates: int, *, grouped: bool, pretransposed: bool, packer=None,
                 bias=None):
        self.xp, self.G = xp, num_gates
        self.H = w.shape[0] // num_gates
        self.K = w.shape[1]
        self.grouped, self.pretransposed = grouped, pretransposed
        blocks = [w] if grouped else [w[k * self.H:(k + 1) * self.H] for k in range(num_gates)]
        # Pretransposed blocks are (K, N) and row-major, so the GEMM is a plain x @ W ("NN");
        # otherwise the GEMM multiplies by a transposed view of a row-major (N, K) block ("NT").
        if pretransposed:
            self.mats = [xp.ascontiguousarray(b.T) for b in blocks]
        else:
            self.mats = [xp.ascontiguousarray(b) for b in blocks]
        # packer (oneDNN, pretransposed only): one packed primitive per weight block and row count
        self.packer = packer if pretransposed else None
        # bias ((G*H,), packed GEMMs only): added by the primitive itself (its bias argument), so
        # the hoisted input GEMM needs no second pass over its T*B*G*H result to fold it in
        self.adds_bias = self.packer is not None and bias is not None
        if self.adds_bias:
            flat = np.ascontiguousarray(np.asarray(bias).reshape(-1))
            self._bias = [flat] if grouped else [flat[k * self.H:(k + 1) * self.H] for k in range(num_gates)]
        else:
            self._bias = [None] * len(self.mats)
        self._packed: dict = {}     # M -> [packed GEMM per block]
        self._stage: dict = {}      # M -> contiguous copy of a strided x (batch-first input)

    def prepare(self, M: int) -> list:
        """The packed GEMMs for M rows, packing the weights now if this M is new (build time when
        :meth:`kernels.recurrent.RNN.prepare` is called, else the first call)."""
        prims = self._packed.get(M)
        if prims is None:
            # Each row count holds its own packed copy of the weights: sequences of ever new
            # lengths (hoisted M = T*B) must not grow memory without bound, so the oldest row
            # count beyond MAX_PACKED is released (packed again if it comes back).
            while len(self._packed) >= MAX_PACKED:
                for old in self._packed.pop(next(iter(self._packed))):
                    old.close()
            prims = self._packed[M] = [self.packer(mat, M, bias=b) for mat, b in zip(self.mats, self._bias)]
        return prims

    def info(self) -> dict:
        """The packed primitives made so far (implementation and whether the weights were packed)."""
        return {f"M={m}": p[0].info() for m, p in sorted(self._packed.items())}

    def alloc(self, M: int, dtype):
        shape = (M, self.G * self.H) if self.grouped else (self.G, M, self.H)
        return self.xp.empty(shape, dtype=dtype)

    def gates(self, buf):
        """The ``(M, G, H)`` view of an output buffer."""
        if self.grouped:
            return buf.reshape(buf.shape[0], self.G, self.H)
        return buf.transpose(1, 0, 2)

    def rows(self, buf, start: int, stop: int):
        """Rows ``start:stop`` of a buffer as a ``(stop-start, G, H)`` view (one step of a hoisted GEMM)."""
        if self.grouped:
            return self.gates(buf[start:stop])
        return buf[:, start:stop].transpose(1, 0, 2)

    def __call__(self, x, buf):
        """buf <- x @ W.T (+ the bias, when :attr:`adds_bias`), with one GEMM (grouped) or G GEMMs
        (per gate)."""
        outs = [buf] if self.grouped else list(buf)
        if self.packer is not None:
            M = x.shape[0]
            if not x.flags.c_contiguous:   # a time step of batch-first input: copy into a buffer made once
                stage = self._stage.get(M)
                if stage is None:
                    stage = self._stage[M] = np.empty(x.shape, x.dtype)
                np.copyto(stage, x)
                x = stage
            for gemm, out in zip(self.prepare(M), outs):
                gemm(x, out)
            return buf
        for mat, out in zip(self.mats, outs):
            matmul(self.xp, x, mat if self.pretransposed else mat.T, out)
        return buf

    @property
    def gemms_per_call(self) -> int:
        return len(self.mats)


class PackedWeights:
    """``(key, a, w) -> a @ w`` with every fixed weight matrix packed once per row count by a
    provider's packer (:func:`provider_for`): the training step's GEMM provider
    (:mod:`kernels.backward`: the forward's input and recurrent GEMMs and the backward's dX and dh
    GEMMs; the weight gradients multiply two activations and stay on BLAS).  ``key`` names the
    matrix; ``w`` is read only the first time a (key, row count) is seen, so the weights must not
    change while this object is in use (a benchmark case's fixed parameters, not a training loop)."""

    def __init__(self, packer):
        self.packer = packer
        self._prims: dict = {}

    def __call__(self, key, a, w):
        M = a.shape[0]
        prim = self._prims.get((key, M))
        if prim is None:
            prim = self._prims[(key, M)] = self.packer(np.ascontiguousarray(w, np.float32), M)
        out = np.empty((M, w.shape[1]), np.float32)
        return prim(np.ascontiguousarray(a, np.float32), out)
