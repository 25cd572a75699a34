"""What the convergence, thread and ladder figures draw, checked on their models (rows, groups,
band, scale, marks, whiskers) built from hand-written records, plus one render of every figure.

Records here carry ``contention`` and ``above_roof`` written by hand (the fields of the contention
and roof contract); records without them read as not measured / not flagged."""
from __future__ import annotations

import copy
import math

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not importable")

from microbench import convergence, plots, store  # noqa: E402

SHAPE = {"T": 10, "B": 4, "I": 32, "H": 32, "L": 1}
CONV = {"N": 2, "C": 16, "H": 14, "W": 14, "K": 16, "R": 3, "S": 3, "stride_h": 1, "stride_w": 1,
        "pad_h": 1, "pad_w": 1, "dilation_h": 1, "dilation_w": 1, "groups": 1}


def rec(variant, backend, ms, *, op="lstm", framework="", rung=None, threads=None, shape=None, iqr=0.05,
        q3=None, **extra):
    med = ms / 1e3
    r = {"schema": "microbench.result/1", "op": op, "variant": variant, "backend": backend,
         "framework": framework, "device": "cpu", "dtype": "fp32", "shape": dict(shape or SHAPE),
         "options": {"plan": None, "threads": threads, "seed": 0, "rung": rung, "mode": "warm"},
         "label": f"{rung or variant}/{backend}", "status": "ok", "error": None, "env_id": "e",
         "host": "h", "device_name": "cpu", "env": {}, "samples_s": [med],
         "stats": {"n": 5, "median_s": med, "q1_s": med * (1 - iqr), "q3_s": (q3 / 1e3) if q3 else med * (1 + iqr),
                   "iqr_s": 0.0, "min_s": med, "mean_s": med, "rel_noise": iqr, "noisy": False},
         "check": {"max_rel_err": 1e-7, "tol": 1e-5, "passed": True},
         "info": {"framework": framework, "path": backend} if framework else {}}
    r.update(extra)
    return store.normalize(r)


def fw(framework, path, ms, **kw):
    return rec(framework, path, ms, framework=framework, **kw)


def lstm_run(**kw):
    """A run of lstm --all --onednn --frameworks torch,mxnet (ladder rungs too)."""
    return [rec("naive", "numpy", 90.0, **kw), rec("naive", "numba", 60.0, rung="naive", **kw),
            rec("fused", "numba", 40.0, rung="+group_gemm", **kw),
            rec("fused", "numba", 30.0, rung="+fuse_pointwise", **kw), rec("fused", "numpy", 35.0, **kw),
            rec("onednn", "onednn", 20.0, **kw), rec("onednn_reorder", "onednn", 21.0, **kw),
            fw("torch", "generic", 50.0, **kw), fw("torch", "fused", 20.5, **kw),
            fw("mxnet", "generic", 80.0, **kw), fw("mxnet", "fused", 22.0, **kw)]


def trace(*prims, note=""):
    return {"tool": "oneDNN verbose", "version": "3.2.0", "calls": 5, "note": note,
            "primitives": [{"kind": k, "impl": "x", "prop": "forward_inference", "class": c, "count": n,
                            "ns_per_call": ns, "formats": ""} for k, c, n, ns in prims]}


# -- convergence ---------------------------------------------------------------------------------

