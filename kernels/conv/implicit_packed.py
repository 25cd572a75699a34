"""``implicit_packed``: implicit GEMM on oneDNN's packed GEMM: the column matrix never exists
whole, only one L2-sized slice per thread at a time.

The GEMM is im2col's (:mod:`kernels.conv.im2col_packed`), cut along its pixel axis into chunks:

    NHWC:  y[m0:m1] (rows, K)      = cols[m0:m1] (rows, R*S*C) @ W^T (R*S*C, K)    filter packed
    NCHW:  y_n[:, i0:i1] (K, pix)  = W (K, C*R*S) @ cols_n[:, i0:i1] (C*R*S, pix)

A team of numba threads (:mod:`kernels.conv.team`) claims chunks from a shared counter; a
thread gathers its chunk's slice of the column matrix straight from the input into its own
buffer (zeros where a tap falls in the padding), small enough to stay in its core's L2
(``SLICE_BYTES``), and multiplies it at once with its own single-threaded oneDNN matmul, which
writes the result into ``y`` where it belongs (NHWC: rows of pixels; NCHW: a strided block of
each filter's plane) - the structure of cuDNN's and CUTLASS's implicit GEMM, whose column tile
lives in shared memory, with oneDNN's packed GEMM as the tile's multiply.  The filter is packed
(NHWC) or laid out (NCHW) at build, as is each thread's buffer and GEMM; ``y`` is new per call.
A 1x1, stride-1, unpadded layer needs no gathering: it is im2col_packed's single GEMM.

Where the team cannot run (fp64, which oneDNN's matmul does not compute; numba's threads in
another OpenMP runtime than oneDNN's) the layer is im2col_packed's, and ``info()`` says why.
"""
from __future__ import annotations

import numba
import numpy as np

from fusion.native import call_int

from ..errors import BadInput, Unsupported
from ..jit import njit
from .geometry import ConvProblem, build_layer, run_once
from .im2col_packed import Im2colLayer, is_pointwise
from .team import fetch_add

DTYPES = ("fp32", "fp64")
SLICE_BYTES = 384 << 10     # one thread's column slice: in its L2 beside the output block
MAX_SLICE_BYTES = 16 << 20  # ... and never more than this, whatever 2K pixels would take


