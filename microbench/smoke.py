"""Smoke mode (``MICROBENCH_SMOKE=1``): run every command end to end at the cost of a check.

A smoke run builds, checks and times every case the command asks for, so its exit code, tables,
records, figures and correctness checks are the real ones; only the timing rule is capped (no
warm-up, two samples, a fraction of a second per case, no noise target) and the sizes are shrunk
where a command would otherwise take seconds per call.  It exists so that tests (and a user's own
CI) can run the README's commands as written.  Its numbers are not measurements: every table title
starts with ``SMOKE``, the header says what was capped, and every record carries
``options.smoke`` (``true``, or what the sizes were before shrinking), which ``compare`` and
``report`` read as "not a measurement".
"""
from __future__ import annotations

import dataclasses
import os

ENV = "MICROBENCH_SMOKE"

# The timing rule under smoke: enough to exercise sampling, checks after timing and statistics.
WARMUP_S, MIN_SAMPLES, MAX_TIME_S = 0.0, 2, 0.25
NO_NOISE_TARGET = 1e9       # IQR/median never above it: the noise rule never asks for more samples

# Largest size per dimension a smoke run keeps (larger requests are shrunk to these).  Chosen so
# the slowest variant (naive/numpy, the float64 reference, im2col) takes milliseconds per call.
RNN_CAPS = {"T": 6, "B": 4, "H": 48, "I": 48, "L": 2}
CONV_CAPS = {"N": 2, "H": 14, "W": 14, "C": 16, "K": 16}

TITLE_MARK = "SMOKE "


def active() -> bool:
    """True when ``MICROBENCH_SMOKE`` is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def settings(s):
    """``harness.Settings`` ``s`` capped to the smoke timing rule (unchanged when not active)."""
    if not active():
        return s
    max_time = min(s.max_time, MAX_TIME_S)
    return dataclasses.replace(s, warmup=min(s.warmup, WARMUP_S), min_time=0.0, max_time=max_time,
                               min_samples=min(s.min_samples, MIN_SAMPLES), max_noise=NO_NOISE_TARGET)


_ASKED: dict = {}      # shrunk problem -> the sizes asked for (what records say)


def _shrunk(problem, caps: dict):
    changes = {k: getattr(problem, k) for k, cap in caps.items() if getattr(problem, k) > cap}
    if not changes:
        return problem, {}
    small = dataclasses.replace(problem, **{k: caps[k] for k in changes})
    _ASKED[small] = changes
    return small, changes


def problem(p):
    """``(problem, asked)``: ``p`` with each dimension above its smoke cap shrunk to the cap, and
    the sizes it had before (empty when nothing changed or smoke is off).  A convolution keeps its
    filter, stride, padding and groups; a grouped one keeps C and K divisible by its groups."""
    if not active():
        return p, {}
    if hasattr(p, "T"):
        return _shrunk(p, RNN_CAPS)
    caps = dict(CONV_CAPS)
    g = getattr(p, "groups", 1) or 1
    for k in ("C", "K"):            # a multiple of the groups, at least the groups themselves
        caps[k] = max(g, caps[k] - caps[k] % g)
    # the output stays at least 1x1: the input at least as large as the dilated filter
    caps["H"] = max(caps["H"], (p.R - 1) * p.dilation[0] + 1)
    caps["W"] = max(caps["W"], (p.S - 1) * p.dilation[1] + 1)
    return _shrunk(p, caps)


def record_options(problem):
    """The value of ``options.smoke`` in a record of ``problem``: the sizes asked for before the
    smoke caps shrank them, or True; None when smoke is off."""
    if not active():
        return None
    asked = _ASKED.get(problem)
    return {"asked": dict(asked)} if asked else True


def header_line() -> str:
    return (f"SMOKE run ({ENV} set): warm-up {WARMUP_S:g} s, {MIN_SAMPLES} samples, at most "
            f"{MAX_TIME_S:g} s per case, sizes capped at RNN {_caps(RNN_CAPS)}, conv "
            f"{_caps(CONV_CAPS)}: checks are real, times are not measurements")


def _caps(caps: dict) -> str:
    return " ".join(f"{k}{v}" for k, v in caps.items())
