"""GPU convolution (kernels/cuda/conv2d.cu, kernels/conv/gpu.py, microbench/cases/conv_gpu.py),
checked as far as each machine allows.

Without a GPU: the .cu compiles with nvcc (sm_90, register/spill report printed: ``pytest -rP``)
and NVRTC; the NumPy emulations of the implicit-GEMM kernel (block tiles, thread -> slot maps,
the im2col gather with padding zeros, groups) and of the Winograd transform kernels match the
float64 reference on awkward shapes; the variants register beside the CPU ones and skip with the
reason.  With a GPU (``-m gpu``): every GPU variant against the reference.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from kernels.conv import ConvProblem, conv2d_reference
from kernels.conv import gpu as cg
from kernels.errors import MissingDependency, Unsupported

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
WINO_SHAPES = {n: p for n, p in SHAPES.items()
               if cg.accepts_gpu("winograd", p, "fp32") is None}
WINO_SHAPES["partial_tiles_pad0"] = ConvProblem(2, 7, 10, 9, 5, 3, 3)
WINO_SHAPES["pad2_odd"] = ConvProblem(1, 3, 5, 8, 3, 3, 3, pad=2)


def rel_err(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        return np.inf
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


def inputs(p: ConvProblem, dtype="fp64", seed=7):
    x, w, b = p.random_inputs(np.random.default_rng(seed), dtype)
    return x, w, b, conv2d_reference(x, w, b, p)


# -- compilers ---------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")
def test_nvcc_compiles_sm90_without_spills(tmp_path):
    cmd = ["nvcc", "-arch=sm_90", "-c", "--resource-usage", "-Werror", "all-warnings",
           "-o", str(tmp_path / "conv2d.o"), str(cg.SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{report}"
    usage = parse_resource_usage(report)
    for name, u in sorted(usage.items()):
        print(f"{name:28s} {u.get('registers', '?'):>3} registers, {u.get('smem', '?')} B smem, "
              f"{u.get('spill_stores', '?')} B spill stores, {u.get('spill_loads', '?')} B spill loads, "
              f"{u.get('stack', '?')} B stack")
    assert set(usage) == set(cg.ENTRIES), report
    spilled = {n: u for n, u in usage.items() if u.get("spill_stores") or u.get("spill_loads")}
    assert not spilled, f"register spills: {spilled}"
    assert usage["conv2d_implicit_gemm_f32"]["registers"] <= 65536 // (2 * cg.THREADS)   # 2 blocks/SM


def test_nvrtc_compiles_every_entry():
    try:
        ptx = cg.nvrtc_compile("sm_90", cubin=False).decode(errors="replace")
    except MissingDependency as e:
        pytest.skip(str(e))
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(cg.ENTRIES)
    assert ".f64" not in "\n".join(l for l in ptx.splitlines() if not l.lstrip().startswith("//"))


def test_launcher_constants_match_the_source():
    consts = cg.source_constants()
    assert consts["CONV_THREADS"] == cg.THREADS
    assert (consts["CONV_BM"], consts["CONV_BN"], consts["CONV_BK"]) == (cg.BM, cg.BN, cg.BK)
    assert cg.TILES["conv2d_implicit_gemm"] == (cg.BM, cg.BN, cg.BK)
    assert cg.TILES["conv2d_implicit_gemm128"] == (consts["CONV_BM2"], consts["CONV_BN2"], consts["CONV_BK2"])
    assert consts["WINO_M"] == cg.WINO_M
    src = cg.read_source()
    for e in cg.ENTRIES:
        assert re.search(rf'extern "C" __global__ void __launch_bounds__\(MB_CONV_THREADS(, \w+)?\)\s*{e}\(',
                         src), e
    # the 16 geometry arguments the launcher passes, in the .cu's order
    assert len(cg._geom(SHAPES["3x2_mixed_g2"])) == 16
    assert re.search(r"int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, "
                     r"int ph, int pw,\s*\\\s*int dh, int dw, int G", src)


# -- the implicit-GEMM kernel's maps and index math ---------------------------------------------
@pytest.mark.parametrize("stem", ["conv2d_implicit_gemm", "conv2d_implicit_gemm128"])
def test_thread_maps_cover_each_slot_once(stem):
    BM, BN, BK = cg.TILES[stem]
    ml, kl = cg.a_slots(cg.THREADS, BM, BK)
    assert np.all(ml == (np.arange(cg.THREADS) % BM)[:, None])      # row fixed per thread
    a = np.zeros((BK, BM), int)
    np.add.at(a, (kl.ravel(), ml.ravel()), 1)
    assert np.all(a == 1)
    kb, jb = cg.b_slots(cg.THREADS, BN, BK)
    bt = np.zeros((BK, BN), int)
    np.add.at(bt, (kb.ravel(), jb.ravel()), 1)
    assert np.all(bt == 1)
    om, oj = cg.out_slots(cg.THREADS, BM, BN)
    o = np.zeros((BM, BN), int)
    np.add.at(o, (om.ravel(), oj.ravel()), 1)
    assert np.all(o == 1)
    # a warp's stores for fixed (i, j) cover 16 consecutive pixels (coalesced)
    assert sorted(set(om[:32, 0, 0].tolist())) == list(range(16))


@pytest.mark.parametrize("name", SHAPES)
def test_emulated_implicit_gemm_matches_reference(name):
    p = SHAPES[name]
    x, w, b, ref = inputs(p)
    stats = {}
    y = cg.emulate_implicit_gemm(x, w, b, p, stats=stats)
    assert rel_err(y, ref) <= 1e-12, name
    assert stats["blocks"] == np.prod(cg.implicit_gemm_grid(p, "conv2d_implicit_gemm"))
    if max(p.pad) > 0:
        assert stats["a_zero_slots"] > 0          # padding taps were loaded as zeros


@pytest.mark.parametrize("tiles", [(32, 16, 8, 128), (16, 32, 16, 64), (64, 64, 16, 256),
                                   (128, 128, 8, 256)])
def test_emulated_implicit_gemm_other_tiles(tiles):
    BM, BN, BK, threads = tiles
    for name in ("3x2_mixed_g2", "7x7_stem_c3", "groups2_wide_k"):
        p = SHAPES[name]
        x, w, b, ref = inputs(p)
        y = cg.emulate_implicit_gemm(x, w, b, p, BM, BN, BK, threads)
        assert rel_err(y, ref) <= 1e-12, (name, tiles)


def test_implicit_gemm_tile_choice():
    assert cg.implicit_gemm_kernel(ConvProblem(32, 64, 56, 56, 64, 3, 3, pad=1)) == "conv2d_implicit_gemm"
    assert cg.implicit_gemm_kernel(ConvProblem(32, 256, 14, 14, 256, 3, 3, pad=1)) == "conv2d_implicit_gemm"
    assert cg.implicit_gemm_kernel(ConvProblem(32, 256, 56, 56, 128, 1, 1)) == "conv2d_implicit_gemm128"
    assert cg.implicit_gemm_kernel(SHAPES["groups2_wide_k"]) == "conv2d_implicit_gemm"


def test_emulated_implicit_gemm_fp32_within_tolerance():
    p = SHAPES["many_m_tiles"]
    x, w, b = p.random_inputs(np.random.default_rng(3), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(cg.emulate_implicit_gemm(x, w, b, p), ref) <= 1e-5


def test_emulation_catches_a_wrong_index():
    """The check has teeth: a gather off by one tap fails it."""
    p = SHAPES["3x3_pad1_odd"]
    x, w, b, ref = inputs(p)
    orig = cg._a_gather
    try:
        cg._a_gather = lambda xc, pr, g, m, c, r, s: orig(xc, pr, g, m, c, r, s + 1)
        assert rel_err(cg.emulate_implicit_gemm(x, w, b, p), ref) > 1e-3
    finally:
        cg._a_gather = orig


@pytest.mark.parametrize("name", SHAPES)
def test_im2col_gpu_math_with_numpy(name):
    """im2col_gpu's strides, padding, groups and transpose, run with NumPy as the array module."""
    from numpy.lib.stride_tricks import as_strided
    p = SHAPES[name]
    x, w, b, ref = inputs(p)
    assert rel_err(cg.im2col_xp(np, as_strided, x, w, b, p), ref) <= 1e-12, name


