"""``winograd_packed`` and ``winograd_f2_packed``: Winograd F(m x m, 3x3) built as a layer, its
alpha^2 GEMMs one oneDNN matmul on the filter transformed and packed at build.

Same algorithm and matrices as :mod:`kernels.conv.winograd` (the readable NumPy formulation) and
:mod:`kernels.conv.winograd_numba` (the ``winograd`` variant: fused transforms, BLAS GEMMs).  What
changes, stage by stage:

- filter transform ``U = G g G^T`` (alpha^2, C, K): once, at build
  (:func:`kernels.conv.winograd_numba.filter_transform`), then reordered into the blocked layout
  of oneDNN's matmul (:mod:`kernels.conv.gemm`): a call never touches the filter again;
- input transform, numba, one parallel job per tile row, reading the
  activations in their own layout: the job copies the alpha input rows its tiles need, channels
  last and zero-padded, into a local buffer (for NCHW that copy is the layout change, made in
  cache instead of as a pass over the whole input), then runs the transform of each tile as
  straight-line code vectorized over channels and writes ``V (alpha^2, tiles, C)``;
- the alpha^2 GEMMs ``M[uv] (tiles, K) = V[uv] (tiles, C) @ U[uv] (C, K)``: one batched oneDNN
  matmul call (BLAS in fp64);
- output transform, numba, one parallel job per tile row: ``A^T M A``
  plus the bias into a local block of whole tiles, then cropped into ``y`` in its layout (NCHW
  rows of P*Q planes, or NHWC pixels), so no transposing copy follows.

The workspaces ``V`` and ``M`` belong to the layer (allocated at build); ``y`` is new on every
call.  The transforms are generated from the exact matrices like winograd_numba's
(:func:`kernel_source`): zero entries skipped, +-1 entries as adds, both separable passes of each
transform a loop over contiguous channels (or filters).  In every such loop the innermost index
is the loop variable itself (whole channel rows, no block offset): numba turns an index it cannot
prove non-negative (``c0 + c``) into a select for Python's negative indexing, and LLVM then
leaves the loop scalar (about 1.5 cycles per element instead of 0.2, measured on a copy).

With chunks (:func:`plan`), the layer runs on a team of threads (:mod:`kernels.conv.team`): each
claims a few tile rows, transforms them into its own V, runs its own single-threaded GEMM and
transforms its M back, all in its core's cache.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from ..errors import BadInput, Unsupported
from .gemm import strided_gemm
from .geometry import ConvProblem, build_layer, run_once
from .winograd import accepts as winograd_accepts
from .winograd_math import toom_cook
from .winograd_numba import _lincomb, filter_transform

_SOURCE = """
def input_job(x, V, nchw, ph, pw, tP, tQ, row0, row, loc, tmp):
    if nchw:
        N, C, H, W = x.shape
    else:
        N, H, W, C = x.shape
    WT = tQ * M_ + 2
    lo = min(pw, WT)                     # local columns [lo, hi) hold input columns, the rest zeros
    hi = max(lo, min(WT, W + pw))
    n = row // tP
    h0 = (row % tP) * M_ - ph
    for i in range(ALPHA):
        h = h0 + i
        if h < 0 or h >= H:
            for col in range(WT):
                for c in range(C):
                    loc[i, col, c] = 0
            continue
        for col in range(lo):
            for c in range(C):
                loc[i, col, c] = 0
        for col in range(hi, WT):
            for c in range(C):
                loc[i, col, c] = 0
        if nchw:     # strided loads, contiguous stores: 1.4 cycles an element, the other order 3.4
            for col in range(lo, hi):
                for c in range(C):
                    loc[i, col, c] = x[n, c, h, col - pw]
        else:
            for col in range(lo, hi):
                for c in range(C):
                    loc[i, col, c] = x[n, h, col - pw, c]
    for tq in range(tQ):
        t = (row - row0) * tQ + tq
        w0 = tq * M_
{input_tile}


