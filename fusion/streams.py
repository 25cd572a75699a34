"""Streams and events for the ``streams``, ``wavefront`` and ``graph`` steps, over any array module.

The step loop in :mod:`kernels.recurrent` issues work as ``launch(stream, fn)`` and orders it with
``record``/``wait``; three schedulers implement that:

- :class:`SerialStreams` (NumPy): runs each ``fn`` at once.  Program order respects every
  event, so it is always a valid schedule; the events are free.
- :class:`CupyStreams` (GPU): one CUDA stream per key, events between them; work on different
  streams overlaps on the device.
- :class:`DeferredStreams` (tests): queues the work and runs it in a *random* order that keeps
  only what the streams and events promise (order within a stream, waits across streams).  A
  missing ``wait`` then shows up as a wrong result on the CPU, where no GPU is needed to find it.
"""
from __future__ import annotations

import random


class SerialStreams:
    def begin(self):
        pass

    def stream(self, key):
        return key

    def launch(self, stream, fn):
        fn()

    def record(self, stream):
        return None

    def wait(self, stream, event):
        pass

    def join(self, main, streams):
        pass


class CupyStreams:
    """CUDA streams and events, made once and reused: a built RNN keeps one scheduler, so a timed
    call creates no stream and, after its first call, no event (host work the samples would
    otherwise include).  Reusing an event across calls is safe: ``cudaStreamWaitEvent`` waits for
    the record that was current when the wait was issued, and every wait of one call is issued
    before the next call records again."""

    def __init__(self, cupy):
        self.cp = cupy
        self._streams = {}
        self._events: list = []
        self._next = 0

    def begin(self):
        """A new call: the events of the previous call may be recorded again."""
        self._next = 0

    def stream(self, key):
        if key == "main":
            return self.cp.cuda.get_current_stream()
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = self.cp.cuda.Stream(non_blocking=True)
        return s

    def launch(self, stream, fn):
        with stream:
            fn()

    def record(self, stream):
        if self._next == len(self._events):
            self._events.append(self.cp.cuda.Event(block=False, disable_timing=True))
        e = self._events[self._next]
        self._next += 1
        e.record(stream)
        return e

    def wait(self, stream, event):
        if event is not None and stream is not None:
            stream.wait_event(event)

    def join(self, main, streams):
        """Make ``main`` wait for every other stream: the caller sees one finished call."""
        for s in streams:
            if s is not main:
                self.wait(main, self.record(s))


class DeferredStreams:
    """A test scheduler: work runs at ``join`` in a random order consistent with the events."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.queues: dict = {}       # stream -> list of (fn, waits)
        self.pending_waits: dict = {}
        self.done: set = set()
        self.executed: list = []

    def begin(self):
        pass

    def stream(self, key):
        self.queues.setdefault(key, [])
        return key

    def launch(self, stream, fn):
        waits = self.pending_waits.pop(stream, [])
        self.queues.setdefault(stream, []).append((fn, waits))

    def record(self, stream):
        # an event = "everything launched on this stream so far has run"
        return (stream, len(self.queues.setdefault(stream, [])))

    def wait(self, stream, event):
        if event is not None:
            self.pending_waits.setdefault(stream, []).append(event)

    def _ran(self, event) -> bool:
        stream, count = event
        return self.heads.get(stream, 0) >= count

    def join(self, main, streams):
        self.heads = {s: 0 for s in self.queues}
        while True:
            ready = [s for s, q in self.queues.items()
                     if self.heads[s] < len(q) and all(self._ran(e) for e in q[self.heads[s]][1])]
            if not ready:
                break
            s = self.rng.choice(ready)
            fn, _ = self.queues[s][self.heads[s]]
            fn()
            self.executed.append(s)
            self.heads[s] += 1
        left = {s: len(q) - self.heads[s] for s, q in self.queues.items() if self.heads[s] < len(q)}
        self.queues, self.pending_waits = {}, {}
        if left:
            raise RuntimeError(f"deadlock: work left on streams {left}")


def for_module(xp):
    return CupyStreams(xp) if xp.__name__ == "cupy" else SerialStreams()
