"""Did a case's samples get their threads?  Readings taken while sampling, and the verdict.

A time measured while other processes held the cores is not the case's time: a thread pool that
spin-waits for a descheduled member (PyTorch's OpenMP threads by default, our step-loop team's
barrier) can take many times longer and still look steady (a small IQR).  So, as Google Benchmark
prints CPU time beside real time and pyperf warns with its reason, every measurement carries:

- per sample, the CPU time the whole process got (``time.process_time``, all threads) beside the
  sample's wall time: ``cpu_per_wall`` is their ratio (about the busy thread count when quiet);
- over the sampling loop, the time the process's threads spent *runnable but waiting for a core*
  (Linux ``/proc/self/task/*/schedstat``, second field: run-queue delay) against the time they
  ran: the direct evidence that other work took the cores.  Unlike CPU time over wall time it
  does not need to know how many threads the case keeps busy (a naive row runs one Python
  thread whatever ``--threads`` says; a waiting thread that sleeps is not runnable, so it is not
  counted);
- the 1-minute load average before and after, and the involuntary context switches of the
  process (``getrusage``).

:func:`judge` turns the readings into the record's ``contention`` object.  A case is contended when
its threads waited for a core at least :data:`WAIT_SHARE` of the time they wanted to run and, on
average, at least :data:`WAIT_PER_WALL` of a thread stood waiting during the samples; the time
the process wanted is capped at the usable CPUs, so a process whose own threads outnumber the
cores (waiting on each other) is not called contended for that.  Where the
run-queue delay cannot be read (not Linux, no schedstat) the verdict falls back to the load
average above the usable CPUs, and for a single-threaded case (``--threads 1``) to a CPU share
below :data:`CPU_SHARE` of the wall time.

Standard library only: framework workers under a foreign interpreter (MXNet's, with none of our
dependencies) take the same readings (:mod:`microbench.frameworks.looptime`).
"""
from __future__ import annotations

import os
import time

WAIT_SHARE = 0.10       # run-queue wait / (run + wait) of the process's threads
WAIT_PER_WALL = 0.10    # thread-seconds spent waiting for a core per second of sampling
CPU_SHARE = 0.70        # fallback for --threads 1: CPU seconds per wall second below this
LOAD_MARGIN = 0.5       # fallback: load average above the usable CPUs by more than this

NOT_MEASURED = "not measured"


def cpu_time() -> float:
    """CPU seconds this process has used, all its threads (CLOCK_PROCESS_CPUTIME_ID)."""
    return time.process_time()


def load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def involuntary_switches() -> int | None:
    """Times the kernel took a core from a thread of this process that still wanted it."""
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw)
    except (ImportError, OSError, AttributeError):
        return None


