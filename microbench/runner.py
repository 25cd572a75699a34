"""Runs cases: build, check against the reference, time, check again; failures and skips become records.

The check runs on the first call's outputs before timing, and on the outputs of the last timed
call after timing (same inputs, outside the samples).  The second catches a variant that is
right once and wrong later: stale state, a buffer reused across calls, a graph replay reading
the wrong input.  Between the two, a random sample of the calls, chosen after each returned, is
compared with the last one (:mod:`microbench.callsample`); and where the builder offers a second
set of inputs, one call on them is checked against their reference, and one more on the first
inputs again (a kernel returning cached outputs fails it).  A case failing any of these is
recorded FAILED, never timed as passing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
import traceback
from dataclasses import dataclass, field

from kernels.errors import BadInput, MicrobenchError, Unsupported
from kernels import nvtx
from profiles import capture

from . import contention, results
from . import gpustate
from .caches import flusher_for
from .callsample import CallSampler, SampledTimer, vary_check
from .harness import CpuTimer, Settings, graph_replay, measure, timer_for
from .problems import RNNProblem
from .registry import Check, VariantRecord
from .stats import Measurement, relative_noise
from . import threads as mthreads


@dataclass(frozen=True)
class Case:
    record: VariantRecord
    problem: RNNProblem
    precision: str
    seed: int = 0
    plan: object = None          # fusion.Plan for fusable variants
    threads: int | None = None
    rung: str = ""               # ladder rung label ("naive", "+group_gemm", ...)

    op = property(lambda self: self.record.op)
    variant = property(lambda self: self.record.variant)
    backend = property(lambda self: self.record.backend)
    device = property(lambda self: self.record.device)

    @property
    def title(self) -> str:
        """What the progress bar and its lines call the case."""
        return f"{self.op} {self.label} {self.precision}" + (f" {self.threads} thr" if self.threads else "")

    @property
    def timer_name(self) -> str:
        return "cuda-events" if self.device == "cuda" else CpuTimer.name

    @property
    def label(self) -> str:
        name = self.rung or self.variant
        if self.plan is not None and not self.rung and self.plan.label not in ("none",) \
                and self.plan != _full(self):
            name += f"[{self.plan.label}]"
        return f"{name}/{self.backend}"

    def options(self) -> dict:
        return {"plan": self.plan.label if self.plan is not None else None, "threads": self.threads,
                "seed": self.seed, "rung": self.rung or None, "nvtx": nvtx.level(),
                # what the problem computes besides its sizes (vanilla nonlinearity, skip-input)
                **(self.problem.options() if hasattr(self.problem, "options") else {})}


@contextlib.contextmanager
def _measured_region(case):
    """NVTX case ranges, inside the profiler capture range when --profile is on."""
    with capture.capture_range(case.device), nvtx.case(case.op, case.variant, case.backend):
        yield


def _full(case):
    from fusion.steps import full_plan
    return full_plan(case.device, case.backend)


def check_after_timing(prepared, last, device: str):
    """The check on the outputs of the last timed call (``last``) when the case's check takes
    outputs; otherwise (a check without that parameter, a case timed in a worker process, a timed
    call that returns nothing) the check itself, which calls the case once more on the same
    inputs (a framework case's check reads its worker's latest outputs)."""
    if device == "cuda":   # the last call (or graph replay) may still run on its own stream
        import cupy
        cupy.cuda.Device().synchronize()
    if last is not None and _takes_outputs(prepared.check):
        return prepared.check(last)
    return prepared.check()


def _takes_outputs(check) -> bool:
    try:
        return len(inspect.signature(check).parameters) >= 1
    except (TypeError, ValueError):
        return False


@dataclass
class Outcome:
    case: Case
    status: str                  # ok | failed | skipped
    record: dict
    measurement: object = None
    check: object = None
    error: str = ""
    threads_used: dict = field(default_factory=dict)


class _CaseRun:
    """One case through its phases: ``open`` (build, first check), ``time`` (once, or once per
    round when cases are interleaved), ``finish`` (check after timing, the record), ``close``.

    Every phase turns a failure into the case's outcome (``self.outcome``) instead of raising, so
    one broken variant never stops the others; bad input (BadInput) still stops the run.
    """

    def __init__(self, case: Case, env: dict, nvtx_cost: float):
        self.case, self.env, self.nvtx_cost = case, env, nvtx_cost
        self.used: dict = {}
        self.prepared = None
        self.outcome: Outcome | None = None       # set once the case is finished
        self.samples: list = []
        self.cpu_s: list = []                      # CPU seconds per sample (microbench.contention)
        self.readings: list = []                   # contention readings, one per sampling loop
        self.spent = 0.0                           # seconds spent sampling it so far
        self.rounds_timed = 0                      # interleaved rounds it was timed in
        self.mode = self.timer_used = ""
        self.check = None
        self.ranges = 0
        self.extra: dict = {}
        self._run = self._flush = self._timer = self._clocks = None
        self._last = None
        self._sampler = None

    def _finish(self, status, **kw):
        rec = results.record(case=self.case, status=status, env=self.env, **kw)
        rec["threads_used"] = self.used
        self.outcome = Outcome(self.case, status, rec, kw.get("measurement"), kw.get("check"),
                               kw.get("error") or "", self.used)
        return self.outcome

    @contextlib.contextmanager
    def _guard(self):
        """Failures of a phase become the case's record (see the class docstring)."""
        try:
            with mthreads.limit(self.case.threads) as used:
                if not self.used:           # the pools as the case began (the record's threads_used)
                    self.used.update(used)
                yield
        except BadInput:
            self.close()
            raise  # a bad request stops the run with its one-line message
        except Unsupported as e:
            self._finish("skipped", error=str(e))
        except MemoryError:
            self._finish("failed", error="out of memory while building or running the case")
        except MicrobenchError as e:
            self._finish("failed", error=str(e))
        except Exception as e:  # a bug in a variant must not stop the others: record it and go on
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self._finish("failed", error=f"{type(e).__name__}: {e} (at {tb.filename}:{tb.lineno})")
        if self.outcome is not None:
            self.close()

    def open(self, settings: Settings) -> None:
        case = self.case
        with self._guard():
            self.prepared = case.record.build(case.problem, case.seed, precision=case.precision,
                                              plan=case.plan)
            nvtx.reset_count()
            self.check = self.prepared.check()
            self.ranges = nvtx.reset_count()
            if not self.check.passed:
                self._finish("failed", check=self.check, prepared=self.prepared,
                             error=self.check.detail)
                return
            if self.prepared.measure is None:
                run = self.prepared.run
                if settings.graph:
                    if case.device != "cuda":
                        raise Unsupported("--graph replays CUDA graphs: it needs a GPU case")
                    if case.plan is None or "graph" not in case.plan:
                        run = graph_replay(run)
                    # else the call already replays a graph of its own (the ``graph`` step):
                    # capturing a graph launch inside another capture is not what CUDA offers
                self._run = run
                self._flush = flusher_for(case.device) if settings.cold else None
                self._clocks = gpustate.read() if case.device == "cuda" else None
                self._sampler = CallSampler()
                self._timer = SampledTimer(timer_for(case.device), self._sampler)

    def time(self, settings: Settings, progress=None) -> None:
        """Sample the case under ``settings`` (all of its samples, or one round's share)."""
        if self.outcome is not None:
            return
        start = time.perf_counter()
        with self._guard():
            if self.prepared.measure is not None:     # timed elsewhere (a framework worker)
                m = self.prepared.measure(settings)
                self.mode, self.timer_used = m.mode or self.mode, m.timer or self.timer_used
            else:
                around = lambda: _measured_region(self.case)  # noqa: E731
                m = measure(self._run, settings, self._timer, around=around,
                            before_sample=self._flush, progress=progress)
                self._last = getattr(self._timer, "last", None)
            self.samples.extend(m.samples)
            self.cpu_s.extend(m.cpu_s)
            self.readings.append(m.readings)
        self.spent += time.perf_counter() - start

    def finish(self, settings: Settings) -> Outcome:
        if self.outcome is not None:
            return self.outcome
        case, prepared = self.case, self.prepared
        with self._guard():
            if self._clocks is not None:
                after = gpustate.read()
                self.extra["gpu_state"] = {"before": self._clocks, "after": after,
                                           "warning": gpustate.verdict(self._clocks, after)}
            m = Measurement(self.samples, settings.max_noise, mode=self.mode, timer=self.timer_used,
                            cpu_s=self.cpu_s, readings=contention.merge(self.readings))
            sampled = self._sampled_calls()    # before any further call reuses the last one's buffers
            after_check = check_after_timing(prepared, self._last, case.device)
            if not after_check.passed:
                self._finish("failed", check=after_check, prepared=prepared,
                             error=f"wrong after timing (the first call passed): {after_check.detail}")
                return self.outcome
            if sampled is not None:
                detail, err = sampled
                self._finish("failed", check=Check(err, self.check.tol, False, detail), prepared=prepared,
                             error=f"wrong on a timed call (the first and the last passed): {detail}")
                return self.outcome
            if not self._inputs_followed():
                return self.outcome
            ranges, cost = self.ranges, self.nvtx_cost
            nvtx_info = {"level": nvtx.level(), "ranges_per_run": ranges, "cost_per_range_s": cost,
                         "est_overhead_frac": ranges * cost / m.median if m.median > 0 else None}
            out = self._finish("ok", measurement=m, check=self.check, prepared=prepared,
                               nvtx_info=nvtx_info)
            out.record.update(self.extra)
            if out.record.get("check") is not None:      # what the gate covered besides two calls
                out.record["check"]["calls_sampled"] = (self._sampler.kept if self._sampled() else
                                                        prepared.info.get("calls_sampled", 0))  # a worker's
                out.record["check"]["inputs_varied"] = self._varies()
            asked = ("cold" if settings.cold else "warm") + ("+graph" if settings.graph else "")
            # a case timed elsewhere (a framework worker) reports the mode it really ran in
            ran = m.mode or asked
            out.record["options"]["mode"] = ran
            if ran != asked:
                out.record["options"]["mode_asked"] = asked
            if settings.rounds > 1:
                out.record["options"]["rounds"] = settings.rounds
                if self.rounds_timed < settings.rounds:   # --max-time ran out first
                    out.record["options"]["rounds_timed"] = self.rounds_timed
            if m.timer:
                out.record["timer"] = m.timer
        self.close()
        return self.outcome

    def _sampled(self) -> bool:
        """The kept calls can be compared: the last call's outputs are checked in full."""
        return (self._sampler is not None and self._sampler.kept > 0 and self._last is not None
                and _takes_outputs(self.prepared.check))

    def _sampled_calls(self):
        """(what differs, relative error) for a sampled timed call that disagrees with the last
        one, else None."""
        if not self._sampled():
            return None
        if self.case.device == "cuda":
            import cupy
            cupy.cuda.Device().synchronize()
        return self._sampler.check(self._last, self.check.tol)

    def _varies(self) -> bool:
        return self._run is not None and getattr(self.prepared, "vary", None) is not None

    def _inputs_followed(self) -> bool:
        """One call on the builder's second inputs, checked against their reference, then one on
        the first inputs again; False (the case FAILED) when either is wrong."""
        if not self._varies():
            return True
        sync = None
        if self.case.device == "cuda":
            import cupy
            sync = cupy.cuda.Device().synchronize
        varied = vary_check(self.prepared, self._run, sync)
        if not varied.passed:
            self._finish("failed", check=varied, prepared=self.prepared,
                         error="the outputs do not follow the inputs (outputs computed earlier returned?): "
                               f"with a second set of inputs, {varied.detail}")
            return False
        again = self.prepared.check()
        if not again.passed:
            self._finish("failed", check=again, prepared=self.prepared,
                         error=f"wrong once the first inputs were back after a second set: {again.detail}")
            return False
        return True

    def close(self) -> None:
        prepared, self.prepared = self.prepared, None
        if prepared is not None and prepared.close is not None:
            prepared.close()


