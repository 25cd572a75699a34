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
    rows = p.data[panel]
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
    p = plots.convergence_plot(recs)
    assert len(p.data) == plots.MAX_CONVERGENCE_PANELS
    n_groups = len({(r["shape"]["H"], r["options"]["threads"]) for r in recs if r["op"] == "lstm"}) + \
        len({(r["shape"]["H"], r["options"]["threads"]) for r in recs if r["op"] == "gru"})
    assert f"{n_groups - plots.MAX_CONVERGENCE_PANELS} more shape(s) not drawn" in p.note


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
