"""--rounds N: cases timed interleaved, each checked before and after, recorded once."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kernels.errors import BadInput, Unsupported
from microbench import checks, cli, registry, runner
from microbench.harness import Settings
from microbench.problems import RNNProblem
from microbench.registry import Prepared, VariantRecord

SMALL = ["-T", "3", "-B", "2", "-H", "4", "-I", "3", "--device", "cpu"]
FAST = dict(warmup=0.0, min_time=0.0, max_time=2.0, max_noise=10.0)


class Bar:
    """Progress stand-in: keeps what the runner reports."""

    def __init__(self):
        self.notes, self.finished = [], []

    def start(self, text):
        pass

    def within(self, phase):
        pass

    def note(self, text):
        self.notes.append(text)

    def done(self, outcome):
        self.finished.append(outcome)


def _logging_builder(name, log, wrong_after=None):
    def build(problem, seed, *, precision, plan=None):
        ref = np.arange(6.0).reshape(2, 3)
        calls = [0]

        def run():
            calls[0] += 1
            log.append(name)
            return ref + 1.0 if wrong_after and calls[0] > wrong_after else ref.copy()

        def check(out=None):
            return checks.compare([run() if out is None else out], [ref], precision, names=("y",))
        return Prepared({}, run, 1, 1, check)
    return build


def _cases(builders):
    problem = RNNProblem("lstm", T=2, B=1, I=2, H=2, L=1)
    return [runner.Case(VariantRecord("lstm", name, "numpy", b, "test double"), problem, "fp32")
            for name, b in builders]


def test_rounds_interleave_the_cases_and_record_the_union_of_samples():
    log: list = []
    cases = _cases([("a", _logging_builder("a", log)), ("b", _logging_builder("b", log))])
    bar = Bar()
    out = runner.run_interleaved(cases, Settings(min_samples=6, rounds=3, **FAST), {"env_id": "t"},
                                 0.0, bar)
    assert [o.status for o in out] == ["ok", "ok"]
    # both built and checked first (a, b), then the rounds in rotated order: a b | b a | a b
    runs = [n for i, n in enumerate(log) if i == 0 or log[i - 1] != n]
    assert runs[:2] == ["a", "b"]
    blocks = runs[2:]
    assert blocks[:4] == ["a", "b", "a", "b"] and len(blocks) >= 4   # b,b and a,a merge above
    for o in out:
        assert o.record["options"]["rounds"] == 3
        assert o.measurement.n >= 6            # ceil(6 / 3) = 2 samples a round, 3 rounds
    assert len(bar.finished) == 2 and sum("round" in n for n in bar.notes) == 3


def test_a_case_wrong_after_the_first_call_fails_even_when_interleaved():
    log: list = []
    cases = _cases([("good", _logging_builder("good", log)),
                    ("stale", _logging_builder("stale", log, wrong_after=1))])
    out = runner.run_interleaved(cases, Settings(min_samples=2, rounds=2, **FAST), {"env_id": "t"},
                                 0.0, Bar())
    assert [o.status for o in out] == ["ok", "failed"]
    assert "wrong after timing" in out[1].error


def test_a_skipped_case_does_not_stop_the_others():
    def unsupported(problem, seed, *, precision, plan=None):
        raise Unsupported("no such device here")

    log: list = []
    closed: list = []

    def closing(problem, seed, *, precision, plan=None):
        p = _logging_builder("c", log)(problem, seed, precision=precision)
        p.close = lambda: closed.append(1)
        return p

    cases = _cases([("skip", unsupported), ("c", closing)])
    out = runner.run_interleaved(cases, Settings(min_samples=2, rounds=2, **FAST), {"env_id": "t"},
                                 0.0, Bar())
    assert [o.status for o in out] == ["skipped", "ok"] and out[0].error == "no such device here"
    assert closed == [1]           # released once, after its last check


def test_noisy_cases_get_extra_rounds_until_their_time_is_spent():
    import time
    rng = np.random.default_rng(0)

    def build(problem, seed, *, precision, plan=None):
        ref = np.ones(2)

        def run():   # 0 to 4 ms at random: never meets a 1% noise target
            time.sleep(0.004 * rng.random())
            return ref.copy()
        return Prepared({}, run, 1, 1, lambda out=None: checks.compare(
            [run() if out is None else out], [ref], precision, names=("y",)))

    settings = Settings(warmup=0.0, min_time=0.0, max_time=0.3, min_samples=2, max_noise=0.01,
                        rounds=2)
    bar = Bar()
    [o] = runner.run_interleaved(_cases([("noisy", build)]), settings, {"env_id": "t"}, 0.0, bar)
    assert o.status == "ok" and o.measurement.n > 2
    assert sum("extra" in n for n in bar.notes) == 1      # one line, not one per extra round
    assert sum(o.measurement.samples) < 0.3 * 2      # stopped by max_time, not run forever


@pytest.mark.parametrize("bad", [0, -1])
def test_rounds_below_one_are_refused(bad):
    with pytest.raises(BadInput, match=f"--rounds {bad} must be a whole number >= 1"):
        Settings(rounds=bad)


def test_cli_rounds_records_them(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    code = cli.main(["lstm", "--naive", "--fused", "--backend", "numpy", *SMALL, "--rounds", "2",
                     "--min-time", "0", "--warmup", "0", "--min-samples", "2", "--quiet",
                     "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in recs] == ["naive", "fused"]
    assert all(r["options"]["rounds"] == 2 and r["status"] == "ok" for r in recs)


def test_cli_rounds_zero_is_one_line(capsys):
    assert cli.main(["lstm", "--fused", *SMALL, "--rounds", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "microbench: error: --rounds 0 must be a whole number >= 1"


def test_rounds_are_not_part_of_a_records_identity():
    from microbench import store
    rec = {"op": "lstm", "variant": "fused", "backend": "numpy", "framework": "", "device": "cpu",
           "dtype": "fp32", "shape": {"T": 1}, "options": {"mode": "warm"}}
    other = json.loads(json.dumps(rec))
    other["options"]["rounds"] = 3
    assert store.identity(rec) == store.identity(other)


def test_registry_untouched():
    assert not any(k[1] in ("a", "b", "stale", "noisy") for k in registry.REGISTRY)


def test_a_busy_machine_is_named_after_the_run(monkeypatch):
    from microbench import env
    monkeypatch.setattr(env.os, "getloadavg", lambda: (9.0, 8.0, 7.0))
    text = env.busy_warning(2)
    # --rounds cannot give a row the cores other processes hold: it is not what the warning advises
    assert text.startswith("load average 9.0 on 2 core(s) during this run") and "--rounds" not in text
    assert "marked contended (!)" in text
    monkeypatch.setattr(env.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert env.busy_warning(2) == ""
    assert env.load_avg() == [1.2, 1.0, 1.0]


@pytest.mark.parametrize("rounds", ["1", "2"])
def test_the_busy_warning_ends_a_run_interleaved_or_not(monkeypatch, capsys, rounds):
    """The interleaved path once returned before the warning; both paths end with it."""
    from microbench import env
    monkeypatch.setattr(env.os, "getloadavg", lambda: (9.0, 8.0, 7.0))
    code = cli.main(["lstm", "--fused", "--backend", "numpy", *SMALL, "--rounds", rounds,
                     "--min-time", "0", "--warmup", "0", "--min-samples", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: load average 9.0 on" in " ".join(err.split())
