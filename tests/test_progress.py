"""Progress: one line per finished case off a terminal; on a terminal a bar redrawn between
samples, never by a thread and never inside a sample."""
from __future__ import annotations

import io
import threading

from rich.console import Console

from microbench.harness import Settings, measure
from microbench.progress import Progress
from microbench.stats import Measurement

TINY = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2",
        "--backend", "numpy"]


class _Outcome:
    def __init__(self, status="ok", samples=(1e-3, 1.1e-3), error=""):
        self.status, self.error = status, error
        self.measurement = Measurement(list(samples))


def test_piped_run_prints_a_line_per_finished_case(run_cli):
    r = run_cli("lstm", "--naive", "--fused", *TINY)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[1/2] lstm naive/numpy fp32: ")
    assert "samples)" in lines[1]


def test_measure_reports_between_samples_on_its_own_thread():
    state = {"inside": False, "calls": [], "threads": threading.active_count()}

    class Timer:
        name = "fake"

        def sample(self, fn):
            state["inside"] = True
            fn()
            state["inside"] = False
            return 1e-3

    def progress(text):
        assert not state["inside"] and threading.active_count() == state["threads"]
        state["calls"].append(text)

    measure(lambda: None, Settings(warmup=0.005, min_time=0.01, min_samples=12), Timer(), progress=progress)
    assert any(c.startswith("warm-up") for c in state["calls"])
    assert "12 samples, 0.0 of 0.01-20 s" in state["calls"]


def test_terminal_bar_starts_no_thread_and_redraws_within_a_case(monkeypatch):
    import microbench.progress as mp
    monkeypatch.setattr(mp, "REDRAW_S", 0.0)
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100)
    before = threading.active_count()
    with Progress(con, 2) as p:
        assert threading.active_count() == before
        p.start("lstm fused/numba fp32")
        p.within("40 samples, 0.4 of 1-20 s")
        p.done(_Outcome())
        p.start("lstm naive/numpy fp32")
        p.done(_Outcome("skipped", error="no GPU"))
    assert "40 samples" in buf.getvalue() and p.finished == 2
    quiet = io.StringIO()
    with Progress(Console(file=quiet), 1, quiet=True) as p:
        p.start("x")
        p.done(_Outcome())
    assert quiet.getvalue() == ""
    piped = io.StringIO()
    with Progress(Console(file=piped), 1) as p:
        p.start("conv direct/numba fp32")
        p.within("ignored off a terminal")
        p.done(_Outcome("failed", error="check failed"))
    assert piped.getvalue() == "[1/1] conv direct/numba fp32: failed: check failed\n"


def test_threads_beyond_the_usable_cpus_are_warned_about(run_cli, monkeypatch):
    from microbench import threads as mt
    n, _ = mt.usable_cpus()
    assert n >= 1
    assert mt.oversubscription_warning({None, 1}) is None
    w = mt.oversubscription_warning({1, n + 1, n + 3})
    assert w.startswith(f"--threads {n + 1},{n + 3}: more threads than the {n} CPU(s)")
    r = run_cli("lstm", "--fused", *TINY, "--threads", f"1,{n + 1}")
    assert r.returncode == 0, r.stderr
    assert f"warning: --threads {n + 1}: more threads than the {n} CPU(s)" in r.stderr
