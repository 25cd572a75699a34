"""Winograd F(m x m, 3x3) with fused numba transforms: the CPU ``winograd`` variant's fast path.

Same algorithm and matrices as :mod:`kernels.conv.winograd` (which keeps the NumPy formulation as
the readable one); what changes is where the transforms run.  There, each transform is a handful
of whole-array NumPy passes over a padded copy and over strided views (one pass per nonzero of
the transform matrix, every pass through memory).  Here:

- input transform: one parallel numba loop over (image, channel) planes; each 6x6 tile is gathered
  from the unpadded input (padding is a bounds test, no padded copy), transformed in registers and
  scattered to ``V (alpha^2, C, tiles)``: the input is read about (alpha/m)^2 times (2.25x for
  F4), V written once;
- the alpha^2 GEMMs ``M[u,v] = U[u,v] @ V[u,v]`` stay with BLAS (one stacked ``np.matmul``);
- output transform: one parallel loop over (image, filter) planes, reading the tile's alpha^2
  values of ``M``, applying ``A^T . A``, adding the bias and writing the cropped m x m block
  straight into the output (no image-sized temporary, no transpose).

The transforms are straight-line code generated from the exact matrices (:func:`_straight_line`):
zero entries are skipped and +-1 entries become adds, so F(4x4)'s input transform costs its
real 12 multiplies per 1-D pass rather than 36, without writing the formulas by hand.
"""
from __future__ import annotations

import functools

import numpy as np

from .winograd import matrices, toom_cook

THREADS_NOTE = "numba prange over planes; GEMMs on NumPy's BLAS threads"


def _term(coef: float, operand: str) -> str:
    # Constants are literals of the storage type (FT): a bare 4.0 would promote fp32 math to fp64.
    if coef == 1.0:
        return f"+ {operand}"
    if coef == -1.0:
        return f"- {operand}"
    return f"+ FT({coef!r}) * {operand}" if coef > 0 else f"- FT({-coef!r}) * {operand}"


def _lincomb(row, operand) -> str:
    """``sum_j row[j] * operand(j)`` as source, zero entries skipped, +-1 as adds."""
    terms = [_term(float(c), operand(j)) for j, c in enumerate(row) if float(c) != 0.0]
    if not terms:
        return "0.0"
    e = " ".join(terms)
    return e[2:] if e.startswith("+ ") else "-" + e[2:]


# The kernels, with {placeholders} filled by generated straight-line code.  One parallel iteration
# owns one plane of one image and works a tile row at a time; every tile's alpha x alpha values
# live in scalar locals (registers), so a tile costs its loads, the transform's nonzero terms and
# its stores, with no intermediate arrays:
#   input:  rows h0 .. h0+alpha of the plane -> strip (alpha, Wp), zero-padded (padding costs no
#           branch per element); per tile d = strip[:, b:b+alpha], t = B^T d, buf[., tile] = t B;
#           then the plane's alpha^2 runs of tP*tQ values go to V, one contiguous stretch each
#           (written tile row by tile row they were 14-value pieces for ResNet's 56x56 planes:
#           partial cache lines).
#   output: the plane's alpha^2 runs of M are read the same way into buf; per tile
#           rows(i) = (A^T M A)[i, .] + bias into an (m, tQ*m) block, whose rows (cropped to Q) go to y.
_SOURCE = """
def winograd_input_transform(x, V, tP, tQ, ph, pw):
    N, C, H, W = x.shape
    Wp = tQ * M_ + 2
    nt = tP * tQ
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        strip = np.zeros((ALPHA, Wp), dtype=x.dtype)
        sd = np.empty((ALPHA, ALPHA, tQ), dtype=x.dtype)
        buf = np.empty((ALPHA * ALPHA, nt), dtype=x.dtype)
        wlo, whi = max(0, -pw), min(W, Wp - pw)
        for tp in range(tP):
            h0 = tp * M_ - ph
            for i in range(ALPHA):
                hh = h0 + i
                if 0 <= hh < H:
                    for j in range(wlo, whi):
                        strip[i, pw + j] = x[n, c, hh, j]
                else:
                    for j in range(Wp):
                        strip[i, j] = 0.0
            # De-interleaved: sd[i, j, tq] = strip[i, tq*m + j], so the tile loop below reads and
            # writes unit-stride in tq and LLVM can vectorize it across tiles.
            for i in range(ALPHA):
                for j in range(ALPHA):
                    for tq in range(tQ):
                        sd[i, j, tq] = strip[i, tq * M_ + j]
            t0 = tp * tQ
            for tq in range(tQ):
{input_tile}
        for uv in range(ALPHA * ALPHA):
            V[uv, c, n * nt:(n + 1) * nt] = buf[uv]


def winograd_output_transform(Mt, y, bias, has_bias, tP, tQ):
    N, K, P, Q = y.shape
    nt = tP * tQ
    for nk in prange(N * K):
        n, k = nk // K, nk % K
        buf = np.empty((ALPHA * ALPHA, nt), dtype=y.dtype)
        for uv in range(ALPHA * ALPHA):
            buf[uv] = Mt[uv, k, n * nt:(n + 1) * nt]
        block = np.empty((M_, M_, tQ), dtype=y.dtype)     # [i, j, tq]: unit stride in tq
        bk = bias[k] if has_bias else y.dtype.type(0.0)
        for tp in range(tP):
            t0 = tp * tQ
            for tq in range(tQ):
{output_tile}
            for i in range(min(M_, P - tp * M_)):
                for q in range(Q):
                    y[n, k, tp * M_ + i, q] = block[i, q % M_, q // M_]
"""


