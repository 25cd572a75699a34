"""2-D convolution: reference against the definition, every variant against the reference, the
reasons variants give for what they skip, geometry errors, and the shape suites."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.conv import CONV_VARIANTS, ConvProblem, conv2d, conv2d_reference, conv2d_slow
from kernels.conv import winograd
from kernels.errors import BadInput, Unsupported
from microbench.suites import conv_shapes as cs

# Awkward shapes: odd sizes, padding wider than the filter's half, stride 2, dilation 2, 1x1, 7x7,
# C=3, groups, both layouts, bias on and off.
SHAPES = {
    "3x3_pad1": ConvProblem(2, 5, 11, 13, 7, 3, 3, pad=1),
    "3x3_pad2_nhwc": ConvProblem(2, 5, 9, 7, 6, 3, 3, pad=2, layout="NHWC"),
    "3x3_nopad_wide_k": ConvProblem(1, 16, 9, 10, 40, 3, 3, bias=False),
    "3x3_stride2": ConvProblem(2, 4, 13, 12, 5, 3, 3, stride=2, pad=1),
    "3x2_mixed": ConvProblem(2, 4, 7, 9, 6, 3, 2, stride=(2, 1), pad=(2, 3), dilation=(1, 2), groups=2),
    "3x3_dil2_nhwc": ConvProblem(1, 6, 12, 11, 4, 3, 3, pad=2, dilation=2, layout="NHWC"),
    "1x1_c3": ConvProblem(3, 3, 5, 7, 4, 1, 1, bias=False, layout="NHWC"),
    "1x1_stride2_pad": ConvProblem(2, 8, 7, 7, 16, 1, 1, stride=2, pad=3),
    "7x7_stem_c3": ConvProblem(1, 3, 23, 21, 8, 7, 7, stride=2, pad=3),
    "7x7_pad_gt_input": ConvProblem(1, 3, 3, 3, 2, 7, 7, stride=3, pad=3),
    "groups2_nhwc": ConvProblem(2, 6, 8, 7, 4, 3, 3, stride=2, pad=4, groups=2, layout="NHWC"),
    "depthwise": ConvProblem(1, 4, 6, 6, 4, 3, 3, pad=1, groups=4),
    "winograd_partial_tiles": ConvProblem(2, 7, 10, 9, 5, 3, 3, pad=1, layout="NHWC"),
}

# fp64: the formulation's rounding is ~1e-15 of max|y|, so 1e-10 catches any real mistake.
# fp32: 1e-5 relative to max|ref| for the direct/GEMM variants (measured: <= 5e-7 on these shapes,
# 1.2e-6 at ResNet res2 3x3).  Winograd's transforms lose more; measured fp32 error, max over these
# shapes / res2 3x3 N=8 (C=64) / C=512 14x14: F(2x2,3x3) 1.6e-7 / 2.8e-7 / 4.2e-7, F(4x4,3x3)
# 2.0e-6 / 5.2e-6 / 8.5e-6 (A^T's entries reach 8, G's 1/24); so F4 gets 3e-5 and F2 1e-5.
# fp64 F4: 2.9e-15.
TOL = {"fp64": 1e-10, "fp32": 1e-5}
TOL_WINOGRAD_FP32 = {2: 1e-5, 4: 3e-5}
F4_VARIANTS = ("winograd", "winograd_packed")


def rel_err(y, ref) -> float:
    """max|y - ref| / max|ref|; NaN or inf anywhere gives inf, so it never passes."""
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        return np.inf
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def cases():
    """Per (shape, dtype): inputs and the float64 reference, computed once."""
    rng = np.random.default_rng(1234)
    out = {}
    for name, p in SHAPES.items():
        for dt in ("fp32", "fp64"):
            x, w, b = p.random_inputs(rng, dt)
            out[name, dt] = (x, w, b, conv2d_reference(x, w, b, p))
    return out


# -- reference ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHAPES)
def test_reference_matches_definition(name):
    p = SHAPES[name]
    x, w, b = p.random_inputs(np.random.default_rng(7), "fp64")
    ref = conv2d_reference(x, w, b, p)
    assert ref.shape == p.y_shape and ref.dtype == np.float64
    assert rel_err(conv2d_slow(x, w, b, p), ref) < 1e-13


def test_reference_hand_computed():
    # 1 channel 3x3 input of ones, 2x2 filter of ones, pad 1: corners see 1 tap, edges 2, inside 4.
    p = ConvProblem(1, 1, 3, 3, 1, 2, 2, pad=1, bias=False)
    y = conv2d_reference(np.ones(p.x_shape), np.ones(p.w_shape), None, p)
    want = [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]
    np.testing.assert_array_equal(y[0, 0], want)


def test_nan_never_passes():
    ref = np.ones((2, 2))
    assert rel_err(np.array([[1.0, np.nan], [1.0, 1.0]]), ref) == np.inf
    assert not rel_err(np.array([[1.0, np.nan], [1.0, 1.0]]), ref) < 1.0


# -- variants -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("name", SHAPES)
def test_variant_matches_reference(cases, name, variant, dtype):
    p = SHAPES[name]
    v = CONV_VARIANTS[variant]
    reason = v.accepts(p, dtype)
    if reason:
        with pytest.raises(Unsupported) as e:
            conv2d(*cases[name, dtype][:3], p, variant=variant)
        assert str(e.value) == reason
        pytest.skip(reason)
    x, w, b, ref = cases[name, dtype]
    y = conv2d(x, w, b, p, variant=variant)
    assert y.shape == p.y_shape and y.dtype == x.dtype
    tol = TOL_WINOGRAD_FP32[4] if (variant in F4_VARIANTS and dtype == "fp32") else TOL[dtype]
    assert rel_err(y, ref) < tol


@pytest.mark.parametrize("transforms", winograd.TRANSFORMS)
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_winograd_tiles(cases, tile, dtype, transforms):
    tol = TOL_WINOGRAD_FP32[tile] if dtype == "fp32" else TOL[dtype]
    served = 0
    for name, p in SHAPES.items():
        if winograd.accepts(p, dtype, tile) is None:
            x, w, b, ref = cases[name, dtype]
            y = winograd.conv2d_winograd(x, w, b, p, tile=tile, transforms=transforms)
            assert y.shape == p.y_shape and y.dtype == x.dtype, name
            assert rel_err(y, ref) < tol, name
            served += 1
    assert served >= 4     # padded, unpadded, NHWC, partial tiles


def test_winograd_numba_edges_and_bias():
    """Padding wider than a tile's overlap, planes smaller than a tile, a 1-row output, no bias,
    and a bias that must be added once per output (not once per tile)."""
    rng = np.random.default_rng(7)
    for p in (ConvProblem(1, 2, 3, 3, 3, 3, 3, pad=4), ConvProblem(2, 3, 3, 17, 2, 3, 3),
              ConvProblem(1, 1, 1, 1, 1, 3, 3, pad=1), ConvProblem(3, 4, 9, 6, 5, 3, 3, pad=(0, 2), bias=False)):
        x, w, b = p.random_inputs(rng, "fp64")
        ref = conv2d_reference(x, w, b, p)
        for tile in winograd.TILES:
            y = winograd.conv2d_winograd(x, w, b, p, tile=tile, transforms="numba")
            assert rel_err(y, ref) < 1e-10, (p, tile)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_winograd_numba_results_survive_the_next_call(layout):
    """The transforms reuse workspace buffers between calls; a returned output must not be one."""
    p = ConvProblem(1, 3, 8, 8, 2, 3, 3, pad=1, layout=layout)       # P = Q = 8: whole F4 tiles
    rng = np.random.default_rng(3)
    x1, w, b = p.random_inputs(rng, "fp64")
    y1 = winograd.conv2d_winograd(x1, w, b, p, transforms="numba")
    keep = y1.copy()
    winograd.conv2d_winograd(p.random_inputs(rng, "fp64")[0], w, b, p, transforms="numba")
    np.testing.assert_array_equal(y1, keep)
    assert rel_err(y1, conv2d_reference(x1, w, b, p)) < 1e-10


def test_winograd_numba_source_skips_zero_terms():
    from kernels.conv.winograd_numba import kernel_source
    src = kernel_source(4, "float32")
    assert "np.float32(0.0)" not in src and "0.0 *" not in src
    # The first row of F(4x4,3x3)'s B^T is (4, 0, -5, 0, 1, 0): three terms, one of them an add.
    first = next(ln for ln in src.splitlines() if "tmp[0, 0, c] = " in ln)
    assert first.split("= ", 1)[1] == "np.float32(4.0) * d0 - np.float32(5.0) * d2 + d4"


def test_winograd_unknown_transforms():
    p = SHAPES["3x3_pad1"]
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp32")
    with pytest.raises(BadInput, match="winograd transforms 'cuda' are unknown; allowed: numba, numpy"):
        winograd.conv2d_winograd(x, w, b, p, transforms="cuda")


@pytest.mark.parametrize("m", winograd.TILES)
def test_winograd_matrices_are_a_1d_correlation(m):
    AT, G, BT = winograd.matrices(m)
    assert AT.shape == (m, m + 2) and G.shape == (m + 2, 3) and BT.shape == (m + 2, m + 2)
    assert np.all(BT == np.round(BT))            # the input transform is adds only
    rng = np.random.default_rng(m)
    d, g = rng.normal(size=m + 2), rng.normal(size=3)
    np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), np.correlate(d, g, "valid"), atol=1e-13)


def test_winograd_f2_matches_lavin_gray():
    # Lavin & Gray (2015), eq. 7, up to the sign of the infinity row/column.
    AT, G, BT = winograd.matrices(2)
    np.testing.assert_array_equal(BT[:3], [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0]])
    np.testing.assert_array_equal(G, [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    np.testing.assert_array_equal(AT[0], [1, 1, 1, 0])


ACCEPT_CASES = [
    ("winograd", ConvProblem(1, 2, 8, 8, 2, 5, 5), "fp32", "3x3 filter, not 5x5"),
    ("winograd", ConvProblem(1, 2, 8, 8, 2, 3, 3, stride=2), "fp32", "stride 1, not (2, 2)"),
    ("winograd", ConvProblem(1, 2, 8, 8, 2, 3, 3, dilation=2), "fp32", "dilation 1, not (2, 2)"),
    ("winograd", ConvProblem(1, 2, 8, 8, 2, 3, 3, groups=2), "fp32", "groups=1 only, not 2"),
    ("winograd", ConvProblem(1, 2, 8, 8, 2, 3, 3), "fp16", "not fp16"),
    ("direct", ConvProblem(1, 2, 8, 8, 2, 3, 3), "fp16", "not fp16"),
    ("im2col", ConvProblem(1, 2, 8, 8, 2, 3, 3), "tf32", "not tf32"),
    ("implicit_gemm", ConvProblem(1, 2, 8, 8, 2, 3, 3), "fp16", "not fp16"),
]


@pytest.mark.parametrize("variant,problem,dtype,reason", ACCEPT_CASES)
def test_accepts_reasons(variant, problem, dtype, reason):
    got = CONV_VARIANTS[variant].accepts(problem, dtype)
    assert got is not None and reason in got and "\n" not in got


def test_unsupported_dtype_raises_with_reason():
    p = ConvProblem(1, 2, 6, 6, 3, 3, 3, pad=1)
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp16")
    with pytest.raises(Unsupported, match="not fp16"):
        conv2d(x, w, b, p, variant="direct")
    assert winograd.accepts(p, "fp32", tile=6) is not None


def test_every_variant_accepts_the_general_case():
    p = ConvProblem(1, 4, 9, 9, 4, 3, 3, pad=1)
    for v in CONV_VARIANTS.values():
        assert v.accepts(p, "fp32") is None and v.devices == ("cpu",) and v.description


# -- bad inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,named", [
    (dict(N=1, C=3, H=4, W=4, K=2, R=7, S=3), "P=-2"),
    (dict(N=1, C=3, H=9, W=4, K=2, R=3, S=5, stride=2), "Q=0"),
    (dict(N=1, C=3, H=4, W=4, K=2, R=3, S=3, dilation=2), "P=0"),
    (dict(N=1, C=3, H=8, W=8, K=4, R=3, S=3, groups=2), "groups=2"),
    (dict(N=1, C=4, H=8, W=8, K=3, R=3, S=3, groups=2), "K=3"),
    (dict(N=1, C=4, H=8, W=8, K=4, R=3, S=3, layout="CHWN"), "'CHWN'"),
    (dict(N=0, C=4, H=8, W=8, K=4, R=3, S=3), "N=0"),
    (dict(N=1, C=4, H=-8, W=8, K=4, R=3, S=3), "H=-8"),
    (dict(N=1, C=4, H=8, W=8, K=4, R=3, S=3, stride=0), "stride=0"),
    (dict(N=1, C=4, H=8, W=8, K=4, R=3, S=3, pad=(1, -1)), "pad=(1, -1)"),
    (dict(N=1, C=4, H=8, W=8, K=4, R=3, S=3, stride=(1, 2, 3)), "stride=(1, 2, 3)"),
    (dict(N=1.5, C=4, H=8, W=8, K=4, R=3, S=3), "N=1.5"),
])
def test_bad_geometry(kwargs, named):
    with pytest.raises(BadInput) as e:
        ConvProblem(**kwargs)
    msg = str(e.value)
    assert named in msg and "\n" not in msg


def test_bad_arrays_and_variant():
    p = ConvProblem(1, 2, 6, 6, 3, 3, 3, pad=1)
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp32")
    with pytest.raises(BadInput, match=r"x has shape \(1, 6, 6, 2\)"):
        conv2d(x.transpose(0, 2, 3, 1), w, b, p)
    with pytest.raises(BadInput, match="b has shape None"):
        conv2d(x, w, None, p)
    with pytest.raises(BadInput, match="mix dtypes"):
        conv2d(x, w.astype(np.float64), b, p)
    with pytest.raises(BadInput, match="'fast'.*allowed: direct"):
        conv2d(x, w, b, p, variant="fast")


def test_problem_figures():
    p = ConvProblem(8, 64, 56, 56, 64, 3, 3, pad=1)
    assert (p.P, p.Q) == (56, 56)
    assert p.flops == 2 * 8 * 64 * 56 * 56 * 64 * 9
    assert p.bytes("fp32") == 4 * (8 * 64 * 56 * 56 * 2 + 64 * 64 * 9 + 64)
    g = ConvProblem(2, 6, 8, 8, 4, 3, 3, pad=1, groups=2, layout="NHWC", stride=(2, 1))
    assert g.w_shape == (4, 3, 3, 3) and g.x_shape == (2, 8, 8, 6) and g.y_shape == (2, 4, 8, 4)
    x, w, b = g.random_inputs(np.random.default_rng(0), "fp32")
    assert x.dtype == np.float32 and np.all(x != 0) and np.all(w != 0) and np.all(b != 0)


# -- suites ---------------------------------------------------------------------------------
def test_resnet50_layers():
    names = cs.list_layers("resnet50")
    assert len(names) == 24
    assert len({cs.conv_layer(n, 1) for n in names}) == 23       # res2_proj == res2_1x1b
    assert cs.conv_layer("resnet50/res2_3x3", 8) == ConvProblem(8, 64, 56, 56, 64, 3, 3, pad=1)
    assert cs.conv_layer("resnet50/res2_1x1", 4) == cs.conv_layer("resnet50/res2_1x1b", 4)
    assert cs.conv_layer("resnet50/res4_3x3", 2) == ConvProblem(2, 256, 14, 14, 256, 3, 3, pad=1)
    stem = cs.conv_layer("resnet50/conv1_7x7", 1)
    assert (stem.C, stem.K, stem.P, stem.stride) == (3, 64, 112, (2, 2))
    s2 = cs.conv_layer("resnet50/res3_3x3_s2")
    assert (s2.N, s2.H, s2.P, s2.stride) == (32, 56, 28, (2, 2))   # v1.5: stride on the 3x3
    assert cs.conv_layer("resnet50/res5_1x1b", 1).P == 7
    assert "resnet50/res2_1x1" in cs.list_layers("resnet50", aliases=True)


def test_deepbench_tables():
    sizes = {s: len(cs.list_layers(s)) for s in cs.DEEPBENCH}
    assert sizes == {"deepbench-training": 94, "deepbench-inference-server": 107,
                     "deepbench-inference-device": 16}
    for suite in cs.DEEPBENCH:
        for name in cs.list_layers(suite):
            assert isinstance(cs.conv_layer(name), ConvProblem)      # every row is valid
    first = cs.conv_layer("deepbench-training/000")   # W=700 H=161 C=1 N=4 K=32 S=20 R=5 stride 2
    assert (first.N, first.C, first.H, first.W, first.K, first.R, first.S) == (4, 1, 161, 700, 32, 5, 20)
    assert first.stride == (2, 2) and cs.conv_layer("deepbench-training/000", batch=1).N == 1
    assert cs.list_layers("deepbench-inference") == cs.list_layers("deepbench-inference-server")


@pytest.mark.parametrize("name,hint", [
    ("resnet50/res2_3x4", "resnet50/res2_3x3"),
    ("deepbench-training/999", "suite"),
    ("nosuch/layer", "suites: resnet50"),
])
def test_unknown_layer(name, hint):
    with pytest.raises(BadInput) as e:
        cs.conv_layer(name)
    assert repr(name) in str(e.value)
    assert hint in str(e.value) or "did you mean" in str(e.value)


def test_unknown_suite():
    with pytest.raises(BadInput, match="'resnet18' is unknown"):
        cs.list_layers("resnet18")