# -- Winograd ----------------------------------------------------------------------------------
def test_winograd_matrices_compute_f2x3():
    """B^T, G, A^T as the kernels and the filter transform use them: y = A^T[(G g) * (B^T d)]."""
    rng = np.random.default_rng(0)
    g, d = rng.standard_normal(3), rng.standard_normal(4)
    y = cg.WINO_AT @ ((cg.WINO_G @ g) * (cg.WINO_BT @ d))
    assert np.allclose(y, [d[0:3] @ g, d[1:4] @ g], atol=1e-14)
    # the elementwise forms of the .cu equal the matrices
    assert np.allclose(cg._bt(*np.eye(4)), cg.WINO_BT)
    assert np.allclose(cg._at(*np.eye(4)), cg.WINO_AT)


@pytest.mark.parametrize("name", WINO_SHAPES)
def test_emulated_winograd_matches_reference(name):
    p = WINO_SHAPES[name]
    x, w, b, ref = inputs(p)
    assert rel_err(cg.emulate_winograd(x, w, b, p), ref) <= 1e-12, name


def test_emulated_winograd_fp32_within_tolerance():
    p = ConvProblem(2, 32, 14, 13, 16, 3, 3, pad=1)
    x, w, b = p.random_inputs(np.random.default_rng(5), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(cg.emulate_winograd(x, w, b, p), ref) <= 1e-5


# -- the .cu itself, run on the CPU ------------------------------------------------------------
# A host build of kernels/cuda/conv2d.cu: g++ compiles the unchanged source against a shim where
# every CUDA thread of a block is a std::thread, __syncthreads() a std::barrier, __shared__ a
# function-static array (blocks run one after another, so it is per block), and __half stores a
# float (the f16 entries then check index math only).  This runs the kernels' own index math,
# tiling, double buffering and barriers, which the NumPy emulations only mirror.
HOST_SHIM = r"""
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>
struct mb_dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local mb_dim3 threadIdx, blockIdx;
inline mb_dim3 blockDim, gridDim;
inline std::barrier<>* mb_barrier = nullptr;
inline void __syncthreads() { mb_barrier->arrive_and_wait(); }
struct float4 { float x, y, z, w; };
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
"""
HOST_FP16 = r"""
#pragma once
struct __half { float v; };
inline float __half2float(__half h) { return h.v; }
inline __half __float2half_rn(float f) { return __half{f}; }
"""
HOST_MAIN = r"""
template <class F> static void mb_launch(unsigned gx, unsigned gy, unsigned gz, unsigned nt, F f) {
    gridDim = {gx, gy, gz};
    blockDim = {nt, 1, 1};
    for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {
        std::barrier<> bar(nt);
        mb_barrier = &bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < nt; ++t)
            ts.emplace_back([=] { threadIdx = {t, 0, 0}; blockIdx = {x, y, z}; f(); });
        for (auto& th : ts) th.join();
    }
}
#define MB_G g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
extern "C" void host_direct(const float* x, const float* w, const float* b, float* y, const int* g,
                            unsigned blocks) {
    mb_launch(blocks, 1, 1, MB_CONV_THREADS, [=] { conv2d_direct_f32(x, w, b, y, MB_G); });
}
extern "C" void host_direct16(const float* x, const float* w, const float* b, float* y, const int* g,
                              unsigned blocks) {
    mb_launch(blocks, 1, 1, MB_CONV_THREADS, [=] {
        conv2d_direct_f16((const __half*)x, (const __half*)w, (const __half*)b, (__half*)y, MB_G); });
}
extern "C" void host_igemm(const float* x, const float* w, const float* b, float* y, const int* g,
                           unsigned gx, unsigned gy, unsigned gz) {
    mb_launch(gx, gy, gz, MB_CONV_THREADS, [=] { conv2d_implicit_gemm_f32(x, w, b, y, MB_G); });
}
extern "C" void host_igemm16(const float* x, const float* w, const float* b, float* y, const int* g,
                             unsigned gx, unsigned gy, unsigned gz) {
    mb_launch(gx, gy, gz, MB_CONV_THREADS, [=] {
        conv2d_implicit_gemm_f16((const __half*)x, (const __half*)w, (const __half*)b, (__half*)y, MB_G); });
}
extern "C" void host_igemm128(const float* x, const float* w, const float* b, float* y, const int* g,
                              unsigned gx, unsigned gy, unsigned gz) {
    mb_launch(gx, gy, gz, MB_CONV_THREADS, [=] { conv2d_implicit_gemm128_f32(x, w, b, y, MB_G); });
}
extern "C" void host_wino_in(const float* x, float* V, const int* a, unsigned blocks) {
    mb_launch(blocks, 1, 1, MB_CONV_THREADS, [=] {
        conv2d_winograd_input_f32(x, V, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]); });
}
extern "C" void host_wino_out(const float* M, const float* b, float* y, const int* a, unsigned blocks) {
    mb_launch(blocks, 1, 1, MB_CONV_THREADS, [=] {
        conv2d_winograd_output_f32(M, b, y, a[0], a[1], a[2], a[3], a[4], a[5]); });
}
"""


@pytest.fixture(scope="module")
def host_cu(tmp_path_factory):
    import ctypes
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on the PATH (host build of conv2d.cu)")
    d = tmp_path_factory.mktemp("conv2d_host")
    (d / "cuda_fp16.h").write_text(HOST_FP16)
    (d / "shim.h").write_text(HOST_SHIM)
    src = d / "conv2d_host.cpp"
    src.write_text(f'#include "shim.h"\n#include "{cg.SOURCE}"\n' + HOST_MAIN)
    lib = d / "conv2d_host.so"
    proc = subprocess.run([gxx, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-w", f"-I{d}",
                           "-o", str(lib), str(src)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip(f"g++ lacks C++20 <barrier>: {proc.stderr.splitlines()[0]}")
    assert proc.returncode == 0, proc.stderr
    return ctypes.CDLL(str(lib))


def _ptr(a):
    import ctypes
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def _host_run(lib, variant, p, x, w, b, fp16=False):
    import ctypes
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    x, w, b = f32(x), f32(w), f32(b)
    g = np.array([int(v) for v in cg._geom(p)], dtype=np.int32)
    y = np.full(p.y_shape, np.nan, dtype=np.float32)
    U = ctypes.c_uint
    if variant == "direct":
        # few blocks: the grid-stride loop runs several rounds
        getattr(lib, "host_direct16" if fp16 else "host_direct")(_ptr(x), _ptr(w), _ptr(b), _ptr(y),
                                                                 _ptr(g), U(3))
    elif variant in ("implicit_gemm", "implicit_gemm128"):
        stem = "conv2d_implicit_gemm128" if variant == "implicit_gemm128" else "conv2d_implicit_gemm"
        gx, gy, gz = cg.implicit_gemm_grid(p, stem)
        fn = "host_igemm128" if variant == "implicit_gemm128" else "host_igemm16" if fp16 else "host_igemm"
        getattr(lib, fn)(_ptr(x), _ptr(w), _ptr(b), _ptr(y), _ptr(g), U(gx), U(gy), U(gz))
    else:
        tP, tQ, T = cg.winograd_tiles(p)
        V = np.full((16, p.C, T), np.nan, dtype=np.float32)
        a = np.array([p.N, p.C, p.H, p.W, p.pad[0], p.pad[1], tP, tQ], dtype=np.int32)
        lib.host_wino_in(_ptr(x), _ptr(V), _ptr(a), U(2))
        assert np.all(np.isfinite(V))
        M = np.ascontiguousarray(np.matmul(cg.winograd_filter_transform(w), V), dtype=np.float32)
        a = np.array([p.N, p.K, p.P, p.Q, tP, tQ], dtype=np.int32)
        lib.host_wino_out(_ptr(M), _ptr(b), _ptr(y), _ptr(a), U(2))
    return y


HOST_SHAPES = ("3x3_pad1_odd", "3x3_stride2", "3x3_dil2", "3x2_mixed_g2", "1x1_stride2_pad",
               "7x7_stem_c3", "7x7_pad_gt_input", "groups2_wide_k", "depthwise", "many_m_tiles")


@pytest.mark.parametrize("name", HOST_SHAPES)
@pytest.mark.parametrize("variant", ("direct", "implicit_gemm", "implicit_gemm128"))
def test_cu_on_the_host_matches_reference(host_cu, variant, name):
    p = SHAPES[name]
    x, w, b = p.random_inputs(np.random.default_rng(17), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(_host_run(host_cu, variant, p, x, w, b), ref) <= 1e-5, (variant, name)


@pytest.mark.parametrize("variant", ("direct", "implicit_gemm"))
def test_cu_f16_entries_on_the_host(host_cu, variant):
    p = SHAPES["3x2_mixed_g2"]
    x, w, b = p.random_inputs(np.random.default_rng(18), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(_host_run(host_cu, variant, p, x, w, b, fp16=True), ref) <= 1e-5


@pytest.mark.parametrize("name", WINO_SHAPES)
def test_cu_winograd_on_the_host_matches_reference(host_cu, name):
    p = WINO_SHAPES[name]
    x, w, b = p.random_inputs(np.random.default_rng(19), "fp32")
    ref = conv2d_reference(x, w, b, p)
    assert rel_err(_host_run(host_cu, "winograd", p, x, w, b), ref) <= 1e-5, name


def _host_kernel(lib):
    """A stand-in for gpu._kernel: the launcher's (grid, block, args) go to the host build."""
    import ctypes

    def kernel(stem, dtype):
        assert dtype == "fp32"

        def call(grid, block, args):
            assert tuple(block) == (cg.THREADS,)
            ptrs = [None if isinstance(a, np.uint64) else _ptr(a) for a in args
                    if isinstance(a, (np.ndarray, np.uint64))]
            ints = np.array([a for a in args if isinstance(a, np.int32)], dtype=np.int32)
            assert len(ptrs) + len(ints) == len(args), "an argument of an unexpected type"
            U = [ctypes.c_uint(int(v)) for v in grid]
            fn = {"conv2d_direct": "host_direct", "conv2d_implicit_gemm": "host_igemm",
                  "conv2d_implicit_gemm128": "host_igemm128", "conv2d_winograd_input": "host_wino_in",
                  "conv2d_winograd_output": "host_wino_out"}[stem]
            if fn.startswith("host_igemm"):
                assert len(U) == 3
            else:
                assert len(U) == 1
            getattr(lib, fn)(*ptrs, _ptr(ints), *U)
        return call
    return kernel


@pytest.mark.parametrize("name", ["3x3_pad1_odd", "3x2_mixed_g2", "7x7_stem_c3", "3x3_dil2",
                                  "partial_tiles_pad0"])
@pytest.mark.parametrize("variant", ("direct", "implicit_gemm", "implicit_gemm128", "winograd"))
def test_launchers_on_the_host(host_cu, monkeypatch, variant, name):
    """The launchers themselves (argument order and types, grids, Winograd's GEMM and filter
    transform), with NumPy for CuPy and the host build for the kernels."""
    p = SHAPES.get(name) or WINO_SHAPES[name]
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
    assert rel_err(y, ref) <= 1e-5, (variant, name)


# -- what is accepted, registration, skips -------------------------------------------------------
def test_accepts_gpu_reasons():
    p3 = SHAPES["3x3_pad1_odd"]
    assert all(cg.accepts_gpu(v, p3, "fp32") is None for v in cg.VARIANTS)
    assert cg.accepts_gpu("implicit_gemm", p3, "fp16") is None
    assert "fp32" in cg.accepts_gpu("winograd", p3, "fp16")
    assert "fp64" in cg.accepts_gpu("direct", p3, "fp64")
    nhwc = ConvProblem(1, 3, 5, 5, 2, 3, 3, layout="NHWC")
    assert "NCHW" in cg.accepts_gpu("implicit_gemm", nhwc, "fp32")
    assert "3x3" in cg.accepts_gpu("winograd", SHAPES["7x7_stem_c3"], "fp32")
    assert "stride" in cg.accepts_gpu("winograd", SHAPES["3x3_stride2"], "fp32")
    assert "dilation" in cg.accepts_gpu("winograd", SHAPES["3x3_dil2"], "fp32")
    assert "groups" in cg.accepts_gpu("winograd", SHAPES["depthwise"], "fp32")


def test_registered_beside_the_cpu_variants():
    import microbench.cases.conv  # noqa: F401
    import microbench.cases.conv_gpu  # noqa: F401
    from microbench.registry import REGISTRY
    for v in cg.VARIANTS:
        rec = REGISTRY[("conv", v, "cupy")]
        assert rec.device == "cuda"
        assert any(k[0] == "conv" and k[1] == v and k[2] != "cupy" for k in REGISTRY), v


def test_builder_skips_with_the_reason():
    from kernels import gpu
    from microbench.registry import REGISTRY
    import microbench.cases.conv_gpu  # noqa: F401
    ok, reason = gpu.detect()
    rec = REGISTRY[("conv", "implicit_gemm", "cupy")]
    if not ok:
        with pytest.raises(Unsupported, match="needs a GPU") as info:
            rec.build(SHAPES["3x3_pad1_odd"], 0, precision="fp32")
        assert reason in str(info.value)
    nhwc = ConvProblem(1, 3, 5, 5, 2, 3, 3, layout="NHWC")
    with pytest.raises(Unsupported, match="needs a GPU" if not ok else "NCHW"):
        rec.build(nhwc, 0, precision="fp32")


# -- on a GPU ----------------------------------------------------------------------------------
GPU_TOL = {"fp32": 1e-5, "fp16": 1e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ("fp32", "fp16"))
@pytest.mark.parametrize("variant", cg.VARIANTS)
@pytest.mark.parametrize("name", list(SHAPES) + ["partial_tiles_pad0"])
def test_gpu_variant_matches_reference(variant, name, dtype):
    import cupy as cp
    p = SHAPES.get(name) or WINO_SHAPES[name]
    reason = cg.accepts_gpu(variant, p, dtype)
    if reason:
        pytest.skip(reason)
    x, w, b = p.random_inputs(np.random.default_rng(11), dtype)
    ref = conv2d_reference(x, w, b, p)
    y = cg.RUNNERS[variant](cp.asarray(x), cp.asarray(w), None if b is None else cp.asarray(b), p)
    assert y.dtype == x.dtype and tuple(y.shape) == p.y_shape
    e = rel_err(cp.asnumpy(y), ref)
    assert e <= GPU_TOL[dtype], f"{variant} {name} {dtype}: {e:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ("fp32", "fp16"))
@pytest.mark.parametrize("name", ["3x2_mixed_g2", "groups2_wide_k", "many_m_tiles", "7x7_stem_c3"])
def test_gpu_large_tile_matches_reference(name, dtype):
    import cupy as cp
    p = SHAPES[name]
    x, w, b = p.random_inputs(np.random.default_rng(12), dtype)
    ref = conv2d_reference(x, w, b, p)
    y = cg.run_implicit_gemm_gpu(cp.asarray(x), cp.asarray(w), None if b is None else cp.asarray(b), p,
                                 stem="conv2d_implicit_gemm128")
    assert rel_err(cp.asnumpy(y), ref) <= GPU_TOL[dtype], (name, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", cg.VARIANTS)
def test_gpu_builder_checks_resnet_layer(variant):
    from microbench.registry import REGISTRY
    import microbench.cases.conv_gpu  # noqa: F401
    p = ConvProblem(4, 64, 56, 56, 64, 3, 3, pad=1)
    prep = REGISTRY[("conv", variant, "cupy")].build(p, 0, precision="fp32")
    c = prep.check()
    assert c.passed, c.detail
