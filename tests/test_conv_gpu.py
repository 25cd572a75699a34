"""GPU convolution (kernels/cuda/conv2d.cu, kernels/conv/gpu.py, microbench/cases/conv_gpu.py),
checked as far as each machine allows.

Without a GPU: the .cu compiles with nvcc (sm_90, register/spill report printed: ``pytest -rP``)
and NVRTC, with every entry (layouts NCHW and NHWC, Winograd F(2x2) and F(4x4)); the NumPy
emulations of the direct kernel (thread -> output map, flat offsets), of the implicit-GEMM kernel
(block tiles, thread -> slot maps, carried reduction digits, the im2col gather with padding zeros,
groups) and of the Winograd transform kernels match the float64 reference on awkward shapes in
both layouts; the .cu itself runs on the CPU (g++, one fiber per CUDA thread: tests/cudahost.py)
through the launchers; the variants register beside the CPU ones and skip with the reason.  With
a GPU (``-m gpu``): every GPU variant, both layouts, against the reference.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess

import numpy as np
import pytest

from tests import toolchain
from kernels import cudasrc
from kernels.conv import ConvProblem, conv2d_reference
from kernels.conv import gpu as cg
from kernels.conv import gpu_emulate as ge
from kernels.conv import winograd as cpu_winograd
from kernels.errors import BadInput, MissingDependency, Unsupported

import cudahost
from cudatools import parse_resource_usage

# Awkward NCHW shapes: odd sizes, pad > R/2, stride 2, dilation 2, 1x1, 7x7, C=3, groups=2,
# M and Kg not multiples of the tile, Kgemm not a multiple of BK, several K and M tiles.
SHAPES = {
    "3x3_pad1_odd": ConvProblem(2, 5, 11, 13, 7, 3, 3, pad=1),
    "3x3_pad2": ConvProblem(2, 5, 9, 7, 6, 3, 3, pad=2),
    "3x3_stride2": ConvProblem(2, 4, 13, 12, 5, 3, 3, stride=2, pad=1),
    "3x3_dil2": ConvProblem(1, 6, 12, 11, 4, 3, 3, pad=2, dilation=2, bias=False),
    "3x2_mixed_g2": ConvProblem(2, 4, 7, 9, 6, 3, 2, stride=(2, 1), pad=(2, 3), dilation=(1, 2),
                                groups=2),
    "1x1_c3": ConvProblem(3, 3, 5, 7, 4, 1, 1, bias=False),
    "1x1_stride2_pad": ConvProblem(2, 8, 7, 7, 16, 1, 1, stride=2, pad=3),
    "7x7_stem_c3": ConvProblem(1, 3, 23, 21, 8, 7, 7, stride=2, pad=3),
    "7x7_pad_gt_input": ConvProblem(1, 3, 3, 3, 2, 7, 7, stride=3, pad=3),
    "groups2_wide_k": ConvProblem(1, 6, 9, 10, 140, 3, 3, stride=2, pad=4, groups=2),
    "depthwise": ConvProblem(1, 4, 6, 6, 4, 3, 3, pad=1, groups=4),
    "many_m_tiles": ConvProblem(2, 9, 17, 15, 66, 3, 3, pad=1),
}
# Winograd (3x3, stride 1, dilation 1, groups 1): P, Q neither multiples of 2 nor of 4 (partial
# last tiles), outputs smaller than one F(4x4) tile, C=3, pad 0/1/2, K not a multiple of anything.
WINO_SHAPES = {n: p for n, p in SHAPES.items()
               if cg.accepts_gpu("winograd_f2", p, "fp32") is None}
WINO_SHAPES["partial_tiles_pad0"] = ConvProblem(2, 7, 10, 9, 5, 3, 3)
WINO_SHAPES["pad2_odd"] = ConvProblem(1, 3, 5, 8, 3, 3, 3, pad=2)
WINO_SHAPES["below_one_f4_tile"] = ConvProblem(1, 3, 3, 5, 2, 3, 3, bias=False)
WINO_SHAPES["p9_q5_c3_k13"] = ConvProblem(2, 3, 11, 7, 13, 3, 3)
WINO_SHAPES["p7_q10_k17"] = ConvProblem(1, 5, 7, 10, 17, 3, 3, pad=1)
WINO_VARIANTS = ("winograd_f2", "winograd")
LAYOUTS = ("NCHW", "NHWC")
# fp32 error relative to max|ref|: F(4x4)'s transforms lose about 10x more than F(2x2)
# (tests/test_conv.py measures the CPU twin); the GEMM variants stay far below 1e-5.
FP32_TOL = {"winograd": 3e-5}


def in_layout(p: ConvProblem, layout: str) -> ConvProblem:
    return dataclasses.replace(p, layout=layout)


def rel_err(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        return np.inf
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


def inputs(p: ConvProblem, dtype="fp64", seed=7):
    x, w, b = p.random_inputs(np.random.default_rng(seed), dtype)
    return x, w, b, conv2d_reference(x, w, b, p)


# -- compilers ---------------------------------------------------------------------------------
# The entries this change added, spelled out (cg.ENTRIES is generated, so a bug there could hide
# a missing kernel from the set comparisons below).
NEW_ENTRIES = {"conv2d_winograd_input_f32", "conv2d_winograd_output_f32",
               "conv2d_winograd_input_nhwc_f32", "conv2d_winograd_output_nhwc_f32",
               "conv2d_winograd_f2_input_nhwc_f32", "conv2d_winograd_f2_output_nhwc_f32",
               "conv2d_direct_nhwc_f32", "conv2d_direct_nhwc_f16",
               "conv2d_implicit_gemm_nhwc_f32", "conv2d_implicit_gemm_nhwc_f16",
               "conv2d_implicit_gemm128_nhwc_f32", "conv2d_implicit_gemm128_nhwc_f16"}


def test_entries_are_every_stem_layout_and_dtype():
    assert NEW_ENTRIES <= set(cg.ENTRIES)
    assert len(cg.ENTRIES) == len(set(cg.ENTRIES)) == 20
    assert cg.symbol("conv2d_winograd_input", "fp32", "NHWC") == "conv2d_winograd_input_nhwc_f32"
    assert cg.symbol("conv2d_direct", "fp16") == "conv2d_direct_f16"


@toolchain.needs("nvcc")
def test_nvcc_compiles_sm90_without_spills(tmp_path):
    cmd = [toolchain.nvcc(), "-arch=sm_90", "-c", "--resource-usage", "-Werror", "all-warnings",
           "-o", str(tmp_path / "conv2d.o"), str(cg.SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{report}"
    usage = parse_resource_usage(report)
    for name, u in sorted(usage.items()):
        print(f"{name:34s} {u.get('registers', '?'):>3} registers, {u.get('smem', '?')} B smem, "
              f"{u.get('spill_stores', '?')} B spill stores, {u.get('spill_loads', '?')} B spill loads, "
              f"{u.get('stack', '?')} B stack")
    assert set(usage) == set(cg.ENTRIES), report
    assert NEW_ENTRIES <= set(usage)
    spilled = {n: u for n, u in usage.items() if u.get("spill_stores") or u.get("spill_loads")}
    assert not spilled, f"register spills: {spilled}"
    for e in ("conv2d_implicit_gemm_f32", "conv2d_implicit_gemm_nhwc_f32"):
        assert usage[e]["registers"] <= 65536 // (2 * cg.THREADS), e            # 2 blocks/SM


def test_nvrtc_compiles_every_entry():
    try:
        ptx = cudasrc.nvrtc_compile(cg.SOURCE, "sm_90", cubin=False).decode(errors="replace")
    except MissingDependency as e:
        pytest.skip(str(e))
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(cg.ENTRIES)
    assert NEW_ENTRIES <= entries
    assert ".f64" not in "\n".join(l for l in ptx.splitlines() if not l.lstrip().startswith("//"))


def test_launcher_constants_match_the_source():
    consts = cg.source_constants()
    assert consts["CONV_THREADS"] == cg.THREADS
    assert consts["CONV_WARP"] == cg.WARP
    assert (consts["CONV_BM"], consts["CONV_BN"], consts["CONV_BK"]) == (cg.BM, cg.BN, cg.BK)
    assert cg.TILES["conv2d_implicit_gemm"] == (cg.BM, cg.BN, cg.BK)
    assert cg.TILES["conv2d_implicit_gemm128"] == (consts["CONV_BM2"], consts["CONV_BN2"], consts["CONV_BK2"])
    assert consts["WINO_M"] == cg.WINO_M == cg.WINOGRAD["winograd_f2"].m
    assert consts["WINO_ALPHA"] == cg.WINOGRAD["winograd_f2"].alpha
    assert consts["WINO4_M"] == cg.WINO4_M == cg.WINOGRAD["winograd"].m
    assert consts["WINO4_ALPHA"] == cg.WINOGRAD["winograd"].alpha
    src = cg.read_source()
    for e in cg.ENTRIES:
        assert re.search(rf'extern "C" __global__ void __launch_bounds__\(MB_CONV_THREADS(, \w+)?\)\s*{e}\(',
                         src), e
    # the 16 geometry arguments the launcher passes, in the .cu's order
    assert len(cg._geom(SHAPES["3x2_mixed_g2"])) == 16
    assert re.search(r"int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, "
                     r"int ph, int pw,\s*\\\s*int dh, int dw, int G", src)


def test_variant_stems_are_shared():
    """Registry row / NVTX range ``conv/<variant>/cupy``, launcher ``run_<variant>_gpu`` and .cu
    entries ``conv2d_<variant>...`` share the variant's name."""
    for v in cg.WINOGRAD:
        assert cg.RUNNERS[v].__name__ == f"run_{v}_gpu"
        for part in ("input", "output"):
            for layout in LAYOUTS:
                assert cg.symbol(f"conv2d_{v}_{part}", "fp32", layout) in cg.ENTRIES
    assert cg.RUNNERS["direct"].__name__ == "run_direct_gpu"
    assert cg.RUNNERS["implicit_gemm"].__name__ == "run_implicit_gemm_gpu"


