"""Timing: warm-up by time budget, then samples until the noise target or the time budget is met.

The timer is a seam.  :class:`CpuTimer` reads ``perf_counter`` around a synchronous call; a
device timer (CUDA events recorded on the case's stream, synchronized before reading) implements
the same two methods, so :func:`measure` does not change when a case runs on a GPU.

Stopping rule (after nvbench): keep sampling while any of these holds
  - fewer than ``min_samples`` samples,
  - less than ``min_time`` seconds measured,
  - relative noise (IQR / median) above ``max_noise``,
and stop regardless once ``max_time`` seconds have been spent on the case (the result is then
flagged noisy if the target was not reached).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from kernels.errors import BadInput

from .contention import Probe, cpu_time
from .stats import Measurement, relative_noise


class Timer(Protocol):
    name: str

    def sample(self, fn: Callable[[], object]) -> float:
        """Seconds one call of ``fn`` takes, with all its work complete when it returns.  What the
        call returned is kept in ``last`` (set after the clock is read), so the outputs of the
        last timed call can be checked after timing."""

    def overhead(self) -> float:
        """Seconds the timer itself adds to one sample (reported, not subtracted)."""


class CpuTimer:
    name = "perf_counter"
    last = None

    def sample(self, fn):
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        self.last = out
        return t1 - t0

    def overhead(self, n: int = 2000) -> float:
        noop = lambda: None  # noqa: E731
        t0 = time.perf_counter()
        for _ in range(n):
            self.sample(noop)
        return (time.perf_counter() - t0) / n


class CudaEventTimer:
    """CUDA events recorded around each call on the current CuPy stream; the end event is
    synchronized before the elapsed time is read, so a sample is device time of that call.

    The events time only what is ordered between them on that stream: a callable that queues
    its work on another stream must join it back to the current one before it returns (as
    :func:`graph_replay` and the ``streams``/``wavefront`` plans do), or the sample misses it.
    """

    name = "cuda-events"
    last = None

    def __init__(self):
        import cupy
        self._cp = cupy
        self._start, self._end = cupy.cuda.Event(), cupy.cuda.Event()

    def sample(self, fn):
        stream = self._cp.cuda.get_current_stream()
        self._start.record(stream)
        out = fn()
        self._end.record(stream)
        self._end.synchronize()
        self.last = out
        return self._cp.cuda.get_elapsed_time(self._start, self._end) / 1e3

    def overhead(self, n: int = 200) -> float:
        return sum(self.sample(lambda: None) for _ in range(n)) / n


def graph_replay(run: Callable[[], object]) -> Callable[[], object]:
    """Capture one call of ``run`` as a CUDA graph; return a callable that replays it.

    Capture needs a stream of its own (CUDA refuses to capture the legacy default stream), but the
    replay is launched on the *current* stream at call time: the timer's events and the cold-mode
    flush are queued there, so the graph runs after the flush and between the two events.  (A
    replay on the capture stream, a non-blocking one, would not be ordered with the legacy stream
    at all: the events would time nothing.)  Replaying removes the host's per-kernel launch cost
    from the samples; a call that cannot be captured (it synchronizes, or allocates outside
    CuPy's pool) fails with CUDA's reason.  The replay returns the captured call's outputs, which
    every replay rewrites, so the outputs of the last replay can be checked after timing.
    """
    import cupy
    capture = cupy.cuda.Stream(non_blocking=True)
    with capture:
        run()                      # allocate every buffer before capturing
        capture.synchronize()
        capture.begin_capture()
        try:
            outputs = run()
        finally:
            graph = capture.end_capture()
        graph.upload(capture)
        capture.synchronize()

    def replay():
        graph.launch(cupy.cuda.get_current_stream())
        return outputs
    return replay


def timer_for(device: str) -> Timer:
    return CudaEventTimer() if device == "cuda" else CpuTimer()


@dataclass(frozen=True)
class Settings:
    warmup: float = 0.2        # seconds of warm-up calls (at least one call)
    min_time: float = 1.0      # seconds of measured calls at least
    max_time: float = 20.0     # seconds per case at most, warm-up included
    min_samples: int = 5
    max_noise: float = 0.05    # target IQR / median
    cold: bool = False         # evict the last-level cache before every sample (microbench.caches)
    graph: bool = False        # GPU: capture one call as a CUDA graph and time its replays
    rounds: int = 1            # >1: the cases of a run are timed interleaved (runner.run_interleaved)

    def __post_init__(self):
        for name in ("warmup", "min_time", "max_time", "max_noise"):
            v = getattr(self, name)
            if not (v >= 0) or v == float("inf"):
                raise BadInput(f"--{name.replace('_', '-')} {v} must be a finite number >= 0")
        if self.max_time < self.min_time:
            raise BadInput(f"--max-time {self.max_time} is below --min-time {self.min_time}")
        if self.min_samples < 1:
            raise BadInput(f"--min-samples {self.min_samples} must be at least 1")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise BadInput(f"--rounds {self.rounds} must be a whole number >= 1")


def measure(run: Callable[[], object], settings: Settings, timer: Timer | None = None,
            around: Callable | None = None, before_sample: Callable | None = None,
            progress: Callable[[str], None] | None = None) -> Measurement:
    """Warm ``run`` up, then sample it per the stopping rule.

    ``around`` is an optional context-manager factory wrapped around the sampling loop only (the
    NVTX case range and the profiler capture range), so warm-up calls stay out of a profile.
    ``before_sample`` runs before every sample, untimed (the cache flush of cold mode).
    ``progress`` is called between samples (untimed, on this thread) with the phase reached.
    """
    timer = timer or CpuTimer()
    start = time.perf_counter()
    spent = 0.0
    while True:  # warm-up: compiles, fills caches, lets clocks ramp
        spent += timer.sample(run)
        if spent >= settings.warmup or time.perf_counter() - start >= settings.max_time / 2:
            break
        if progress is not None:
            progress(f"warm-up {spent:.1f} of {settings.warmup:g} s")
    samples: list = []
    cpu_s: list = []         # CPU time the process got per sample, read outside the timer
    probe = Probe()          # run-queue wait and load over the samples (microbench.contention)
    total = 0.0
    # The noise rule sorts every sample so far; asked after every sample it would cost O(n) per
    # sample, and a microsecond kernel sampled for seconds spent most of its budget computing
    # quantiles instead of calling the kernel.  Asked again only after n/16 more samples, its
    # total cost stays proportional to the sample count (it can stop at most 1/16 later).
    next_noise_check = settings.min_samples
    with around() if around else contextlib.nullcontext():
        while True:
            if before_sample is not None:
                before_sample()
            c0 = cpu_time()
            t = timer.sample(run)
            cpu_s.append(cpu_time() - c0)
            samples.append(t)
            total += t
            n = len(samples)
            if progress is not None:
                progress(f"{n} samples, {total:.1f} of {settings.min_time:g}-{settings.max_time:g} s")
            elapsed = time.perf_counter() - start
            if elapsed >= settings.max_time and n >= min(3, settings.min_samples):
                break
            if n >= next_noise_check and total >= settings.min_time:
                if relative_noise(samples) <= settings.max_noise:
                    break
                next_noise_check = n + max(1, n // 16)
    return Measurement(samples, settings.max_noise, cpu_s=cpu_s, readings=probe.stop())
