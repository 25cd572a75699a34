"""2-D convolution on NVIDIA GPUs (CuPy): ``direct``, ``im2col``, ``implicit_gemm``, ``winograd``.

    run_direct_gpu(x, w, b, problem)          kernels/cuda/conv2d.cu conv2d_direct_{f32,f16}
    im2col_gpu(x, w, b, problem)              column matrix built on the device + cuBLAS GEMM
    run_implicit_gemm_gpu(x, w, b, problem)   conv2d_implicit_gemm{,128}_{f32,f16}: tiles of the
                                              column matrix gathered into shared memory, never
                                              stored; 64x64x16 tiles (4x4 per thread), or
                                              128x128x8 (8x8) on layers with enough such tiles
    run_winograd_gpu(x, w, b, problem)        F(2x2,3x3): input/output transform kernels, filter
                                              transform and the 16 batched GEMMs in CuPy (cuBLAS)

Arguments are CuPy arrays (NCHW activations, KCRS filter, ``b`` None when the problem has no
bias); the result is a new CuPy array.  Every launch goes on CuPy's current stream, so the
harness's CUDA events and graph capture see it.  :func:`accepts_gpu` says which shapes and dtypes
each variant serves (None, or the reason), without a GPU.

Without a GPU the kernels' index math is checked by NumPy emulations that follow the kernels
slot by slot: :func:`emulate_implicit_gemm` (block tiles, the thread -> shared-memory-slot maps,
the im2col gather with padding zeros, groups, the thread -> output map) and
:func:`emulate_winograd` (tile enumeration, the input patch gather, the transforms written as the
kernel writes them, the crop of partial tiles).  tests/test_conv_gpu.py compares both with
:func:`kernels.conv.conv2d_reference`, and also runs the unchanged .cu on the CPU (g++ with a shim:
one std::thread per CUDA thread, std::barrier for __syncthreads) through these launchers.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..dtypes import canonical
from ..errors import BadInput, MissingDependency, Unsupported
from .geometry import ConvProblem

SOURCE = Path(__file__).resolve().parent.parent / "cuda" / "conv2d.cu"
VARIANTS = ("direct", "im2col", "implicit_gemm", "winograd")
DTYPES = {"direct": ("fp32", "fp16"), "im2col": ("fp32", "fp16"),
          "implicit_gemm": ("fp32", "fp16"), "winograd": ("fp32",)}
SUFFIX = {"fp32": "f32", "fp16": "f16"}
ENTRIES = ("conv2d_direct_f32", "conv2d_direct_f16", "conv2d_implicit_gemm_f32",
           "conv2d_implicit_gemm_f16", "conv2d_implicit_gemm128_f32", "conv2d_implicit_gemm128_f16",
           "conv2d_winograd_input_f32", "conv2d_winograd_output_f32")

# Must equal the #defines in conv2d.cu (tests/test_conv_gpu.py checks).
THREADS = 256
BM, BN, BK = 64, 64, 16
# implicit-GEMM tiles: kernel stem -> (BM, BN, BK); the large one once the layer has enough
# 128x128 output tiles to give every SM of an H100 (132) two blocks
TILES = {"conv2d_implicit_gemm": (BM, BN, BK), "conv2d_implicit_gemm128": (128, 128, 8)}
BIG_TILE_MIN_BLOCKS = 264
MAX_BLOCKS = 65535 * 32          # grid-stride kernels: enough blocks to fill any current GPU

# Winograd F(2x2,3x3), Lavin & Gray (correlation form); the kernels hard-code B^T and A^T.
WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=np.float64)
WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
WINO_M = 2


# -- what each variant serves ------------------------------------------------------------------
def accepts_gpu(variant: str, problem: ConvProblem, dtype) -> str | None:
    """None if the GPU ``variant`` computes ``problem`` at ``dtype``, else the reason (no GPU needed)."""
    if variant not in VARIANTS:
        raise BadInput(f"GPU conv variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
    name = canonical(dtype)
    p = problem
    if name not in DTYPES[variant]:
        return f"{variant} on the GPU computes in {', '.join(DTYPES[variant])}, not {name}"
    if p.layout != "NCHW":
        return f"{variant} on the GPU takes NCHW activations only, not {p.layout}"
    if variant == "winograd":
        if (p.R, p.S) != (3, 3):
            return f"winograd F(2x2,3x3) needs a 3x3 filter, not {p.R}x{p.S}"
        if p.stride != (1, 1):
            return f"winograd needs stride 1, not {p.stride}"
        if p.dilation != (1, 1):
            return f"winograd needs dilation 1, not {p.dilation}"
        if p.groups != 1:
            return f"winograd here serves groups=1 only, not {p.groups}"
    if p.N * p.P * p.Q >= 2**31 or p.N * p.C * p.H * p.W >= 2**62:
        return f"{variant} on the GPU indexes pixels with int32; N*P*Q={p.N * p.P * p.Q} is too large"
    return None


def workspace_bytes(variant: str, problem: ConvProblem, dtype) -> int:
    """Device memory one call needs besides x, w, b and y (column matrix, Winograd operands)."""
    p, item = problem, np.dtype(np.float16 if canonical(dtype) == "fp16" else np.float32).itemsize
    if variant == "im2col":
        padded = p.N * p.C * (p.H + 2 * p.pad[0]) * (p.W + 2 * p.pad[1])
        return item * (padded + p.C * p.R * p.S * p.N * p.P * p.Q + p.K * p.N * p.P * p.Q)
    if variant == "winograd":
        T = p.N * -(-p.P // WINO_M) * -(-p.Q // WINO_M)
        return 4 * 16 * (p.C * T + p.K * T + p.K * p.C)
    return 0


def device_bytes(variant: str, problem: ConvProblem, dtype) -> int:
    """Estimate of all device memory of one case: inputs, output and workspace."""
    item = 2 if canonical(dtype) == "fp16" else 4
    return problem.elements * item + workspace_bytes(variant, problem, dtype)


# -- compilation ------------------------------------------------------------------------------
def read_source() -> str:
    return SOURCE.read_text()


def source_constants() -> dict:
    """``#define MB_CONV_X n`` / ``MB_WINO_X n`` of the .cu as {"CONV_X": n}."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"#define\s+MB_(\w+)\s+(\d+)", read_source())}


