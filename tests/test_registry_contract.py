"""The registry's contract, record by record: every registered record of ours (the plain cells',
the custom cells', the backward phases', oneDNN's, cuDNN's) is built on a tiny problem and run
through the runner as a benchmark runs it (check, timing in smoke mode, check after timing, the
record), and must pass its check with a record the readers accept.  A record that cannot run here
(no GPU, no cuDNN) is skipped with its reason.  Framework records start a worker per framework
(seconds each): tests/test_frameworks.py runs every CPU one against the reference, and a test
here holds its parametrization to the registry.  So a new row cannot land unexercised.  The
tests' throwaway cells (tests/cellrows.py) go through the same contract while registered."""
from __future__ import annotations

import json

import pytest

from kernels.conv import ConvProblem
from microbench import cases, registry, runner, store  # noqa: F401  (cases fills the registry)
from microbench.harness import Settings
from microbench.planner import default_plan
from microbench.problems import RNNProblem
from tests.cellrows import custom_cell  # noqa: F401  (a fixture)

FAST = Settings(warmup=0.0, min_time=0.0, max_time=1.0, min_samples=2, max_noise=10.0)
KEYS = [k for k, r in registry.REGISTRY.items() if not r.framework]


def _problem(rec):
    if rec.op == "conv":
        return ConvProblem(N=1, C=2, H=5, W=5, K=3, R=3, S=3, pad=1)
    return RNNProblem(rec.op, T=2, B=2, I=3, H=4, L=1, cell="" if rec.cell == "plain" else rec.cell)


def _precision(rec) -> str:
    return "fp32" if not rec.precisions or "fp32" in rec.precisions else rec.precisions[0]


@pytest.fixture(scope="module")
def env():
    from microbench import env as menv
    return menv.collect()


def _exercise(rec, env):
    reason = registry.missing(rec)
    if reason:
        pytest.skip(f"{'/'.join(rec.key)}: {reason}")
    case = runner.Case(rec, _problem(rec), _precision(rec), 0, default_plan(rec, rec.device))
    out = runner.run_case(case, FAST, env, 0.0)
    if out.status == "skipped":
        pytest.skip(f"{'/'.join(rec.key)}: {out.error}")
    assert out.status == "ok", f"{'/'.join(rec.key)}: {out.error or out.check}"
    record = json.loads(json.dumps(out.record))
    assert store.problem(record, current=True) is None, record
    assert record["check"]["passed"] and record["flops"] > 0 and record["bytes"] > 0
    assert (record["op"], record["variant"], record["backend"]) == (rec.op, rec.variant, rec.backend) \
        or rec.framework
    return record


@pytest.mark.parametrize("key", KEYS, ids=["/".join(k) for k in KEYS])
def test_every_registered_record_builds_and_passes_on_a_tiny_problem(key, env):
    _exercise(registry.REGISTRY[key], env)


def test_a_registered_cells_records_meet_the_contract(custom_cell, env):
    """Each custom cell (shipped or a test's throwaway) through its records on the CPU: the op is
    its family's and the FLOPs count its own gates."""
    from microbench.cases.custom import cell_records
    recs = [r for r in cell_records(custom_cell.name) if r.device == "cpu"]
    assert {r.variant for r in recs} == {f"{custom_cell.name}-naive", f"{custom_cell.name}-fused"}
    for rec in recs:
        record = _exercise(rec, env)
        assert record["op"] == custom_cell.family
        assert record["flops"] == 2 * 2 * 2 * custom_cell.num_gates * 4 * (3 + 4)


def test_every_framework_record_on_the_cpu_is_run_by_the_framework_tests():
    from tests import test_frameworks as tf
    rnn = set(tf.CASES)
    conv = {(fw, path) for fw, path, _ in tf.CONV_CASES}
    left = [r.key for r in registry.REGISTRY.values() if r.framework and r.device == "cpu"
            and not ((r.framework, r.op, r.backend) in rnn if r.op != "conv" else (r.framework, r.backend) in conv)]
    assert not left, f"framework records no test runs: {left}"
    assert any(r.framework for r in registry.REGISTRY.values())
