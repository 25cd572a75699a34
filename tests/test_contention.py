"""Numbers a user can trust (issue 33): contention is detected and marked, the roof is the
fastest GEMM and a point above it is flagged, and the tables say so without shifting columns.

Nothing here times anything for its value: the contention verdict is driven by given readings,
and the one real run pins a busy process and the case to one CPU, where the case's thread must
wait for the core about half the time whatever the machine's speed."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
from rich.console import Console

from microbench import cli, contention, peaks, report, results
from microbench.registry import Check, Prepared
from microbench.stats import Measurement

TINY = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2"]


# -- the verdict ------------------------------------------------------------------------------------

def _readings(run, wait, span=1.0, load=(0.5, 0.5)):
    return {"span_s": span, "run_s": run, "wait_s": wait, "preempted": 3,
            "load_before": load[0], "load_after": load[1]}


def test_threads_that_waited_for_a_core_are_contended():
    samples = [0.01] * 100
    quiet = contention.judge(_readings(1.9, 0.01), samples, [0.019] * 100, threads=2, usable=2)
    assert not quiet["contended"] and quiet["cpu_per_wall"] == pytest.approx(1.9)
    busy = contention.judge(_readings(1.3, 0.7), samples, [0.013] * 100, threads=2, usable=2)
    assert busy["contended"] and "waited for a core 35%" in busy["why"]
    assert set(busy) >= {"contended", "why", "cpu_per_wall", "threads", "load_before", "load_after"}
    # a single-threaded case on a 2-thread setting is not contended for using one core only
    one = contention.judge(_readings(1.0, 0.0), samples, [0.01] * 100, threads=None, usable=2)
    assert not one["contended"] and one["cpu_per_wall"] == pytest.approx(1.0)
    # nor is a process whose own 3 runnable threads share 2 cores that it got in full
    own = contention.judge(_readings(2.0, 1.0), samples, [0.02] * 100, threads=None, usable=2)
    assert not own["contended"] and own["runnable_threads"] == pytest.approx(3.0)


def test_without_schedstat_the_load_and_a_single_threads_cpu_share_decide():
    samples = [0.01] * 10
    no_sched = lambda load: {**_readings(None, None, load=load), "run_s": None, "wait_s": None}  # noqa: E731
    assert contention.judge(no_sched((4.0, 3.5)), samples, [0.01] * 10, threads=None, usable=2)["contended"]
    assert not contention.judge(no_sched((1.0, 1.0)), samples, [0.01] * 10, threads=None, usable=2)["contended"]
    starved = contention.judge(no_sched((1.0, 1.0)), samples, [0.004] * 10, threads=1, usable=2)
    assert starved["contended"] and "0.40 CPU-seconds" in starved["why"]


def test_a_record_without_contention_reads_as_not_measured():
    c = contention.of({"op": "lstm"})
    assert c["contended"] is False and c["why"] == "not measured"


def test_advice_names_what_helps_and_never_rounds():
    fw = {"framework": "torch", "info": {"worker": {"env": {}}}}
    assert "MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY=1" in contention.advice(fw)
    passive = {"framework": "torch", "info": {"worker": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}}}}
    assert "MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY" not in contention.advice(passive)
    assert "--rounds" not in contention.advice({"framework": ""})
    recs = [{"status": "ok", "label": "torch/fused", "framework": "torch", "info": {},
             "contention": {"contended": True, "why": "its threads waited"}}]
    text = contention.summary(recs)
    assert "1 of 1" in text and "MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY=1" in text
    assert "--rounds does not help" in text


def test_the_foreign_workers_timing_loop_takes_the_same_readings():
    from microbench.frameworks import looptime
    now = [0.0]

    def run():
        now[0] += 0.1
    got: dict = {}
    samples = looptime.measure(run, {"warmup": 0, "min_time": 0.3, "max_time": 5, "min_samples": 3,
                                     "max_noise": 0.05}, clock=lambda: now[0], readings=got)
    assert len(got["cpu_s"]) == len(samples) == 3 and all(c >= 0 for c in got["cpu_s"])
    assert {"run_s", "wait_s", "load_before", "load_after"} <= set(got["probe"])


@pytest.fixture
def one_busy_cpu():
    """The calling thread and a busy process pinned to one CPU: the thread gets about half of it.
    The busy process lives for the test only (killed by its pid)."""
    if not hasattr(os, "sched_setaffinity") or contention.thread_sched() is None:
        pytest.skip("needs Linux affinity and schedstat")
    old = os.sched_getaffinity(0)
    cpu = min(old)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.05)                       # the busy loop is running
        yield cpu
    finally:
        os.sched_setaffinity(0, old)
        busy.kill()
        busy.wait()


def test_a_run_beside_a_busy_process_marks_its_rows(no_smoke, one_busy_cpu, tmp_path, capsys):
    out = tmp_path / "busy.jsonl"
    args = ["lstm", "--naive", "--backend", "numpy", "--threads", "1", "--json", str(out), *TINY[:6],
            "--warmup", "0", "--min-time", "0.3", "--max-time", "0.6", "--min-samples", "3", "--quiet"]
    assert cli.main(args) == 0
    rec = [json.loads(line) for line in out.read_text().splitlines()][-1]
    c = rec["contention"]
    assert c["contended"] is True and c["wait_share"] >= contention.WAIT_SHARE, c
    assert len(rec["cpu_s"]) == len(rec["samples_s"])
    captured = capsys.readouterr()
    assert "contended" in captured.out and "!" in captured.out
    assert "did not get their threads" in captured.err and "--rounds does not help" in captured.err


# -- compare and explain do not compare a contended row -----------------------------------------------

def test_compare_calls_a_contended_row_not_comparable(tmp_path, capsys):
    from pathlib import Path
    fixture = Path(__file__).parent / "fixtures" / "results-sample.jsonl"
    lines = fixture.read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines) + "\n")
    recs = [json.loads(x) for x in lines]
    recs[0]["contention"] = {"contended": True, "why": "its threads waited for a core 40% of the time"}
    b.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "not comparable (B contended)" in out and "1 not comparable (contended)" in out
    assert "left out of the counts and the mean" in out


def test_explain_does_not_compare_a_contended_wall():
    from microbench import cpu_explain as ce
    from profiles import onednn_trace as ot
    prim = ot.PrimitiveRow(kind="vanilla_lstm", impl="ref:any", prop="forward_inference", count=1,
                           total_ns=1_000_000)
    ours = ce.Row("ours/onednn", wall_s=1e-3, primitives=[prim], version="3.7")
    theirs = ce.Row("torch/fused", wall_s=0.8, primitives=[prim], version="3.7",
                    contended="its threads waited for a core 60% of the time",
                    advice="rerun it when the machine is quiet, or set MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY=1")
    text = " ".join(ce.sentences([ours, theirs], "lstm"))
    assert "not compared: torch/fused's untraced samples did not get their threads" in text
    assert "MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY=1" in text
    assert "drift" not in text and "--rounds" not in text


# -- the roof --------------------------------------------------------------------------------------

def test_the_roof_is_the_fastest_gemm_here_and_names_it(no_smoke, monkeypatch):
    monkeypatch.setattr(peaks, "_ROOFS", {})
    monkeypatch.setattr(peaks, "GEMM_N", 256)          # the rule, not the number: a small GEMM
    roof = peaks.cpu_roof("fp32", None)
    assert roof["gflops"] == max(m["gflops"] for m in roof["measured"])
    assert roof["source"] == next(m["source"] for m in roof["measured"] if m["gflops"] == roof["gflops"]) \
        + ", default threads"
    from kernels.onednn import lib as dnnl
    if dnnl.available()[0]:     # oneDNN is measured beside NumPy, with its kernel and ISA
        assert any(m["source"].startswith("oneDNN") and "ISA" in m["source"] for m in roof["measured"])
    assert peaks.cpu_roof("bf16", None) is None


def test_a_smoke_runs_roof_is_no_measurement(monkeypatch):
    monkeypatch.setattr(peaks, "_ROOFS", {})
    roof = peaks.cpu_roof("fp64", None)
    assert roof["lower_bound"] is True and roof["source"].startswith("SMOKE ") and "256^3" in roof["source"]


def test_a_roof_measured_while_busy_is_a_lower_bound(no_smoke, monkeypatch):
    calls = [0]

    def waiting():              # every reading: more waiting than running since the last one
        calls[0] += 1
        return {"1": (calls[0] * 10, calls[0] * 20)}
    monkeypatch.setattr(contention, "thread_sched", waiting)
    monkeypatch.setattr(peaks, "_ROOFS", {})
    monkeypatch.setattr(peaks, "onednn_gemm", lambda: None)
    monkeypatch.setattr(peaks, "GEMM_N", 64)
    roof = peaks.cpu_roof("fp64", None)
    assert roof["lower_bound"] is True and "lower bound" in roof["why"]


def _outcome(variant="naive", backend="numpy", median=1e-3, rung="", flops=4e6, noisy=False, **fields):
    from microbench import cases  # noqa: F401  (fills the registry)
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    from microbench.runner import Case, Outcome
    case = Case(REGISTRY[("lstm", variant, backend)], RNNProblem("lstm", 3, 2, 8, 8), "fp32", rung=rung)
    m = Measurement([median * 0.5, median, median * 1.5] if noisy else [median] * 3)
    chk = Check(1e-7, 1e-5, True)
    rec = results.record(case=case, status="ok", env={}, measurement=m, check=chk,
                         prepared=Prepared({}, lambda: None, int(flops), 1000, lambda: chk),
                         nvtx_info={"level": "off", "ranges_per_run": 0, "cost_per_range_s": 1e-7,
                                    "est_overhead_frac": 0.0})
    rec.update(fields)
    return Outcome(case, "ok", rec, m, chk)


def _render(outcomes, **kw) -> str:
    buf = io.StringIO()
    report.table(outcomes, Console(file=buf, width=220), **kw)
    return buf.getvalue()


def test_a_row_above_its_roof_is_flagged_in_the_record_and_the_table(monkeypatch):
    monkeypatch.setattr(peaks, "_ROOFS", {("cpu", "fp32", None): {"gflops": 2.0, "source": "oneDNN test GEMM",
                                                                   "lower_bound": False}})
    above = _outcome(median=1e-3)            # 4 GFLOP/s over a roof of 2
    below = _outcome("fused", median=4e-3)   # 1 GFLOP/s
    assert above.record["above_roof"] is True and below.record["above_roof"] is False
    assert above.record["roof"] == {"gflops": 2.0, "source": "oneDNN test GEMM", "lower_bound": False}
    text = _render([above, below])
    assert "% peak" in text and "200%" in text and "above the roof" in text
    assert "^ above the roof" in text and "of 2 GFLOP/s, oneDNN test GEMM" in text


def test_winograd_records_say_their_rate_is_effective():
    rec = {"op": "conv", "variant": "onednn_winograd", "info": {"algo": "convolution_winograd"}}
    assert peaks.flops_kind(rec) == "effective"
    assert peaks.flops_kind({"op": "conv", "variant": "cudnn", "info": {"algo": "fft_tiling"}}) == "effective"
    assert peaks.flops_kind({"op": "conv", "variant": "im2col", "info": {}}) is None
    assert peaks.flops_kind({"op": "lstm", "variant": "winograd"}) is None


# -- the tables ------------------------------------------------------------------------------------

def _median_ends(text: str, labels) -> set:
    """The column where each labelled row's median cell ends."""
    ends = set()
    for line in text.splitlines():
        for label in labels:
            if line.strip().startswith(label):
                cell = line.split(label, 1)[1]
                unit = min(i for i in (cell.find(" ms"), cell.find(" us"), cell.find(" s ")) if i >= 0)
                ends.add(line.index(label) + len(label) + unit)
    return ends