def test_convergence_groups_paths_and_band():
    m = convergence.model(lstm_run())
    [p] = m.panels
    names = [r.name for r in p.rows]
    # ours: the naive row, the best own kernel (not every rung) and the direct oneDNN calls; then
    # each framework's generic loop before its vendor-library path
    assert names == ["ours: naive/numba", "ours: +fuse_pointwise/numba", "ours: onednn/onednn",
                     "ours: onednn_reorder/onednn", "torch/generic", "torch/fused", "mxnet/generic",
                     "mxnet/fused"]
    roles = {r.name: (r.group, r.role, r.kind) for r in p.rows}
    assert roles["ours: onednn/onednn"] == ("ours", "vendor (direct call)", "vendor-direct")
    assert roles["ours: +fuse_pointwise/numba"] == ("ours", "best own kernel", "own")
    assert roles["torch/generic"] == ("torch", "generic cell loop", "framework")
    assert roles["mxnet/fused"] == ("mxnet", "vendor-library path", "framework")
    assert set(p.band.rows) == {"ours: onednn/onednn", "ours: onednn_reorder/onednn", "torch/fused", "mxnet/fused"}
    assert p.band.ratio == pytest.approx(22.0 / 20.0)
    assert set(p.rest.rows) == {"ours: naive/numba", "ours: +fuse_pointwise/numba", "torch/generic", "mxnet/generic"}
    assert p.rest.ratio == pytest.approx(80.0 / 30.0)
    assert {r.reaches_from for r in p.rows if r.framework} == {"declared"}
    assert p.vendor == "oneDNN"


def test_torch_gru_is_not_put_in_the_band_without_evidence():
    """PyTorch's CPU GRU runs no oneDNN primitive (its trace in tests/fixtures/onednn): the
    declaration says so, and a path nothing declares is unknown, not guessed."""
    recs = [rec("onednn", "onednn", 2.0, op="gru"), fw("torch", "fused", 9.0, op="gru"),
            fw("chainer", "fused", 30.0, op="gru"), fw("torch", "fused+bwd", 20.0, op="gru")]
    rows = {r.name: r for p in convergence.model(recs).panels for r in p.rows}
    assert rows["torch/fused"].reaches is False and rows["chainer/fused"].reaches is False
    assert rows["torch/fused+bwd"].reaches is None and rows["torch/fused+bwd"].reaches_from == "unknown"


def test_vendor_declarations_agree_with_the_fixture_traces():
    from pathlib import Path

    from microbench.cpu_explain import LAYER_CLASS
    from microbench.frameworks import VENDOR_LAYER, reaches_vendor
    from profiles import onednn_trace as ot
    fix = Path(__file__).parent / "fixtures" / "onednn"
    checked = 0
    for log in fix.glob("*.log"):
        framework, path, op = log.stem.split("-")
        declared = reaches_vendor(framework, "cpu", path, op)
        if declared is None:                # left to a trace (TensorFlow's conv2d)
            continue
        recs = ot.parse(log.read_text()).records
        seen = any(ot.classify_primitive(r.name) == LAYER_CLASS[op] for r in recs)
        assert declared is seen, (log.name, declared, seen)
        checked += 1
    assert checked >= 12
    assert all(k[1] in ("cpu", "cuda") for k in VENDOR_LAYER)


def test_explanation_comes_from_the_traces_in_the_records():
    recs = lstm_run()
    traced = [
        fw("torch", "fused", 20.0, onednn_trace=trace(("rnn", "fused_rnn", 1, 16_000_000),
                                                      ("reorder", "reorder", 2, 1_000_000))),
        fw("torch", "generic", 50.0, onednn_trace=trace(note="executed no oneDNN primitive")),
        fw("mxnet", "fused", 22.0, onednn_trace=trace(("rnn", "fused_rnn", 1, 30_000_000))),
    ]
    # a later untraced rerun of torch/fused (the drawn time) keeps the earlier trace
    rows = {r.name: r for r in convergence.model(traced + recs).panels[0].rows}
    e = rows["torch/fused"].explanation
    assert e["layer_ms"] == pytest.approx(16.0) and e["reorder_ms"] == pytest.approx(1.0)
    assert e["outside_ms"] == pytest.approx(20.0 - 17.0) and not e["exceeds"]
    assert rows["torch/fused"].median_ms == pytest.approx(20.5)       # the rerun's time, the trace's split
    assert rows["torch/generic"].explanation["outside_ms"] == pytest.approx(50.0)
    assert rows["torch/generic"].reaches is False and rows["torch/generic"].reaches_from == "trace"
    # traced time above the untraced wall: no outside share is invented
    assert rows["mxnet/fused"].explanation["exceeds"] and rows["mxnet/fused"].explanation["outside_ms"] is None
    assert rows["ours: onednn/onednn"].explanation is None                # no trace: none drawn
    assert not any("no oneDNN traces" in n for n in convergence.model(traced + recs).notes)
    assert any("no oneDNN traces" in n for n in convergence.model(recs).notes)


