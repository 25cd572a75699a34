"""Weight arrangement for the GEMM steps: ``group_gemm`` and ``pretranspose``.

A :class:`Projection` computes ``x @ W.T`` for the G gate blocks of one canonical weight
matrix ``W (G*H, K)`` and leaves the result where the pointwise stage wants it.  Its output
buffer has one of two layouts, both seen by the pointwise stage as a ``(M, G, H)`` view:

- grouped:   ``(M, G*H)``: one GEMM with N = G*H;
- per gate:  ``(G, M, H)``: G GEMMs with N = H, each writing a contiguous block.

The array module ``xp`` (NumPy, CuPy) is a parameter, so the same arrangement serves every backend.
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


class Projection:
    def __init__(self, xp, w, num_gates: int, *, grouped: bool, pretransposed: bool):
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
        """buf <- x @ W.T, with one GEMM (grouped) or G GEMMs (per gate)."""
        outs = [buf] if self.grouped else list(buf)
        for mat, out in zip(self.mats, outs):
            matmul(self.xp, x, mat if self.pretransposed else mat.T, out)
        return buf

    @property
    def gemms_per_call(self) -> int:
        return len(self.mats)
