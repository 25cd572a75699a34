"""A CPU conv algorithm is one row of kernels.conv.CONV_VARIANTS: its dtypes written once (the
row), its host workspace estimated by the row (and followed by the planner's memory need of the
variants chosen, not im2col's for every one), whether suites take it unasked, and the `conv`
table's "vs" baseline picked from what ran."""
from __future__ import annotations

import argparse
import tracemalloc

import numpy as np
import pytest

from kernels.conv import CONV_VARIANTS, ConvProblem, ConvVariant, conv2d
from kernels.conv import direct, im2col, implicit_gemm, winograd
from kernels.conv import workspace as ws
from microbench import cases, registry  # noqa: F401  (cases fills the registry)
from microbench.planner import memory_need

LAYER = ConvProblem(N=2, C=32, H=32, W=32, K=32, R=3, S=3, pad=1)
SLACK = 128 << 10      # Python objects, numba's dispatch, the bias vector: not a workspace (x is 256 KiB)


def test_dtypes_are_written_once_on_the_row():
    for mod, name in ((direct, "direct"), (im2col, "im2col"), (implicit_gemm, "implicit_gemm"),
                      (winograd, "winograd")):
        assert mod.DTYPES is CONV_VARIANTS[name].dtypes
    for name, row in CONV_VARIANTS.items():
        assert registry.REGISTRY[("conv", name, row.backend)].dtypes == row.dtypes
    # the row decides: a row computing fp64 only refuses fp32 before its module is asked
    only64 = ConvVariant("direct64", "direct", "direct in fp64 only", dtypes=("fp64",), workspace=ws.none)
    assert only64.accepts(LAYER, "fp32") == "direct64 computes in fp64, not fp32"
    assert only64.accepts(LAYER, "fp64") is None