# -- the direct kernel's index math --------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", SHAPES)
def test_emulated_direct_matches_reference(name, layout):
    p = in_layout(SHAPES[name], layout)
    x, w, b, ref = inputs(p)
    assert rel_err(ge.emulate_direct(x, w, b, p), ref) <= 1e-12, (name, layout)


def test_direct_thread_order_is_the_output_order():
    """NHWC: consecutive threads take consecutive channels of one pixel (coalesced stores)."""
    p = in_layout(SHAPES["3x3_pad1_odd"], "NHWC")
    n, k, pp, q = ge.direct_thread_coords(p, np.arange(p.K + 1))
    assert list(k[:p.K]) == list(range(p.K)) and k[p.K] == 0 and q[p.K] == 1
    assert np.all(n == 0) and np.all(pp == 0)


# -- the implicit-GEMM kernel's maps and index math ---------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stem", ["conv2d_implicit_gemm", "conv2d_implicit_gemm128"])
def test_thread_maps_cover_each_slot_once(stem, layout):
    BM, BN, BK = cg.TILES[stem]
    ml, kl = ge.a_slots(cg.THREADS, BM, BK, layout)
    if layout == "NCHW":
        assert np.all(ml == (np.arange(cg.THREADS) % BM)[:, None])      # row fixed per thread
    else:
        assert np.all(kl == (np.arange(cg.THREADS) % BK)[:, None])      # column fixed per thread
    a = np.zeros((BK, BM), int)
    np.add.at(a, (kl.ravel(), ml.ravel()), 1)
    assert np.all(a == 1)
    kb, jb = ge.b_slots(cg.THREADS, BN, BK)
    bt = np.zeros((BK, BN), int)
    np.add.at(bt, (kb.ravel(), jb.ravel()), 1)
    assert np.all(bt == 1)
    om, oj = ge.out_slots(cg.THREADS, BM, BN)
    o = np.zeros((BM, BN), int)
    np.add.at(o, (om.ravel(), oj.ravel()), 1)
    assert np.all(o == 1)
    # a warp's stores for fixed (i, j) cover 16 consecutive pixels (coalesced)
    assert sorted(set(om[:32, 0, 0].tolist())) == list(range(16))


