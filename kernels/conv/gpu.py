"""2-D convolution on NVIDIA GPUs (CuPy): ``direct``, ``im2col``, ``implicit_gemm``, ``winograd``
(F(4x4,3x3), as on the CPU) and ``winograd_f2`` (F(2x2,3x3)).

    run_direct_gpu(x, w, b, problem)          kernels/cuda/conv2d.cu conv2d_direct{,_nhwc}_{f32,f16}
    im2col_gpu(x, w, b, problem)              column matrix built on the device + cuBLAS GEMM
    run_implicit_gemm_gpu(x, w, b, problem)   conv2d_implicit_gemm{,128}{,_nhwc}_{f32,f16}: tiles
                                              of the column matrix gathered into shared memory,
                                              never stored; 64x64x16 tiles (4x4 per thread), or
                                              128x128x8 (8x8) on layers with enough such tiles
    run_winograd_f2_gpu(x, w, b, problem)        F(2x2,3x3): conv2d_winograd_{input,output}{,_nhwc}_f32,
                                              filter transform and the 16 batched GEMMs in CuPy
    run_winograd_gpu(x, w, b, problem)     F(4x4,3x3): conv2d_winograd_{input,output}{,_nhwc}_f32,
                                              filter transform and the 36 batched GEMMs in CuPy

A variant's name is the stem of everything that belongs to it: the registry row and its NVTX range
``conv/<variant>/cupy``, the launcher ``run_<variant>_gpu`` and the .cu entries ``conv2d_<variant>*``.

Arguments are CuPy arrays: activations in ``problem.layout`` (NCHW or NHWC, each with its own
kernel instance), the filter always KCRS, ``b`` None when the problem has no bias; the result is a
new CuPy array in ``problem.layout``.  Every launch goes on CuPy's current stream, so the
harness's CUDA events and graph capture see it.  :func:`accepts_gpu` says which shapes, layouts
and dtypes each variant serves (None, or the reason), without a GPU.

Without a GPU the kernels' index math is checked by NumPy emulations that follow the kernels
slot by slot, in both layouts: :func:`emulate_direct` (the thread -> output map and the flat
offsets), :func:`emulate_implicit_gemm` (block tiles, the thread -> shared-memory-slot maps, the
carried reduction digits, the im2col gather with padding zeros, groups, the thread -> output map)
and :func:`emulate_winograd` (F(2x2) and F(4x4): tile enumeration, the input patch gather, the
transforms written as the kernels write them, the GEMM operand layouts, the crop of partial
tiles).  tests/test_conv_gpu.py compares them with :func:`kernels.conv.conv2d_reference`, and also
runs the unchanged .cu on the CPU (g++ with a shim: one std::thread per CUDA thread,
std::barrier for __syncthreads) through these launchers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..dtypes import canonical
from ..errors import BadInput, MissingDependency, Unsupported
from . import winograd as cpu_winograd
from .geometry import ConvProblem

SOURCE = Path(__file__).resolve().parent.parent / "cuda" / "conv2d.cu"


class Algorithm(NamedTuple):
    """One GPU conv algorithm, defined here once: microbench registers one record from each row
    (``conv/<name>/cupy``), and the tables below (VARIANTS, DTYPES, KERNEL_STEMS, RUNNERS) derive
    from it."""
    launcher: str        # its run function in this module (RUNNERS holds the function)
    dtypes: tuple        # the precisions it computes
    stems: tuple         # the conv2d.cu kernel stems it launches, each built for ``dtypes``
    about: str           # what it does, as `microbench variants conv` shows it


ALGORITHMS = {
    "direct": Algorithm("run_direct_gpu", ("fp32", "fp16"), ("conv2d_direct",),
                        "CUDA C, one thread per output element running the seven loops "
                        "(kernels/cuda/conv2d.cu conv2d_direct)"),
    "im2col": Algorithm("im2col_gpu", ("fp32", "fp16"), (),
                        "column matrix built on the device (strided copy in CuPy), one cuBLAS GEMM "
                        "per group"),
    "implicit_gemm": Algorithm("run_implicit_gemm_gpu", ("fp32", "fp16"),
                               ("conv2d_implicit_gemm", "conv2d_implicit_gemm128"),
                               "CUDA C GEMM tiles (64x64x16, 4x4 per thread; 128x128x8, 8x8, on "
                               "large layers), column-matrix slices gathered into shared memory on "
                               "the fly"),
    "winograd_f2": Algorithm("run_winograd_f2_gpu", ("fp32",),
                             ("conv2d_winograd_f2_input", "conv2d_winograd_f2_output"),
                             "F(2x2,3x3): CUDA C input/output transforms, filter transform and 16 "
                             "batched cuBLAS GEMMs in CuPy; 3x3 stride 1 dilation 1 groups 1"),
    "winograd": Algorithm("run_winograd_gpu", ("fp32",),
                          ("conv2d_winograd_input", "conv2d_winograd_output"),
                          "F(4x4,3x3): CUDA C input/output transforms on 6x6 tiles, filter "
                          "transform and 36 batched cuBLAS GEMMs in CuPy; 3x3 stride 1 dilation 1 "
                          "groups 1"),
}
VARIANTS = tuple(ALGORITHMS)
DTYPES = {name: a.dtypes for name, a in ALGORITHMS.items()}
SUFFIX = {"fp32": "f32", "fp16": "f16"}
# One kernel instance per layout: the entry's name carries the layout between stem and dtype.
LAYOUT_TAG = {"NCHW": "", "NHWC": "_nhwc"}
# The .cu's kernel stems and the precisions each is built for.
KERNEL_STEMS = {stem: a.dtypes for a in ALGORITHMS.values() for stem in a.stems}


def symbol(stem: str, dtype, layout: str = "NCHW") -> str:
    """The .cu entry of kernel ``stem`` for ``dtype`` and activation ``layout``."""
    if stem not in KERNEL_STEMS:
        raise BadInput(f"conv kernel {stem!r} is unknown; allowed: {', '.join(KERNEL_STEMS)}")
    if layout not in LAYOUT_TAG:
        raise BadInput(f"layout {layout!r} is not served on the GPU; allowed: {', '.join(LAYOUT_TAG)}")
    name = canonical(dtype)
    if name not in KERNEL_STEMS[stem]:
        raise BadInput(f"{stem} is built for {', '.join(KERNEL_STEMS[stem])}, not {name}")
    return f"{stem}{LAYOUT_TAG[layout]}_{SUFFIX[name]}"


ENTRIES = tuple(symbol(s, d, lay) for s, dts in KERNEL_STEMS.items() for lay in LAYOUT_TAG for d in dts)

# Must equal the #defines in conv2d.cu (tests/test_conv_gpu.py checks).
THREADS = 256
WARP = 32
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
# Winograd F(4x4,3x3): the CPU variant's matrices (kernels/conv/winograd.py derives them from the
# points 0, +-1, +-2 and infinity); the .cu's WinoF4 hard-codes B^T and A^T, the tests check it.
WINO4_AT, WINO4_G, WINO4_BT = cpu_winograd.matrices(4)
WINO4_M = 4


class WinogradTile(NamedTuple):
    m: int                 # output tile m x m; input tile alpha x alpha, alpha = m + 2
    AT: np.ndarray
    G: np.ndarray
    BT: np.ndarray

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def name(self) -> str:
        return f"F({self.m}x{self.m},3x3)"


WINOGRAD = {"winograd_f2": WinogradTile(WINO_M, WINO_AT, WINO_G, WINO_BT),
            "winograd": WinogradTile(WINO4_M, WINO4_AT, WINO4_G, WINO4_BT)}
WINOGRAD_BY_M = {t.m: t for t in WINOGRAD.values()}


def _tile(m: int) -> WinogradTile:
    if m not in WINOGRAD_BY_M:
        raise BadInput(f"Winograd output tile m={m!r} has no GPU kernel; allowed: "
                       f"{', '.join(map(str, WINOGRAD_BY_M))}")
    return WINOGRAD_BY_M[m]


# -- what each variant serves ------------------------------------------------------------------
def accepts_gpu(variant: str, problem: ConvProblem, dtype) -> str | None:
    """None if the GPU ``variant`` computes ``problem`` at ``dtype``, else the reason (no GPU needed)."""
    if variant not in VARIANTS:
        raise BadInput(f"GPU conv variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
    name = canonical(dtype)
    p = problem
    if name not in DTYPES[variant]:
        return f"{variant} on the GPU computes in {', '.join(DTYPES[variant])}, not {name}"
    if p.layout not in LAYOUT_TAG:
        return f"{variant} on the GPU takes {' or '.join(LAYOUT_TAG)} activations, not {p.layout}"
    if variant in WINOGRAD:
        tile = WINOGRAD[variant].name
        if (p.R, p.S) != (3, 3):
            return f"{variant} {tile} needs a 3x3 filter, not {p.R}x{p.S}"
        if p.stride != (1, 1):
            return f"{variant} {tile} needs stride 1, not {p.stride}"
        if p.dilation != (1, 1):
            return f"{variant} {tile} needs dilation 1, not {p.dilation}"
        if p.groups != 1:
            return f"{variant} {tile} here serves groups=1 only, not {p.groups}"
    if p.N * p.P * p.Q >= 2**31 or p.N * p.C * p.H * p.W >= 2**62:
        return (f"{variant} on the GPU indexes pixels with int32; N*P*Q={p.N * p.P * p.Q} is too "
                f"large (allowed: below 2**31)")
    return None


def workspace_bytes(variant: str, problem: ConvProblem, dtype) -> int:
    """Device memory one call needs besides x, w, b and y (column matrix, Winograd operands)."""
    p, item = problem, np.dtype(np.float16 if canonical(dtype) == "fp16" else np.float32).itemsize
    if variant == "im2col":
        padded = p.N * p.C * (p.H + 2 * p.pad[0]) * (p.W + 2 * p.pad[1])
        return item * (padded + p.C * p.R * p.S * p.N * p.P * p.Q + p.K * p.N * p.P * p.Q)
    if variant in WINOGRAD:
        t = WINOGRAD[variant]
        T = winograd_tiles(p, t.m)[2]
        return 4 * t.alpha ** 2 * (p.C * T + p.K * T + p.K * p.C)
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


def _function(symbol_: str, device: int):
    from fusion.pointwise_cuda import raw_function
    return raw_function(SOURCE, symbol_, device)


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise MissingDependency("cupy", "the GPU conv variants", "pip install cupy-cuda13x") from e
    return cupy


def _kernel(stem: str, dtype, layout: str = "NCHW"):
    cp = _cupy()
    return _function(symbol(stem, dtype, layout), cp.cuda.runtime.getDevice())


def _check(x, w, b, problem: ConvProblem, variant: str):
    """Shapes, dtypes and contiguity of device arrays; returns the precision name."""
    if not isinstance(problem, ConvProblem):
        raise BadInput(f"problem must be a ConvProblem, got {type(problem).__name__}")
    for name, a, want, order in (("x", x, problem.x_shape, problem.layout),
                                 ("w", w, problem.w_shape, "KCRS")):
        if tuple(a.shape) != want:
            raise BadInput(f"{name} has shape {tuple(a.shape)}; expected {want} ({order}) for "
                           f"{problem.describe()}")
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
    _kernel("conv2d_direct", dt, problem.layout)((_grid_stride_blocks(total),), (THREADS,),
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


def _tile_of(stem: str) -> tuple:
    if stem not in TILES:
        raise BadInput(f"implicit-GEMM kernel {stem!r} is unknown; allowed: {', '.join(TILES)}")
    return TILES[stem]


def implicit_gemm_grid(problem: ConvProblem, stem: str | None = None) -> tuple:
    """Blocks: (M tiles, Kg tiles, groups)."""
    p = problem
    bm, bn, _ = _tile_of(stem or implicit_gemm_kernel(p))
    return (-(-(p.N * p.P * p.Q) // bm), -(-p.Kg // bn), p.groups)


def run_implicit_gemm_gpu(x, w, b, problem: ConvProblem, stem: str | None = None):
    """``stem`` forces a tile (a key of :data:`TILES`); by default :func:`implicit_gemm_kernel`."""
    dt = _check(x, w, b, problem, "implicit_gemm")
    stem = stem or implicit_gemm_kernel(problem)
    grid = implicit_gemm_grid(problem, stem)
    if grid[1] > 65535 or grid[2] > 65535:
        raise Unsupported(f"implicit_gemm grid {grid} exceeds the GPU's y/z limit 65535")
    cp = _cupy()
    y = cp.empty(problem.y_shape, dtype=x.dtype)
    _kernel(stem, dt, problem.layout)(grid, (THREADS,), (x, w, _null(b), y) + _geom(problem))
    return y


def im2col_gpu(x, w, b, problem: ConvProblem):
    """Explicit column matrix built on the device (one strided copy of the padded input, as on
    the CPU), one cuBLAS GEMM per group (batched), one transpose of the result into the layout."""
    _check(x, w, b, problem, "im2col")
    cp = _cupy()
    from cupy.lib.stride_tricks import as_strided
    return im2col_xp(cp, as_strided, x, w, b, problem)


def im2col_xp(xp, as_strided, x, w, b, problem: ConvProblem):
    """The im2col computation with array module ``xp`` (CuPy on the GPU; NumPy in the tests).

    NCHW: columns (G, Cg*R*S, N*P*Q), rows (c, r, s); Y_g = W_g (Kg, Cg*R*S) @ cols_g, a (K, N, P,
    Q) result transposed to NCHW.  NHWC: columns (G, N*P*Q, R*S*Cg), rows (r, s, c) so the copy
    reads each pixel's channels in order; Y_g = cols_g @ W_g^T (R*S*Cg, Kg), so with one group the
    (N*P*Q, K) result already is NHWC.
    """
    p = problem
    (ph, pw), (sh, sw), (dh, dw) = p.pad, p.stride, p.dilation
    G, Cg, Kg, RS, NPQ = p.groups, p.Cg, p.Kg, p.R * p.S, p.N * p.P * p.Q
    if p.layout == "NHWC":
        xp_ = xp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw else x
        sN, sH, sW, sC = xp_.strides
        view = as_strided(xp_, (G, p.N, p.P, p.Q, p.R, p.S, Cg),
                          (sC * Cg, sN, sH * sh, sW * sw, sH * dh, sW * dw, sC))
        cols = xp.ascontiguousarray(view).reshape(G, NPQ, RS * Cg)
        wt = w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 3, 4, 2, 1).reshape(G, RS * Cg, Kg)
        yk = xp.matmul(cols, wt)                                          # (G, NPQ, Kg)
        y = xp.ascontiguousarray(yk.transpose(1, 0, 2)).reshape(p.N, p.P, p.Q, p.K)
        if p.bias:
            y += b
        return y
    xp_ = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    sN, sC, sH, sW = xp_.strides
    view = as_strided(xp_, (p.C, p.R, p.S, p.N, p.P, p.Q),
                      (sC, sH * dh, sW * dw, sN, sH * sh, sW * sw))
    cols = xp.ascontiguousarray(view).reshape(G, Cg * RS, NPQ)            # the column matrix
    yk = xp.matmul(w.reshape(G, Kg, Cg * RS), cols)                       # (G, Kg, NPQ)
    yk = yk.reshape(p.K, p.N, p.P, p.Q)
    if p.bias:
        yk += b[:, None, None, None]
    return xp.ascontiguousarray(yk.transpose(1, 0, 2, 3))


def winograd_tiles(problem: ConvProblem, m: int = WINO_M) -> tuple:
    """``(tP, tQ, T)``: m x m output tiles per column, per row, in all."""
    _tile(m)
    tP, tQ = -(-problem.P // m), -(-problem.Q // m)
    return tP, tQ, problem.N * tP * tQ


def winograd_filter_transform(w, xp=np, m: int = WINO_M, layout: str = "NCHW"):
    """U[u*alpha + v] = (G g_kc G^T)[u, v], in w's dtype (computed in it): (alpha^2, K, C), the
    left operand of NCHW's U @ V, or (alpha^2, C, K), the right operand of NHWC's V @ U."""
    t = _tile(m)
    if layout not in LAYOUT_TAG:
        raise BadInput(f"layout {layout!r} is not served on the GPU; allowed: {', '.join(LAYOUT_TAG)}")
    G = xp.asarray(t.G, dtype=w.dtype)
    spec = "ur,kcrs,vs->uvck" if layout == "NHWC" else "ur,kcrs,vs->uvkc"
    U = xp.einsum(spec, G, w, G)
    return xp.ascontiguousarray(U.reshape(t.alpha ** 2, *U.shape[2:]))


def _run_winograd(x, w, b, problem: ConvProblem, variant: str):
    """Filter transform (CuPy, every call), input transform kernel -> V, alpha^2 batched GEMMs
    (cuBLAS), output transform kernel (+ bias, crop)."""
    _check(x, w, b, problem, variant)
    cp = _cupy()
    p, t = problem, WINOGRAD[variant]
    a2, nhwc = t.alpha ** 2, p.layout == "NHWC"
    stem = f"conv2d_{variant}"
    tP, tQ, T = winograd_tiles(p, t.m)
    U = winograd_filter_transform(w, cp, t.m, p.layout)
    V = cp.empty((a2, T, p.C) if nhwc else (a2, p.C, T), dtype=cp.float32)
    _kernel(f"{stem}_input", "fp32", p.layout)(
        (_grid_stride_blocks(p.C * T),), (THREADS,),
        (x, V) + tuple(np.int32(v) for v in (p.N, p.C, p.H, p.W, p.pad[0], p.pad[1], tP, tQ)))
    M = cp.matmul(V, U) if nhwc else cp.matmul(U, V)                       # (a2, T, K) | (a2, K, T)
    y = cp.empty(p.y_shape, dtype=cp.float32)
    _kernel(f"{stem}_output", "fp32", p.layout)(
        (_grid_stride_blocks(p.K * T),), (THREADS,),
        (M, _null(b), y) + tuple(np.int32(v) for v in (p.N, p.K, p.P, p.Q, tP, tQ)))
    return y


def run_winograd_f2_gpu(x, w, b, problem: ConvProblem):
    """F(2x2,3x3): 16 GEMMs over 4x4 input tiles."""
    return _run_winograd(x, w, b, problem, "winograd_f2")


def run_winograd_gpu(x, w, b, problem: ConvProblem):
    """F(4x4,3x3): 36 GEMMs over 6x6 input tiles (2.25x fewer multiplies than F(2x2) per output
    pixel, 4x fewer tiles; larger rounding: A^T's entries reach 8, G's 1/24)."""
    return _run_winograd(x, w, b, problem, "winograd")


RUNNERS = {name: globals()[a.launcher] for name, a in ALGORITHMS.items()}


# -- flat offsets of activations, as the kernels compute them ------------------------------------
def x_offset(p: ConvProblem, n, c, h, w):
    """Offset of x[n, c, h, w] (logical NCHW coordinates) in the layout's memory order."""
    if p.layout == "NHWC":
        return ((n * p.H + h) * p.W + w) * p.C + c
    return ((n * p.C + c) * p.H + h) * p.W + w


