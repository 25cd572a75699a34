"""Raw samples and the statistics derived from them (lazily), kept apart from the case's identity."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass
class Measurement:
    samples: list = field(default_factory=list)   # seconds per call
    max_noise: float = 0.05                        # relative noise above which a result is flagged
    mode: str = ""                                 # set when timed elsewhere: the mode it really ran in
    timer: str = ""                                # ... and the timer it used
    cpu_s: list = field(default_factory=list)      # CPU seconds the process got per sample (all threads)
    readings: dict | None = None                   # microbench.contention.Probe over the samples

    @cached_property
    def _q(self):
        return np.percentile(np.asarray(self.samples, dtype=np.float64), [25, 50, 75])

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return float(self._q[1])

    @property
    def q1(self) -> float:
        return float(self._q[0])

    @property
    def q3(self) -> float:
        return float(self._q[2])

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        return float(np.min(self.samples))

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))

    @property
    def rel_noise(self) -> float:
        """Interquartile range over median: robust to the odd descheduled sample."""
        return self.iqr / self.median if self.median > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.rel_noise > self.max_noise

    def to_dict(self) -> dict:
        return {"n": self.n, "median_s": self.median, "q1_s": self.q1, "q3_s": self.q3,
                "iqr_s": self.iqr, "min_s": self.min, "mean_s": self.mean,
                "rel_noise": self.rel_noise, "max_noise": self.max_noise, "noisy": self.noisy}


def relative_noise(samples) -> float:
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return (q3 - q1) / med if med > 0 else float("inf")