def output_job(Mt, y, bias, nchw, tP, tQ, row0, row, loc, tmp):
    if nchw:
        N, K, P, Q = y.shape
    else:
        N, P, Q, K = y.shape
    n = row // tP
    p0 = (row % tP) * M_
    for tq in range(tQ):
        t = (row - row0) * tQ + tq
        q0 = tq * M_
{output_tile}
    for i in range(min(M_, P - p0)):
        if nchw:
            for k in range(K):
                for q in range(Q):
                    y[n, k, p0 + i, q] = loc[i, q, k]
        else:
            for q in range(Q):
                for k in range(K):
                    y[n, p0 + i, q, k] = loc[i, q, k]


def winograd_packed_input(x, V, nchw, ph, pw, tP, tQ, row0, row1):
    C = x.shape[1] if nchw else x.shape[3]
    for row in prange(row0, row1):
        loc = np.empty((ALPHA, tQ * M_ + 2, C), dtype=x.dtype)
        tmp = np.empty((ALPHA, ALPHA, C), dtype=x.dtype)
        input_job(x, V, nchw, ph, pw, tP, tQ, row0, row, loc, tmp)


def winograd_packed_output(Mt, y, bias, nchw, tP, tQ, row0, row1):
    K = y.shape[1] if nchw else y.shape[3]
    for row in prange(row0, row1):
        loc = np.empty((M_, tQ * M_, K), dtype=y.dtype)
        tmp = np.empty((M_, ALPHA, K), dtype=y.dtype)
        output_job(Mt, y, bias, nchw, tP, tQ, row0, row, loc, tmp)


def winograd_packed_team(x, y, bias, nchw, ph, pw, tP, tQ, chunk, Vs, Ms, calls, prims, streams, argss,
                         nargss, counter, status, failed_at):
    # kernels.conv.team: thread p claims chunks of ``chunk`` tile rows, transforms them into its
    # own Vs[p], runs its own GEMM (Vs[p] @ U -> Ms[p], single-threaded oneDNN, called by
    # address) and transforms Ms[p] into y
    execute = calls[1]
    wait = calls[2]
    nthr = prims.shape[0]
    rows = y.shape[0] * tP
    C = x.shape[1] if nchw else x.shape[3]
    K = y.shape[1] if nchw else y.shape[3]
    for p in prange(nthr):
        V = Vs[p]
        Mt = Ms[p]
        loc_in = np.empty((ALPHA, tQ * M_ + 2, C), dtype=x.dtype)
        tmp_in = np.empty((ALPHA, ALPHA, C), dtype=x.dtype)
        loc_out = np.empty((M_, tQ * M_, K), dtype=y.dtype)
        tmp_out = np.empty((M_, ALPHA, K), dtype=y.dtype)
        while True:
            c = fetch_add(counter, 0, 1)
            r0 = c * chunk
            if r0 >= rows:
                break
            r1 = min(rows, r0 + chunk)
            for row in range(r0, r1):
                input_job(x, V, nchw, ph, pw, tP, tQ, r0, row, loc_in, tmp_in)
            st = call_int(execute, (prims[p], streams[p], nargss[p], argss[p]))
            call = 1
            if st == 0:
                st = call_int(wait, (streams[p],))
                call = 2
            if st != 0:
                status[p] = st
                failed_at[p, 0] = c
                failed_at[p, 1] = call
                break
            for row in range(r0, r1):
                output_job(Mt, y, bias, nchw, tP, tQ, r0, row, loc_out, tmp_out)