@pytest.mark.parametrize("stem", ["conv2d_implicit_gemm", "conv2d_implicit_gemm128"])
def test_nhwc_a_tile_stores_hit_distinct_banks(stem):
    """NHWC writes the A tile down its columns; with the row pad a warp's 32 stores of one i
    land in 32 different banks (without it, 16 or 8 threads share a bank)."""
    BM, _, BK = cg.TILES[stem]
    ml, kl = ge.a_slots(cg.THREADS, BM, BK, "NHWC")
    for pad, distinct in ((ge.a_pad(BK, "NHWC"), True), (0, False)):
        banks = (kl * (BM + pad) + ml) % 32
        for warp in range(cg.THREADS // 32):
            for i in range(ml.shape[1]):
                assert (len(set(banks[warp * 32:(warp + 1) * 32, i].tolist())) == 32) == distinct
    # consecutive threads read consecutive channels: one pixel's BK channels per BK threads
    assert np.all(np.diff(kl[:BK, 0]) == 1) and np.all(ml[:BK, 0] == 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", SHAPES)
def test_emulated_implicit_gemm_matches_reference(name, layout):
    p = in_layout(SHAPES[name], layout)
    x, w, b, ref = inputs(p)
    stats = {}
    y = ge.emulate_implicit_gemm(x, w, b, p, stats=stats)
    assert rel_err(y, ref) <= 1e-12, (name, layout)
    assert stats["blocks"] == np.prod(cg.implicit_gemm_grid(p, "conv2d_implicit_gemm"))
    if max(p.pad) > 0:
        assert stats["a_zero_slots"] > 0          # padding taps were loaded as zeros


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tiles", [(32, 16, 8, 128), (16, 32, 16, 64), (64, 64, 16, 256),
                                   (128, 128, 8, 256)])
def test_emulated_implicit_gemm_other_tiles(tiles, layout):
    BM, BN, BK, threads = tiles
    for name in ("3x2_mixed_g2", "7x7_stem_c3", "groups2_wide_k"):
        p = in_layout(SHAPES[name], layout)
        x, w, b, ref = inputs(p)
        y = ge.emulate_implicit_gemm(x, w, b, p, BM, BN, BK, threads)
        assert rel_err(y, ref) <= 1e-12, (name, tiles, layout)


