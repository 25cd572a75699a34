"""The stopping rule and statistics, driven by a fake timer so nothing here depends on speed."""
import itertools

import pytest

from kernels import BadInput
from microbench.harness import Settings, measure
from microbench.stats import Measurement


class FakeTimer:
    """Returns scripted sample durations and advances a fake clock, so the rule is deterministic."""
    name = "fake"

    def __init__(self, durations, monkeypatch):
        self.it = iter(durations)
        self.now = 0.0
        self.calls = 0
        import microbench.harness as h
        monkeypatch.setattr(h.time, "perf_counter", lambda: self.now)

    def sample(self, fn):
        fn()
        self.calls += 1
        d = next(self.it)
        self.now += d
        return d

    def overhead(self):
        return 0.0


def test_stops_when_quiet_and_long_enough(monkeypatch):
    # durations exact in binary, so sums compare exactly
    t = FakeTimer(itertools.repeat(0.125), monkeypatch)
    m = measure(lambda: None, Settings(warmup=0.25, min_time=1.0, max_time=100, min_samples=5, max_noise=0.05), t)
    assert m.n == 8                  # 1.0 s of 0.125 s samples
    assert t.calls == 10             # plus 2 warm-up calls (0.25 s)
    assert m.median == 0.125 and m.rel_noise == 0 and not m.noisy


def test_keeps_sampling_while_noisy_then_gives_up_at_max_time(monkeypatch):
    t = FakeTimer(itertools.cycle([0.1, 0.3]), monkeypatch)
    m = measure(lambda: None, Settings(warmup=0, min_time=0.1, max_time=5, min_samples=3, max_noise=0.05), t)
    assert m.noisy and m.rel_noise > 0.05
    assert 4.5 <= t.now <= 5.4       # stopped by max_time, not earlier


def test_noise_target_met_after_outlier(monkeypatch):
    t = FakeTimer(itertools.chain([0.5], itertools.repeat(0.1)), monkeypatch)
    m = measure(lambda: None, Settings(warmup=0, min_time=0.2, max_time=50, min_samples=5, max_noise=0.05), t)
    # the warm-up call absorbed the slow first call; the samples are all 0.1
    assert m.min == pytest.approx(0.1) and not m.noisy


def test_around_wraps_only_the_samples(monkeypatch):
    events = []

    class Ctx:
        def __enter__(self):
            events.append(("enter", t.calls))

        def __exit__(self, *a):
            events.append(("exit", t.calls))

    t = FakeTimer(itertools.repeat(0.1), monkeypatch)
    measure(lambda: None, Settings(warmup=0.2, min_time=0.5, max_time=10, min_samples=2), t, around=Ctx)
    assert events[0] == ("enter", 2) and events[1][0] == "exit" and events[1][1] > 2


def test_measurement_statistics():
    m = Measurement([4.0, 1.0, 3.0, 2.0, 100.0], max_noise=0.1)
    assert m.median == 3.0 and m.min == 1.0 and m.q1 == 2.0 and m.q3 == 4.0
    assert m.rel_noise == pytest.approx(2 / 3) and m.noisy
    d = m.to_dict()
    assert d["n"] == 5 and d["iqr_s"] == 2.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(min_time=-1), "--min-time -1"),
    (dict(max_time=0.5, min_time=1), "--max-time 0.5 is below --min-time 1"),
    (dict(min_samples=0), "--min-samples 0"),
    (dict(max_noise=float("nan")), "--max-noise nan"),
])
def test_settings_validation(kwargs, match):
    with pytest.raises(BadInput, match=match):
        Settings(**kwargs)
