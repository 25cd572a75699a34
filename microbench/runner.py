"""Runs cases: build, check against the reference, time, check again; failures and skips become records.

The check runs twice: on the first call's outputs before timing, and on the outputs of the last
timed call after timing (same inputs, outside the samples).  The second catches a variant that is
right once and wrong later: stale state, a buffer reused across calls, a graph replay reading
the wrong input.  A case failing either check is recorded FAILED, never timed as passing.
"""
from __future__ import annotations

import contextlib
import inspect
import traceback
from dataclasses import dataclass, field

from kernels.errors import BadInput, MicrobenchError, Unsupported
from profiles import capture, nvtx

from . import results
from . import gpustate
from .caches import flusher_for
from .harness import CpuTimer, Settings, graph_replay, measure, timer_for
from .problems import RNNProblem
from .registry import VariantRecord
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


def run_case(case: Case, settings: Settings, env: dict, nvtx_cost: float, progress=None) -> Outcome:
    """``progress``: called between samples with the phase reached (microbench.progress)."""
    def finish(status, **kw):
        rec = results.record(case=case, status=status, env=env, **kw)
        rec["threads_used"] = used
        return Outcome(case, status, rec, kw.get("measurement"), kw.get("check"), kw.get("error") or "",
                       used)

    used: dict = {}
    prepared = None
    try:
        with mthreads.limit(case.threads) as used:
            prepared = case.record.build(case.problem, case.seed, precision=case.precision,
                                         plan=case.plan)
            nvtx.reset_count()
            check = prepared.check()
            ranges = nvtx.reset_count()
            if not check.passed:
                return finish("failed", check=check, prepared=prepared, error=check.detail)
            around = lambda: _measured_region(case)  # noqa: E731
            extra = {}
            last = None   # what the last timed call returned (timed here, not in a worker)
            if prepared.measure is not None:
                m = prepared.measure(settings)
            else:
                run = prepared.run
                if settings.graph:
                    if case.device != "cuda":
                        raise Unsupported("--graph replays CUDA graphs: it needs a GPU case")
                    if case.plan is None or "graph" not in case.plan:
                        run = graph_replay(run)
                    # else the call already replays a graph of its own (the ``graph`` step):
                    # capturing a graph launch inside another capture is not what CUDA offers
                flush = flusher_for(case.device) if settings.cold else None
                clocks = gpustate.read() if case.device == "cuda" else None
                timer = timer_for(case.device)
                m = measure(run, settings, timer, around=around, before_sample=flush,
                            progress=progress)
                last = getattr(timer, "last", None)
                if clocks is not None:
                    after = gpustate.read()
                    extra["gpu_state"] = {"before": clocks, "after": after,
                                          "warning": gpustate.verdict(clocks, after)}
            after_check = check_after_timing(prepared, last, case.device)
            if not after_check.passed:
                return finish("failed", check=after_check, prepared=prepared,
                              error=f"wrong after timing (the first call passed): {after_check.detail}")
            nvtx_info = {"level": nvtx.level(), "ranges_per_run": ranges,
                         "cost_per_range_s": nvtx_cost,
                         "est_overhead_frac": ranges * nvtx_cost / m.median if m.median > 0 else None}
            out = finish("ok", measurement=m, check=check, prepared=prepared, nvtx_info=nvtx_info)
            out.record.update(extra)
            asked = ("cold" if settings.cold else "warm") + ("+graph" if settings.graph else "")
            # a case timed elsewhere (a framework worker) reports the mode it really ran in
            ran = m.mode or asked
            out.record["options"]["mode"] = ran
            if ran != asked:
                out.record["options"]["mode_asked"] = asked
            if m.timer:
                out.record["timer"] = m.timer
            return out
    except BadInput:
        raise  # a bad request stops the run with its one-line message
    except Unsupported as e:
        return finish("skipped", error=str(e))
    except MemoryError:
        return finish("failed", error="out of memory while building or running the case")
    except MicrobenchError as e:
        return finish("failed", error=str(e))
    except Exception as e:  # a bug in a variant must not stop the others: record it and go on
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return finish("failed", error=f"{type(e).__name__}: {e} (at {tb.filename}:{tb.lineno})")
    finally:
        if prepared is not None and prepared.close is not None:
            prepared.close()
