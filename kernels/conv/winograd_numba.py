"""Winograd F(m x m, 3x3) with fused numba transforms: the CPU ``winograd`` and ``winograd_f2``
variants.

Same algorithm and matrices as :mod:`kernels.conv.winograd` (which keeps the NumPy formulation as
the readable one); what changes is where the transforms run.  There, each transform is a handful
of whole-array NumPy passes over strided views (one pass per nonzero of the transform matrix,
every pass through memory).  Here, with activations channels-last inside:

- one copy makes the zero-padded NHWC input (whole tiles; it is also NCHW's layout change);
- input transform: one parallel iteration per tile; each of the tile's alpha x alpha values is a
  vector over channels, so B^T d B runs as short loops over contiguous channels that LLVM
  vectorizes, and writes ``V (alpha^2, tiles, C)``: the input is read about (alpha/m)^2 times
  (2.25x for F4), V written once;
- the alpha^2 GEMMs ``M[uv] (tiles, K) = V[uv] @ U[uv]`` stay with BLAS (one stacked matmul);
  the filter transform ``U (alpha^2, C, K)`` is one GEMM with the Kronecker product G (x) G;
- output transform: one parallel iteration per tile, vectors over filters, ``A^T M A`` plus the
  bias written into an NHWC block of whole tiles; NCHW output is one transposing copy of it.

The transforms are straight-line code generated from the exact matrices (:func:`kernel_source`):
zero entries are skipped and +-1 entries become adds, so F(4x4)'s input transform costs its
real 12 multiplies per 1-D pass rather than 36, without writing the formulas by hand.
ResNet-50 res2 3x3 at N=8 (2 cores): input transform 0.9 ms, GEMMs 3.3 ms, output 0.7 ms.
"""
from __future__ import annotations

import functools

import numpy as np

from .winograd_math import matrices, toom_cook


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


# The kernels, with {placeholders} filled by generated straight-line code.  Activations are
# channels-last inside (NHWC, zero-padded to whole tiles), so every value of a tile is a vector over
# channels: the innermost loop of both kernels runs over contiguous channels (input) or filters
# (output) with the tile's straight-line transform as its body, which LLVM vectorizes.  (Tiles as
# the inner loop, over NCHW planes, stayed scalar: their loads are strided by m.)
#   input:  one parallel iteration per tile: d[i][j] = xp[n, h0+i, w0+j, :], V[u*alpha+v, t, :] =
#           (B^T d B)[u][v]; V is (alpha^2, tiles, C), the GEMM's left operand as stored;
#   GEMMs:  M[uv] (tiles, K) = V[uv] (tiles, C) @ U[uv]^T (C, K), alpha^2 of them in one matmul;
#   output: one parallel iteration per tile: y[n, p0+i, q0+j, :] = (A^T M A)[i][j] + bias, into an
#           NHWC block of whole tiles (cropped by the caller's view).
_SOURCE = """
def winograd_input_transform(xp, V, tP, tQ):
    N, Hp, Wp, C = xp.shape
    for t in prange(N * tP * tQ):
        n = t // (tP * tQ)
        tp = (t // tQ) % tP
        tq = t % tQ
        h0 = tp * M_
        w0 = tq * M_
        tmp = np.empty((ALPHA, ALPHA, C), dtype=xp.dtype)
{input_tile}


def winograd_output_transform(Mt, y, bias, tP, tQ):
    N, Pp, Qp, K = y.shape
    for t in prange(N * tP * tQ):
        n = t // (tP * tQ)
        p0 = ((t // tQ) % tP) * M_
        q0 = (t % tQ) * M_
        for k in range(K):
            bk = bias[k]
{output_tile}
"""