def nvrtc_compile(arch: str = "sm_90", *, cubin: bool = True, source: str | None = None) -> bytes:
    """NVRTC (no GPU needed) with the launcher's options; errors carry the compiler's log."""
    from fusion import pointwise_cuda as pc
    return pc.nvrtc_compile(read_source() if source is None else source, arch, cubin=cubin,
                            filename=SOURCE.name)


def _function(symbol: str, device: int):
    from fusion.pointwise_cuda import raw_function
    return raw_function(SOURCE, symbol, device)


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise MissingDependency("cupy", "the GPU conv variants", "pip install cupy-cuda13x") from e
    return cupy


def _kernel(stem: str, dtype):
    cp = _cupy()
    return _function(f"{stem}_{SUFFIX[canonical(dtype)]}", cp.cuda.runtime.getDevice())


def _check(x, w, b, problem: ConvProblem, variant: str):
    """Shapes, dtypes and contiguity of device arrays; returns the precision name."""
    if not isinstance(problem, ConvProblem):
        raise BadInput(f"problem must be a ConvProblem, got {type(problem).__name__}")
    for name, a, want in (("x", x, problem.x_shape), ("w", w, problem.w_shape)):
        if tuple(a.shape) != want:
            raise BadInput(f"{name} has shape {tuple(a.shape)}; expected {want} for {problem.describe()}")
    if problem.bias and (b is None or tuple(b.shape) != problem.b_shape):
        raise BadInput(f"b must have shape {problem.b_shape} (problem has bias=True)")
    if not problem.bias and b is not None:
        raise BadInput("b was given but the problem has bias=False; pass b=None")
    dts = {a.dtype for a in (x, w, b) if a is not None}
    if len(dts) != 1:
        raise BadInput(f"x, w, b mix dtypes {sorted(map(str, dts))}; use one")
    name = canonical(dts.pop())
    reason = accepts_gpu(variant, problem, name)
    if reason:
        raise Unsupported(reason)
    for n, a in (("x", x), ("w", w), ("b", b)):
        if a is not None and not a.flags.c_contiguous:
            raise BadInput(f"{n} must be C-contiguous on the GPU")
    return name


def _geom(p: ConvProblem) -> tuple:
    """The kernels' 16 int32 geometry arguments, in the .cu's order."""
    vals = (p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.P, p.Q, *p.stride, *p.pad, *p.dilation, p.groups)
    return tuple(np.int32(v) for v in vals)