"""


def kernel_source(m: int, dtype="float32") -> str:
    """The Python source of both transform kernels for F(m x m, 3x3), before numba compiles it."""
    AT, _, BT = (np.array([[float(v) for v in r] for r in M_]) for M_ in toom_cook(m))
    alpha = m + 2
    lines = []
    for j in range(alpha):                                   # tmp[u, j] = (B^T d)[u, j]
        lines.append("for c in range(C):")
        lines += [f"    d{i} = loc[{i}, w0 + {j}, c]" for i in range(alpha)]
        lines += [f"    tmp[{u}, {j}, c] = " + _lincomb(BT[u], lambda i: f"d{i}") for u in range(alpha)]
    for u in range(alpha):                                   # V[u, v] = (tmp B)[u, v]
        lines.append("for c in range(C):")
        lines += [f"    e{j} = tmp[{u}, {j}, c]" for j in range(alpha)]
        lines += [f"    V[{u * alpha + v}, t, c] = " + _lincomb(BT[v], lambda j: f"e{j}")
                  for v in range(alpha)]
    input_tile = "\n".join(" " * 8 + ln for ln in lines)
    lines = []
    for v in range(alpha):                                   # tmp[i, v] = (A^T M)[i, v]
        lines.append("for k in range(K):")
        lines += [f"    m{u} = Mt[{u * alpha + v}, t, k]" for u in range(alpha)]
        lines += [f"    tmp[{i}, {v}, k] = " + _lincomb(AT[i], lambda u: f"m{u}") for i in range(m)]
    for i in range(m):                                       # out[i, j] = bias + (tmp A)[i, j]
        lines.append("for k in range(K):")
        lines += [f"    a{v} = tmp[{i}, {v}, k]" for v in range(alpha)]
        lines += [f"    loc[{i}, q0 + {j}, k] = bias[k] + (" + _lincomb(AT[j], lambda v: f"a{v}") + ")"
                  for j in range(m)]
    output_tile = "\n".join(" " * 8 + ln for ln in lines)
    return (_SOURCE.replace("{input_tile}", input_tile).replace("{output_tile}", output_tile)
            .replace("ALPHA", str(alpha)).replace("M_", str(m)).replace("FT(", f"np.{np.dtype(dtype).name}("))


@functools.lru_cache(maxsize=None)
def _kernels(m: int, dtype: str):
    """Compile (once per tile size and dtype; kept in the kernel cache under a hash of the
    generated source: kernels.jit) the two transform kernels and the team's loop."""
    from numba import prange

    from fusion.native import call_int

    from ..jit import njit
    from .team import fetch_add
    source = kernel_source(m, dtype)
    key = hashlib.sha1(source.encode()).hexdigest()
    ns = {"__name__": __name__, "np": np, "prange": prange, "call_int": call_int, "fetch_add": fetch_add}
    exec(compile(source, f"winograd_packed_f{m}_{dtype}", "exec"), ns)  # noqa: S102
    # the jobs are called, not inlined, by the kernels below: a job is a whole tile row, so the
    # call costs nothing measurable, while inlining them into three parallel loops made numba's
    # parallel passes take 80 s instead of 49 s for both tile sizes (measured cold, fp32)
    for name in ("input_job", "output_job"):
        ns[name] = njit(source_key=key)(ns[name])
    jit = njit(parallel=True, source_key=key)
    return (jit(ns["winograd_packed_input"]), jit(ns["winograd_packed_output"]),
            jit(ns["winograd_packed_team"]))


TEAM_BYTES = 640 << 10   # a team thread's V and M chunk: within a core's L2 beside U's rows