@njit
def gather_nhwc(x, buf, m0, m1, P, Q, R, S, sh, sw, ph, pw, dh, dw):
    """buf[0, m - m0, (r*S + s)*C + c] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c], m = (n*P + p)*Q + q."""
    _, H, W, C = x.shape
    for m in range(m0, m1):
        n = m // (P * Q)
        p = (m // Q) % P
        q = m % Q
        row = buf[0, m - m0]
        for r in range(R):
            h = p * sh - ph + r * dh
            for s in range(S):
                w = q * sw - pw + s * dw
                seg = row[(r * S + s) * C:(r * S + s + 1) * C]     # bare indices: vectorized
                if h < 0 or h >= H or w < 0 or w >= W:
                    for c in range(C):
                        seg[c] = 0
                else:
                    src = x[n, h, w]
                    for c in range(C):
                        seg[c] = src[c]


@njit
def stage_nchw(x, stage, n, h0, rows):
    """stage[j, w, c] = x[n, c, h0 + j, w] for the rows j < ``rows`` inside the input: the NCHW
    rows a chunk reads, channels last (strided loads, contiguous stores: kernels/conv/
    winograd_packed.py measured that order at 1.4 cycles an element, the other at 3.4)."""
    _, C, H, W = x.shape
    for j in range(rows):
        h = h0 + j
        if h < 0 or h >= H:
            continue
        st = stage[j]
        for w in range(W):
            row = st[w]
            for c in range(C):
                row[c] = x[n, c, h, w]


@njit
def gather_staged(stage, h0, H, buf, i0, i1, Q, R, S, sh, sw, ph, pw, dh, dw):
    """buf[0, i - i0, (r*S + s)*C + c] = x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] (0 outside),
    i = p*Q + q, read from the channels-last stage of image n's rows h0..."""
    _, W, C = stage.shape
    for i in range(i0, i1):
        p = i // Q
        q = i - p * Q
        row = buf[0, i - i0]
        for r in range(R):
            h = p * sh - ph + r * dh
            for s in range(S):
                w = q * sw - pw + s * dw
                seg = row[(r * S + s) * C:(r * S + s + 1) * C]
                if h < 0 or h >= H or w < 0 or w >= W:
                    for c in range(C):
                        seg[c] = 0
                else:
                    src = stage[h - h0, w]
                    for c in range(C):
                        seg[c] = src[c]


@njit
def store_nchw(out, y, n, i0, i1):
    """y[n, k] (as P*Q pixels) [i0:i1] = out[:i1 - i0, k]: the GEMM's pixel rows into the filters'
    planes (contiguous stores, strided loads)."""
    K = y.shape[1]
    yk = y[n].reshape((K, -1))
    for k in range(K):
        dst = yk[k, i0:i1]
        for a in range(i1 - i0):
            dst[a] = out[a, k]


@njit(parallel=True)
def implicit_team(x, y, nchw, P, Q, R, S, sh, sw, ph, pw, dh, dw, per, bufs, stages, outs, calls,
                  full, tail, counter, status, failed_at):
    """Thread p claims chunk after chunk and gathers its column slice into bufs[p].  NHWC: points
    its GEMM's destination at the chunk's rows of ``y`` and runs it (``full`` or, for a short last
    chunk, ``tail``: (primitives, streams, argument arrays, argument counts, dst memories) per
    thread).  NCHW: stages the input rows the chunk reads channels last (stages[p]), gathers
    from there, runs ``full`` into outs[p] (rows past a short chunk's end hold stale columns and
    are not stored) and stores the block into the filters' planes.  ``per``: pixels per chunk
    (per image for NCHW)."""
    set_handle = calls[0]
    execute = calls[1]
    wait = calls[2]
    nthr = bufs.shape[0]
    N = y.shape[0]
    K = y.shape[1] if nchw else y.shape[3]
    H = x.shape[2] if nchw else x.shape[1]
    PQ = P * Q
    per_image = (PQ + per - 1) // per
    chunks = N * per_image if nchw else (N * PQ + per - 1) // per
    base = y.ctypes.data
    size = y.itemsize
    for p in numba.prange(nthr):
        buf = bufs[p]
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= chunks:
                break
            prims, streams, argss, nargss, dsts = full
            call = 1
            st = 0
            if nchw:
                n = c // per_image
                i0 = (c % per_image) * per
                i1 = min(PQ, i0 + per)
                h0 = (i0 // Q) * sh - ph
                rows = ((i1 - 1) // Q - i0 // Q) * sh + (R - 1) * dh + 1
                stage_nchw(x, stages[p], n, h0, rows)
                gather_staged(stages[p], h0, H, buf, i0, i1, Q, R, S, sh, sw, ph, pw, dh, dw)
            else:
                m0 = c * per
                m1 = min(N * PQ, m0 + per)
                gather_nhwc(x, buf, m0, m1, P, Q, R, S, sh, sw, ph, pw, dh, dw)
                if m1 - m0 < per:
                    prims, streams, argss, nargss, dsts = tail
                call = 0
                st = call_int(set_handle, (dsts[p], base + m0 * K * size))
            if st == 0:
                call = 1
                st = call_int(execute, (prims[p], streams[p], nargss[p], argss[p]))
            if st == 0:
                call = 2
                st = call_int(wait, (streams[p],))
            if st != 0:
                status[p] = st
                failed_at[p, 0] = c
                failed_at[p, 1] = call
                break
            if nchw:
                store_nchw(outs[p], y, n, i0, i1)


class ImplicitLayer:
    """One problem and filter: ``layer(x) -> y`` (module docstring)."""

    def __init__(self, w, b, problem: ConvProblem, pixels: int | None = None):
        from .gemm import onednn_reason
        from .team import team_reason
        p = self.problem = problem
        w = np.asarray(w)
        self.dtype = dt = w.dtype
        self.threads = numba.get_num_threads()
        self.fallback = None
        why = ("a 1x1, stride-1, unpadded layer has its input as its column matrix" if is_pointwise(p)
               else onednn_reason(dt)[0] or team_reason(self.threads))
        if why:
            self.fallback = Im2colLayer(w, b, p)
            self.why = why
            return
        RSC, PQ = p.R * p.S * p.C, p.P * p.Q
        # L2-sized slices, but at least 2K pixels: each slice's GEMM reads the whole packed filter
        # (R*S*C x K) again, so with fewer pixels than 2K the filter's reads outweigh the slice's
        # (res4's 3x3, C = K = 256: 32-pixel slices took 1.3x the time of 512-pixel ones)
        per = pixels or max(16, max(SLICE_BYTES // (RSC * dt.itemsize), 2 * p.K) // 16 * 16)
        per = min(per, max(16, MAX_SLICE_BYTES // (RSC * dt.itemsize)))   # wide layers: bounded
        self.per = per = max(1, min(per, PQ if p.layout == "NCHW" else p.N * PQ))
        self.why = f"slices of {per} pixels x {RSC} (C*R*S) per thread, gathered and multiplied in L2"
        from ..onednn.strided import StridedMatmul
        from .team import TeamGemms
        y = np.empty(p.y_shape, dt)                     # a layout template for the GEMMs' views
        # the filter as W^T (R*S*C, K), packed: the reduction in the order the slices hold it
        wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(RSC, p.K))
        bias = np.asarray(b, dt).reshape(1, p.K) if p.bias else None
        self.bufs = np.zeros((self.threads, 1, per, RSC), dt)      # 4 axes in both layouts: one loop
        if p.layout == "NHWC":
            rows_tail = (p.N * PQ) % per
            self.stages = np.zeros((self.threads, 1, 1, 1), dt)     # unused
            self.outs = np.zeros((self.threads, 1, 1), dt)
            y2 = y.reshape(p.N * PQ, p.K)

            def builder(rows):
                def build(i):
                    g = StridedMatmul(self.bufs[i][0, :rows], wt, y2[:rows], bias=bias)
                    g._point(0, g._src, self.bufs[i][0, :rows], "src")
                    return g
                return build
        else:
            rows_tail = 0                               # a short chunk's extra rows are not stored
            out_rows = (per + p.Q - 2) // p.Q + 1       # output rows a chunk can touch
            in_rows = (out_rows - 1) * p.stride[0] + (p.R - 1) * p.dilation[0] + 1
            self.stages = np.zeros((self.threads, in_rows, p.W, p.C), dt)
            self.outs = np.zeros((self.threads, per, p.K), dt)

            def builder(rows):
                def build(i):
                    g = StridedMatmul(self.bufs[i][0], wt, self.outs[i], bias=bias)
                    g._point(0, g._src, self.bufs[i][0], "src")
                    g._point(2, g._dst, self.outs[i], "dst")
                    return g
                return build
        try:
            self.full = TeamGemms(self.threads, builder(per))
            self.tail = TeamGemms(self.threads, builder(rows_tail)) if rows_tail else self.full
        except Unsupported as e:                        # a shape only oneDNN's reference code serves
            self.full = self.tail = None
            self.fallback, self.why = Im2colLayer(w, b, p), str(e)
            return
        # compile (or load) now: never in a timed call
        self(np.zeros(p.x_shape, dt))

    def _handles(self, team):
        prims, streams, argss, nargss, _, dsts = team.handles
        return prims, streams, argss, nargss, dsts

    def __call__(self, x):
        if self.fallback is not None:
            return self.fallback(x)
        p = self.problem
        x = np.asarray(x)
        if x.shape != p.x_shape or x.dtype != self.dtype:
            raise BadInput(f"x is {x.dtype} {x.shape}; this layer takes {self.dtype} {p.x_shape}")
        x = np.ascontiguousarray(x)
        self.full.ensure_open()
        self.tail.ensure_open()
        y = np.empty(p.y_shape, self.dtype)
        status = np.zeros(self.threads, np.int64)
        failed_at = np.zeros((self.threads, 2), np.int64)
        implicit_team(x, y, p.layout == "NCHW", p.P, p.Q, p.R, p.S, *p.stride, *p.pad, *p.dilation,
                      self.per, self.bufs, self.stages, self.outs, self.full.calls, self._handles(self.full),
                      self._handles(self.tail), np.zeros(1, np.int64), status, failed_at)
        for t in (self.full, self.tail):
            t.unpoint()
        self.full.check(status, failed_at, "implicit_packed's team")
        return y

    def info(self) -> dict:
        p = self.problem
        if self.fallback is not None:
            out = self.fallback.info()
            out["schedule"] = {"mode": "im2col_packed", "why": self.why}
            return out
        form = ("y[m0:m1] (rows, K) = cols[m0:m1] (rows, R*S*C) @ W^T (R*S*C, K), filter packed"
                if p.layout == "NHWC" else
                "out (pixels, K) = cols_n[i0:i1] (pixels, R*S*C) @ W^T (R*S*C, K), filter packed; "
                "out stored into y_n[:, i0:i1] (K, pixels)")
        return {"layout": p.layout, "columns": f"never whole: {self.why}",
                "gemm": {**self.full.info(), "form": form},
                "schedule": {"mode": "team", "run": f"a team of {self.threads} thread(s) claiming slices"}}

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
            return
        self.full.close()
        self.tail.close()


def accepts(problem: ConvProblem, dtype) -> str | None:
    """Any geometry with groups=1; fp32 (oneDNN's GEMM) and fp64 (im2col_packed's BLAS path)."""
    from ..dtypes import canonical
    name = canonical(dtype)
    if name not in DTYPES:
        return f"implicit_packed computes in {', '.join(DTYPES)}, not {name}"
    if problem.groups != 1:
        return f"implicit_packed serves groups=1 only, not {problem.groups} (im2col_packed serves groups)"
    return None


def prepare(w, b, problem: ConvProblem) -> ImplicitLayer:
    return build_layer(accepts, lambda: ImplicitLayer(w, b, problem), w, b, problem)


def run(x, w, b, problem: ConvProblem) -> np.ndarray:
    return run_once(prepare, x, w, b, problem)
