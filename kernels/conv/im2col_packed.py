"""``im2col_packed``: im2col built as a layer: a parallel column-matrix kernel and one oneDNN
matmul per chunk of images, the filter packed at build; a 1x1 convolution (stride 1, no
padding) is one GEMM on the input itself.

The GEMMs of :mod:`kernels.conv.im2col`, batched over images and groups in one call each, in
the form that writes ``y`` in its own layout (no transposing copy afterwards):

    NHWC:  y (N*P*Q, G, K/G)  = cols (N*P*Q, G, R*S*C/G) @ W_g^T (R*S*C/G, K/G)   [per g]
           the filter is the GEMM's right operand: packed once into oneDNN's blocked layout;
           the bias is the matmul's own (per column).
    NCHW:  y_n (G, K/G, P*Q) = W_g (K/G, C/G*R*S) @ cols_n (G, C/G*R*S, P*Q)       [per n, g]
           the filter is the left operand, one matrix broadcast over the images (oneDNN reads
           it in place; the column matrix is copied into oneDNN's blocks as any GEMM's right
           operand is); the bias is a per-row ``binary_add`` post-op.

1x1, stride 1, no padding: ``cols`` *is* the input (NHWC: ``x`` as ``(N*H*W, C)``; NCHW: each
image ``x_n`` as ``(C, H*W)``), so no column matrix is built and the layer is that one GEMM.

Otherwise the column matrix is built by a numba kernel, parallel over images and channels
(NCHW) or output pixels (NHWC), zeros where a tap falls in the padding, for a chunk of images at
a time (at most ``CHUNK_BYTES``; the DeepBench speech layers' matrices would otherwise take
gigabytes), and multiplied before the next chunk is built.  Workspace and GEMMs are made at
build; ``y`` is new on every call.  fp64 runs the same views on NumPy's BLAS (kernels.conv.gemm).
"""
from __future__ import annotations

import numba
import numpy as np

from ..errors import BadInput
from ..jit import njit
from .direct import inside
from .gemm import strided_gemm
from .geometry import ConvProblem, build_layer, run_once

DTYPES = ("fp32", "fp64")
CHUNK_BYTES = 64 << 20      # column-matrix workspace bound (a chunk holds at least one image)


@njit(parallel=True)
def columns_nchw(x, cols, n0, R, S, sh, sw, ph, pw, dh, dw):
    """cols[i, c, r, s, p, q] = x[n0 + i, c, p*sh - ph + r*dh, q*sw - pw + s*dw] (0 outside);
    ``cols`` is (images, C, R, S, P, Q).  The columns of a row whose tap falls inside the input
    are found once per (tap, row) (direct.inside) and copied between views indexed by the bare
    loop variable: an offset index would keep numba's negative-index select in the loop, and
    LLVM would leave it scalar (kernels/conv/winograd_packed.py)."""
    _, C, H, W = x.shape
    ni, P, Q = cols.shape[0], cols.shape[4], cols.shape[5]
    for job in numba.prange(ni * C):
        i = job // C
        c = job % C
        n = n0 + i
        for r in range(R):
            for s in range(S):
                off_w = s * dw - pw
                q0, q1 = inside(off_w, sw, W, Q)
                for p in range(P):
                    h = p * sh - ph + r * dh
                    row = cols[i, c, r, s, p]
                    if h < 0 or h >= H or q1 <= q0:
                        for q in range(Q):
                            row[q] = 0
                        continue
                    for q in range(q0):
                        row[q] = 0
                    for q in range(q1, Q):
                        row[q] = 0
                    dst = row[q0:q1]
                    src = x[n, c, h, q0 * sw + off_w:(q1 - 1) * sw + off_w + 1:sw]
                    for a in range(q1 - q0):
                        dst[a] = src[a]