@pytest.mark.parametrize("name", list(CONV_VARIANTS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_workspace_estimate_covers_what_a_call_allocates(name, layout):
    """The row's estimate against NumPy's allocations during one call (tracemalloc sees them;
    numba's per-thread tiles it does not, and they are not counted): never below the peak
    beyond x, w, b and y (less a few small objects), and for the copying algorithms not above
    three times it."""
    import dataclasses
    p = dataclasses.replace(LAYER, layout=layout)
    row = CONV_VARIANTS[name]
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp32")
    conv2d(x, w, b, p, variant=name)            # compiled, and Winograd's buffers made once
    from kernels.conv import winograd_numba
    winograd_numba._WORKSPACE.clear()           # so this call allocates them again
    y_bytes = p.N * p.K * p.P * p.Q * 4
    tracemalloc.start()
    try:
        conv2d(x, w, b, p, variant=name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        winograd_numba._WORKSPACE.clear()
    extra = max(0, peak - y_bytes)
    est = row.workspace_bytes(p, "fp32")
    assert est + SLACK >= extra, (name, layout, est, extra)
    if est:
        assert est <= 3 * max(extra, 1), (name, layout, est, extra)


def test_memory_need_follows_the_chosen_variants():
    recs = {n: registry.REGISTRY[("conv", n, r.backend)] for n, r in CONV_VARIANTS.items()}
    base = memory_need(LAYER, "fp32", [recs["implicit_gemm"]])
    assert base == LAYER.bytes("fp32") * 2 + 8 * LAYER.elements          # nothing beyond
    assert memory_need(LAYER, "fp32", [recs["im2col"]]) == base + ws.column_matrix(LAYER, 4)
    both = memory_need(LAYER, "fp32", [recs["implicit_gemm"], recs["winograd"]])
    assert both == base + CONV_VARIANTS["winograd"].workspace_bytes(LAYER, "fp32")
    # no records (or one without an estimate, a framework's): the column matrix, as before
    cols = LAYER.N * LAYER.P * LAYER.Q * LAYER.Cg * LAYER.R * LAYER.S * 4
    assert memory_need(LAYER, "fp32") == base + cols
    from kernels.conv.gpu import ALGORITHMS
    gpu = [r for r in registry.ours("conv") if r.device == "cuda" and r.variant in ALGORITHMS]
    assert gpu and all(memory_need(LAYER, "fp32", [r]) == base for r in gpu)     # device memory


def test_conv_command_checks_the_memory_of_the_variants_it_runs(monkeypatch, capsys):
    """A layer whose column matrix does not fit is refused for --im2col, not for --implicit_gemm
    (before, every variant was charged im2col's matrix)."""
    from microbench import cli, problems
    p = ConvProblem(N=8, C=64, H=56, W=56, K=64, R=3, S=3, pad=1)
    recs = {n: registry.REGISTRY[("conv", n, r.backend)] for n, r in CONV_VARIANTS.items()}
    small, large = memory_need(p, "fp32", [recs["implicit_gemm"]]), memory_need(p, "fp32", [recs["im2col"]])
    assert small < large
    monkeypatch.setattr(problems, "available_memory", lambda: (small + large) // 2)
    argv = ["conv", "--device", "cpu", "--layer", "resnet50/res2_3x3", "-N", "8"]
    assert cli.main(argv + ["--im2col"]) == 2
    assert "more than the" in capsys.readouterr().err
    ran = []

    class Planned(Exception):
        pass

    def planned(cases, settings, args):      # stop where the cases would run
        ran.extend(cases)
        raise Planned
    from microbench import runner
    monkeypatch.setattr(runner, "run_cases", planned)
    with pytest.raises(Planned):
        cli.main(argv + ["--implicit_gemm"])
    assert [c.variant for c in ran] == ["implicit_gemm"]


def _suite_args(variants=None):
    return argparse.Namespace(only="res2_3x3$", dtype="fp32", threads=None, batch=1, variants=variants,
                              frameworks=None, backend=None, seed=0, input_gemm=False, forward_only=False)


def test_a_record_says_whether_suites_take_it(register_variants):
    from microbench.commands import suite as msuite
    from microbench.suites import catalog
    stub = registry.VariantRecord("conv", "stub_slow", "numpy", lambda *a, **k: None,
                                  "a test double kept out of suites", code="tests.x:y", dtypes=("fp32",),
                                  suites=False)
    register_variants(stub)
    suite = catalog.get("resnet50-conv")
    (entry,) = msuite.plan(_suite_args(), suite, "cpu")
    ran = {c.variant for c in entry.cases}
    assert "stub_slow" not in ran and {"direct", "im2col"} <= ran
    (entry,) = msuite.plan(_suite_args("stub_slow,direct"), suite, "cpu")
    assert {c.variant for c in entry.cases} == {"stub_slow", "direct"}
    assert all(r.suites for r in registry.REGISTRY.values() if r.key != stub.key)


def _outcome(variant, status="ok", framework=""):
    from types import SimpleNamespace
    rec = SimpleNamespace(framework=framework)
    return SimpleNamespace(status=status, case=SimpleNamespace(variant=variant, record=rec))


def test_conv_baseline_is_picked_from_what_ran():
    from microbench.commands.conv import baseline_of
    assert baseline_of([_outcome("im2col"), _outcome("direct")]) == "direct"
    assert baseline_of([_outcome("torch", framework="torch"), _outcome("winograd"), _outcome("im2col")]) == "winograd"
    assert baseline_of([_outcome("direct", "skipped"), _outcome("im2col")]) == "im2col"
    assert baseline_of([]) == "direct"


def test_conv_table_names_the_baseline_it_divides_by(capsys):
    from microbench import cli
    argv = ["conv", "--device", "cpu", "--im2col", "--implicit_gemm", "-N", "1", "-C", "4", "-H", "6",
            "-W", "6", "-K", "4", "--warmup", "0", "--min-time", "0", "--min-samples", "2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "vs im2col" in out and "vs direct" not in out
    row = next(line for line in out.splitlines() if line.strip().startswith("im2col/numpy"))
    assert "1.00x" in row