def test_the_noise_marker_does_not_shift_the_median_column():
    text = _render([_outcome(median=2e-3), _outcome("fused", median=1e-3, noisy=True)])
    assert len(_median_ends(text, ("naive/numpy", "fused/numpy"))) == 1, text
    assert "~ noisy" in text


def test_each_time_cell_has_its_own_unit():
    text = _render([_outcome(median=1.5), _outcome("fused", median=1.58e-3)])
    assert "1.58 ms" in text and "0.002 s" not in text and "1.500 s" in text


def test_ladder_notes_follow_the_rungs():
    rungs = ["naive", "+group_gemm", "+hoist_input", "+fuse_pointwise", "+pretranspose"]
    outcomes = [_outcome("naive" if r == "naive" else "fused", rung=r, median=1e-3 / (i + 1))
                for i, r in enumerate(rungs)]
    text = _render(outcomes, ladder=True)
    at = [text.index(f"{r}: ") for r in rungs[1:]]
    assert at == sorted(at), text


def test_a_contended_row_is_marked_in_the_table():
    hit = _outcome(contention={"contended": True, "why": "its threads waited for a core 50% of the time",
                               "wait_share": 0.5, "cpu_per_wall": 0.5})
    text = _render([hit, _outcome("fused")])
    assert "contended (waited 50%)" in text and "! contended" in text
    assert "--rounds does not help" in text