def test_a_trace_decides_over_the_declaration():
    """TensorFlow's fused LSTM issues oneDNN GEMMs, not the RNN primitive: its trace keeps it out."""
    t = fw("tensorflow", "fused", 25.0, onednn_trace=trace(("gemm_api", "gemm", 30, 10_000_000)))
    [row] = [r for r in convergence.model(lstm_run() + [t]).panels[0].rows if r.name == "tensorflow/fused"]
    assert row.reaches is False and row.reaches_from == "trace"
    assert row.explanation["other_ms"] == pytest.approx(10.0) and row.explanation["layer_ms"] == 0


def test_one_scale_per_figure_and_conv_shapes_drawn():
    recs = []
    for h in range(8):                         # eight LSTM shapes with two frameworks each
        shape = dict(SHAPE, H=32 + h)
        for r in lstm_run(shape=shape):
            recs.append(r)
    wide = [rec("naive", "numba", 900.0, shape=dict(SHAPE, H=99)),
            rec("onednn", "onednn", 1.0, shape=dict(SHAPE, H=99)),
            fw("jax", "generic", 3.0, shape=dict(SHAPE, H=99)), fw("torch", "fused", 1.1, shape=dict(SHAPE, H=99)),
            fw("mxnet", "fused", 1.2, shape=dict(SHAPE, H=99))]        # three frameworks: drawn first
    conv = [rec("direct", "numba", 9.0, op="conv", shape=CONV), rec("winograd", "numba", 4.0, op="conv", shape=CONV),
            rec("onednn", "onednn", 2.0, op="conv", shape=CONV), fw("torch", "fused", 2.2, op="conv", shape=CONV),
            fw("torch", "generic", 6.0, op="conv", shape=CONV)]
    m = convergence.model(recs + wide + conv)
    assert len(m.panels) == convergence.MAX_PANELS and m.panels_left_out == 9 + 1 - convergence.MAX_PANELS
    assert any(p.op == "conv" for p in m.panels)
    conv_panel = next(p for p in m.panels if p.op == "conv")
    assert [r.name for r in conv_panel.rows][:3] == ["ours: direct/numba", "ours: winograd/numba",
                                                     "ours: onednn/onednn"]
    assert conv_panel.rows[0].role == "naive"
    assert "pad1" in conv_panel.title
    # every panel log, every panel the same span, wide enough for the widest panel's whiskers;
    # the 900x panel gets its own span, marked, rather than squeezing every other panel
    assert m.scale == "log"
    shared = [p for p in m.panels if not p.own_span]
    spans = {round(p.xlim[1] / p.xlim[0], 6) for p in shared}
    assert len(spans) == 1 and m.span >= max(max(r.q3_ms for r in p.rows) / min(r.q1_ms for r in p.rows)
                                             for p in shared)
    wide_panel = next(p for p in m.panels if "H99" in p.title)
    assert wide_panel.own_span and wide_panel.xlim[1] / wide_panel.xlim[0] > m.span
    for p in m.panels:
        assert all(p.xlim[0] <= r.q1_ms and r.q3_ms <= p.xlim[1] for r in p.rows)