def y_offset(p: ConvProblem, n, k, pp, q):
    """Offset of y[n, k, p, q] (logical NCHW coordinates) in the layout's memory order."""
    if p.layout == "NHWC":
        return ((n * p.P + pp) * p.Q + q) * p.K + k
    return ((n * p.K + k) * p.P + pp) * p.Q + q


def _flat(a) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


# -- NumPy emulation of the direct kernel --------------------------------------------------------
def direct_thread_coords(p: ConvProblem, idx) -> tuple:
    """``(n, k, p, q)`` of the output element thread ``idx`` computes: the output's own order
    (NCHW q fastest, NHWC k fastest), so ``idx`` is also its offset in y."""
    if p.layout == "NHWC":
        k, t = idx % p.K, idx // p.K
        q, t = t % p.Q, t // p.Q
        return t // p.P, k, t % p.P, q
    q, t = idx % p.Q, idx // p.Q
    pp, t = t % p.P, t // p.P
    return t // p.K, t % p.K, pp, q


def emulate_direct(x, w, b, problem: ConvProblem) -> np.ndarray:
    """conv2d_direct{,_nhwc} for every thread at once: decomposition of the thread index, taps
    skipped outside the input, x and w read at the kernel's flat offsets, y written at ``idx``."""
    p = problem
    x, w = np.asarray(x), np.asarray(w)
    xf, wf = _flat(x), _flat(w)
    idx = np.arange(p.N * p.K * p.P * p.Q)
    n, k, pp, q = direct_thread_coords(p, idx)
    if not np.array_equal(y_offset(p, n, k, pp, q), idx):
        raise AssertionError("a thread's output element is not at its index")
    g = k // p.Kg
    h0, w0 = pp * p.stride[0] - p.pad[0], q * p.stride[1] - p.pad[1]
    acc = np.asarray(b, dtype=x.dtype)[k] if b is not None else np.zeros(idx.shape, dtype=x.dtype)
    RS = p.R * p.S
    for r in range(p.R):
        hi = h0 + r * p.dilation[0]
        for s in range(p.S):
            wi = w0 + s * p.dilation[1]
            ok = (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
            for c in range(p.Cg):
                xv = np.zeros(idx.shape, dtype=x.dtype)
                xv[ok] = xf[x_offset(p, n[ok], g[ok] * p.Cg + c, hi[ok], wi[ok])]
                acc = acc + xv * wf[k * p.Cg * RS + c * RS + r * p.S + s]
    y = np.full(idx.shape, np.nan, dtype=x.dtype)
    y[idx] = acc
    return y.reshape(p.y_shape)


# -- NumPy emulation of the implicit-GEMM kernel -------------------------------------------------
def a_slots(threads: int = THREADS, bm: int = BM, bk: int = BK, layout: str = "NCHW") -> tuple:
    """Per (thread, i): the A-tile slot ``(ml, kl)`` the kernel's fetch/stash fills.
    NCHW ``ml = idx % bm, kl = idx // bm`` (consecutive threads, consecutive pixels); NHWC
    ``kl = idx % bk, ml = idx // bk`` (consecutive threads, consecutive channels)."""
    idx = np.arange(threads)[:, None] + np.arange(bm * bk // threads)[None, :] * threads
    if layout == "NHWC":
        return idx // bk, idx % bk
    return idx % bm, idx // bm


def a_pad(bk: int, layout: str = "NCHW") -> int:
    """Words of padding per row of the A tile (the .cu's APAD): NHWC writes the tile down its
    columns, and 32/BK spreads a warp's 32 stores over the 32 banks."""
    return WARP // bk if layout == "NHWC" else 0


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


def reduction_column(p: ConvProblem, c, r, s):
    """The GEMM reduction column of filter tap ``(c, r, s)``: NCHW ``(c*R + r)*S + s`` (taps of one
    channel plane adjacent), NHWC ``(r*S + s)*Cg + c`` (channels of one pixel adjacent)."""
    if p.layout == "NHWC":
        return (r * p.S + s) * p.Cg + c
    return (c * p.R + r) * p.S + s


def a_start(p: ConvProblem, kl) -> tuple:
    """``(c, r, s)`` of reduction column ``kl`` (the kernel's divisions, done once)."""
    if p.layout == "NHWC":
        t = kl // p.Cg
        return kl % p.Cg, t // p.S, t % p.S
    RS = p.R * p.S
    c, rs = kl // RS, kl % RS
    return c, rs // p.S, rs % p.S


def _add_digits(digits: tuple, radices: tuple, steps: tuple) -> list:
    """Mixed-radix ``digits + steps``, least significant digit first, one carry per digit (the
    most significant digit has no radix and takes the last carry)."""
    out, carry = [], 0
    for d, radix, step in zip(digits, radices + (None,), steps):
        d = d + step + carry
        if radix is None:
            out.append(d)
            break
        carry = d >= radix
        out.append(np.where(carry, d - radix, d))
    return out


def a_advance(p: ConvProblem, c, r, s, BK: int = BK) -> tuple:
    """The kernel's step of ``(c, r, s)`` by BK reduction columns: one carry per digit, least
    significant digit first (NCHW s, r, c; NHWC c, s, r)."""
    if p.layout == "NHWC":
        c, s, r = _add_digits((c, s, r), (p.Cg, p.S), (BK % p.Cg, (BK // p.Cg) % p.S, BK // (p.Cg * p.S)))
        return c, r, s
    RS = p.R * p.S
    s, r, c = _add_digits((s, r, c), (p.S, p.R), (BK % p.S, (BK % RS) // p.S, BK // RS))
    return c, r, s


def _a_gather(xc, p: ConvProblem, g: int, m, c, r, s):
    """The values the kernel loads for A slots at GEMM row ``m`` and reduction coordinates
    ``(c, r, s)`` (arrays of one shape): x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] at
    its flat offset in the layout, zero for padding, rows past M and reduction columns past Kgemm
    (the tail of the last slice: c past C/groups in NCHW, r past R in NHWC)."""
    M = p.N * p.P * p.Q
    ok = (m < M) & (c < p.Cg) & (r < p.R)
    q, t = m % p.Q, m // p.Q
    pp, n = t % p.P, t // p.P
    hi = pp * p.stride[0] - p.pad[0] + r * p.dilation[0]
    wi = q * p.stride[1] - p.pad[1] + s * p.dilation[1]
    ok &= (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
    vals = np.zeros(m.shape, dtype=xc.dtype)
    vals[ok] = _flat(xc)[x_offset(p, n[ok], g * p.Cg + c[ok], hi[ok], wi[ok])]
    return vals


def emulate_implicit_gemm(x, w, b, problem: ConvProblem, BM: int = BM, BN: int = BN, BK: int = BK,
                          threads: int = THREADS, stats: dict | None = None) -> np.ndarray:
    """conv2d_implicit_gemm{,_nhwc} as the kernel computes it, block by block and slice by slice.

    For every block (m tile, channel tile, group) and every BK-slice of the reduction, the A and B
    tiles are filled through the kernel's thread -> slot maps (:func:`a_slots` for the layout,
    :func:`b_slots`), each slot holding exactly the element the kernel's fetch reads (zero for
    padding and for slots past M, Kg or Kgemm) from the reduction digits the kernel carries; the
    accumulator gets ``A^T @ B`` of the slice; the output goes through the kernel's thread ->
    output map (:func:`out_slots`; tiles it cannot serve are stored whole) to its flat offset in
    the layout.  Accumulates in x's dtype (pass float64 to check the index math exactly).
    ``stats`` (a dict) receives counts: blocks, slices, padding zeros loaded.
    """
    p = problem
    nhwc = p.layout == "NHWC"
    if p.layout not in LAYOUT_TAG:
        raise Unsupported(f"the implicit-GEMM kernel takes {' or '.join(LAYOUT_TAG)}, not {p.layout}")
    if (BM * BK) % threads or (BN * BK) % threads or (threads % BK if nhwc else threads % BM):
        need = "threads % BK == 0" if nhwc else "threads % BM == 0"
        raise BadInput(f"tile BM={BM} BN={BN} BK={BK} does not split over {threads} threads "
                       f"(the kernel needs {need} and BM*BK, BN*BK multiples of threads)")
    x, w = np.asarray(x), np.asarray(w)
    dt = x.dtype
    M, Kg, Kgemm = p.N * p.P * p.Q, p.Kg, p.Cg * p.R * p.S
    wf = _flat(w)
    y = np.full(p.N * p.K * p.P * p.Q, np.nan, dtype=dt)  # NaN: a slot never written shows up
    am_l, ak_l = a_slots(threads, BM, BK, p.layout)
    bk_l, bj_l = b_slots(threads, BN, BK)
    if nhwc and not (np.all(ak_l == ak_l[:, :1]) and np.all(bk_l == ak_l[:, :1])):
        raise AssertionError("NHWC: a thread's A and B slots must share one reduction column")
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
                    if np.any(reduction_column(p, c, r, s) != k0 + ak_l):
                        raise AssertionError("carried (c, r, s) left the reduction column")
                    A = np.full((BK, BM), np.nan, dtype=dt)
                    vals = _a_gather(x, p, g, m0 + am_l, c, r, s)
                    A[ak_l, am_l] = vals
                    st["a_slots"] += vals.size
                    st["a_zero_slots"] += int(np.count_nonzero(vals == 0))
                    B = np.full((BK, BN), np.nan, dtype=dt)
                    j = j0 + bj_l
                    if nhwc:
                        # the B slots reuse the thread's carried digits: tap (c*R + r)*S + s of KCRS
                        c1, r1, s1 = (np.broadcast_to(a[:, :1], j.shape) for a in (c, r, s))
                        ok = (r1 < p.R) & (j < Kg)
                        off = (g * Kg + j) * Kgemm + (c1 * p.R + r1) * p.S + s1
                    else:
                        kk = k0 + bk_l
                        ok = (kk < Kgemm) & (j < Kg)
                        off = (g * Kg + j) * Kgemm + kk
                    bv = np.zeros(j.shape, dtype=dt)
                    bv[ok] = wf[off[ok]]
                    B[bk_l, bj_l] = bv
                    c, r, s = a_advance(p, c, r, s, BK)
                    acc += A.T @ B                        # NaN if a slot was never filled
                if use_map:
                    ml, jl = om_l.ravel(), oj_l.ravel()
                else:
                    ml, jl = (a.ravel() for a in np.meshgrid(np.arange(BM), np.arange(BN), indexing="ij"))
                m, jj = m0 + ml, j0 + jl
                ok = (m < M) & (jj < Kg)
                m, jj, ml, jl = m[ok], jj[ok], ml[ok], jl[ok]
                k = g * Kg + jj
                bias = np.asarray(b, dtype=dt)[k] if b is not None else 0
                if nhwc:
                    off = m * p.K + k
                else:
                    n, pq = m // (p.P * p.Q), m % (p.P * p.Q)
                    off = (n * p.K + k) * (p.P * p.Q) + pq
                y[off] = acc[ml, jl] + bias
    if stats is not None:
        stats.update(st)
    return y.reshape(p.y_shape)


# -- NumPy emulation of the Winograd kernels ---------------------------------------------------
def _bt(d0, d1, d2, d3):
    """WinoF2::bt of the .cu: B^T applied to one 4-vector."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _at(m0, m1, m2, m3):
    """WinoF2::at of the .cu: A^T applied to one 4-vector."""
    return m0 + m1 + m2, m1 - m2 - m3


def _bt4(d0, d1, d2, d3, d4, d5):
    """WinoF4::bt of the .cu: B^T of F(4x4,3x3) applied to one 6-vector, with its shared sums."""
    a, b = 4 * d2 - d4, 4 * d1 - d3
    c, e = d4 - d2, d3 - d1
    return 4 * d0 - 5 * d2 + d4, a + b, a - b, 2 * e + c, c - 2 * e, 4 * d1 - 5 * d3 + d5


def _at4(m0, m1, m2, m3, m4, m5):
    """WinoF4::at of the .cu: A^T of F(4x4,3x3) applied to one 6-vector."""
    a, b, c, e = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + a + c, 2 * e + b, 4 * c + a, 8 * e + b + m5


TRANSFORMS = {2: (_bt, _at), 4: (_bt4, _at4)}


def _tile_coords(p: ConvProblem, idx, count: int, T: int, tP: int, tQ: int) -> tuple:
    """``(ch, n, tp, tq)`` of Winograd thread ``idx``: NCHW ``idx = ch*T + t`` (t fastest), NHWC
    ``idx = t*count + ch`` (the channel fastest); ``count`` is C (input) or K (output)."""
    if p.layout == "NHWC":
        ch, t = idx % count, idx // count
    else:
        t, ch = idx % T, idx // T
    return ch, t // (tQ * tP), (t // tQ) % tP, t % tQ


def emulate_winograd_input(x, problem: ConvProblem, m: int = WINO_M) -> np.ndarray:
    """conv2d_winograd{_f2,}_input{,_nhwc}_f32 for every thread at once: V in x's dtype,
    (alpha^2, C, T) for NCHW, (alpha^2, T, C) for NHWC."""
    p, bt = problem, TRANSFORMS[_tile(m).m][0]
    A = m + 2
    xf = _flat(x)
    tP, tQ, T = winograd_tiles(p, m)
    idx = np.arange(p.C * T)
    c, n, tp, tq = _tile_coords(p, idx, p.C, T, tP, tQ)
    h0, w0 = tp * m - p.pad[0], tq * m - p.pad[1]
    d = [[None] * A for _ in range(A)]
    for i in range(A):
        for j in range(A):
            hi, wi = h0 + i, w0 + j
            ok = (hi >= 0) & (hi < p.H) & (wi >= 0) & (wi < p.W)
            v = np.zeros(idx.shape, dtype=xf.dtype)
            v[ok] = xf[x_offset(p, n[ok], c[ok], hi[ok], wi[ok])]
            d[i][j] = v
    tmp = [[None] * A for _ in range(A)]
    for j in range(A):
        col = bt(*(d[i][j] for i in range(A)))
        for u in range(A):
            tmp[u][j] = col[u]
    V = np.full((A * A, p.C * T), np.nan, dtype=xf.dtype)
    for u in range(A):
        row = bt(*tmp[u])
        for v in range(A):
            V[u * A + v, idx] = row[v]
    return V.reshape(A * A, *((T, p.C) if p.layout == "NHWC" else (p.C, T)))


def emulate_winograd_output(Mt, b, problem: ConvProblem, m: int = WINO_M) -> np.ndarray:
    """conv2d_winograd{_f2,}_output{,_nhwc}_f32 for every thread at once: y in the layout from M,
    (alpha^2, K, T) for NCHW, (alpha^2, T, K) for NHWC."""
    p, at = problem, TRANSFORMS[_tile(m).m][1]
    A = m + 2
    tP, tQ, T = winograd_tiles(p, m)
    Mt = np.asarray(Mt).reshape(A * A, p.K * T)
    idx = np.arange(p.K * T)
    k, n, tp, tq = _tile_coords(p, idx, p.K, T, tP, tQ)
    mm = [[Mt[u * A + v, idx] for v in range(A)] for u in range(A)]
    tmp = [[None] * A for _ in range(m)]
    for v in range(A):
        o = at(*(mm[u][v] for u in range(A)))
        for i in range(m):
            tmp[i][v] = o[i]
    bias = np.asarray(b)[k] if b is not None else 0
    y = np.full(p.N * p.K * p.P * p.Q, np.nan, dtype=Mt.dtype)
    for i in range(m):
        o = at(*tmp[i])
        pp = tp * m + i
        for j in range(m):
            q = tq * m + j
            ok = (pp < p.P) & (q < p.Q)
            y[y_offset(p, n[ok], k[ok], pp[ok], q[ok])] = (o[j] + bias)[ok]
    return y.reshape(p.y_shape)


def emulate_winograd(x, w, b, problem: ConvProblem, variant: str = "winograd_f2") -> np.ndarray:
    """A GPU Winograd path in NumPy: filter transform, input kernel, the alpha^2 GEMMs in the
    layout's operand order, output kernel."""
    if variant not in WINOGRAD:
        raise BadInput(f"Winograd variant {variant!r} is unknown; allowed: {', '.join(WINOGRAD)}")
    reason = accepts_gpu(variant, problem, "fp32")
    if reason:
        raise Unsupported(reason)
    m = WINOGRAD[variant].m
    U = winograd_filter_transform(np.asarray(w), np, m, problem.layout)
    V = emulate_winograd_input(x, problem, m)
    M = np.matmul(V, U) if problem.layout == "NHWC" else np.matmul(U, V)
    return emulate_winograd_output(M, b, problem, m)