@njit(parallel=True)
def columns_nhwc(x, cols, n0, R, S, sh, sw, ph, pw, dh, dw):
    """cols[i, p, q, g, r, s, cg] = x[n0 + i, p*sh - ph + r*dh, q*sw - pw + s*dw, g*Cg + cg]
    (0 outside); ``cols`` is (images, P, Q, G, R, S, C/G): each group's reduction slice is
    contiguous."""
    _, H, W, C = x.shape
    ni, P, Q, G = cols.shape[0], cols.shape[1], cols.shape[2], cols.shape[3]
    Cg = cols.shape[6]
    for job in numba.prange(ni * P):
        i = job // P
        p = job % P
        n = n0 + i
        for q in range(Q):
            for g in range(G):
                for r in range(R):
                    h = p * sh - ph + r * dh
                    for s in range(S):
                        wi = q * sw - pw + s * dw
                        out = cols[i, p, q, g, r, s]
                        if h < 0 or h >= H or wi < 0 or wi >= W:
                            for c in range(Cg):
                                out[c] = 0
                        else:
                            src = x[n, h, wi, g * Cg:(g + 1) * Cg]
                            for c in range(Cg):
                                out[c] = src[c]


def is_pointwise(p: ConvProblem) -> bool:
    """A 1x1 convolution whose column matrix is its input: stride 1, no padding."""
    return (p.R, p.S) == (1, 1) and p.stride == (1, 1) and p.pad == (0, 0)


