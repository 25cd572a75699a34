"""The ``_packed`` convolutions (layers on oneDNN's matmul) and what they stand on: the strided
oneDNN matmul, the GEMM provider's fallback, the thread team, the layer contract of the conv
builder, and the benchmark's ratio table.  Every variant is also in tests/test_conv.py's
parametrization over awkward shapes; here are the paths those shapes do not force (chunks, the
team, the pointwise GEMM, tails) and the records' ``info``."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kernels.conv import CONV_VARIANTS, ConvProblem, conv2d_reference
from kernels.errors import BadInput

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rel_err(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        return np.inf
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


def onednn_or_skip():
    from kernels.onednn import lib as L
    ok, text = L.available()
    if not ok:
        pytest.skip(text)
    return L.load()


def team_or_skip(threads: int):
    import numba
    from kernels.conv.team import team_reason
    onednn_or_skip()
    if numba.config.NUMBA_NUM_THREADS < threads:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} threads")
    why = team_reason(threads)
    if why:
        pytest.skip(f"no team here: {why}")


# -- the strided matmul ---------------------------------------------------------------------------
def test_strided_matmul_batched_broadcast_strided_and_both_biases():
    onednn_or_skip()
    from kernels.onednn.strided import StridedMatmul
    rng = np.random.default_rng(0)
    f = np.float32
    # Winograd's shape: batched, weights packed at build (a later change of U is not seen)
    V, U = rng.standard_normal((4, 9, 5)).astype(f), rng.standard_normal((4, 5, 6)).astype(f)
    want = V.astype(np.float64) @ U
    M = np.full((4, 9, 6), np.nan, f)
    mm = StridedMatmul(V, U, M)
    U[...] = 0
    assert rel_err(mm(V, M), want) < 1e-6
    assert mm.info()["impl"] and not mm.info()["impl"].startswith("ref")
    # NCHW 1x1's shape: one filter broadcast over images, the activation as per-call weights,
    # a per-row bias (binary_add post-op), dst a strided view into a larger buffer
    W = rng.standard_normal((1, 3, 4)).astype(f)
    x = rng.standard_normal((2, 4, 7)).astype(f)
    big = np.full((2, 5, 7), 7.0, f)
    b = rng.standard_normal((1, 3, 1)).astype(f)
    mm3 = StridedMatmul(W, x, big[:, 1:4], packed=False, bias=b)
    mm3(W, big[:, 1:4], x)
    assert rel_err(big[:, 1:4], W.astype(np.float64) @ x + b) < 1e-6
    assert (big[:, 0] == 7).all() and (big[:, 4] == 7).all()       # nothing outside the view
    assert mm3.info()["bias"] == "binary_add post-op"
    # a transposed (strided) source and a per-column bias: the matmul's own bias argument
    xt = rng.standard_normal((6, 8)).astype(f).T                     # (8, 6), strides (1, 8)
    Wt = rng.standard_normal((6, 3)).astype(f)
    bc = rng.standard_normal((1, 3)).astype(f)
    y = np.empty((8, 3), f)
    mm4 = StridedMatmul(xt, Wt, y, bias=bc)
    assert rel_err(mm4(xt, y), xt.astype(np.float64) @ Wt + bc) < 1e-6 and mm4.info()["bias"] == "bias"


def test_strided_matmul_refuses_other_layouts_and_closed_use():
    onednn_or_skip()
    from kernels.onednn.strided import StridedMatmul
    f = np.float32
    a, w, y = np.zeros((4, 3), f), np.zeros((3, 2), f), np.zeros((4, 2), f)
    mm = StridedMatmul(a, w, y)
    with pytest.raises(BadInput, match=r"src has shape \(4, 6\).*built for shape \(4, 3\)"):
        mm(np.zeros((4, 6), f), y)
    with pytest.raises(BadInput, match="strides"):
        mm(np.zeros((3, 4), f).T, y)                                  # same shape, other strides
    with pytest.raises(BadInput, match="exactly when"):
        mm(a, y, w)
    with pytest.raises(BadInput, match="do not multiply"):
        StridedMatmul(a, np.zeros((2, 2), f), y)
    with pytest.raises(BadInput, match="float32"):
        StridedMatmul(a.astype(np.float64), w, y)
    mm.close()
    with pytest.raises(BadInput, match="closed"):
        mm(a, y)


def test_gemm_provider_falls_back_to_blas_in_fp64_and_says_why():
    from kernels.conv.gemm import strided_gemm
    rng = np.random.default_rng(1)
    a, w = rng.standard_normal((3, 5, 4)), rng.standard_normal((1, 4, 2))
    y = np.empty((3, 5, 2))
    g = strided_gemm(a, w, y, bias=np.ones((1, 1, 2)))
    assert g.info()["provider"] == "blas" and "float64" in g.info()["reason"]
    np.testing.assert_allclose(g(a, y), a @ w + 1, rtol=1e-14)


# -- the layers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pointwise_layer_is_one_gemm_on_the_input(layout):
    """1x1, stride 1, unpadded: no column matrix, the GEMM reads x in place; a strided or padded
    1x1 builds one."""
    onednn_or_skip()
    from kernels.conv.im2col_packed import Im2colLayer
    rng = np.random.default_rng(2)
    for p, pointwise in ((ConvProblem(3, 16, 5, 6, 8, 1, 1, layout=layout), True),
                         (ConvProblem(3, 16, 5, 6, 8, 1, 1, stride=2, layout=layout), False)):
        x, w, b = p.random_inputs(rng, "fp32")
        layer = Im2colLayer(w, b, p)
        assert (layer.cols is None) == pointwise
        info = layer.info()
        assert info["layout"] == layout and info["gemm"]["provider"] == "onednn"
        assert ("none" in info["columns"]) == pointwise
        assert rel_err(layer(x), conv2d_reference(x, w, b, p)) < 1e-5
        layer.close()


def test_im2col_packed_chunks_of_images(monkeypatch):
    """A column matrix larger than CHUNK_BYTES is built and multiplied a few images at a time,
    the last chunk shorter (its own GEMM)."""
    import kernels.conv.im2col_packed as ip
    p = ConvProblem(5, 3, 6, 6, 4, 3, 3, pad=1, layout="NHWC")
    rng = np.random.default_rng(3)
    for dt in ("fp32", "fp64"):
        x, w, b = p.random_inputs(rng, dt)
        monkeypatch.setattr(ip, "CHUNK_BYTES", 2 * p.C * 9 * 36 * x.itemsize)   # two images' columns
        layer = ip.Im2colLayer(w, b, p)
        assert layer.images == 2 and sorted(layer.gemms) == [1, 2]
        assert rel_err(layer(x), conv2d_reference(x, w, b, p)) < (1e-5 if dt == "fp32" else 1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_packed_team_and_batch_chunks(layout, m):
    """Both schedules and chunk sizes that leave a short last chunk give the reference; the
    output of one call survives the next (workspaces belong to the layer, y does not)."""
    team_or_skip(2)
    import numba
    from kernels.conv.winograd_packed import WinogradLayer
    p = ConvProblem(2, 18, 9, 11, 7, 3, 3, pad=1, layout=layout)
    rng = np.random.default_rng(4)
    x, w, b = p.random_inputs(rng, "fp32")
    ref = conv2d_reference(x, w, b, p)
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        for mode, chunk in (("team", 1), ("team", 3), ("batch", 2), ("batch", None)):
            layer = WinogradLayer(w, b, p, m, chunk, mode=mode)
            assert layer.mode == mode and layer.info()["schedule"]["mode"] == mode
            y1 = layer(x)
            keep = y1.copy()
            layer(p.random_inputs(rng, "fp32")[0])
            np.testing.assert_array_equal(y1, keep)
            assert rel_err(y1, ref) < 3e-5
            layer.close()
    finally:
        numba.set_num_threads(old)


def test_winograd_packed_plan():
    """The team where chunks' U reads cost less than the batch's V and M round trips (res2's
    3x3), the batch where U is large (res4's)."""
    from kernels.conv.winograd_packed import plan
    assert plan(ConvProblem(8, 64, 56, 56, 64, 3, 3, pad=1), 4, 4)[0] == "team"
    assert plan(ConvProblem(8, 256, 14, 14, 256, 3, 3, pad=1), 4, 4)[0] == "batch"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_implicit_packed_slices_and_tail(layout):
    """Slices of 16 pixels (so images are cut mid-row and the last slice is short), stride 2,
    dilation, padding wider than the filter's half: the team's result is the reference's."""
    team_or_skip(2)
    import numba
    from kernels.conv.implicit_packed import ImplicitLayer
    p = ConvProblem(2, 5, 9, 8, 6, 3, 3, stride=(2, 1), pad=(2, 1), dilation=(1, 2), layout=layout)
    rng = np.random.default_rng(5)
    x, w, b = p.random_inputs(rng, "fp32")
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        layer = ImplicitLayer(w, b, p, pixels=16)
        assert layer.fallback is None
        # NHWC: the short last slice writes y through its own GEMM; NCHW: through the thread's block
        assert (layer.tail is not layer.full) == (layout == "NHWC")
        assert layer.info()["schedule"]["mode"] == "team"
        y = layer(x)
        assert rel_err(y, conv2d_reference(x, w, b, p)) < 1e-5
        np.testing.assert_array_equal(layer(x), y)
        layer.close()
    finally:
        numba.set_num_threads(old)


def test_implicit_packed_says_why_it_runs_im2col():
    from kernels.conv.implicit_packed import ImplicitLayer
    p = ConvProblem(1, 4, 6, 6, 3, 3, 3, pad=1)
    x, w, b = p.random_inputs(np.random.default_rng(6), "fp64")
    layer = ImplicitLayer(w, b, p)
    info = layer.info()
    assert info["schedule"]["mode"] == "im2col_packed" and "float64" in info["schedule"]["why"]
    assert rel_err(layer(x), conv2d_reference(x, w, b, p)) < 1e-12


@pytest.mark.parametrize("variant", ["im2col_packed", "implicit_packed", "winograd_packed"])
def test_layer_refuses_a_wrong_input(variant):
    p = ConvProblem(1, 4, 6, 6, 3, 3, 3, pad=1)
    x, w, b = p.random_inputs(np.random.default_rng(7), "fp32")
    layer = CONV_VARIANTS[variant].prepare(w, b, p)
    try:
        with pytest.raises(BadInput, match=r"x is float32 \(1, 6, 6, 4\); this layer takes float32 \(1, 4, 6, 6\)"):
            layer(x.transpose(0, 2, 3, 1))
        with pytest.raises(BadInput, match="float64"):
            layer(x.astype(np.float64))
    finally:
        layer.close()


# -- the builder: the layer is built once, its calls are timed --------------------------------------
def test_conv_builder_builds_the_layer_once_and_records_its_info(monkeypatch):
    from kernels.conv import ConvVariant
    from microbench.cases.conv import build_conv
    made = []
    real = ConvVariant.prepare

    def counting(self, w, b, problem):
        made.append(self.name)
        return real(self, w, b, problem)
    monkeypatch.setattr(ConvVariant, "prepare", counting)
    p = ConvProblem(1, 4, 6, 6, 3, 1, 1)
    prep = build_conv(p, 0, variant="im2col_packed", precision="fp32")
    for _ in range(3):
        prep.run()
    assert made == ["im2col_packed"]
    assert prep.check().passed
    assert prep.info["layout"] == "NCHW" and "gemm" in prep.info and "columns" in prep.info
    prep.close()


# -- the benchmark's ratio table ------------------------------------------------------------------
def test_cpu_conv_benchmark_ratios_pick_our_fastest_own_kernel(tmp_path):
    """benchmarks/cpu_conv.sh's table: the best of our own rows (not a framework's, not oneDNN's
    conv primitive) over torch/fused, per thread count."""
    script = (ROOT / "benchmarks" / "cpu_conv.sh").read_text()
    code = script.split("<<'PY'", 1)[1].split("\n", 1)[1].split("\nPY\n", 1)[0]

    def rec(label, backend, ms, threads, framework="", status="ok"):
        return {"label": label, "backend": backend, "framework": framework, "status": status,
                "options": {"threads": threads}, "stats": {"median_s": ms / 1e3}}
    rows = [rec("winograd_packed/numba", "numba", 3.0, 1), rec("im2col/numpy", "numpy", 5.0, 1),
            rec("onednn/onednn", "onednn", 1.0, 1), rec("torch/fused", "torch", 4.0, 1, "torch"),
            rec("direct/numba", "numba", 0.5, 1, status="failed"),
            rec("im2col_packed/numba", "numba", 2.0, 2), rec("torch/fused", "torch", 1.0, 2, "torch")]
    (tmp_path / "conv-res2_3x3.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[1] == "res2_3x3 1: winograd_packed/numba 3.00, 4.00, 1.00, 0.75, none"
    assert lines[2] == "res2_3x3 2: im2col_packed/numba 2.00, 1.00, -, 2.00, none"
