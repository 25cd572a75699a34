"""The correctness gate looks at more than the first and the last call (issue 27, items 22-23): a
random sample of the timed calls is compared with the last one, and a second set of inputs must
change the outputs as the reference says."""
from __future__ import annotations

import random

import numpy as np
import pytest

from microbench import runner
from microbench.cases.rnn import build_rnn
from microbench.harness import Settings
from microbench.problems import RNNProblem
from microbench.registry import VariantRecord

PROBLEM = RNNProblem("lstm", T=3, B=2, I=3, H=4, L=1)
FAST = Settings(warmup=0.0, min_time=0.0, max_time=2.0, min_samples=4, max_noise=10.0)


def _case(build, name="t"):
    return runner.Case(VariantRecord("lstm", name, "numpy", build, "test double"), PROBLEM, "fp32")


def _ours(wrap):
    """Our naive numpy LSTM, with its timed callable wrapped (the check's own calls are not)."""
    def build(problem, seed, *, precision, plan=None):
        prepared = build_rnn(problem, seed, variant="naive", backend="numpy", precision=precision)
        prepared.run = wrap(prepared.run)
        return prepared
    return build


def test_a_kernel_wrong_on_one_timed_call_fails():
    def wrong_on_third(run):
        calls = [0]

        def timed():
            calls[0] += 1
            y, (h, c) = run()
            return (y + 1.0, (h, c)) if calls[0] == 3 else (y, (h, c))
        return timed
    out = runner.run_case(_case(_ours(wrong_on_third)), FAST, {"env_id": "t"}, 0.0)
    assert out.status == "failed"
    assert "wrong on a timed call" in out.error and "call 3 of" in out.error


def test_a_right_kernel_passes_and_its_record_says_what_was_sampled():
    out = runner.run_case(_case(_ours(lambda run: run)), FAST, {"env_id": "t"}, 0.0)
    assert out.status == "ok", out.error
    assert out.record["check"]["calls_sampled"] >= 4 and out.record["check"]["inputs_varied"] is True


def test_a_kernel_returning_cached_outputs_fails():
    def cached(run):
        memo = []

        def timed():
            if not memo:
                y, (h, c) = run()
                memo.append((y.copy(), (h.copy(), c.copy())))
            return memo[0]
        return timed
    out = runner.run_case(_case(_ours(cached)), FAST, {"env_id": "t"}, 0.0)
    assert out.status == "failed"
    assert "do not follow the inputs" in out.error


def test_the_first_inputs_are_back_after_the_second_set():
    from microbench.cases.rnn import make_inputs
    seen, built = [], []

    def build(problem, seed, *, precision, plan=None):
        prepared = build_rnn(problem, seed, variant="naive", backend="numpy", precision=precision)
        run = prepared.run

        def timed():
            out = run()
            seen.append(np.array(out[0]))
            return out
        prepared.run = timed
        built.append(prepared)
        return prepared
    out = runner.run_case(_case(build), FAST, {"env_id": "t"}, 0.0)
    assert out.status == "ok", out.error
    assert not np.allclose(seen[-1], seen[0]) and np.array_equal(seen[-2], seen[0])   # the varied call
    first = make_inputs(PROBLEM, 0, "fp32")
    for k in ("x", "h0", "c0"):
        assert np.array_equal(built[0].inputs[k], first[k])


def test_the_sampler_keeps_a_uniform_sample_and_reads_few_elements():
    from microbench import callsample
    s = callsample.CallSampler(keep=8, per_array=5, rng=random.Random(1))
    a = np.arange(1000.0).reshape(10, 100)
    for _ in range(10_000):
        s.offer((a, (a[:, :3],)))
    assert s.calls == 10_000 and s.kept == 8
    calls = [c for c, _ in s._kept.values()]
    assert max(calls) > 1000                       # not the first eight: a sample of all calls
    for _, reads in s._kept.values():
        assert [len(pos) for pos, _ in reads] == [5, 5]
    assert s.check((a, (a[:, :3],)), 1e-6) is None
    bad = a.copy()
    bad[...] = -1.0
    detail, err = s.check((bad, (bad[:, :3],)), 1e-6)
    assert "differs from the last call" in detail and err > 1e-6


def test_nan_in_a_sampled_call_is_never_within_tolerance():
    from microbench import callsample
    s = callsample.CallSampler(keep=2, per_array=4, rng=random.Random(2))
    good = np.ones(4)
    s.offer(np.full(4, np.nan))
    s.offer(good)
    assert s.check(good, 1.0) is not None


def test_worker_reads_round_trip_through_json():
    from microbench import callsample
    import json
    s = callsample.CallSampler(keep=3, per_array=2, rng=random.Random(3))
    for k in range(5):
        s.offer([np.full((2, 2), float(k))])
    merged = callsample.CallSampler()
    merged.merge(json.loads(json.dumps(s.export())), s.calls)
    assert merged.kept == 3 and merged.calls == 5
    assert merged.check([np.full((2, 2), 4.0)], 1e-3) is not None    # calls 1..3 held other values


@pytest.mark.parametrize("backend", ["numba", "onednn"])
def test_real_variants_pass_the_whole_gate(backend):
    from microbench import registry
    from microbench import cases  # noqa: F401  (fills the registry)
    variant = "fused" if backend == "numba" else "onednn"
    rec = registry.REGISTRY[("lstm", variant, backend)]
    if registry.missing(rec):
        pytest.skip(registry.missing(rec))
    case = runner.Case(rec, PROBLEM, "fp32")
    out = runner.run_case(case, FAST, {"env_id": "t"}, 0.0)
    assert out.status == "ok", out.error
    assert out.record["check"]["calls_sampled"] > 0 and out.record["check"]["inputs_varied"] is True


def test_a_framework_worker_reads_random_calls_and_the_row_fails_on_a_wrong_one(monkeypatch):
    import json

    from microbench import checks
    from microbench.callsample import CallSampler
    from microbench.cases import frameworks as fcases
    from microbench.frameworks.worker import sampled_calls

    class Built:                       # a framework path wrong on its 2nd call only
        n = 0

        def run(self):
            self.n += 1

        def outputs(self):
            return [np.full(3, 5.0 if self.n == 2 else 1.0)]
    built = Built()
    sampler, timer = sampled_calls(None, built)         # what the worker's "measure" does
    for _ in range(5):
        timer.sample(built.run)
    reply = json.loads(json.dumps({"sampled": sampler.export(), "calls": sampler.calls}))

    ours = CallSampler()
    ours.merge(reply["sampled"], reply["calls"])        # what _measure_in does with the reply
    monkeypatch.setattr(fcases, "latest_outputs", lambda worker: [np.full(3, 1.0)])
    info = {}
    check = fcases._gated(lambda out: checks.compare(out, [np.ones(3)], "fp32", names=("y",)),
                          None, [np.ones(3)], ours, info)
    assert check().passed                               # the build call's outputs
    after = check()                                     # after timing: the last call, then the sample
    assert not after.passed and "call 2 of 5" in after.detail and info["calls_sampled"] == 5