def test_contended_rows_are_marked_and_left_out_of_the_spreads():
    recs = lstm_run()
    recs[8] = fw("torch", "fused", 800.0, contention={"contended": True, "why": "cpu/wall 0.3 of 2 threads",
                                                      "cpu_per_wall": 0.3, "threads": 2, "load_before": 3.0,
                                                      "load_after": 3.1})
    recs[5] = rec("onednn", "onednn", 20.0, above_roof=True,
                  contention={"contended": False, "why": "", "cpu_per_wall": 1.9, "threads": 2,
                              "load_before": 0.2, "load_after": 0.3})
    m = convergence.model(recs)
    rows = {r.name: r for r in m.panels[0].rows}
    assert rows["torch/fused"].contended is True and "torch/fused" not in m.panels[0].band.rows
    assert m.panels[0].band.hi_ms == pytest.approx(22.0)          # not stretched by the contended row
    assert rows["ours: onednn/onednn"].contended is False and rows["ours: onednn/onednn"].above_roof is True
    assert rows["mxnet/fused"].contended is None and rows["mxnet/fused"].above_roof is None   # not measured
    assert m.contention_measured and not any("contention not measured" in n for n in m.notes)
    assert any("contention not measured" in n for n in convergence.model(lstm_run()).notes)


# -- threads -------------------------------------------------------------------------------------

def test_threads_figure_picks_each_frameworks_best_path_and_ours():
    recs = []
    for t, f in ((1, 1.0), (2, 0.6)):
        recs += [rec("naive", "numba", 60.0 * f, rung="naive", threads=t),
                 rec("fused", "numba", 45.0 * f, rung="+group_gemm", threads=t),
                 rec("fused", "numba", 30.0 * f, threads=t), rec("onednn", "onednn", 20.0 * f, threads=t),
                 fw("torch", "generic", 50.0 * f, threads=t), fw("torch", "fused", 21.0 * f, threads=t),
                 fw("mxnet", "generic", 70.0 * f, threads=t), fw("mxnet", "fused", 24.0 * f, threads=t)]
    # one sample of a second in torch/generic's IQR at 2 threads
    recs.append(fw("torch", "generic", 30.0, threads=2, q3=1000.0))
    m = plots.thread_model(recs)
    [p] = m["panels"]
    got = {s["role"]: s["name"] for s in p["series"]}
    assert got == {"ours: own": "ours: fused/numba", "ours: vendor": "ours: onednn/onednn",
                   "torch": "torch/fused", "mxnet": "mxnet/fused"}
    assert p["scale"] == "linear" and p["ylim"][1] < 200          # the medians decide the axis
    torch_fused = next(s for s in p["series"] if s["name"] == "torch/fused")
    assert torch_fused["points"][1]["speedup"] == pytest.approx(1 / 0.6)


def test_threads_whisker_of_a_second_is_clipped_and_marked():
    recs = [fw("torch", "fused", 20.0, threads=1), fw("torch", "fused", 12.0, threads=2, q3=1000.0),
            rec("fused", "numba", 30.0, threads=1), rec("fused", "numba", 18.0, threads=2)]
    [p] = plots.thread_model(recs)["panels"]
    pt = next(s for s in p["series"] if s["name"] == "torch/fused")["points"][1]
    assert pt["clipped"] and pt["whisker"][1] < pt["q3_ms"] and pt["whisker"][1] <= p["ylim"][1]
    assert p["ylim"][1] < 100
    wide = [rec("fused", "numba", 3.0, threads=1), rec("fused", "numba", 2.0, threads=2),
            fw("torch", "generic", 900.0, threads=1), fw("torch", "generic", 600.0, threads=2)]
    assert plots.thread_model(wide)["panels"][0]["scale"] == "log"


# -- ladder --------------------------------------------------------------------------------------

def _ladder(q3=None, outlier=None):
    rungs = [("naive", 60.0), ("+group_gemm", 45.0), ("+hoist_input", 40.0), ("+fuse_pointwise", 30.0)]
    out = []
    for name, ms in rungs:
        ms = outlier if outlier and name == "+hoist_input" else ms
        out.append(rec("naive" if name == "naive" else "fused", "numba", ms, rung=name,
                       q3=q3 if name == "+group_gemm" else None))
    return out


def test_ladder_labels_sit_above_the_whiskers():
    [p] = plots.ladder_model(_ladder())["panels"]
    for g in p["rungs"]:
        assert g["label_at_ms"] >= g["whisker"][1] >= g["median_ms"]
        assert not g["clipped"]
    assert p["rungs"][-1]["speedup"] == pytest.approx(2.0)
    assert p["ylim"][1] > max(g["whisker"][1] for g in p["rungs"])


