"""The GEMM of the ``_packed`` conv variants: oneDNN's matmul with the filter packed once, or BLAS.

    from kernels.conv.gemm import strided_gemm
    mm = strided_gemm(src, weights, dst, bias=b)   # build: weights packed now
    mm(src, dst)                                    # each call: dst <- src @ weights (+ b)

Operands are NumPy views (batched, strided, broadcast: :mod:`kernels.onednn.strided`), so a
convolution hands the GEMM its activations where they lie.  In fp32 the provider is oneDNN's
``matmul`` primitive (brgemm on x86), its weights reordered once into the blocked layout it
prefers: the CPU form of pretransposing the weights, which OpenBLAS cannot offer, and NumPy's
OpenBLAS may moreover be held to an older kernel (``OPENBLAS_CORETYPE``).  Elsewhere (fp64, which
oneDNN's CPU matmul does not compute; oneDNN not loaded; a shape only its reference code serves)
the same call runs ``np.matmul`` on the same views and ``info()`` says why (``fallback`` when
oneDNN would have run but could not).
"""
from __future__ import annotations

import numpy as np

from ..errors import MissingDependency, Unsupported


def onednn_reason(dtype) -> tuple:
    """(None, False) when oneDNN's matmul serves ``dtype`` here; else (why not, fallback)."""
    if np.dtype(dtype) != np.float32:
        return f"oneDNN's matmul is used for fp32; {np.dtype(dtype).name} runs on NumPy's BLAS", False
    from ..onednn import lib as L
    try:
        L.load()
    except MissingDependency as e:
        return f"oneDNN not loaded: {e}", True
    return None, False


class BlasGemm:
    """``np.matmul`` on the views, the bias added after: the fallback provider."""

    def __init__(self, weights, bias, packed: bool, reason: str, fallback: bool):
        self.weights = np.array(weights, copy=True) if packed else None   # fixed at build, as packed
        self.bias = None if bias is None else np.asarray(bias)
        self.reason, self.fallback = reason, fallback

    def __call__(self, src, dst, weights=None):
        np.matmul(src, self.weights if weights is None else weights, out=dst)
        if self.bias is not None:
            dst += self.bias
        return dst

    def info(self) -> dict:
        out = {"provider": "blas", "reason": self.reason}
        if self.fallback:
            out["fallback"] = True
        return out

    def close(self) -> None:
        pass


def strided_gemm(src, weights, dst, *, packed: bool = True, bias=None):
    """The provider for ``dst = src @ weights (+ bias)`` on these views (module docstring)."""
    reason, fallback = onednn_reason(dst.dtype)
    if reason is None:
        from ..onednn.strided import StridedMatmul
        try:
            return StridedMatmul(src, weights, dst, packed=packed, bias=bias)
        except Unsupported as e:          # a layout only oneDNN's reference code serves
            reason, fallback = str(e), True
    return BlasGemm(weights, bias, packed, reason, fallback)