class Im2colLayer:
    """The column matrix and the GEMMs for one problem and filter: ``layer(x) -> y``.  One GEMM
    per group and chunk size (a oneDNN matmul of four dimensions with a per-row bias is served
    only by its reference code, so groups are not a batch axis here)."""

    def __init__(self, w, b, problem: ConvProblem):
        p = self.problem = problem
        w = np.asarray(w)
        self.dtype = dt = w.dtype
        G, Kg, Cg, RS, PQ = p.groups, p.Kg, p.Cg, p.R * p.S, p.P * p.Q
        self.pointwise = is_pointwise(p)
        per_image = p.C * RS * PQ * dt.itemsize
        self.images = p.N if self.pointwise else max(1, min(p.N, CHUNK_BYTES // max(1, per_image)))
        self.cols = None if self.pointwise else np.empty((self.images, p.C * RS * PQ), dt)
        bias = np.asarray(b, dt) if p.bias else None
        y = np.empty(p.y_shape, dt)               # a layout template: the GEMMs are built on its views
        x = np.zeros(p.x_shape, dt) if self.pointwise else None
        wg = w.reshape(G, Kg, Cg, p.R, p.S)
        if p.layout == "NHWC":   # W_g^T (R*S*C/G, K/G): the reduction in the order of the columns
            self.filters = [np.ascontiguousarray(wg[g].transpose(2, 3, 1, 0).reshape(RS * Cg, Kg)) for g in range(G)]
            biases = [None if bias is None else bias[g * Kg:(g + 1) * Kg].reshape(1, Kg) for g in range(G)]
        else:                    # W_g (1, K/G, C/G*R*S): one matrix broadcast over the images
            self.filters = [np.ascontiguousarray(wg[g].reshape(1, Kg, Cg * RS)) for g in range(G)]
            biases = [None if bias is None else bias[g * Kg:(g + 1) * Kg].reshape(1, Kg, 1) for g in range(G)]
        self.gemms = {}          # images in a chunk -> one GEMM per group
        for n in sorted({self.images, p.N % self.images or self.images}):
            srcs, dsts = self._operands(x, y, 0, n)
            if p.layout == "NHWC":
                self.gemms[n] = [strided_gemm(s, f, d, bias=bg) for s, f, d, bg in zip(srcs, self.filters, dsts, biases)]
            else:
                self.gemms[n] = [strided_gemm(f, s, d, packed=False, bias=bg)
                                 for s, f, d, bg in zip(srcs, self.filters, dsts, biases)]
        if not self.pointwise:                     # compile (or load) now, never in a timed call
            one = ConvProblem(1, 1, 1, 1, 1, 1, 1, layout=p.layout)
            kernel = columns_nchw if p.layout == "NCHW" else columns_nhwc
            kernel(np.zeros(one.x_shape, dt), np.empty((1,) * (6 if p.layout == "NCHW" else 7), dt),
                   0, 1, 1, 1, 1, 0, 0, 1, 1)

    def _operands(self, x, y, n0: int, n: int) -> tuple:
        """Per group, the columns of images n0..n0+n (the input itself when pointwise, else the
        workspace, which holds that chunk) and the part of ``y`` they give, as the GEMM's views."""
        p = self.problem
        G, Kg, Cg, RS, PQ = p.groups, p.Kg, p.Cg, p.R * p.S, p.P * p.Q
        if p.layout == "NHWC":
            a = x[n0:n0 + n].reshape(n * PQ, G, Cg) if self.pointwise else self.cols[:n].reshape(n * PQ, G, RS * Cg)
            out = y[n0:n0 + n].reshape(n * PQ, G, Kg)
            return [a[:, g] for g in range(G)], [out[:, g] for g in range(G)]
        a = (x[n0:n0 + n] if self.pointwise else self.cols[:n]).reshape(n, G, Cg * RS, PQ)
        out = y[n0:n0 + n].reshape(n, G, Kg, PQ)
        return [a[:, g] for g in range(G)], [out[:, g] for g in range(G)]

    def __call__(self, x):
        p = self.problem
        x = np.asarray(x)
        if x.shape != p.x_shape or x.dtype != self.dtype:
            raise BadInput(f"x is {x.dtype} {x.shape}; this layer takes {self.dtype} {p.x_shape}")
        x = np.ascontiguousarray(x)
        y = np.empty(p.y_shape, self.dtype)
        kernel = columns_nchw if p.layout == "NCHW" else columns_nhwc
        for n0 in range(0, p.N, self.images):
            n = min(self.images, p.N - n0)
            if not self.pointwise:
                shape = ((n, p.C, p.R, p.S, p.P, p.Q) if p.layout == "NCHW"
                         else (n, p.P, p.Q, p.groups, p.R, p.S, p.Cg))
                kernel(x, self.cols[:n].reshape(shape), n0, p.R, p.S, *p.stride, *p.pad, *p.dilation)
            srcs, dsts = self._operands(x, y, n0, n)
            for gemm, src, f, dst in zip(self.gemms[n], srcs, self.filters, dsts):
                if p.layout == "NHWC":
                    gemm(src, dst)
                else:
                    gemm(f, dst, src)
        return y

    def info(self) -> dict:
        p = self.problem
        g = self.gemms[self.images][0]
        if p.layout == "NHWC":
            form = "y (N*P*Q, K/G) = cols (N*P*Q, R*S*C/G) @ W_g^T (R*S*C/G, K/G), filter packed"
        else:
            form = "y_n (K/G, P*Q) = W_g (K/G, C/G*R*S) @ cols_n (C/G*R*S, P*Q), batched over images"
        cols = ("none: a 1x1, stride-1, unpadded layer multiplies its input in place" if self.pointwise
                else f"built per chunk of {self.images} image(s)")
        return {"layout": p.layout, "columns": cols,
                "gemm": {**g.info(), "form": form, "calls": len(self.gemms[self.images]) * -(-p.N // self.images)}}

    def close(self) -> None:
        for gs in self.gemms.values():
            for g in gs:
                g.close()


def accepts(problem: ConvProblem, dtype) -> str | None:
    """Any geometry; fp32 (oneDNN's GEMM) and fp64 (BLAS)."""
    from ..dtypes import canonical
    name = canonical(dtype)
    if name not in DTYPES:
        return f"im2col_packed computes in {', '.join(DTYPES)}, not {name}"
    return None


def prepare(w, b, problem: ConvProblem) -> Im2colLayer:
    return build_layer(accepts, lambda: Im2colLayer(w, b, problem), w, b, problem)


def run(x, w, b, problem: ConvProblem) -> np.ndarray:
    return run_once(prepare, x, w, b, problem)