# -- env says when a variable forces weaker kernels ---------------------------------------------------

def test_forcing_variables_are_found_against_the_cpus_isa():
    f = peaks.forced_kernels({"OPENBLAS_CORETYPE": "Haswell"}, level="avx512", blas_arch="Haswell")
    assert [x["variable"] for x in f] == ["OPENBLAS_CORETYPE"] and f[0]["numpy"]
    assert "AVX2 kernels on a CPU with AVX-512" in peaks.describe_forced(f[0])
    assert peaks.forced_kernels({"OPENBLAS_CORETYPE": "SkylakeX"}, level="avx512", blas_arch="SkylakeX") == []
    assert peaks.forced_kernels({"OPENBLAS_CORETYPE": "Haswell"}, level="avx2", blas_arch="Haswell") == []
    f = peaks.forced_kernels({"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
                             level="avx512", blas_arch="SkylakeX")
    assert {x["variable"] for x in f} == {"ONEDNN_MAX_CPU_ISA", "MKL_CBWR"}
    # no variable, but an OpenBLAS that picks older kernels for this CPU by itself
    assert peaks.forced_kernels({}, level="avx512", blas_arch="Haswell")[0]["variable"] is None


def test_env_says_what_a_forcing_variable_costs(monkeypatch, capsys):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(peaks, "cpu_level", lambda flags=None: "avx512")
    monkeypatch.setattr(peaks, "forced_cost", lambda variables, **kw: {"with": 25.0, "without": 50.0, "ratio": 2.0})
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "OPENBLAS_CORETYPE=Haswell" in out and "AVX2 kernels on a CPU with AVX-512" in out
    assert "25.0" in out and "50.0" in out and "2.00x" in out


def test_the_csv_has_conv_geometry_the_suite_entry_contention_and_the_roof(tmp_path):
    import csv
    from pathlib import Path
    fixture = Path(__file__).parent / "fixtures" / "results-sample.jsonl"
    rec = json.loads(fixture.read_text().splitlines()[0])
    rec.update(op="conv", variant="im2col", backend="numpy", label="im2col/numpy",
               shape={"N": 1, "C": 3, "H": 9, "W": 9, "K": 4, "R": 3, "S": 3, "stride_h": 2, "stride_w": 2,
                      "pad_h": 1, "pad_w": 1, "dilation_h": 1, "dilation_w": 1, "groups": 1},
               info={"layout": "NHWC"}, roof={"gflops": 50.0, "source": "test GEMM", "lower_bound": True},
               above_roof=False, contention={"contended": True, "why": "its threads waited", "cpu_per_wall": 0.4},
               suite={"suite": "resnet50", "entry": "resnet50/res2_3x3", "source": "ours", "table": None, "row": 3})
    f, out = tmp_path / "conv.jsonl", tmp_path / "conv.csv"
    f.write_text(json.dumps(rec) + "\n")
    assert cli.main(["report", str(f), "--csv", str(out)]) == 0
    [row] = list(csv.DictReader(out.open()))
    assert (row["stride_h"], row["pad_w"], row["dilation_h"], row["groups"], row["layout"]) == ("2", "1", "1", "1", "NHWC")
    assert (row["suite"], row["suite_entry"]) == ("resnet50", "resnet50/res2_3x3")
    assert (row["contended"], row["cpu_per_wall"], row["roof_gflops"], row["roof_lower_bound"]) == \
        ("True", "0.4", "50.0", "True")


def test_the_roofline_marks_points_above_their_roof_and_contended_ones():
    pytest.importorskip("matplotlib")
    from pathlib import Path

    from microbench import plots, store
    fixture = Path(__file__).parent / "fixtures" / "results-sample.jsonl"
    recs = [store.normalize(json.loads(x)) for x in fixture.read_text().splitlines()[:3]]
    recs[0]["above_roof"] = True
    recs[1]["contention"] = {"contended": True, "why": "its threads waited"}
    p = plots.roofline_plot(recs)
    pts = [pt for series in p.data.values() for pt in series]
    assert sum(pt["above_roof"] for pt in pts) >= 1 and sum(pt["contended"] for pt in pts) == 1


def test_a_suite_run_warns_about_its_contended_rows(monkeypatch, capsys):
    """suite printed no load warning at all; now its contended rows are marked and the run ends
    with what helps (the verdict is forced here: the machine's state is not the subject)."""
    real = contention.judge

    def busy(*a, **k):
        out = real(*a, **k)
        return {**out, "contended": True, "why": "its threads waited for a core 50% of the time"}
    monkeypatch.setattr(contention, "judge", busy)
    assert cli.main(["suite", "quick", "--device", "cpu", "--only", "lstm-h128", "--variants", "naive",
                     "--backend", "numpy", "--batch", "1", "--warmup", "0", "--min-time", "0",
                     "--min-samples", "2", "--max-time", "1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "contended" in out and "! contended" in out
    assert "did not get their threads" in err and "--rounds does not help" in err