def thread_sched() -> dict | None:
    """{thread id: (ns on a CPU, ns runnable but waiting for one)} of this process's threads, or
    None where the kernel does not say (not Linux, schedstat not compiled in)."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait = f.read().split()[:2]
            out[tid] = (int(run), int(wait))
        except (OSError, ValueError):
            continue          # a thread that ended between the listing and the read
    return out or None


class Probe:
    """Readings over one sampling loop: create it just before the first sample and call
    :meth:`stop` after the last (the per-sample CPU times are read around each sample by the
    loop itself, outside its timer)."""

    def __init__(self):
        self.load_before = load1()
        self._switches = involuntary_switches()
        self._sched = thread_sched()
        self._t0 = time.perf_counter()

    def stop(self) -> dict:
        span = time.perf_counter() - self._t0
        after = thread_sched()
        run = wait = None
        if self._sched is not None and after is not None:
            run = wait = 0
            for tid, (r, w) in after.items():
                r0, w0 = self._sched.get(tid, (0, 0))    # a thread started meanwhile: all of it
                if r >= r0 and w >= w0:
                    run, wait = run + r - r0, wait + w - w0
            run, wait = run / 1e9, wait / 1e9
        switches = involuntary_switches()
        return {"span_s": span, "run_s": run, "wait_s": wait,
                "preempted": (switches - self._switches) if None not in (switches, self._switches) else None,
                "load_before": self.load_before, "load_after": load1()}


def merge(readings: list) -> dict | None:
    """One reading of several sampling loops of a case (interleaved rounds): times summed, the
    first load before and the last load after."""
    readings = [r for r in readings if isinstance(r, dict)]
    if not readings:
        return None
    out = {"load_before": readings[0].get("load_before"), "load_after": readings[-1].get("load_after")}
    for k in ("span_s", "run_s", "wait_s", "preempted"):
        vals = [r.get(k) for r in readings]
        out[k] = None if any(v is None for v in vals) else sum(vals)
    return out


def judge(readings: dict | None, samples: list, cpu_s: list | None, *, threads: int | None,
          usable: int | None) -> dict:
    """The record's ``contention`` object: contended, why, cpu_per_wall, threads, load_before,
    load_after (the published contract), plus wait_share (of the CPU time the threads wanted, up
    to the usable CPUs, the share they waited for), wait_per_wall (thread-seconds lost to waiting
    per second), runnable_threads (run + wait over the sampling time), preempted, usable."""
    r = readings or {}
    wall = sum(samples or ())
    cpu_per_wall = (sum(cpu_s) / wall) if cpu_s and wall > 0 and len(cpu_s) == len(samples) else None
    out = {"contended": False, "why": "", "cpu_per_wall": _round(cpu_per_wall), "threads": threads,
           "load_before": r.get("load_before"), "load_after": r.get("load_after"),
           "wait_share": None, "wait_per_wall": None, "preempted": r.get("preempted"), "usable": usable}
    if readings is None and cpu_per_wall is None:
        out["why"] = NOT_MEASURED
        return out
    run, wait, span = r.get("run_s"), r.get("wait_s"), r.get("span_s")
    load = max((v for v in (out["load_before"], out["load_after"]) if v is not None), default=None)
    busy = (f"; load average {load:.1f} on {usable} usable CPU(s)"
            if load is not None and usable and load > usable + LOAD_MARGIN else "")
    if run is not None and wait is not None and span:
        # The cores the process wanted (its threads ran or stood runnable), at most the usable
        # ones, against the cores it got: a process whose own threads outnumber the cores waits
        # on itself, which is its own behaviour, not other processes' doing.
        wanted = (run + wait) / span
        want = min(wanted, usable) if usable else wanted
        lost = max(want - run / span, 0.0)
        share = lost / want if want > 0 else 0.0
        out["wait_share"], out["wait_per_wall"] = _round(share), _round(lost)
        out["runnable_threads"] = _round(wanted)
        if share >= WAIT_SHARE and lost >= WAIT_PER_WALL:
            out["contended"] = True
            out["why"] = (f"its threads waited for a core {100 * share:.0f}% of the time they were "
                          f"runnable ({lost:.2f} thread-seconds per second of sampling): other "
                          f"processes held the CPUs{busy}")
        return out
    # no run-queue delay here: the load average, and for one thread its CPU share
    if busy:
        out["contended"] = True
        out["why"] = busy[2:] + " (run-queue wait not readable here)"
    elif threads == 1 and cpu_per_wall is not None and cpu_per_wall < CPU_SHARE:
        out["contended"] = True
        out["why"] = (f"its one thread got {cpu_per_wall:.2f} CPU-seconds per second of its samples "
                      "(run-queue wait not readable here)")
    return out


def _round(v):
    return None if v is None else round(float(v), 4)


def of(rec: dict) -> dict:
    """A record's contention object; older records (none stored) read as not contended, "not
    measured"."""
    c = rec.get("contention") if isinstance(rec, dict) else None
    if isinstance(c, dict) and isinstance(c.get("contended"), bool):
        return c
    return {"contended": False, "why": NOT_MEASURED, "cpu_per_wall": None, "threads": None,
            "load_before": None, "load_after": None}


def contended(rec: dict) -> bool:
    return bool(of(rec)["contended"])


ROUNDS_NOTE = ("--rounds does not help here: it spreads a slow phase over every row, but cannot "
               "give a row the cores other processes hold")


def advice(rec: dict) -> str:
    """What helps a contended row, by what ran it (one sentence)."""
    info = rec.get("info") if isinstance(rec.get("info"), dict) else {}
    worker = info.get("worker") if isinstance(info.get("worker"), dict) else {}
    policy = (worker.get("env") or {}).get("OMP_WAIT_POLICY") if isinstance(worker.get("env"), dict) else None
    quiet = "rerun it when the machine is quiet (other processes off the cores)"
    if rec.get("framework"):
        if str(policy or "").upper() != "PASSIVE":
            return (f"{quiet}, or set MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY=1 so the framework's "
                    "worker runs with OMP_WAIT_POLICY=PASSIVE (its OpenMP threads then sleep instead "
                    "of spin-waiting for a descheduled thread)")
        return f"{quiet}, or give it fewer threads than the free cores (--threads)"
    return f"{quiet}, or give it fewer threads than the free cores (--threads)"


def summary(records: list) -> str:
    """One warning for the contended records of a run ('' when none): how many, the first one's
    reason, and what helps (never --rounds)."""
    timed = [r for r in records if isinstance(r, dict) and r.get("status") == "ok"]
    hit = [r for r in timed if contended(r)]
    if not hit:
        return ""
    first = hit[0]
    adv = dict.fromkeys(advice(r) for r in hit)
    return (f"{len(hit)} of {len(timed)} timed case(s) did not get their threads and are marked "
            f"contended (!), not comparable with other rows: {first.get('label')} {of(first)['why']}. "
            f"What helps: {'; for framework rows: '.join(adv) if len(adv) > 1 else next(iter(adv))}; "
            f"{ROUNDS_NOTE}")