def run_case(case: Case, settings: Settings, env: dict, nvtx_cost: float, progress=None) -> Outcome:
    """Build, check, time and check again one case. ``progress``: called between samples with
    the phase reached (microbench.progress)."""
    run = _CaseRun(case, env, nvtx_cost)
    try:
        run.open(settings)
        run.time(settings, progress)
        return run.finish(settings)
    finally:
        run.close()


def round_settings(settings: Settings, k: int, spent: float) -> Settings:
    """Round ``k``'s share of a case's timing budget (``spent``: seconds it has sampled so far).
    Of the first ``settings.rounds`` rounds, the first warms up fully and a later one with a
    single call (the other cases ran in between and took the caches); the noise rule is left to
    the union of all rounds' samples (a round stops on its time and sample count alone). An extra
    round, for a case still noisy after them, is twice as long as the one before (a handful of
    rounds, not hundreds), within what is left of its ``max_time``."""
    n = settings.rounds
    share = dataclasses.replace(
        settings, warmup=settings.warmup if k == 0 else 0.0, min_time=settings.min_time / n,
        max_time=max(settings.max_time / n, settings.min_time / n),
        min_samples=max(1, -(-settings.min_samples // n)), max_noise=1e9, rounds=1)
    extra = max(0, k + 1 - n)
    if not extra:
        return share
    left, grow = max(settings.max_time - spent, 0.0), 2 ** extra
    return dataclasses.replace(share, min_time=min(share.min_time * grow, left),
                               max_time=min(share.max_time * grow, left),
                               min_samples=share.min_samples * grow)


MAX_EXTRA_ROUNDS = 8     # each twice the one before: 255 more rounds' worth at most


def _out_of_time(r: _CaseRun, settings: Settings, k: int, bar) -> bool:
    """Whether case run ``r`` leaves the rotation after round ``k`` of fewer than --rounds: it has
    spent its --max-time and holds the samples measure() keeps at its time limit.  A round costs
    at least a warm-up call and a sample of every case, so without this the wall time grew with
    --rounds whatever --max-time said; the note and the record's options.rounds_timed say so."""
    if r.outcome is not None or r.spent < settings.max_time or len(r.samples) < min(3, settings.min_samples):
        return False
    bar.note(f"{r.case.title}: --max-time {settings.max_time:g} s spent after round {k} of "
             f"{settings.rounds}; timed in {k} round(s), not {settings.rounds}")
    return True


def run_interleaved(cases: list, settings: Settings, env: dict, nvtx_cost: float, bar) -> list:
    """Time ``cases`` in ``settings.rounds`` interleaved rounds: every case is built and checked
    first (all stay open), then each round gives every case its share of samples, the order
    rotated by one case per round, so a slow phase of the machine (another process, a clock or
    a noisy neighbour) lands on every case alike instead of on whichever ran then; each case is
    then checked again and recorded with the union of its samples. A case whose union is still
    above the noise target after N rounds gets further rounds (with the other such cases) until it
    meets it or its ``max_time`` is spent, as one case timed alone would; a case that spends its
    ``max_time`` before N rounds leaves the rotation then (:func:`_out_of_time`), so no --rounds
    makes a case take longer than --max-time allows. ``bar``: microbench.progress."""
    rounds = settings.rounds
    runs = [_CaseRun(c, env, nvtx_cost) for c in cases]
    try:
        for r in runs:
            bar.start(f"{r.case.title}: build and check")
            r.open(settings)
        live = [r for r in runs if r.outcome is None]
        k = 0
        while live:
            if k < rounds and (k < 10 or (k + 1) % 100 == 0 or k + 1 == rounds):   # not a line per round
                bar.note(f"round {k + 1} of {rounds}: {len(live)} case(s) interleaved")
            elif k == rounds:
                bar.note(f"extra rounds for {len(live)} noisy case(s), until --max-noise or --max-time")
            shift = k % len(live)
            for r in live[shift:] + live[:shift]:
                bar.start(f"round {k + 1}/{rounds} {r.case.title}")
                r.time(round_settings(settings, k, r.spent), bar.within)
                r.rounds_timed += 1
            k += 1
            if k >= rounds:   # past N rounds only the cases still noisy go on
                live = [r for r in live if r.outcome is None and r.spent < settings.max_time
                        and relative_noise(r.samples) > settings.max_noise
                        and k < rounds + MAX_EXTRA_ROUNDS]
            else:             # --max-time bounds a case's time whatever --rounds says
                live = [r for r in live if r.outcome is None and not _out_of_time(r, settings, k, bar)]
        outcomes = []
        for r in runs:
            bar.start(r.case.title)
            outcomes.append(r.finish(settings))
            bar.done(outcomes[-1])
        return outcomes
    finally:
        for r in runs:
            r.close()


# -- a command's cases, run with a progress bar and written as they finish -------------------------
def run_cases(cases: list, settings, args) -> tuple:
    """Run cases in order with a progress bar; append each record to --json as it finishes."""
    from profiles import capture

    from . import env as menv
    from . import report
    from .args import console
    from .progress import Progress
    from .results import JsonlWriter

    capture.enable(getattr(args, "profile", False))
    if settings.graph and any(c.device != "cuda" for c in cases):
        raise BadInput("--graph replays CUDA graphs, but these cases run on the CPU; drop --graph "
                       "or use --device cuda")

    writer = JsonlWriter(args.json) if args.json else None
    out, err = console(), console(stderr=True)
    warn_threads(cases, err)
    env = menv.collect()
    if not args.quiet:
        report.header(env, out)
    from .peaks import measure_for
    for note in measure_for(cases):       # the roofs the records carry, measured before the cases
        err.print(f"note: {note}", highlight=False)
    nvtx_cost = env["nvtx"]["cost_per_range_s"]
    outcomes = []
    try:
        # A bar on a terminal (redrawn between samples, never by a thread), else a line per case.
        with Progress(err, len(cases), quiet=args.quiet) as bar:
            if settings.rounds > 1:      # every case finishes after the last round
                outcomes = run_interleaved(cases, settings, env, nvtx_cost, bar)
                for o in outcomes:
                    if writer:
                        writer.write(o.record)
            else:
                for case in cases:
                    bar.start(case.title)
                    o = run_case(case, settings, env, nvtx_cost, progress=bar.within)
                    outcomes.append(o)
                    if writer:
                        writer.write(o.record)
                    bar.done(o)
    finally:
        if writer:
            writer.close()
    warn_contention([o.record for o in outcomes], env, cases, err)
    return outcomes, out, err


def warn_contention(records: list, env: dict, cases, err) -> None:
    """The end-of-run warnings: rows whose samples did not get their threads (what helps), and a
    load average above the cores."""
    from rich.markup import escape

    from . import contention
    from . import env as menv
    hit = contention.summary(records)
    if hit:
        err.print(f"[yellow]warning:[/] {escape(hit)}", highlight=False)
    busy = menv.busy_warning(env.get("affinity") or env.get("cores"))
    if busy and any(c.device == "cpu" for c in cases):
        err.print(f"[yellow]warning:[/] {escape(busy)}", highlight=False)


def warn_threads(cases, err) -> None:
    from rich.markup import escape

    from .threads import oversubscription_warning
    warning = oversubscription_warning({c.threads for c in cases})
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
