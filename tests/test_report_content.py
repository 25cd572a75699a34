"""What the report's figures show: labels and data of the plots (framework rows, error bars,
panels not drawn), and the figure files written beside the report."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not importable")

from microbench import plots, store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "results-sample.jsonl"


def _framework_records(base: dict, *, top_level: bool) -> list:
    """Framework rows as the runner writes them: variant = framework, backend = path, and the
    framework under ``info`` (older files) or also at top level (now)."""
    out = []
    for fw, path, med in (("torch", "fused", 2e-4), ("torch", "generic", 9e-4), ("jax", "generic", 5e-4)):
        r = copy.deepcopy(base)
        r.update(variant=fw, backend=path, label=f"{fw}/{path}", info={"framework": fw, "path": path})
        r["options"] = {**r["options"], "rung": None}
        r["stats"] = {**r["stats"], "median_s": med, "q1_s": med * 0.9, "q3_s": med * 1.2}
        if top_level:
            r["framework"] = fw
        else:
            r.pop("framework", None)
        out.append(store.normalize(r))
    return out


@pytest.fixture(scope="module")
def fixture_records():
    return store.load(FIXTURE)[0]


@pytest.mark.parametrize("top_level", [False, True])
def test_convergence_plot_labels_framework_rows(fixture_records, top_level):
    base = next(r for r in fixture_records if r["options"].get("threads") == 1)
    recs = fixture_records + _framework_records(base, top_level=top_level)
    p = plots.convergence_plot(recs)
    assert p.png and p.note.startswith("frameworks: jax, torch")
    panel = next(iter(p.data))           # panels with framework rows come first
    rows = p.data[panel]["rows"]
    assert {"torch/fused", "torch/generic", "jax/generic"} <= set(rows)
    assert all(rows[n]["framework"] is None for n in rows if n.startswith("ours: "))
    assert rows["torch/fused"]["framework"] == "torch"
    assert not any("(torch)" in n or "(jax)" in n for n in rows)
    assert rows["torch/fused"]["median_ms"] == pytest.approx(0.2)


def test_convergence_plot_says_how_many_shapes_it_leaves_out(fixture_records):
    recs = []
    for h in range(8):                   # 8 shapes x 2 thread counts
        for r in fixture_records:
            r = copy.deepcopy(r)
            r["shape"]["H"] = 100 + h
            recs.append(r)
    from microbench import convergence
    m = convergence.model(recs)           # the figure's model (the note is checked in test_figures)
    assert len(m.panels) == convergence.MAX_PANELS
    n_groups = len({(r["shape"]["H"], r["options"]["threads"]) for r in recs if r["op"] == "lstm"}) + \
        len({(r["shape"]["H"], r["options"]["threads"]) for r in recs if r["op"] == "gru"})
    assert m.panels_left_out == n_groups - convergence.MAX_PANELS
    assert {p.op for p in m.panels} == {"lstm", "gru"}      # each op in turn


def test_framework_field_is_written_and_read_back():
    from types import SimpleNamespace
    from microbench import results
    from microbench.problems import RNNProblem
    rec_fw = SimpleNamespace(op="lstm", variant="torch", backend="fused", device="cpu", framework="torch")
    case = SimpleNamespace(record=rec_fw, op="lstm", variant="torch", backend="fused", device="cpu",
                           precision="fp32", problem=RNNProblem("lstm", T=2, B=1, I=3, H=3),
                           options=lambda: {"threads": None}, label="torch/fused")
    r = results.record(case=case, status="skipped", env={"env_id": "e"}, error="x")
    assert r["framework"] == "torch"
    old = json.loads(json.dumps(r))
    del old["framework"]
    old["info"] = {"framework": "torch"}
    assert store.normalize(old)["framework"] == "torch"
    # --resume finds framework rows again: the planned case's key is the record's key
    assert store.identity(store.normalize(old)) == store.identity(store.normalize(r) | {"info": {}})


ROOFS = {"gflops": 60.0, "gbps": 12.0, "gemm": "NumPy BLAS float32 1024^3 GEMM",
         "stream": "NumPy streaming add, 3 x 96 MiB", "date": "2026-12-01T11:00:00+00:00",
         "where": "this machine's CPU"}


def test_roofline_uses_measured_roofs_and_tells_threads_apart(fixture_records):
    p = plots.roofline_plot(fixture_records, roofs=ROOFS)
    assert p.note.startswith("ceilings measured: 60.0 GFLOP/s (NumPy BLAS") and "12.0 GB/s" in p.note
    threads = {pt["threads"] for pts in p.data.values() for pt in pts}
    assert threads == {1, 2}
    assert all(pt["ai"] > 0 and pt["gflops"] > 0 for pts in p.data.values() for pt in pts)
    q = plots.roofline_plot(fixture_records)
    assert "not hardware peaks" in q.note and "best records" in q.note


def test_figures_come_as_vector_files_with_a_caption(fixture_records):
    figs = plots.all_plots(fixture_records, roofs=ROOFS)
    for p in figs:
        if not p.png:
            continue
        assert p.files["pdf"][:5] == b"%PDF-" and b"<svg" in p.files["svg"][:2000]
        assert p.caption.startswith("AMD EPYC (2 cores). 2026-11-26.")
        assert "samples each" in p.caption and "interquartile range" in p.caption
        assert b"interquartile" in p.files["svg"]                 # drawn into the figure itself


def test_report_writes_figure_files_beside_it(tmp_path, capsys):
    from microbench import cli
    out = tmp_path / "r.html"
    assert cli.main(["report", str(FIXTURE), "--html", str(out), "--no-roofs"]) == 0
    for name in ("ladder", "convergence", "roofline", "threads"):
        for fmt in ("svg", "pdf"):
            assert (tmp_path / f"r-{name}.{fmt}").stat().st_size > 1000
    text = out.read_text()
    assert text.count("<figcaption") == 4 and "href='r-roofline.pdf'" in text


def test_roofs_are_measured_only_for_records_of_this_machine(monkeypatch, fixture_records):
    from types import SimpleNamespace
    from microbench import env as menv
    from microbench import peaks
    from microbench.commands import report as mreport
    monkeypatch.setattr(peaks, "roofs", lambda device="cpu": dict(ROOFS, device=device))
    args, err = SimpleNamespace(no_roofs=False), SimpleNamespace(print=lambda *a, **k: None)
    assert mreport._roofs(fixture_records, args, err) is None        # another machine's records
    here = menv.collect(cheap=True)["env_id"]
    mine = [dict(r, env_id=here) for r in fixture_records]
    assert mreport._roofs(mine, args, err)["device"] == "cpu"
    assert mreport._roofs(mine, SimpleNamespace(no_roofs=True), err) is None
    assert peaks.cpu_stream_gbps(mib=8, repeats=2) > 0


def test_reruns_in_one_file_are_said_not_merged_silently(tmp_path, capsys):
    from microbench import cli
    f = tmp_path / "twice.jsonl"
    f.write_text(FIXTURE.read_text() + FIXTURE.read_text().splitlines()[0] + "\n")
    assert cli.main(["report", str(f)]) == 0
    assert "1 record(s) are reruns of a case already in the file(s)" in capsys.readouterr().err


def test_resume_recognizes_framework_rows():
    """The key of a planned framework case equals the key of its record read back, so --resume
    skips framework rows it has (they carried the framework only under info before)."""
    from microbench import cases  # noqa: F401  (fills the registry)
    from microbench import registry, results
    from microbench.problems import RNNProblem
    from microbench.runner import Case
    rec = next(r for r in registry.REGISTRY.values() if r.framework == "torch" and r.op == "lstm")
    case = Case(rec, RNNProblem("lstm", T=2, B=1, I=3, H=3), "fp32")
    written = results.record(case=case, status="skipped", env={"env_id": "e"}, error="x")
    back = store.normalize(json.loads(json.dumps(written)))
    assert store.identity(back) == store.case_identity(case, "e")


def test_convergence_never_puts_a_training_step_beside_a_forward_pass():
    """A training step (forward + backward) and a forward pass of the same shape, or the
    layer-norm cell and the plain one, are different work: separate panels."""
    from microbench import plots
    base = {"op": "lstm", "dtype": "fp32", "shape": {"T": 10, "B": 8, "I": 64, "H": 64, "L": 1},
            "env_id": "e", "status": "ok", "options": {}, "stats": {"median_s": 1e-3, "q1_s": 1e-3,
                                                                   "q3_s": 1e-3, "n": 5}}
    fwd = {**base, "variant": "fused", "backend": "numpy", "label": "fused/numpy", "info": {}}
    bwd = {**base, "variant": "fused+bwd", "backend": "numpy", "label": "fused+bwd/numpy",
           "info": {"pass": "forward+backward", "cell": "plain"}}
    ln = {**base, "variant": "layernorm-fused", "backend": "numpy", "label": "layernorm-fused/numpy",
          "info": {"cell": "layernorm"}}
    assert plots.computation_of(fwd) == "" and plots.computation_of(bwd) == "training step"
    assert plots.computation_of(ln) == "layernorm"
    plot = plots.convergence_plot([fwd, bwd, ln])
    assert len(plot.data) == 3, plot.data
