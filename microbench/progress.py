"""Progress of a run: a bar on a terminal, one line per finished case elsewhere (CI logs, ``| tee``).

No thread may run beside a measurement (docs/design.md: rich's refresh thread once turned a
0.7 ms case into 16 ms), so nothing here redraws by itself.  The bar is redrawn between cases and,
inside a long case, from :func:`microbench.harness.measure` between two samples (never inside one),
at most every :data:`REDRAW_S` seconds.
"""
from __future__ import annotations

import time

from rich.markup import escape

REDRAW_S = 0.5


class Progress:
    """``with Progress(err_console, total, quiet) as p: p.start(text); ...; p.done(outcome)``."""

    def __init__(self, console, total: int, quiet: bool = False):
        self.console, self.total, self.quiet = console, total, quiet
        self.tty = console.is_terminal
        self.finished = 0
        self._bar = self._task = None
        self._text = ""
        self._last = 0.0

    def __enter__(self):
        if self.tty and not self.quiet:
            from rich.progress import Progress as Bar
            self._bar = Bar(console=self.console, transient=True, auto_refresh=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("cases", total=self.total)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def start(self, text: str) -> None:
        """A case begins."""
        self._text = text
        if self._bar is not None:
            self._bar.update(self._task, description=escape(text), refresh=True)
            self._last = time.perf_counter()

    def note(self, text: str) -> None:
        """A stage of the run between cases (an interleaved round): shown on the bar, or one line."""
        if self._bar is not None:
            self._bar.update(self._task, description=escape(text), refresh=True)
            self._last = time.perf_counter()
        elif not self.quiet:
            self.console.print(escape(text), highlight=False, soft_wrap=True)

    def within(self, phase: str) -> None:
        """Inside a case, between two samples: ``phase`` is e.g. 'warm-up 0.1 s' or '40 samples'."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if now - self._last >= REDRAW_S:
            self._bar.update(self._task, description=escape(f"{self._text}: {phase}"), refresh=True)
            self._last = now

    def done(self, outcome) -> None:
        """A case finished: advance the bar, or print its line when not on a terminal."""
        from .report import fmt_time
        self.finished += 1
        if self._bar is not None:
            self._bar.advance(self._task)
            return
        if self.quiet:
            return
        if outcome.status == "ok":
            m = outcome.measurement
            what = f"{fmt_time(m.median)} (+-{100 * m.rel_noise:.1f}%, {m.n} samples)"
            from .contention import of
            cont = of(outcome.record or {})
            if cont["contended"]:
                what += f"; CONTENDED: {cont['why']}"
        else:
            what = f"{outcome.status}: {outcome.error}"
        width = len(str(self.total))
        self.console.print(escape(f"[{self.finished:>{width}}/{self.total}] {self._text}: {what}"),
                           highlight=False, soft_wrap=True)
        try:
            self.console.file.flush()
        except (AttributeError, OSError, ValueError):
            pass
