"""DeepBench suites as DeepBench defines them: the tables (da81ba7), what each suite times
(skip-input, training steps, the vanilla ReLU rows), and the trace every record carries.

Every row of deepbench-rnn-train runs here, on the CPU, at a reduced size (same cell, the sizes
divided down), through the real ``suite`` command: a training step of ours checked against the
float64 gradients, its record validated against the schema and traced to its table row."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from microbench import cli, store
from microbench.suites import DEEPBENCH_COMMIT, catalog, rnn_shapes

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--warmup", "0", "--min-time", "0.005", "--min-samples", "3", "--max-time", "0.05"]


def test_one_pinned_commit():
    assert DEEPBENCH_COMMIT == "da81ba7"
    for name in ("deepbench-rnn-train", "deepbench-conv-train", "deepbench-inference"):
        assert DEEPBENCH_COMMIT in catalog.get(name).source
    assert "608d7a3" not in rnn_shapes.SOURCE


def test_suites_say_what_they_time():
    train = catalog.get("deepbench-rnn-train")
    assert len(train.specs) == 53 and sum(s.op == "rnn" for s in train.specs) == 12
    assert all(s.training and s.skip_input for s in train.specs)
    assert all(s.nonlinearity == "relu" for s in train.specs if s.op == "rnn")
    assert "training step" in train.times and "skip-input" in train.times
    inf = catalog.get("deepbench-rnn-inference")
    assert not any(s.training for s in inf.specs) and all(s.skip_input for s in inf.specs)
    assert inf.times.startswith("forward")
    conv_train = catalog.get("deepbench-conv-train")
    assert "backward-data" in conv_train.times and "backward-weights" in conv_train.times
    assert all(s.training for s in conv_train.specs)
    assert not any(s.training for s in catalog.get("deepbench-conv-inference").specs)
    assert "23 distinct shapes" in catalog.get("resnet50-conv").about
    spec = train.specs[34]
    assert (spec.op, spec.H, spec.B, spec.T) == ("gru", 2816, 32, 1500)
    assert spec.trace(train) == {"suite": "deepbench-rnn-train", "entry": "deepbench-rnn-train/034",
                                 "source": train.source, "table": "training_set", "row": 34}
    conv = catalog.get("deepbench-conv-device").specs[5]
    assert (conv.table, conv.row) == ("inference_device_set", 5)


def test_skip_input_halves_deepbench_flops():
    # DeepBench times (and counts) the recurrent GEMMs only; I = H, so the input GEMM is as large
    row = rnn_shapes.TABLES["deepbench-rnn-train"][12]                 # LSTM 512 x 16 x 25
    skip, whole = rnn_shapes.rnn_problem(row), rnn_shapes.rnn_problem(row, skip_input=False)
    assert skip.flops() == 2 * 4 * 512 * 512 * 16 * 25 and whole.flops() == 2 * skip.flops()


def _reduced(suite, h=6, t=3, b=2):
    specs = tuple(dataclasses.replace(s, H=max(2, min(h, s.H // 256)), T=min(t, s.T), B=b) for s in suite.specs)
    return dataclasses.replace(suite, specs=specs)


def test_every_training_row_runs_on_the_cpu_at_a_reduced_size(tmp_path, monkeypatch, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    suite = catalog.get("deepbench-rnn-train")
    monkeypatch.setitem(catalog.SUITES, suite.name, _reduced(suite))
    out = tmp_path / "train.jsonl"
    # ours on the numba backend (kernels.train, the compiled step loops); the numpy backend's
    # training step is the same arithmetic issued from Python (tests/test_backward_cli.py)
    assert cli.main(["suite", suite.name, "--device", "cpu", "--backend", "numba", "--json", str(out), "--quiet",
                     *FAST]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    schema = json.loads((ROOT / "microbench" / "schema" / "result-v1.json").read_text())
    assert len(recs) == 53 and {r["backend"] for r in recs} == {"numba"}
    for i, (rec, row) in enumerate(zip(recs, rnn_shapes.TABLES["deepbench-rnn-train"])):
        jsonschema.validate(rec, schema)
        assert store.problem(rec, current=True) is None      # what compare and report accept
        assert rec["status"] == "ok", rec["error"]
        assert rec["suite"]["row"] == i and rec["suite"]["table"] == "training_set"
        assert rec["suite"]["entry"] == f"deepbench-rnn-train/{i:03d}"
        assert rec["variant"] == "fused+bwd" and rec["info"]["pass"] == "forward+backward"
        assert rec["op"] == rnn_shapes.OPS[row.cell][0]
        assert rec["options"]["skip_input"] is True
        assert rec["options"].get("nonlinearity") == ("relu" if row.cell == "vanilla" else None)
        assert rec["check"]["passed"] and rec["flops"] > 0
    capsys.readouterr()


def test_inference_rows_forward_and_whole_layer_option(tmp_path, monkeypatch, capsys):
    suite = catalog.get("deepbench-rnn-device")
    monkeypatch.setitem(catalog.SUITES, suite.name, _reduced(suite, h=8, t=4, b=1))
    out = tmp_path / "dev.jsonl"
    assert cli.main(["suite", suite.name, "--device", "cpu", "--variants", "fused", "--backend", "numpy",
                     "--json", str(out), "--quiet", *FAST]) == 0
    assert cli.main(["suite", suite.name, "--device", "cpu", "--variants", "fused", "--backend", "numpy",
                     "--input-gemm", "--json", str(out), "--quiet", *FAST]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok"] * 6
    skip, whole = recs[:3], recs[3:]
    assert all(r["options"]["skip_input"] for r in skip) and not any("skip_input" in r["options"] for r in whole)
    assert all(2 * s["flops"] == w["flops"] for s, w in zip(skip, whole))
    assert [r["op"] for r in skip] == ["rnn", "rnn", "lstm"]
    capsys.readouterr()


def test_framework_rows_of_a_skip_input_entry_are_labelled_whole_layer(capsys):
    pytest.importorskip("torch")
    assert cli.main(["suite", "deepbench-rnn-device", "--list", "--device", "cpu", "--only", "/000$",
                     "--frameworks", "torch", "--variants", "fused", "--backend", "numpy"]) == 0
    from microbench.commands import suite as msuite
    import argparse
    args = argparse.Namespace(only="/000$", dtype="fp32", threads=None, batch=None, variants="fused",
                              frameworks="torch", backend="numpy", seed=0, input_gemm=False, forward_only=False)
    (entry,) = msuite.plan(args, catalog.get("deepbench-rnn-device"), "cpu")
    labels = [c.label for c in entry.cases]
    assert "fused/numpy" in labels and "torch+input-gemm/fused" in labels
    fw = [c for c in entry.cases if c.record.framework]
    assert fw and all(not c.problem.skip_input for c in fw)
    capsys.readouterr()


def test_conv_training_suite_on_a_gpu_plans_cudnns_backward_phases():
    """On a GPU the training table's backward phases are cuDNN's, per algorithm (they were once
    refused there with "the backward phases run on the CPU only"); on the CPU they are ours."""
    from microbench import cases  # noqa: F401  (fills the registry)
    from microbench.commands import suite as msuite
    import argparse
    args = argparse.Namespace(only="/017$", dtype="fp32", threads=None, batch=2, variants=None,
                              frameworks=None, backend=None, seed=0, input_gemm=False, forward_only=False)
    suite = catalog.get("deepbench-conv-train")
    (gpu,) = msuite.plan(args, suite, "cuda")
    assert not gpu.reason, gpu.reason
    labels = {c.label for c in gpu.cases + [c for c, _ in gpu.skipped]}
    assert {"cudnn+bwd_data/cupy", "cudnn+bwd_weights/cupy", "cudnn_algo_1+bwd_data/cupy"} <= labels
    assert not any(c.device == "cpu" for c in gpu.cases)
    (cpu,) = msuite.plan(args, suite, "cpu")
    cpu_labels = {c.label for c in cpu.cases}
    assert "im2col+bwd_data/numpy" in cpu_labels and not any("cudnn" in x for x in cpu_labels)