def test_ladder_whiskers_are_clipped_only_with_a_mark():
    model = plots.ladder_model(_ladder(q3=5000.0))
    [p] = model["panels"]
    g = p["rungs"][1]
    assert g["clipped"] and g["whisker"][1] < g["q3_ms"] == pytest.approx(5000.0)
    assert p["ylim"][1] < 200 and p["scale"] == "linear"
    plot = plots.ladder_plot(_ladder(q3=5000.0))
    assert "1 whisker(s) clipped" in plot.note and b"q3 5,000 ms" in plot.files["svg"]


def test_one_outlier_does_not_flatten_the_ladder():
    [p] = plots.ladder_model(_ladder(outlier=3000.0))["panels"]
    assert p["scale"] == "log"
    assert p["ylim"][0] < min(g["q1_ms"] for g in p["rungs"]) and p["ylim"][1] > 3000.0 * 1.05


# -- rendering -----------------------------------------------------------------------------------

def test_every_figure_renders_with_traces_and_marks(tmp_path, monkeypatch):
    recs = lstm_run() + [
        fw("torch", "fused", 20.0, onednn_trace=trace(("rnn", "fused_rnn", 1, 16_000_000),
                                                      ("reorder", "reorder", 2, 1_000_000))),
        rec("onednn_reorder", "onednn", 21.0, above_roof=True,
            contention={"contended": True, "why": "x", "cpu_per_wall": 0.5, "threads": 2,
                        "load_before": 3.0, "load_after": 3.0})]
    recs += [rec("direct", "numba", 9.0, op="conv", shape=CONV), fw("torch", "fused", 2.2, op="conv", shape=CONV)]
    recs += [rec("naive", "numba", 5.0, op="gru")]
    monkeypatch.setattr(convergence, "MAX_PANELS", 2)     # two panels drawn, the third said
    scaling = [r for t in (1, 2) for r in (fw("torch", "fused", 20.0 / t, threads=t, q3=900.0),
                                           rec("fused", "numba", 30.0 / t, threads=t, contention={"contended": True}))]
    cap = plots.caption(recs)
    figs = (plots.ladder_plot(recs, cap), plots.convergence_plot(recs, cap), plots.thread_plot(scaling, cap))
    for p in figs:
        assert p.png and p.png[:4] == b"\x89PNG", (p.title, p.note)
        (tmp_path / f"{p.name}.png").write_bytes(p.png)
    conv = figs[1]
    assert "best time per framework path" not in conv.title
    assert "1 more shape(s) not drawn" in conv.note and {d["op"] for d in conv.data.values()} == {"lstm", "conv"}
    panel = next(d for d in conv.data.values() if d["op"] == "lstm")
    assert panel["rows"]["ours: onednn_reorder/onednn"]["contended"] is True
    assert panel["rows"]["torch/fused"]["explanation"]["layer_ms"] == pytest.approx(16.0)
    assert plots.MARKERS["vendor-direct"] != plots.MARKERS["own"]     # oneDNN rows drawn apart
    assert not math.isnan(panel["band"]["ratio"])
    assert "2 whisker(s) clipped" in figs[2].note


def test_a_traced_record_of_a_timed_case_is_not_called_a_rerun():
    from microbench.commands.report import rerun_note
    timed = lstm_run()
    traced = fw("torch", "fused", 20.0, onednn_trace=trace(("rnn", "fused_rnn", 1, 16_000_000)))
    assert rerun_note(timed + [traced]) == ""
    assert rerun_note(timed + [traced, timed[0]]).startswith("1 record(s) are reruns")


def test_figures_say_when_their_points_come_from_smoke_runs():
    recs = lstm_run()
    assert not plots.caption(recs).startswith("SMOKE")
    recs[0]["options"]["smoke"] = True
    assert plots.caption(recs).startswith("SMOKE: 1 of 11 points from smoke runs, not measurements.")