def kernel_source(m: int, dtype="float32") -> str:
    """The Python source of both transform kernels for F(m x m, 3x3), before numba compiles it."""
    AT, _, BT = (np.array([[float(v) for v in r] for r in M_]) for M_ in toom_cook(m))
    alpha = m + 2
    ind = " " * 16
    lines = [f"d{i}_{j} = sd[{i}, {j}, tq]" for i in range(alpha) for j in range(alpha)]
    lines += [f"t{u}_{j} = " + _lincomb(BT[u], lambda i, j=j: f"d{i}_{j}")          # B^T d
              for u in range(alpha) for j in range(alpha)]
    lines += [f"buf[{u * alpha + v}, t0 + tq] = " + _lincomb(BT[v], lambda j, u=u: f"t{u}_{j}")  # (B^T d) B
              for u in range(alpha) for v in range(alpha)]
    input_tile = "\n".join(ind + ln for ln in lines)
    lines = [f"m{u}_{v} = buf[{u * alpha + v}, t0 + tq]" for u in range(alpha) for v in range(alpha)]
    lines += [f"a{i}_{v} = " + _lincomb(AT[i], lambda u, v=v: f"m{u}_{v}")            # A^T M
              for i in range(m) for v in range(alpha)]
    lines += [f"block[{i}, {j}, tq] = bk + (" + _lincomb(AT[j], lambda v, i=i: f"a{i}_{v}") + ")"
              for i in range(m) for j in range(m)]
    output_tile = "\n".join(ind + ln for ln in lines)
    return (_SOURCE.replace("{input_tile}", input_tile).replace("{output_tile}", output_tile)
            .replace("ALPHA", str(alpha)).replace("M_", str(m)).replace("FT(", f"np.{np.dtype(dtype).name}("))


@functools.lru_cache(maxsize=None)
def _kernels(m: int, dtype: str):
    """Compile (once per tile size and dtype) the two transform kernels."""
    import numba
    from numba import prange

    ns = {"np": np, "prange": prange}
    exec(compile(kernel_source(m, dtype), f"<winograd F({m}x{m},3x3) transforms>", "exec"), ns)  # noqa: S102
    jit = numba.njit(parallel=True, cache=False)
    return jit(ns["winograd_input_transform"]), jit(ns["winograd_output_transform"])


_WORKSPACE: dict = {}


def _workspace(name: str, shape: tuple, dtype) -> np.ndarray:
    """The transformed input and the GEMM output, kept between calls like a library's workspace:
    for ResNet-50 res2 at N=8 each is 14 MB, and first-touching fresh pages on every call cost
    more than the output transform.  One buffer per name: the last shape wins."""
    buf = _WORKSPACE.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = _WORKSPACE[name] = np.empty(shape, dtype=dtype)
    return buf


def filter_transform(w: np.ndarray, m: int) -> np.ndarray:
    """``U = G g G^T`` of every (k, c): ``(alpha^2, K, C)``, computed in float64 and rounded once
    (the filter transform is per layer, not per call, in a deployed network: its cost is not
    the point here, its rounding is)."""
    _, G, _ = matrices(m, np.float64)
    alpha = m + 2
    K, C = w.shape[:2]
    U = np.einsum("ur,kcrs,vs->uvkc", G, np.asarray(w, np.float64), G, optimize=True)
    return np.ascontiguousarray(U.reshape(alpha * alpha, K, C), dtype=w.dtype)


def conv2d_winograd_numba(xc: np.ndarray, w: np.ndarray, b, pad: tuple, P: int, Q: int,
                          m: int = 4) -> np.ndarray:
    """NCHW ``xc`` (contiguous), KCRS 3x3 ``w`` -> NCHW ``y (N, K, P, Q)``; stride 1, dilation 1,
    groups 1 (checked by the caller, :func:`kernels.conv.winograd.conv2d_winograd`)."""
    x_t, y_t = _kernels(m, xc.dtype.name)
    N, C = xc.shape[:2]
    K = w.shape[0]
    alpha = m + 2
    tP, tQ = -(-P // m), -(-Q // m)
    T = N * tP * tQ
    V = _workspace("V", (alpha * alpha, C, T), xc.dtype)
    x_t(xc, V, tP, tQ, pad[0], pad[1])
    M = _workspace("M", (alpha * alpha, K, T), xc.dtype)
    np.matmul(filter_transform(w, m), V, out=M)              # alpha^2 BLAS GEMMs (K, C) @ (C, T)
    y = np.empty((N, K, P, Q), dtype=xc.dtype)
    has_bias = b is not None
    bias = np.asarray(b, dtype=xc.dtype) if has_bias else np.zeros(1, dtype=xc.dtype)
    y_t(M, y, bias, has_bias, tP, tQ)
    return y
