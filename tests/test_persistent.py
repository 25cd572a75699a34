"""Persistent LSTM/GRU: the .cu compiles (resource report kept), the plan's decisions on H100
numbers, the NumPy emulation of the kernel's decomposition against kernels.reference, and (``gpu``)
the real kernel against the reference on awkward shapes."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from tests import toolchain
from kernels import cudasrc
from kernels import persistent as kp
from kernels.errors import MissingDependency, Unsupported
from kernels.params import GRUParams, LSTMParams
from kernels.reference import gru_reference, lstm_reference

PARAMS = {"lstm": LSTMParams, "gru": GRUParams}
ENTRIES = {f"{c}_persistent_{s}" for c in ("lstm", "gru") for s in ("f32", "f16", "bf16")}


# -- compilation ------------------------------------------------------------------------------
@toolchain.needs("nvcc")
def test_nvcc_sm90_resource_usage(tmp_path):
    """No -rdc: cooperative_groups grid.sync() compiles without it (CUDA >= 11)."""
    from tests.test_cuda_sources import parse_resource_usage
    cmd = [toolchain.nvcc(), "-arch=sm_90", "-c", "--resource-usage", "-Werror", "all-warnings",
           "-o", str(tmp_path / "p.o"), str(kp.SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    (tmp_path / "rnn_persistent-sm_90.resource-usage.txt").write_text(" ".join(cmd) + "\n" + report)
    print(report)
    assert proc.returncode == 0, report
    usage = parse_resource_usage(report)
    assert set(usage) == ENTRIES
    for name, u in usage.items():
        assert u["spill_stores"] == u["spill_loads"] == u["stack"] == 0, (name, u)
        # the plan's register assumption must cover every entry (256 threads, one block per SM)
        assert u["registers"] <= kp.H100.kernel_regs, (name, u)


def test_nvrtc_compiles():
    try:
        ptx = cudasrc.nvrtc_compile(kp.SOURCE, "sm_90", cubin=False).decode(errors="replace")
    except MissingDependency as e:
        pytest.skip(str(e))
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == ENTRIES


def test_defines_match_the_module():
    d = kp.source_defines()
    assert d == {"THREADS": kp.THREADS, "WARPS": kp.WARPS, "RT": kp.RT, "KCHUNK": kp.KCHUNK}


def test_kernel_signature_matches_the_launcher():
    src = kp.read_source()
    params = re.search(r"MB_PERSIST_ENTRY\(NAME, T, CELL\).*?\bNAME\(([^)]*)\)", src, re.S).group(1)
    params = [p.replace("\\", "").strip() for p in params.split(",")]
    ints = [p.split()[-1] for p in params if p.startswith("int ")]
    assert ints == ["steps", "B", "H", "Kp", "BC", "BT", "KS"]
    assert len(params) == 8 + 3 + len(kp.plan("lstm", 64, 2, "fp32").args())


# -- plan on H100 numbers ---------------------------------------------------------------------
@pytest.mark.parametrize("cell,H,B,prec", [
    ("lstm", 256, 1, "fp32"), ("lstm", 512, 1, "fp32"), ("lstm", 1024, 1, "fp32"),
    ("lstm", 256, 16, "fp32"), ("lstm", 512, 64, "fp32"), ("lstm", 1024, 64, "fp16"),
    ("gru", 1024, 64, "fp32"), ("gru", 2048, 1, "fp16"), ("lstm", 129, 3, "fp32")])
def test_plan_fits(cell, H, B, prec):
    g = kp.plan(cell, H, B, prec)
    assert g.blocks <= kp.H100.sms and g.umax * g.blocks >= H and (g.umax - 1) * g.blocks < H
    assert g.smem <= kp.H100.smem_per_block and g.smem == g.layout["end"]
    assert g.bc * g.chunks >= B and 1 <= g.ks <= g.kp // kp.KCHUNK and g.bt in kp.BATCH_TILES
    offs = sorted(v for k, v in g.layout.items() if k != "end")
    for (o1, s1), (o2, _) in zip(offs, offs[1:]):
        assert o1 % 16 == 0 and o1 + s1 <= o2  # aligned, no overlap


def test_plan_h1024_b1_fp32_matches_the_first_cut():
    g = kp.plan("lstm", 1024, 1, "fp32")
    assert (g.blocks, g.umax, g.rows, g.kp, g.bc) == (128, 8, 32, 1024, 1)
    assert g.layout["w"][1] == 128 * 1024  # 32 rows x 1024 x 4 B


@pytest.mark.parametrize("cell,H,B,prec,what", [
    ("lstm", 2048, 1, "fp32", "recurrent weights need 512.0 KiB"),
    ("lstm", 4096, 64, "fp16", "recurrent weights need"),
    ("lstm", 256, 200_000, "fp32", "cell state"),
])
def test_plan_refuses_with_reason(cell, H, B, prec, what):
    with pytest.raises(Unsupported) as info:
        kp.plan(cell, H, B, prec)
    msg = str(info.value)
    assert what in msg and "227.0 KiB" in msg and "use the fused variant" in msg, msg


def test_plan_refuses_registers_and_occupancy():
    fat = kp.DeviceLimits("H100", 132, 65536, 228 * 1024, 227 * 1024, kernel_regs=300)
    with pytest.raises(Unsupported, match="registers"):
        kp.plan("lstm", 256, 1, "fp32", fat)
    none = kp.DeviceLimits("H100", 132, 65536, 228 * 1024, 227 * 1024, blocks_per_sm=0)
    with pytest.raises(Unsupported, match="occupancy"):
        kp.plan("lstm", 256, 1, "fp32", none)


def test_largest_h_on_h100():
    """The limits docs/gpu-status.md quotes (one block per SM, W_hh in shared memory only)."""
    got = {(c, p, B): kp.largest_h(c, B, p) for c in ("lstm", "gru") for p in ("fp32", "fp16")
           for B in (1, 64)}
    print(got)
    assert got[("lstm", "fp32", 1)] >= 1024 and got[("lstm", "fp16", 64)] >= 1024
    for (c, p, B), h in got.items():
        kp.plan(c, h, B, p)
        with pytest.raises(Unsupported):
            kp.plan(c, h + 1, B, p)


# -- CPU emulation of the decomposition -------------------------------------------------------
def _squeezed(cell, H, B, prec, sms):
    """Limits with so little shared memory that the batch goes one row per chunk."""
    big = kp.DeviceLimits("big", sms, 65536, 1 << 24, 1 << 24, 0)
    g = kp.plan(cell, H, B, prec, big)
    cap = kp.smem_layout(cell, H, B, kp.ITEMSIZE[prec], g.blocks, 1, 1, 1)["end"]
    return kp.DeviceLimits("squeezed", sms, 65536, cap, cap, 0)


def _case(cell, T, B, H, seed=0):
    p = PARAMS[cell].random(H, H, 1, seed=seed + 1).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32) if cell == "lstm" else None
    return p, x, h0, c0


def _reference(cell, p, x, h0, c0):
    if cell == "lstm":
        y, (h, c) = lstm_reference(x, p, h0[None], c0[None])
        return y, h[0], c[0]
    y, h = gru_reference(x, p, h0[None])
    return y, h[0]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("H", [1, 33, 129])
@pytest.mark.parametrize("limits", ["H100", "squeezed", "3sms"])
def test_emulation_matches_reference(cell, T, B, H, limits):
    p, x, h0, c0 = _case(cell, T, B, H)
    lim = {"H100": kp.H100, "squeezed": _squeezed(cell, H, B, "fp32", 5),
           "3sms": kp.DeviceLimits("3sms", 3, 65536, 1 << 20, 1 << 20, 0)}[limits]
    stats = {}
    geo, out = kp.emulate_layer(cell, p.layers[0], x, h0, c0, limits=lim, order=T, stats=stats)
    ref = _reference(cell, p, x, h0, c0)
    for got, want in zip(out, ref):
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)
        assert err <= 1e-5, (geo.describe(), err)
    assert stats["barriers"] == T - 1 and stats["writes"] == T * B * H


def test_emulation_fp16_storage():
    p, x, h0, c0 = _case("lstm", 4, 3, 129)
    p16 = p.astype(np.float16)
    x16, h16, c16 = x.astype(np.float16), h0.astype(np.float16), c0.astype(np.float16)
    geo, out = kp.emulate_layer("lstm", p16.layers[0], x16, h16, c16, precision="fp16")
    y, _, _ = _reference("lstm", p16, x16, h16, c16)
    assert out[0].dtype == np.float16
    assert np.max(np.abs(out[0].astype(np.float64) - y)) / np.max(np.abs(y)) <= 1e-2


def test_emulation_covers_split_k_and_chunks():
    """Geometries with K splits > 1 and several batch chunks are among the ones emulated."""
    assert kp.plan("lstm", 129, 1, "fp32").ks > 1
    assert kp.plan("lstm", 33, 3, "fp32", _squeezed("lstm", 33, 3, "fp32", 5)).chunks == 3


def test_tracker_catches_conflicts_and_unpublished_reads():
    m = kp._Tracked("y", (2, 4), np.float32)
    with pytest.raises(kp.DecompositionError, match="before anyone wrote"):
        m.read((0, slice(0, 4)), 0, block=0)
    m.write((0, slice(0, 2)), 1.0, 0, block=0)
    with pytest.raises(kp.DecompositionError, match="both write"):
        m.write((0, slice(1, 3)), 1.0, 0, block=1)
    with pytest.raises(kp.DecompositionError, match="same step"):
        m.read((0, slice(0, 2)), 0, block=1)
    assert m.read((0, slice(0, 2)), 1, block=1).tolist() == [1.0, 1.0]


def test_emulation_catches_a_broken_split():
    """A geometry whose blocks do not cover H (one block too few) is reported, not computed."""
    import dataclasses
    p, x, h0, c0 = _case("lstm", 2, 1, 33)
    geo = kp.plan("lstm", 33, 1, "fp32", kp.DeviceLimits("3sms", 3, 65536, 1 << 20, 1 << 20, 0))
    broken = dataclasses.replace(geo, umax=geo.umax - 1)
    gx = np.zeros((2, 1, 4 * 33), np.float32)
    with pytest.raises(kp.DecompositionError):
        kp.emulate(broken, p.layers[0].w_hh, gx, h0, c0)


# -- the real kernel (GPU) --------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (5, 3, 33), (7, 3, 129), (4, 5, 151), (3, 17, 1024),
                                   (3, 64, 512), (2, 2, 4096 + 32)])
def test_gpu_kernel_matches_reference(cell, prec, T, B, H):
    from microbench.cases.persistent import build_persistent
    from microbench.problems import RNNProblem
    try:
        prep = build_persistent(RNNProblem(cell, T, B, H, H), 0, precision=prec)
    except Unsupported as e:
        pytest.skip(str(e))
    check = prep.check()
    assert check.passed, check.detail