def _null(b):
    return np.uint64(0) if b is None else b


def _grid_stride_blocks(total: int) -> int:
    return max(1, min(-(-total // THREADS), MAX_BLOCKS))


# -- launchers --------------------------------------------------------------------------------
def run_direct_gpu(x, w, b, problem: ConvProblem):
    dt = _check(x, w, b, problem, "direct")
    cp = _cupy()
    y = cp.empty(problem.y_shape, dtype=x.dtype)
    total = problem.N * problem.K * problem.P * problem.Q
    _kernel("conv2d_direct", dt)((_grid_stride_blocks(total),), (THREADS,),
                                 (x, w, _null(b), y) + _geom(problem))
    return y


def implicit_gemm_kernel(problem: ConvProblem) -> str:
    """The implicit-GEMM entry (stem) for the layer: 128x128 tiles when there are enough of them
    (and Kg fills at least one 128-column tile), 64x64 otherwise."""
    p = problem
    tm, tn = -(-(p.N * p.P * p.Q) // 128), -(-p.Kg // 128)
    if p.Kg >= 128 and tm * tn * p.groups >= BIG_TILE_MIN_BLOCKS:
        return "conv2d_implicit_gemm128"
    return "conv2d_implicit_gemm"


def implicit_gemm_grid(problem: ConvProblem, stem: str | None = None) -> tuple:
    """Blocks: (M tiles, Kg tiles, groups)."""
    p = problem
    bm, bn, _ = TILES[stem or implicit_gemm_kernel(p)]
    return (-(-(p.N * p.P * p.Q) // bm), -(-p.Kg // bn), p.groups)


def run_implicit_gemm_gpu(x, w, b, problem: ConvProblem, stem: str | None = None):
    """``stem`` forces a tile (a key of :data:`TILES`); by default :func:`implicit_gemm_kernel`."""
    dt = _check(x, w, b, problem, "implicit_gemm")
    cp = _cupy()
    y = cp.empty(problem.y_shape, dtype=x.dtype)
    stem = stem or implicit_gemm_kernel(problem)
    grid = implicit_gemm_grid(problem, stem)
    if grid[1] > 65535 or grid[2] > 65535:
        raise Unsupported(f"implicit_gemm grid {grid} exceeds the GPU's y/z limit 65535")
    _kernel(stem, dt)(grid, (THREADS,), (x, w, _null(b), y) + _geom(problem))
    return y


def im2col_gpu(x, w, b, problem: ConvProblem):
    """Explicit column matrix (C*R*S, N*P*Q) built on the device (one strided copy of the padded
    input, as on the CPU), one cuBLAS GEMM per group (batched), one transpose of the (K, N, P, Q)
    result."""
    _check(x, w, b, problem, "im2col")
    cp = _cupy()
    from cupy.lib.stride_tricks import as_strided
    return im2col_xp(cp, as_strided, x, w, b, problem)


def im2col_xp(xp, as_strided, x, w, b, problem: ConvProblem):
    """The im2col computation with array module ``xp`` (CuPy on the GPU; NumPy in the tests)."""
    p = problem
    (ph, pw), (sh, sw), (dh, dw) = p.pad, p.stride, p.dilation
    xp_ = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    sN, sC, sH, sW = xp_.strides
    view = as_strided(xp_, (p.C, p.R, p.S, p.N, p.P, p.Q),
                      (sC, sH * dh, sW * dw, sN, sH * sh, sW * sw))
    G, Cg, Kg, RS, NPQ = p.groups, p.Cg, p.Kg, p.R * p.S, p.N * p.P * p.Q
    cols = xp.ascontiguousarray(view).reshape(G, Cg * RS, NPQ)            # the column matrix
    yk = xp.matmul(w.reshape(G, Kg, Cg * RS), cols)                       # (G, Kg, NPQ)
    yk = yk.reshape(p.K, p.N, p.P, p.Q)
    if p.bias:
        yk += b[:, None, None, None]
    return xp.ascontiguousarray(yk.transpose(1, 0, 2, 3))


def winograd_tiles(problem: ConvProblem) -> tuple:
    """``(tP, tQ, T)``: 2x2 output tiles per column, per row, in all."""
    tP, tQ = -(-problem.P // WINO_M), -(-problem.Q // WINO_M)
    return tP, tQ, problem.N * tP * tQ


def winograd_filter_transform(w, xp=np):
    """U[u*4 + v, k, c] = (G g_kc G^T)[u, v], in w's dtype (computed in it)."""
    G = xp.asarray(WINO_G, dtype=w.dtype)
    U = xp.einsum("ur,kcrs,vs->uvkc", G, w, G)
    return xp.ascontiguousarray(U.reshape(16, w.shape[0], w.shape[1]))


def run_winograd_gpu(x, w, b, problem: ConvProblem):
    """F(2x2,3x3): filter transform (CuPy, every call), input transform kernel -> V (16, C, T),
    16 batched GEMMs M = U @ V (cuBLAS), output transform kernel (+ bias, crop)."""
    _check(x, w, b, problem, "winograd")
    cp = _cupy()
    p = problem
    tP, tQ, T = winograd_tiles(p)
    U = winograd_filter_transform(w, cp)
    V = cp.empty((16, p.C, T), dtype=cp.float32)
    _kernel("conv2d_winograd_input", "fp32")(
        (_grid_stride_blocks(p.C * T),), (THREADS,),
        (x, V) + tuple(np.int32(v) for v in (p.N, p.C, p.H, p.W, p.pad[0], p.pad[1], tP, tQ)))
    M = cp.matmul(U, V)                                                    # (16, K, T)
    y = cp.empty(p.y_shape, dtype=cp.float32)
    _kernel("conv2d_winograd_output", "fp32")(
        (_grid_stride_blocks(p.K * T),), (THREADS,),
        (M, _null(b), y) + tuple(np.int32(v) for v in (p.N, p.K, p.P, p.Q, tP, tQ)))
    return y


RUNNERS = {"direct": run_direct_gpu, "im2col": im2col_gpu, "implicit_gemm": run_implicit_gemm_gpu,
           "winograd": run_winograd_gpu}


# -- NumPy emulation of the implicit-GEMM kernel -------------------------------------------------
def a_slots(threads: int = THREADS, bm: int = BM, bk: int = BK) -> tuple:
    """Per (thread, i): the A-tile slot ``(ml, kl)`` the kernel's fetch/stash fills."""
    idx = np.arange(threads)[:, None] + np.arange(bm * bk // threads)[None, :] * threads
    return idx % bm, idx // bm


def b_slots(threads: int = THREADS, bn: int = BN, bk: int = BK) -> tuple:
    """Per (thread, i): the B-tile slot ``(kl, jl)``."""
    idx = np.arange(threads)[:, None] + np.arange(bn * bk // threads)[None, :] * threads
    return idx % bk, idx // bk


def out_slots(threads: int = THREADS, bm: int = BM, bn: int = BN) -> tuple:
    """Per (thread, i, j): the output slot ``(ml, jl)`` = (tm + 16 i, 64 (j // 4) + tn*4 + j % 4),
    tm = tid % 16, tn = tid // 16 (256 threads; BM a multiple of 16, BN of 64)."""
    tid = np.arange(threads)
    tm, tn = tid % 16, tid // 16
    i, j = np.arange(bm // 16), np.arange(bn // 16)
    ml = tm[:, None, None] + 16 * i[None, :, None] + 0 * j[None, None, :]
    jl = tn[:, None, None] * 4 + 0 * i[None, :, None] + (64 * (j // 4) + j % 4)[None, None, :]
    return ml, jl


def a_start(p: ConvProblem, kl) -> tuple:
    """``(c, r, s)`` of A slots at reduction column ``kl`` (the kernel's divisions, done once)."""
    RS = p.R * p.S
    c, rs = kl // RS, kl % RS
    return c, rs // p.S, rs % p.S


def a_advance(p: ConvProblem, c, r, s, BK: int = BK) -> tuple:
    """The kernel's step of ``(c, r, s)`` by BK reduction columns: one carry per digit."""
    RS = p.R * p.S
    dC, dR, dS = BK // RS, (BK % RS) // p.S, BK % p.S
    s = s + dS
    carry = s >= p.S
    s, r = np.where(carry, s - p.S, s), r + carry
    r = r + dR
    carry = r >= p.R
    r, c = np.where(carry, r - p.R, r), c + carry
    return c + dC, r, s


def _a_gather(xc, p: ConvProblem, g: int, m, c, r, s):
    """The values the kernel loads for A slots at GEMM row ``m`` and reduction coordinates
    ``(c, r, s)`` (arrays of one shape): x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw], zero
    for padding, rows past M and c past C/groups (the tail of the last slice)."""
    M = p.N * p.P * p.Q
    ok = (m < M) & (c < p.Cg)
    q, t = m % p.Q, m // p.Q
    pp, n = t % p.P, t // p.P
    hi = pp * p.stride[0] - p.pad[0] + r * p.dilation[0]
    wi = q * p.stride[1] - p.pad[1] + s * p.dilation[1]
    ok &= (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
    vals = np.zeros(m.shape, dtype=xc.dtype)
    vals[ok] = xc[n[ok], g * p.Cg + c[ok], hi[ok], wi[ok]]
    return vals


def emulate_implicit_gemm(x, w, b, problem: ConvProblem, BM: int = BM, BN: int = BN, BK: int = BK,
                          threads: int = THREADS, stats: dict | None = None) -> np.ndarray:
    """conv2d_implicit_gemm as the kernel computes it, block by block and slice by slice.

    For every block (m tile, channel tile, group) and every BK-slice of the reduction, the A and B
    tiles are filled through the kernel's thread -> slot maps (:func:`a_slots`, :func:`b_slots`),
    each slot holding exactly the element the kernel's fetch reads (zero for padding and for slots
    past M, Kg or Kgemm); the accumulator gets ``A^T @ B`` of the slice; the output goes through
    the kernel's thread -> output map (:func:`out_slots`; tiles it cannot serve are stored whole).
    Accumulates in x's dtype (pass float64 to check the index math exactly).  ``stats`` (a dict)
    receives counts: blocks, slices, padding zeros loaded.  NCHW only, as the kernel.
    """
    p = problem
    if p.layout != "NCHW":
        raise Unsupported("the implicit-GEMM kernel takes NCHW only")
    if threads % BM or (BM * BK) % threads or (BN * BK) % threads:
        raise BadInput(f"tile BM={BM} BN={BN} BK={BK} does not split over {threads} threads "
                       "(the kernel needs threads % BM == 0 and BM*BK, BN*BK multiples of threads)")
    x, w = np.asarray(x), np.asarray(w)
    dt = x.dtype
    M, Kg, Kgemm = p.N * p.P * p.Q, p.Kg, p.Cg * p.R * p.S
    wflat = w.reshape(p.K, Kgemm)
    y = np.full(p.y_shape, np.nan, dtype=dt)              # NaN: a slot never written shows up
    am_l, ak_l = a_slots(threads, BM, BK)
    bk_l, bj_l = b_slots(threads, BN, BK)
    use_map = threads == 256 and BM % 16 == 0 and BN % 64 == 0
    om_l, oj_l = out_slots(threads, BM, BN) if use_map else (None, None)
    st = {"blocks": 0, "slices": 0, "a_zero_slots": 0, "a_slots": 0}
    for g in range(p.groups):
        for m0 in range(0, M, BM):
            for j0 in range(0, Kg, BN):
                st["blocks"] += 1
                acc = np.zeros((BM, BN), dtype=dt)
                c, r, s = a_start(p, ak_l)                 # per (thread, i), carried over slices
                for k0 in range(0, Kgemm, BK):
                    st["slices"] += 1
                    A = np.full((BK, BM), np.nan, dtype=dt)
                    if (c * p.R * p.S + r * p.S + s != k0 + ak_l).any():
                        raise AssertionError("carried (c, r, s) left the reduction column")
                    vals = _a_gather(x, p, g, m0 + am_l, c, r, s)
                    c, r, s = a_advance(p, c, r, s, BK)
                    A[ak_l, am_l] = vals
                    st["a_slots"] += vals.size
                    st["a_zero_slots"] += int(np.count_nonzero(vals == 0))
                    B = np.full((BK, BN), np.nan, dtype=dt)
                    kk, j = k0 + bk_l, j0 + bj_l
                    ok = (kk < Kgemm) & (j < Kg)
                    bv = np.zeros(kk.shape, dtype=dt)
                    bv[ok] = wflat[g * Kg + j[ok], kk[ok]]
                    B[bk_l, bj_l] = bv
                    acc += A.T @ B                        # NaN if a slot was never filled
                if use_map:
                    ml, jl = om_l.ravel(), oj_l.ravel()
                else:
                    ml, jl = (a.ravel() for a in np.meshgrid(np.arange(BM), np.arange(BN), indexing="ij"))
                m, jj = m0 + ml, j0 + jl
                ok = (m < M) & (jj < Kg)
                m, jj, ml, jl = m[ok], jj[ok], ml[ok], jl[ok]
                n, pq = m // (p.P * p.Q), m % (p.P * p.Q)
                k = g * Kg + jj
                bias = np.asarray(b, dtype=dt)[k] if b is not None else 0
                y[n, k, pq // p.Q, pq % p.Q] = acc[ml, jl] + bias
    if stats is not None:
        stats.update(st)
    return y


# -- NumPy emulation of the Winograd kernels ---------------------------------------------------
def _bt(d0, d1, d2, d3):
    """wino_bt of the .cu: B^T applied to one 4-vector."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _at(m0, m1, m2, m3):
    """wino_at of the .cu: A^T applied to one 4-vector."""
    return m0 + m1 + m2, m1 - m2 - m3


def emulate_winograd_input(x, problem: ConvProblem) -> np.ndarray:
    """conv2d_winograd_input_f32 for every (c, t) at once: V (16, C, T), x's dtype."""
    p = problem
    x = np.asarray(x)
    tP, tQ, T = winograd_tiles(p)
    idx = np.arange(p.C * T)
    t, c = idx % T, idx // T
    tq, tp, n = t % tQ, (t // tQ) % tP, t // (tQ * tP)
    h0, w0 = tp * WINO_M - p.pad[0], tq * WINO_M - p.pad[1]
    d = [[None] * 4 for _ in range(4)]
    for i in range(4):
        for j in range(4):
            hi, wi = h0 + i, w0 + j
            ok = (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
            v = np.zeros(idx.shape, dtype=x.dtype)
            v[ok] = x[n[ok], c[ok], hi[ok], wi[ok]]
            d[i][j] = v
    tmp = [[None] * 4 for _ in range(4)]
    for j in range(4):
        col = _bt(d[0][j], d[1][j], d[2][j], d[3][j])
        for u in range(4):
            tmp[u][j] = col[u]
    V = np.empty((16, p.C * T), dtype=x.dtype)
    for u in range(4):
        row = _bt(*tmp[u])
        for v in range(4):
            V[u * 4 + v] = row[v]
    return V.reshape(16, p.C, T)


def emulate_winograd_output(Mt, b, problem: ConvProblem) -> np.ndarray:
    """conv2d_winograd_output_f32 for every (k, t): y (N, K, P, Q) from M (16, K, T)."""
    p = problem
    tP, tQ, T = winograd_tiles(p)
    Mt = np.asarray(Mt).reshape(16, p.K * T)
    idx = np.arange(p.K * T)
    t, k = idx % T, idx // T
    tq, tp, n = t % tQ, (t // tQ) % tP, t // (tQ * tP)
    m = [[Mt[u * 4 + v] for v in range(4)] for u in range(4)]
    tmp = [[None] * 4 for _ in range(2)]
    for v in range(4):
        o = _at(m[0][v], m[1][v], m[2][v], m[3][v])
        tmp[0][v], tmp[1][v] = o
    bias = np.asarray(b)[k] if b is not None else 0
    y = np.full((p.N, p.K, p.P, p.Q), np.nan, dtype=Mt.dtype)
    for i in range(2):
        o = _at(*tmp[i])
        pp = tp * WINO_M + i
        for j in range(2):
            q = tq * WINO_M + j
            ok = (pp < p.P) & (q < p.Q)
            y[n[ok], k[ok], pp[ok], q[ok]] = (o[j] + bias)[ok]
    return y


def emulate_winograd(x, w, b, problem: ConvProblem) -> np.ndarray:
    """The GPU Winograd path in NumPy: filter transform, input kernel, 16 GEMMs, output kernel."""
    reason = accepts_gpu("winograd", problem, "fp32")
    if reason:
        raise Unsupported(reason)
    U = winograd_filter_transform(np.asarray(w))
    V = emulate_winograd_input(x, problem)
    return emulate_winograd_output(np.matmul(U, V), b, problem)
