"""Reliability: the correctness gate cannot be fooled, output files fail cleanly, result records
read back are validated, and bad command-line and Python API input is one clear error.

The command-line bad-input cases follow tests/test_cli.py: one line on stderr, exit 2, no traceback.
"""
import json

import numpy as np
import pytest

from microbench import checks, cli, registry
from microbench.harness import Settings
from microbench.registry import Prepared, VariantRecord

SMALL = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2"]
QUICK = Settings(warmup=0, min_time=0, max_time=5, min_samples=3)


# -- the correctness gate ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_reference_never_passes(bad):
    ref = np.ones((2, 3))
    ref[1, 2] = bad
    got = np.ones((2, 3))
    chk = checks.compare([got], [ref], "fp32", names=("y",))
    assert not chk.passed and "reference y contains NaN or Inf" in chk.detail
    # per-output tolerances take the same path
    assert not checks.compare([got, got], [np.ones((2, 3)), ref], "fp32", names=("y", "h_n"),
                              tol=(1e-5, 1e-5)).passed


def test_a_nan_tolerance_or_error_never_passes():
    assert not checks.compare([np.ones(3)], [np.ones(3)], "fp32", names=("y",), tol=float("nan")).passed
    assert checks.compare([np.ones(3)], [np.ones(3)], "fp32", names=("y",)).passed


def _wrong_later_builder(check_takes_outputs: bool):
    """A variant right on its first call and wrong on every later one (stale state)."""
    def build(problem, seed, *, precision, plan=None):
        ref = np.linspace(1.0, 2.0, 12).reshape(3, 4)
        calls = [0]

        def run():
            calls[0] += 1
            return ref.copy() if calls[0] == 1 else ref + 0.5

        if check_takes_outputs:
            def check(out=None):
                return checks.compare([run() if out is None else out], [ref], precision, names=("y",))
        else:
            def check():
                return checks.compare([run()], [ref], precision, names=("y",))
        return Prepared({}, run, 1, 1, check)
    return build


def _nan_reference_builder(problem, seed, *, precision, plan=None):
    """A variant checked against a reference that holds a NaN (inputs out of range, say)."""
    ref = np.ones((2, 2))
    ref[0, 1] = np.nan
    run = lambda: np.ones((2, 2))  # noqa: E731

    def check(out=None):
        return checks.compare([run() if out is None else out], [ref], precision, names=("y",))
    return Prepared({}, run, 1, 1, check)


@pytest.fixture
def wrong_variants():
    recs = [VariantRecord("lstm", "stale", "numpy", _wrong_later_builder(True), "test double"),
            VariantRecord("lstm", "stale2", "numpy", _wrong_later_builder(False), "test double"),
            VariantRecord("lstm", "nanref", "numpy", _nan_reference_builder, "test double")]
    for r in recs:
        registry.register(r)
    yield
    for r in recs:
        del registry.REGISTRY[r.key]


def test_the_gate_fails_both_constructed_wrong_results(wrong_variants, capsys, tmp_path):
    out = tmp_path / "g.jsonl"
    code = cli.main(["lstm", "--backend", "numpy", *SMALL, "--json", str(out), "--quiet"])
    capsys.readouterr()
    assert code == 1
    recs = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    for name in ("stale", "stale2"):
        assert recs[name]["status"] == "failed", recs[name]
        assert "wrong after timing (the first call passed)" in recs[name]["error"]
        assert recs[name]["check"]["passed"] is False and recs[name]["stats"] is None
    assert recs["nanref"]["status"] == "failed"
    assert "reference y contains NaN or Inf" in recs["nanref"]["error"]
    # the correct variants still pass both checks
    assert recs["naive"]["status"] == "ok" and recs["fused"]["status"] == "ok"


def test_the_check_after_timing_sees_the_last_timed_call():
    """The outputs checked after timing are those the last timed call returned, not a new call's."""
    from microbench import runner
    from microbench.harness import CpuTimer, measure

    returned = []

    def run():
        returned.append(np.full(3, float(len(returned))))
        return returned[-1]

    timer = CpuTimer()
    measure(run, QUICK, timer)
    assert timer.last is returned[-1]
    seen = []

    def check(out=None):
        seen.append(out)
        return checks.compare([out], [out], "fp64", names=("y",))
    n = len(returned)
    assert runner.check_after_timing(Prepared({}, run, 1, 1, check), timer.last, "cpu").passed
    assert seen[-1] is returned[-1] and len(returned) == n   # no extra call