def plan(problem: ConvProblem, m: int, itemsize: int) -> tuple:
    """``(mode, rows per chunk, why)``: ``team`` when chunks of tile rows small enough for a core's
    L2 cost less traffic than the whole-batch V and M round trips through memory (each chunk's
    GEMM reads all of U again: worth it where U is small and the image large, as ResNet's res2
    3x3), else ``batch`` (one call per stage over the whole batch)."""
    p, alpha = problem, m + 2
    tQ, rows = -(-p.Q // m), p.N * -(-p.P // m)
    per_row = alpha * alpha * tQ * (p.C + p.K) * itemsize
    chunk = max(1, min(rows, TEAM_BYTES // per_row))
    u = alpha * alpha * p.C * p.K * itemsize
    vm = 2 * rows * per_row                              # V and M written and read back
    if -(-rows // chunk) * u < vm:
        return "team", chunk, (f"{-(-rows // chunk)} chunks of {chunk} tile row(s) read U "
                               f"({u >> 10} KiB) {-(-rows // chunk)} times: less than V and M's round trip")
    return "batch", rows, "the whole batch per stage: U read once (chunks would read it once each)"


class WinogradLayer:
    """F(m x m, 3x3) for one problem and filter: ``layer(x) -> y`` (module docstring).

    ``mode``: ``auto`` (:func:`plan`, and a team only where :func:`kernels.conv.team.team_reason`
    allows it and oneDNN computes the GEMM), ``team`` (refused where it cannot run) or
    ``batch``; ``rows_per_chunk`` overrides the plan's chunk (tests use it)."""

    def __init__(self, w, b, problem: ConvProblem, m: int = 4, rows_per_chunk: int | None = None,
                 mode: str = "auto"):
        import numba
        if mode not in ("auto", "team", "batch"):
            raise BadInput(f"mode {mode!r} is unknown; allowed: auto, team, batch")
        p = problem
        self.problem, self.m = p, m
        self.dtype = np.asarray(w).dtype
        self.alpha = alpha = m + 2
        self.tP, self.tQ = -(-p.P // m), -(-p.Q // m)
        rows = p.N * self.tP                      # tile rows: the unit the transforms' jobs own
        planned, chunk, self.why = plan(p, m, self.dtype.itemsize)
        self.threads = numba.get_num_threads()
        forced = mode == "team"
        if mode == "auto":
            mode = planned
        if mode == "team":
            from .gemm import onednn_reason
            from .team import team_reason
            reason = onednn_reason(self.dtype)[0] or team_reason(self.threads)
            if reason and not forced:
                mode, self.why = "batch", f"a team could not run here ({reason})"
            elif reason:
                raise Unsupported(f"a team of {self.threads} threads cannot run here: {reason}")
        self.mode = mode
        if rows_per_chunk is not None:
            chunk = rows_per_chunk
        self.chunk = max(1, min(rows, chunk if mode == "team" or rows_per_chunk is not None else rows))
        T = self.chunk * self.tQ
        self.bias = (np.asarray(b, self.dtype) if p.bias else np.zeros(p.K, self.dtype)).copy()
        self._in, self._out, self._team = _kernels(m, self.dtype.name)
        U = np.ascontiguousarray(filter_transform(np.asarray(w), m), dtype=self.dtype)  # (alpha^2, C, K)
        self._nchw = p.layout == "NCHW"
        self.gemms, self.team = {}, None
        if mode == "team":
            n = self.threads
            self.V = np.zeros((n, alpha * alpha, T, p.C), self.dtype)     # each thread's own
            self.M = np.zeros((n, alpha * alpha, T, p.K), self.dtype)
            from ..onednn.strided import StridedMatmul
            from .team import TeamGemms

            def build(i):
                g = StridedMatmul(self.V[i], U, self.M[i])
                g._point(0, g._src, self.V[i], "src")              # fixed: the loop never moves them
                g._point(2, g._dst, self.M[i], "dst")
                return g
            try:
                self.team = TeamGemms(n, build)
            except Unsupported as e:              # a shape only oneDNN's reference code serves
                if forced:
                    raise
                mode, self.why = "batch", f"a team could not run here ({e})"
                self.mode = mode
                if rows_per_chunk is None:
                    self.chunk = rows
                T = self.chunk * self.tQ
        if mode != "team":
            self.V = np.empty((alpha * alpha, T, p.C), self.dtype)
            self.M = np.empty((alpha * alpha, T, p.K), self.dtype)
            self.gemms[T] = strided_gemm(self.V, U, self.M)
            last = rows % self.chunk
            if last:                              # the last, shorter chunk: its own primitive
                Tl = last * self.tQ
                self.gemms[Tl] = strided_gemm(self.V[:, :Tl], U, self.M[:, :Tl])
        # compile (or load) now, on the smallest problem the kernels accept: never in a timed call
        self._in(np.zeros((1, 1, 1, 1), self.dtype), np.empty((alpha * alpha, 1, 1), self.dtype),
                 True, 0, 0, 1, 1, 0, 1)
        self._out(np.empty((alpha * alpha, 1, 1), self.dtype), np.empty((1, 1, 1, 1), self.dtype),
                  np.zeros(1, self.dtype), True, 1, 1, 0, 1)

    def __call__(self, x):
        p = self.problem
        x = np.asarray(x)
        if x.shape != p.x_shape or x.dtype != self.dtype:
            raise BadInput(f"x is {x.dtype} {x.shape}; this layer takes {self.dtype} {p.x_shape}")
        x = np.ascontiguousarray(x)
        y = np.empty(p.y_shape, self.dtype)
        if self.team is not None:
            t = self.team
            t.ensure_open()
            prims, streams, argss, nargss, _, _ = t.handles
            status = np.zeros(len(t.gemms), np.int64)
            failed_at = np.zeros((len(t.gemms), 2), np.int64)
            self._team(x, y, self.bias, self._nchw, p.pad[0], p.pad[1], self.tP, self.tQ, self.chunk,
                       self.V, self.M, t.calls, prims, streams, argss, nargss, np.zeros(1, np.int64),
                       status, failed_at)
            t.check(status, failed_at, "winograd_packed's team")
            return y
        rows = p.N * self.tP
        for r0 in range(0, rows, self.chunk):
            r1 = min(rows, r0 + self.chunk)
            T = (r1 - r0) * self.tQ
            V, M = self.V[:, :T], self.M[:, :T]
            self._in(x, V, self._nchw, p.pad[0], p.pad[1], self.tP, self.tQ, r0, r1)
            self.gemms[T](V, M)
            self._out(M, y, self.bias, self._nchw, self.tP, self.tQ, r0, r1)
        return y

    def info(self) -> dict:
        g = self.team if self.team is not None else next(iter(self.gemms.values()))
        tiles = self.chunk * self.tQ
        run = (f"a team of {self.threads} thread(s), each transforming, multiplying (its own "
               f"single-threaded GEMM) and transforming back chunks of {self.chunk} tile row(s)"
               if self.team is not None else
               "each stage over " + ("the whole batch" if self.chunk == self.problem.N * self.tP
                                     else f"chunks of {self.chunk} tile row(s)") + ", in parallel")
        return {"layout": self.problem.layout, "tile": f"F({self.m}x{self.m},3x3)",
                "gemm": {**g.info(), "form": f"M[uv] (tiles, K) = V[uv] (tiles, C) @ U[uv] (C, K), "
                                             f"{self.alpha ** 2} GEMMs in one batched call",
                         "tiles_per_call": tiles},
                "schedule": {"mode": self.mode, "run": run, "why": self.why},
                "flops_kind": "effective"}

    def close(self) -> None:
        for g in self.gemms.values():
            g.close()
        if self.team is not None:
            self.team.close()


DTYPES = ("fp32", "fp64")


def accepts(problem: ConvProblem, dtype, tile: int = 4) -> str | None:
    """Winograd's geometry (3x3, stride 1, dilation 1, groups 1); fp32 (oneDNN's GEMM) and fp64
    (BLAS)."""
    return winograd_accepts(problem, dtype, tile)


def prepare(w, b, problem: ConvProblem, tile: int = 4) -> WinogradLayer:
    return build_layer(lambda p, dt: accepts(p, dt, tile), lambda: WinogradLayer(w, b, problem, tile),
                       w, b, problem)


def prepare_f2(w, b, problem: ConvProblem) -> WinogradLayer:
    return prepare(w, b, problem, tile=2)


def accepts_f2(problem: ConvProblem, dtype) -> str | None:
    return accepts(problem, dtype, tile=2)


def run(x, w, b, problem: ConvProblem) -> np.ndarray:
    return run_once(prepare, x, w, b, problem)


def run_f2(x, w, b, problem: ConvProblem) -> np.ndarray:
    return run_once(prepare_f2, x, w, b, problem)
