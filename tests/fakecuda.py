"""A stand-in for the slice of CuPy that the timing and stream code relies on, with CUDA's ordering
rules modelled on a simulated device clock, so ordering mistakes fail on a CPU-only machine.

What is modelled (CUDA runtime semantics, as CuPy exposes them):
- Every stream runs its work in order.  Work lasts a given number of device milliseconds and
  starts when the stream's previous work is done and every event it waits for has fired.
- The legacy default stream (``Stream.null``) is synchronous with every *blocking* stream: work on
  it starts after all earlier work of blocking streams, and work on a blocking stream starts after
  earlier work on the null stream.  A ``non_blocking=True`` stream does not synchronize with it.
- ``Event.record(stream)`` fires when the work queued on that stream so far is done (on the null
  stream: also the work of every blocking stream); ``stream.wait_event(e)`` delays later work on
  the stream until then; ``get_elapsed_time`` is the difference in milliseconds.
- Capture (``begin_capture``/``end_capture``) records the work issued to the capturing stream
  instead of running it; it is refused on the legacy stream, as CUDA refuses it.  A graph's
  ``launch(stream=None)`` queues the recorded work on the given stream, or the current one.
- Construction counts of streams and events, so tests can assert that no host object is made
  inside a timed call.

Array operations are NumPy's (the module falls back to ``numpy`` for every other attribute), which
is enough for code that is generic over the array module to run its orchestration on it.
"""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import numpy as np


class Device:
    """The simulated device: the streams that exist and a log of every piece of work."""

    def __init__(self):
        self.streams: list = []
        self.log: list = []          # (label, stream, start_ms, end_ms)
        self.counts = {"Stream": 0, "Event": 0}


class Stream:
    def __init__(self, non_blocking: bool = False, *, _null: bool = False, _dev: Device | None = None):
        self.dev = _dev or _current_device()
        self.non_blocking, self.is_null = non_blocking, _null
        self.clock = 0.0             # when the last work queued here is done
        self.waits = 0.0             # fired events that later work must wait for
        self.capture = None          # list of (label, ms) while capturing
        self.dev.streams.append(self)
        if not _null:
            self.dev.counts["Stream"] += 1

    # -- ordering --------------------------------------------------------------------------
    def _ready(self) -> float:
        t = max(self.clock, self.waits)
        if self.is_null:            # the legacy stream waits for every blocking stream
            t = max([t] + [s.clock for s in self.dev.streams if not s.non_blocking])
        elif not self.non_blocking:  # a blocking stream waits for the legacy stream
            t = max(t, _null_of(self.dev).clock)
        return t

    def enqueue(self, label: str, ms: float):
        if self.capture is not None:
            self.capture.append((label, ms))
            return
        start = self._ready()
        self.clock = start + ms
        self.dev.log.append((label, self, start, self.clock))

    def wait_event(self, event):
        if self.capture is not None:
            return
        self.waits = max(self.waits, event.time)

    def synchronize(self):
        pass

    # -- capture ---------------------------------------------------------------------------
    def begin_capture(self):
        if self.is_null:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: the legacy stream cannot capture")
        self.capture = []

    def end_capture(self):
        work, self.capture = self.capture, None
        return Graph(work)

    # -- current stream --------------------------------------------------------------------
    def __enter__(self):
        _STACK.append(self)
        return self

    def __exit__(self, *exc):
        _STACK.pop()

    @property
    def ptr(self):
        return 0 if self.is_null else id(self)


class Graph:
    def __init__(self, work):
        self.work = list(work)
        self.uploads = 0

    def launch(self, stream=None):
        stream = stream or get_current_stream()
        for label, ms in self.work:
            stream.enqueue(label, ms)

    def upload(self, stream=None):
        self.uploads += 1


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False):
        self.time = None
        self.disable_timing = disable_timing
        _current_device().counts["Event"] += 1

    def record(self, stream=None):
        stream = stream or get_current_stream()
        if stream.capture is not None:
            return
        self.time = stream._ready()

    def synchronize(self):
        if self.time is None:
            raise RuntimeError("cudaErrorInvalidResourceHandle: event never recorded")


def get_elapsed_time(start: Event, end: Event) -> float:
    if start.disable_timing or end.disable_timing:
        raise RuntimeError("cudaErrorInvalidResourceHandle: timing disabled on an event")
    return end.time - start.time


def kernel(ms: float, label: str = "kernel"):
    """Queue ``ms`` milliseconds of device work on the current stream."""
    get_current_stream().enqueue(label, ms)


class FakeArray(np.ndarray):
    """A NumPy array whose ``fill`` is device work on the current stream (the L2 flush)."""

    MS_PER_BYTE = 1e-9

    def fill(self, value):
        kernel(self.nbytes * self.MS_PER_BYTE, "fill")
        super().fill(value)


def empty(shape, dtype=np.float32):
    return np.empty(shape, dtype).view(FakeArray)


def get_current_stream():
    return _STACK[-1] if _STACK else _null_of(_current_device())


_STACK: list = []
_DEVICE = [Device()]


def _current_device() -> Device:
    return _DEVICE[0]


def _null_of(dev: Device) -> Stream:
    for s in dev.streams:
        if s.is_null:
            return s
    return Stream(_null=True, _dev=dev)


class _DeviceHandle:
    attributes = {"L2CacheSize": 50 << 20}

    def __init__(self, device=None):
        pass


def install(monkeypatch) -> types.ModuleType:
    """Put a fresh fake ``cupy`` (and ``cupy.cuda``) into ``sys.modules`` for one test."""
    _DEVICE[0] = Device()
    _STACK.clear()
    cuda = types.ModuleType("cupy.cuda")
    Stream.null = _null_of(_DEVICE[0])
    cuda.Stream, cuda.Event, cuda.Graph = Stream, Event, Graph
    cuda.get_current_stream, cuda.get_elapsed_time = get_current_stream, get_elapsed_time
    cuda.Device = _DeviceHandle
    mod = _NumpyFallback("cupy")
    mod.cuda, mod.empty, mod.kernel, mod.device = cuda, empty, kernel, _DEVICE[0]
    mod.float32 = np.float32
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    return mod


class _NumpyFallback(types.ModuleType):
    def __getattr__(self, name):
        return getattr(np, name)


@contextmanager
def no_new_host_objects(mod):
    """Fails the block if it constructs a stream or an event."""
    before = dict(mod.device.counts)
    yield
    made = {k: mod.device.counts[k] - before[k] for k in before if mod.device.counts[k] != before[k]}
    assert not made, f"host objects created inside the block: {made}"