def kernel_source(m: int, dtype="float32") -> str:
    """The Python source of both transform kernels for F(m x m, 3x3), before numba compiles it."""
    AT, _, BT = (np.array([[float(v) for v in r] for r in M_]) for M_ in toom_cook(m))
    alpha = m + 2
    ind = " " * 12
    # Two separable passes, each a few loops over channels with 2 x alpha memory streams: one
    # loop holding all alpha^2 loads and stores had too many pointers for LLVM's runtime alias
    # checks and stayed scalar.
    lines = []
    for j in range(alpha):                                   # tmp[u, j] = (B^T d)[u, j]
        lines.append(f"for c in range(C):")
        lines += [f"    d{i} = xp[n, h0 + {i}, w0 + {j}, c]" for i in range(alpha)]
        lines += [f"    tmp[{u}, {j}, c] = " + _lincomb(BT[u], lambda i: f"d{i}") for u in range(alpha)]
    for u in range(alpha):                                   # V[u, v] = (tmp B)[u, v]
        lines.append(f"for c in range(C):")
        lines += [f"    e{j} = tmp[{u}, {j}, c]" for j in range(alpha)]
        lines += [f"    V[{u * alpha + v}, t, c] = " + _lincomb(BT[v], lambda j: f"e{j}") for v in range(alpha)]
    ind = " " * 8
    input_tile = "\n".join(ind + ln for ln in lines)
    ind = " " * 12
    lines = [f"m{u}_{v} = Mt[{u * alpha + v}, t, k]" for u in range(alpha) for v in range(alpha)]
    lines += [f"a{i}_{v} = " + _lincomb(AT[i], lambda u, v=v: f"m{u}_{v}")            # A^T M
              for i in range(m) for v in range(alpha)]
    lines += [f"y[n, p0 + {i}, q0 + {j}, k] = bk + (" + _lincomb(AT[j], lambda v, i=i: f"a{i}_{v}") + ")"
              for i in range(m) for j in range(m)]
    output_tile = "\n".join(ind + ln for ln in lines)
    return (_SOURCE.replace("{input_tile}", input_tile).replace("{output_tile}", output_tile)
            .replace("ALPHA", str(alpha)).replace("M_", str(m)).replace("FT(", f"np.{np.dtype(dtype).name}("))


@functools.lru_cache(maxsize=None)
def _kernels(m: int, dtype: str):
    """Compile (once per tile size and dtype, then kept in the kernel cache under a hash of the
    generated source: kernels.jit) the two transform kernels."""
    import hashlib

    from numba import prange

    from ..jit import njit
    source = kernel_source(m, dtype)
    key = hashlib.sha1(source.encode()).hexdigest()
    # __name__: numba rebuilds a cached function's environment by importing its module
    ns = {"__name__": __name__, "np": np, "prange": prange}
    exec(compile(source, f"winograd_f{m}_{dtype}", "exec"), ns)  # noqa: S102
    jit = njit(parallel=True, source_key=key)
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
    """``U = G g G^T`` of every (k, c), laid out ``(alpha^2, C, K)``: the right operand of the
    GEMMs as stored.  One GEMM: ``U[uv] = sum_rs (G kron G)[uv, rs] g[rs]`` with the filter taps
    as rows of a (9, C*K) matrix, so the output lands in its layout with no transpose (an einsum
    in float64, or tensordots and a transpose, took 13-22 ms per call at C = K = 256)."""
    _, G, _ = matrices(m, np.float64)
    alpha = m + 2
    K, C, R, S = w.shape
    taps = np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0)).reshape(R * S, C * K)
    U = np.kron(G, G).astype(w.dtype) @ taps                      # (alpha^2, C*K)
    return U.reshape(alpha * alpha, C, K)


def conv2d_winograd_numba(x: np.ndarray, w: np.ndarray, b, problem, m: int = 4) -> np.ndarray:
    """``x`` in ``problem.layout``, KCRS 3x3 ``w`` -> ``y`` in ``problem.layout``; stride 1,
    dilation 1, groups 1 (checked by the caller, :func:`kernels.conv.winograd.conv2d_winograd`)."""
    p = problem
    dt = x.dtype
    x_t, y_t = _kernels(m, dt.name)
    alpha = m + 2
    tP, tQ = -(-p.P // m), -(-p.Q // m)
    T = p.N * tP * tQ
    (ph, pw) = p.pad
    # Zero-padded NHWC input covering whole tiles: one copy (and the layout change for NCHW).
    xp = _workspace("xp", (p.N, tP * m + 2, tQ * m + 2, p.C), dt)
    xp[...] = 0
    rows, cols = min(p.H, xp.shape[1] - ph), min(p.W, xp.shape[2] - pw)
    src = x if p.layout == "NHWC" else x.transpose(0, 2, 3, 1)
    xp[:, ph:ph + rows, pw:pw + cols, :] = src[:, :rows, :cols, :]
    V = _workspace("V", (alpha * alpha, T, p.C), dt)
    x_t(xp, V, tP, tQ)
    M = _workspace("M", (alpha * alpha, T, p.K), dt)
    np.matmul(V, filter_transform(w, m), out=M)               # alpha^2 BLAS GEMMs (T, C) @ (C, K)
    yb = _workspace("y", (p.N, tP * m, tQ * m, p.K), dt)
    bias = np.asarray(b, dtype=dt) if b is not None else np.zeros(p.K, dtype=dt)
    y_t(M, yb, bias, tP, tQ)
    y = yb[:, :p.P, :p.Q, :]
    # Always a copy: yb is the workspace, and the caller's result must survive the next call
    # (ascontiguousarray would hand out yb itself for NHWC when P and Q are multiples of m).
    return np.array(y if p.layout == "NHWC" else y.transpose(0, 3, 1, 2), order="C", copy=True)