def test_nhwc_reduction_digits_carry():
    """BK = 16 over Cg = 3, S = 3: every digit carries; the carried (c, r, s) stays on its column."""
    p = in_layout(ConvProblem(1, 3, 5, 5, 2, 3, 3), "NHWC")
    kl = np.arange(16)
    c, r, s = ge.a_start(p, kl)
    for k0 in range(0, 3 * 9 + 16, 16):
        assert np.array_equal(ge.reduction_column(p, c, r, s), k0 + kl)
        assert np.all(c < p.Cg) and np.all(s < p.S)
        c, r, s = ge.a_advance(p, c, r, s, 16)


def test_implicit_gemm_tile_choice():
    assert cg.implicit_gemm_kernel(ConvProblem(32, 64, 56, 56, 64, 3, 3, pad=1)) == "conv2d_implicit_gemm"
    assert cg.implicit_gemm_kernel(ConvProblem(32, 256, 14, 14, 256, 3, 3, pad=1)) == "conv2d_implicit_gemm"
    assert cg.implicit_gemm_kernel(ConvProblem(32, 256, 56, 56, 128, 1, 1)) == "conv2d_implicit_gemm128"
    assert cg.implicit_gemm_kernel(SHAPES["groups2_wide_k"]) == "conv2d_implicit_gemm"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_emulated_implicit_gemm_fp32_within_tolerance(layout):
    p = in_layout(SHAPES["many_m_tiles"], layout)
    x, w, b = p.random_inputs(np.random.default_rng(3), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(ge.emulate_implicit_gemm(x, w, b, p), ref) <= 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_emulation_catches_a_wrong_index(layout):
    """The check has teeth: a gather off by one tap fails it."""
    p = in_layout(SHAPES["3x3_pad1_odd"], layout)
    x, w, b, ref = inputs(p)
    orig = ge._a_gather
    try:
        ge._a_gather = lambda xc, pr, g, m, c, r, s: orig(xc, pr, g, m, c, r, s + 1)
        assert rel_err(ge.emulate_implicit_gemm(x, w, b, p), ref) > 1e-3
    finally:
        ge._a_gather = orig


def test_emulations_catch_a_wrong_layout_offset(monkeypatch):
    """Reading NHWC data at NCHW offsets (a kernel instance of the wrong layout) fails every
    emulation."""
    p = in_layout(SHAPES["3x3_pad1_odd"], "NHWC")
    x, w, b, ref = inputs(p)
    orig = ge.x_offset
    monkeypatch.setattr(ge, "x_offset", lambda pr, *a: orig(in_layout(pr, "NCHW"), *a))
    assert rel_err(ge.emulate_direct(x, w, b, p), ref) > 1e-3
    assert rel_err(ge.emulate_implicit_gemm(x, w, b, p), ref) > 1e-3
    assert rel_err(ge.emulate_winograd(x, w, b, p, "winograd"), ref) > 1e-3


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", SHAPES)
def test_im2col_gpu_math_with_numpy(name, layout):
    """im2col_gpu's strides, padding, groups and transpose, run with NumPy as the array module."""
    from numpy.lib.stride_tricks import as_strided
    p = in_layout(SHAPES[name], layout)
    x, w, b, ref = inputs(p)
    assert rel_err(cg.im2col_xp(np, as_strided, x, w, b, p), ref) <= 1e-12, (name, layout)


# -- Winograd ----------------------------------------------------------------------------------
def test_winograd_matrices_compute_f2x3():
    """B^T, G, A^T as the kernels and the filter transform use them: y = A^T[(G g) * (B^T d)]."""
    rng = np.random.default_rng(0)
    g, d = rng.standard_normal(3), rng.standard_normal(4)
    y = cg.WINO_AT @ ((cg.WINO_G @ g) * (cg.WINO_BT @ d))
    assert np.allclose(y, [d[0:3] @ g, d[1:4] @ g], atol=1e-14)
    # the elementwise forms of the .cu equal the matrices
    assert np.allclose(ge._bt(*np.eye(4)), cg.WINO_BT)
    assert np.allclose(ge._at(*np.eye(4)), cg.WINO_AT)


def test_winograd_matrices_compute_f4x3():
    """F(4x4,3x3): the CPU variant's matrices (the source of truth) compute a 1-D correlation of
    4 outputs, and the .cu's WinoF4 transforms, as emulated, equal them entry for entry."""
    AT, G, BT = cpu_winograd.matrices(4)
    assert np.array_equal(cg.WINO4_AT, AT) and np.array_equal(cg.WINO4_G, G)
    assert np.array_equal(cg.WINO4_BT, BT)
    assert AT.shape == (4, 6) and G.shape == (6, 3) and BT.shape == (6, 6)
    rng = np.random.default_rng(1)
    g, d = rng.standard_normal(3), rng.standard_normal(6)
    y = AT @ ((G @ g) * (BT @ d))
    assert np.allclose(y, np.correlate(d, g, "valid"), atol=1e-13)
    assert np.array_equal(np.array(ge._bt4(*np.eye(6))), BT)
    assert np.array_equal(np.array(ge._at4(*np.eye(6))), AT)


def test_cu_spells_out_the_f4_matrices():
    """The .cu's comment block lists B^T and A^T of F(4x4); they must be the CPU variant's."""
    src = cg.read_source()
    src = src[src.index("F(4x4,3x3)  points"):]
    AT, _, BT = cpu_winograd.matrices(4)

    def listed(name, rows):
        m = re.search(rf"{name} = \[([^\]]+)\]", src)
        assert m, name
        got = [[float(v) for v in row.split()] for row in m.group(1).replace("\n//", " ").split(";")]
        assert np.array_equal(np.array(got), rows), name
    listed(r"B\^T", BT)
    listed(r"A\^T", AT)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", WINO_VARIANTS)
@pytest.mark.parametrize("name", WINO_SHAPES)
def test_emulated_winograd_matches_reference(name, variant, layout):
    p = in_layout(WINO_SHAPES[name], layout)
    x, w, b, ref = inputs(p)
    assert rel_err(ge.emulate_winograd(x, w, b, p, variant), ref) <= 1e-12, (name, variant, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", WINO_VARIANTS)
def test_emulated_winograd_fp32_within_tolerance(variant, layout):
    p = in_layout(ConvProblem(2, 32, 14, 13, 16, 3, 3, pad=1), layout)
    x, w, b = p.random_inputs(np.random.default_rng(5), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(ge.emulate_winograd(x, w, b, p, variant), ref) <= FP32_TOL.get(variant, 1e-5)


def test_winograd_operand_layouts():
    """NCHW: V (alpha^2, C, T), M = U (alpha^2, K, C) @ V; NHWC: V (alpha^2, T, C), M = V @ U
    with U (alpha^2, C, K); T counts m x m tiles, partial ones included."""
    p = WINO_SHAPES["p9_q5_c3_k13"]                 # P = 9, Q = 5
    assert cg.winograd_tiles(p, 4) == (3, 2, 12) and cg.winograd_tiles(p, 2) == (5, 3, 30)
    w = np.ones(p.w_shape)
    assert cg.winograd_filter_transform(w, np, 4, "NCHW").shape == (36, 13, 3)
    assert cg.winograd_filter_transform(w, np, 4, "NHWC").shape == (36, 3, 13)
    x = np.ones(p.x_shape)
    assert ge.emulate_winograd_input(x, p, 4).shape == (36, 3, 12)
    assert ge.emulate_winograd_input(x, in_layout(p, "NHWC"), 4).shape == (36, 12, 3)
    assert cg.workspace_bytes("winograd", p, "fp32") == 4 * 36 * (3 * 12 + 13 * 12 + 13 * 3)


def test_winograd_f4_emulation_catches_a_wrong_transform(monkeypatch):
    """The F(4x4) check has teeth: one wrong coefficient in B^T fails it."""
    p = WINO_SHAPES["p9_q5_c3_k13"]
    x, w, b, ref = inputs(p)
    orig = ge._bt4

    def wrong(*d):
        o = list(orig(*d))
        o[3] = o[3] + d[2]                          # -1 -> 0 in row 3, column 2
        return tuple(o)
    monkeypatch.setitem(ge.TRANSFORMS, 4, (wrong, ge._at4))
    assert rel_err(ge.emulate_winograd(x, w, b, p, "winograd"), ref) > 1e-3


# -- the .cu itself, run on the CPU ------------------------------------------------------------
# A host build of kernels/cuda/conv2d.cu (tests/cudahost.py): g++ compiles the unchanged source
# against tests/cuda_host/, where every CUDA thread of a block is a fiber, __syncthreads() a
# barrier, __shared__ a function-static array (blocks run one after another, so it is per block)
# and __half 16-bit storage rounded to nearest even.  This runs the kernels' own index math,
# tiling, double buffering and barriers, which the NumPy emulations only mirror.
@pytest.fixture(scope="module")
def host_cu(tmp_path_factory):
    toolchain.require("g++")                     # the host build of conv2d.cu
    return cudahost.build(cg.read_source(), cg.ENTRIES, "conv2d", tmp_path_factory.mktemp("conv2d_host"))


def _host_call(mod, entry, arrays, ints, grid):
    """Launch ``entry`` of the host build: ``arrays`` (None for a null pointer), int32 ``ints``."""
    args = [np.uint64(0) if a is None else a for a in arrays] + [np.int32(v) for v in ints]
    mod.get_function(entry)(grid, (cg.THREADS,), args)


def _host_run(lib, variant, p, x, w, b, fp16=False):
    """One variant's kernels called directly (not through the launchers), fp32 arrays throughout
    (fp16 for the f16 entries)."""
    dt = np.float16 if fp16 else np.float32
    cast = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dt)  # noqa: E731
    x, w, b = cast(x), cast(w), cast(b)
    g = [int(v) for v in cg._geom(p)]
    y = np.full(p.y_shape, np.nan, dtype=dt)
    dt = "fp16" if fp16 else "fp32"
    if variant == "direct":
        # few blocks: the grid-stride loop runs several rounds
        _host_call(lib, cg.symbol("conv2d_direct", dt, p.layout), (x, w, b, y), g, (3,))
    elif variant in ("implicit_gemm", "implicit_gemm128"):
        stem = "conv2d_implicit_gemm128" if variant == "implicit_gemm128" else "conv2d_implicit_gemm"
        _host_call(lib, cg.symbol(stem, dt, p.layout), (x, w, b, y), g, cg.implicit_gemm_grid(p, stem))
    else:
        t = cg.WINOGRAD[variant]
        tP, tQ, T = cg.winograd_tiles(p, t.m)
        nhwc = p.layout == "NHWC"
        V = np.full((t.alpha ** 2,) + ((T, p.C) if nhwc else (p.C, T)), np.nan, dtype=np.float32)
        _host_call(lib, cg.symbol(f"conv2d_{variant}_input", "fp32", p.layout), (x, V),
                   [p.N, p.C, p.H, p.W, p.pad[0], p.pad[1], tP, tQ], (2,))
        assert np.all(np.isfinite(V))
        U = cg.winograd_filter_transform(w, np, t.m, p.layout)
        M = np.ascontiguousarray(np.matmul(V, U) if nhwc else np.matmul(U, V), dtype=np.float32)
        _host_call(lib, cg.symbol(f"conv2d_{variant}_output", "fp32", p.layout), (M, b, y),
                   [p.N, p.K, p.P, p.Q, tP, tQ], (2,))
    return y


HOST_SHAPES = ("3x3_pad1_odd", "3x3_stride2", "3x3_dil2", "3x2_mixed_g2", "1x1_stride2_pad",
               "7x7_stem_c3", "7x7_pad_gt_input", "groups2_wide_k", "depthwise", "many_m_tiles")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", HOST_SHAPES)
@pytest.mark.parametrize("variant", ("direct", "implicit_gemm", "implicit_gemm128"))
def test_cu_on_the_host_matches_reference(host_cu, variant, name, layout):
    p = in_layout(SHAPES[name], layout)
    x, w, b = p.random_inputs(np.random.default_rng(17), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(_host_run(host_cu, variant, p, x, w, b), ref) <= 1e-5, (variant, name, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", ("direct", "implicit_gemm", "implicit_gemm128"))
def test_cu_f16_entries_on_the_host(host_cu, variant, layout):
    p = in_layout(SHAPES["3x2_mixed_g2"], layout)
    x, w, b = p.random_inputs(np.random.default_rng(18), "fp32")
    ref = conv2d_reference(x, w, b, p)
    x, w, b = (None if a is None else a.astype(np.float16) for a in (x, w, b))
    ref = conv2d_reference(x, w, b, p)        # of the fp16 inputs: what is left is fp32 math and
    assert rel_err(_host_run(host_cu, variant, p, x, w, b, fp16=True), ref) <= 1e-3   # one rounding


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", WINO_VARIANTS)
@pytest.mark.parametrize("name", WINO_SHAPES)
def test_cu_winograd_on_the_host_matches_reference(host_cu, name, variant, layout):
    p = in_layout(WINO_SHAPES[name], layout)
    x, w, b = p.random_inputs(np.random.default_rng(19), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(_host_run(host_cu, variant, p, x, w, b), ref) <= FP32_TOL.get(variant, 1e-5), name


def _host_kernel(mod):
    """A stand-in for gpu._kernel: the launcher's (grid, block, args) go to the host build, which
    checks every argument against the entry's parameter types."""
    def kernel(stem, dtype, layout="NCHW"):
        assert dtype == "fp32"
        entry = cg.symbol(stem, dtype, layout)

        def call(grid, block, args):
            assert tuple(block) == (cg.THREADS,)
            assert len(grid) == (3 if stem.startswith("conv2d_implicit_gemm") else 1)
            for a in args:
                assert not isinstance(a, np.ndarray) or a.flags.c_contiguous
            mod.get_function(entry)(grid, block, args)
        return call
    return kernel


LAUNCHER_SHAPES = ["3x3_pad1_odd", "3x2_mixed_g2", "7x7_stem_c3", "3x3_dil2", "partial_tiles_pad0",
                   "p9_q5_c3_k13"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", LAUNCHER_SHAPES)
@pytest.mark.parametrize("variant", ("direct", "implicit_gemm", "implicit_gemm128") + WINO_VARIANTS)
def test_launchers_on_the_host(host_cu, monkeypatch, variant, name, layout):
    """The launchers themselves (entry per layout, argument order and types, grids, Winograd's
    GEMM operand order and filter transform), with NumPy for CuPy and the host build for the
    kernels."""
    p = in_layout(SHAPES.get(name) or WINO_SHAPES[name], layout)
    base = "implicit_gemm" if variant == "implicit_gemm128" else variant
    if cg.accepts_gpu(base, p, "fp32"):
        pytest.skip(cg.accepts_gpu(base, p, "fp32"))
    monkeypatch.setattr(cg, "_cupy", lambda: np)
    monkeypatch.setattr(cg, "_kernel", _host_kernel(host_cu))
    x, w, b = p.random_inputs(np.random.default_rng(21), "fp32")
    ref = conv2d_reference(x, w, b, p)
    if variant == "implicit_gemm128":
        y = cg.run_implicit_gemm_gpu(x, w, b, p, stem="conv2d_implicit_gemm128")
    else:
        y = cg.RUNNERS[variant](x, w, b, p)
    assert y.dtype == np.float32 and y.shape == p.y_shape
    assert rel_err(y, ref) <= FP32_TOL.get(variant, 1e-5), (variant, name, layout)


# -- what is accepted, bad input, registration, skips --------------------------------------------
def test_accepts_gpu_reasons():
    p3 = SHAPES["3x3_pad1_odd"]
    for layout in LAYOUTS:
        p = in_layout(p3, layout)
        assert all(cg.accepts_gpu(v, p, "fp32") is None for v in cg.VARIANTS), layout
        for v in ("direct", "im2col", "implicit_gemm"):
            assert cg.accepts_gpu(v, p, "fp16") is None, (v, layout)
    assert "fp32" in cg.accepts_gpu("winograd_f2", p3, "fp16")
    assert "fp64" in cg.accepts_gpu("direct", p3, "fp64")
    for v in WINO_VARIANTS:
        tile = "F(4x4,3x3)" if v == "winograd" else "F(2x2,3x3)"
        assert cg.accepts_gpu(v, SHAPES["7x7_stem_c3"], "fp32") == f"{v} {tile} needs a 3x3 filter, not 7x7"
        assert cg.accepts_gpu(v, SHAPES["3x3_stride2"], "fp32") == f"{v} {tile} needs stride 1, not (2, 2)"
        assert cg.accepts_gpu(v, SHAPES["3x3_dil2"], "fp32") == f"{v} {tile} needs dilation 1, not (2, 2)"
        assert (cg.accepts_gpu(v, SHAPES["depthwise"], "fp32")
                == f"{v} {tile} here serves groups=1 only, not 4")
        assert (cg.accepts_gpu(v, in_layout(p3, "NHWC"), "fp16")
                == f"{v} on the GPU computes in fp32, not fp16")
    huge = ConvProblem(2**16, 1, 2**8, 2**8, 1, 3, 3, pad=1)
    assert "below 2**31" in cg.accepts_gpu("winograd", huge, "fp32")


def test_new_paths_reject_bad_input_in_one_line():
    """Unsupported shapes reach the launchers as one-line errors naming the value and what is
    allowed, before anything needs a GPU."""
    p = ConvProblem(1, 3, 9, 9, 4, 5, 5, pad=2, layout="NHWC")
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp32")
    with pytest.raises(Unsupported) as e:
        cg.run_winograd_gpu(x, w, b, p)
    assert str(e.value) == "winograd F(4x4,3x3) needs a 3x3 filter, not 5x5"
    p3 = ConvProblem(1, 3, 9, 9, 4, 3, 3, pad=1, layout="NHWC")
    x, w, b = p3.random_inputs(np.random.default_rng(0), "fp16")
    with pytest.raises(Unsupported, match="^winograd on the GPU computes in fp32, not fp16$"):
        cg.run_winograd_gpu(x, w, b, p3)
    x32 = np.zeros(in_layout(p3, "NCHW").x_shape, np.float32)
    with pytest.raises(BadInput, match=r"x has shape \(1, 3, 9, 9\); expected \(1, 9, 9, 3\) \(NHWC\)"):
        cg.run_direct_gpu(x32, w.astype(np.float32), b.astype(np.float32), p3)
    checks = [
        (lambda: cg.symbol("conv2d_winograd_input", "fp16"), "is built for fp32, not fp16"),
        (lambda: cg.symbol("conv2d_winograd_f6_input", "fp32"),
         "'conv2d_winograd_f6_input' is unknown; allowed: "),
        (lambda: cg.symbol("conv2d_direct", "fp32", "CHWN"),
         "'CHWN' is not served on the GPU; allowed: NCHW, NHWC"),
        (lambda: cg.winograd_tiles(p3, 6), "m=6 has no GPU kernel; allowed: 2, 4"),
        (lambda: cg.implicit_gemm_grid(p3, "conv2d_implicit_gemm256"),
         "'conv2d_implicit_gemm256' is unknown"),
        (lambda: ge.emulate_winograd(x32, w, b, p3, "winograd_f6"), "'winograd_f6' is unknown; allowed: "),
        (lambda: cg.accepts_gpu("winograd_f6", p3, "fp32"),
         "allowed: direct, im2col, implicit_gemm, winograd_f2, winograd"),
    ]
    for fn, msg in checks:
        with pytest.raises(BadInput) as e:
            fn()
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_registered_beside_the_cpu_variants():
    import microbench.cases  # noqa: F401
    from microbench.registry import REGISTRY
    for v in cg.VARIANTS:
        rec = REGISTRY[("conv", v, "cupy")]
        assert rec.device == "cuda"
        assert any(k[0] == "conv" and k[1] == v and k[2] != "cupy" for k in REGISTRY), v
    assert "F(4x4,3x3)" in REGISTRY[("conv", "winograd", "cupy")].about
    assert REGISTRY[("conv", "winograd", "cupy")].tol_scale >= REGISTRY[("conv", "winograd_f2", "cupy")].tol_scale
    assert REGISTRY[("conv", "winograd", "cupy")].tol_scale == REGISTRY[("conv", "winograd", "numba")].tol_scale


def test_builder_skips_with_the_reason():
    from kernels import gpu
    from microbench.registry import REGISTRY
    import microbench.cases.conv_gpu  # noqa: F401
    ok, reason = gpu.detect()
    nhwc = ConvProblem(1, 3, 5, 5, 2, 3, 3, layout="NHWC")
    for v in ("implicit_gemm", "winograd"):
        rec = REGISTRY[("conv", v, "cupy")]
        if not ok:
            for p in (SHAPES["3x3_pad1_odd"], nhwc):
                with pytest.raises(Unsupported, match="needs a GPU") as info:
                    rec.build(p, 0, precision="fp32")
                assert reason in str(info.value)
        with pytest.raises(Unsupported, match="needs a GPU" if not ok else "not fp64"):
            rec.build(nhwc, 0, precision="fp64")


# -- on a GPU ----------------------------------------------------------------------------------
GPU_TOL = {"fp32": 1e-5, "fp16": 1e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ("fp32", "fp16"))
@pytest.mark.parametrize("variant", cg.VARIANTS)
@pytest.mark.parametrize("name", list(SHAPES) + ["partial_tiles_pad0", "p9_q5_c3_k13", "below_one_f4_tile"])
def test_gpu_variant_matches_reference(variant, name, dtype, layout):
    import cupy as cp
    p = in_layout(SHAPES.get(name) or WINO_SHAPES[name], layout)
    reason = cg.accepts_gpu(variant, p, dtype)
    if reason:
        pytest.skip(reason)
    x, w, b = p.random_inputs(np.random.default_rng(11), dtype)
    ref = conv2d_reference(x, w, b, p)
    y = cg.RUNNERS[variant](cp.asarray(x), cp.asarray(w), None if b is None else cp.asarray(b), p)
    assert y.dtype == x.dtype and tuple(y.shape) == p.y_shape
    e = rel_err(cp.asnumpy(y), ref)
    tol = FP32_TOL.get(variant, GPU_TOL[dtype]) if dtype == "fp32" else GPU_TOL[dtype]
    assert e <= tol, f"{variant} {name} {dtype} {layout}: {e:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ("fp32", "fp16"))
@pytest.mark.parametrize("name", ["3x2_mixed_g2", "groups2_wide_k", "many_m_tiles", "7x7_stem_c3"])
def test_gpu_large_tile_matches_reference(name, dtype, layout):
    import cupy as cp
    p = in_layout(SHAPES[name], layout)
    x, w, b = p.random_inputs(np.random.default_rng(12), dtype)
    ref = conv2d_reference(x, w, b, p)
    y = cg.run_implicit_gemm_gpu(cp.asarray(x), cp.asarray(w), None if b is None else cp.asarray(b), p,
                                 stem="conv2d_implicit_gemm128")
    assert rel_err(cp.asnumpy(y), ref) <= GPU_TOL[dtype], (name, dtype, layout)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", WINO_VARIANTS)
def test_gpu_winograd_matches_its_emulation(variant, layout):
    """On a real layer the GPU Winograd path and its NumPy twin (same fp32 operands) agree far
    more closely than either agrees with the reference."""
    import cupy as cp
    p = ConvProblem(2, 64, 28, 27, 48, 3, 3, pad=1, layout=layout)
    x, w, b = p.random_inputs(np.random.default_rng(13), "fp32")
    y = cp.asnumpy(cg.RUNNERS[variant](cp.asarray(x), cp.asarray(w), cp.asarray(b), p))
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(y, ref) <= FP32_TOL.get(variant, 1e-5)
    assert rel_err(y, ge.emulate_winograd(x, w, b, p, variant)) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", cg.VARIANTS)
def test_gpu_builder_checks_resnet_layer(variant, layout):
    from microbench.registry import REGISTRY
    import microbench.cases.conv_gpu  # noqa: F401
    p = ConvProblem(4, 64, 56, 56, 64, 3, 3, pad=1, layout=layout)
    prep = REGISTRY[("conv", variant, "cupy")].build(p, 0, precision="fp32")
    c = prep.check()
    assert c.passed, c.detail
