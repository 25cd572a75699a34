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

Without a GPU the kernels' index math is checked by the NumPy emulations of
:mod:`kernels.conv.gpu_emulate` (used only by the tests), and tests/test_conv_gpu.py also runs the
unchanged .cu on the CPU (tests/cudahost.py) through these launchers.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .. import cudasrc
from ..dtypes import canonical
from ..errors import BadInput, MissingDependency, Unsupported
from . import winograd as cpu_winograd
from .geometry import ConvProblem

SOURCE = cudasrc.CUDA_DIR / "conv2d.cu"


class Algorithm(NamedTuple):
    """One GPU conv algorithm, defined here once: microbench registers one record from each row
    (``conv/<name>/cupy``), and the tables below (VARIANTS, DTYPES, KERNEL_STEMS, RUNNERS) derive
    from it."""
    launcher: str        # its run function in this module (RUNNERS holds the function)
    dtypes: tuple        # the precisions it computes
    stems: tuple         # the conv2d.cu kernel stems it launches, each built for ``dtypes``
    about: str           # what it does, as `microbench variants conv` shows it
    suites: bool = True  # the conv suites run it unasked (False: only when --variants names it)


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
    """The .cu as every compiler gets it (its shared header inlined by :func:`kernels.cudasrc.read`)."""
    return cudasrc.read(SOURCE)


def source_constants() -> dict:
    """``#define MB_CONV_X n`` / ``MB_WINO_X n`` of the .cu as {"CONV_X": n}."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"#define\s+MB_(\w+)\s+(\d+)", read_source())}


def _function(symbol_: str, device: int):
    return cudasrc.file_function(SOURCE, symbol_, device)


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
