"""The harness's stopping rule in a file that needs only the standard library.

Workers that run our package time with :func:`microbench.harness.measure`.  A worker under another
interpreter (MXNet's, with NumPy 1.x and none of our dependencies) cannot import it, so it uses
this copy of the same rule: warm-up by time budget, then samples while fewer than ``min_samples``,
less than ``min_time`` measured, or IQR/median above ``max_noise``; stop at ``max_time`` whatever
the noise.  ``tests/test_frameworks.py`` checks the two agree on a scripted clock.
"""
from __future__ import annotations

import time


def _quartiles(samples):
    """25th, 50th, 75th percentiles with linear interpolation (NumPy's default method)."""
    s = sorted(samples)
    out = []
    for q in (0.25, 0.5, 0.75):
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return out


def relative_noise(samples) -> float:
    q1, med, q3 = _quartiles(samples)
    return (q3 - q1) / med if med > 0 else float("inf")


def measure(run, settings: dict, clock=time.perf_counter, before_sample=None, sample=None,
            readings: dict | None = None) -> list:
    """Seconds per call of ``run`` (which returns only when its work is complete).
    ``before_sample`` runs untimed before each measured sample (cold mode); ``sample(fn)`` replaces
    the wall-clock timer (device events).  ``readings``: a dict to fill with what
    :mod:`microbench.contention` reads over the samples (``cpu_s`` per sample, ``probe``), as the
    harness does."""
    from ..contention import Probe, cpu_time
    warmup, min_time, max_time = settings["warmup"], settings["min_time"], settings["max_time"]
    min_samples, max_noise = settings["min_samples"], settings["max_noise"]
    timed = sample

    def sample():
        if timed is not None:
            return timed(run)
        t0 = clock()
        run()
        return clock() - t0

    start = clock()
    spent = 0.0
    while True:
        spent += sample()
        if spent >= warmup or clock() - start >= max_time / 2:
            break
    samples, cpu_s = [], []
    probe = Probe()
    while True:
        if before_sample is not None:
            before_sample()
        c0 = cpu_time()
        samples.append(sample())
        cpu_s.append(cpu_time() - c0)
        n, total = len(samples), sum(samples)
        if clock() - start >= max_time and n >= min(3, min_samples):
            break
        if n >= min_samples and total >= min_time and relative_noise(samples) <= max_noise:
            break
    if readings is not None:
        readings.update(cpu_s=cpu_s, probe=probe.stop())
    return samples
