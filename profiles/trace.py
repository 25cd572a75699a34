"""Kernel traces: the record model, the reference-file format, name demangling, and capture.

A :class:`Trace` is one call of one implementation: every kernel, memcpy and memset it put on
the GPU, with start/end in ns, stream, grid, block and the NVTX range path it was launched from.
The JSON layout is the one of ``profiles/reference/*.json``:
``{"env": {...}, "traces": [{"label", "meta", "wall_ns", "records": [...]}]}``.

:func:`capture` records a trace in-process: with cupti-python's activity API when it is
installed, else with ``torch.profiler`` (no grid, block or NVTX path there), else it raises
:class:`~kernels.errors.MissingDependency`.  Nothing here is imported or hooked until a capture
is asked for, so the cost when tracing is off is zero.  ``wall_ns`` of a captured trace is
*traced* wall time: CUPTI inflates it several-fold, so measure wall time in an untraced run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from kernels.errors import BadInput, MissingDependency

# "primitive": one oneDNN primitive execution on the CPU, parsed from oneDNN's verbose log
# (profiles.onednn_trace): name is the primitive kind, impl/prop/formats/shape say the rest.
KINDS = ("kernel", "memcpy", "memset", "primitive")


@dataclasses.dataclass(frozen=True)
class KernelRecord:
    """One GPU activity. ``name`` is the raw (often mangled) name; memcpy/memset get ``[memcpy]``."""
    kind: str
    name: str
    start_ns: int
    end_ns: int
    stream: int = -1
    grid: tuple[int, int, int] = (0, 0, 0)
    block: tuple[int, int, int] = (0, 0, 0)
    nvtx: str = ""          # innermost range path at launch, e.g. "lstm/fused/cupy/step"
    bytes: int = 0          # memcpy/memset only
    impl: str = ""          # primitive only: implementation, e.g. "brgemm:avx2", "ref:any"
    prop: str = ""          # primitive only: propagation kind, e.g. "forward_inference"
    formats: str = ""       # primitive only: "src_layer:f32 abc, wei_layer:f32 abdEc16e, ..."
    shape: str = ""         # primitive only: oneDNN's problem description, e.g. "l1t100mb64..."
    engine: str = ""        # primitive only: "cpu"

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def short(self) -> str:
        return short_name(self.name)

    @classmethod
    def from_dict(cls, d: dict) -> "KernelRecord":
        """A record from its JSON object (untrusted: every field typed and bounded, ValueError
        naming the field otherwise)."""
        kind = d.get("kind", "kernel")
        if kind not in KINDS:
            raise BadInput(f"record kind {_shown(kind)} is unknown; allowed: {', '.join(KINDS)}")
        dims = {}
        for key in ("grid", "block"):
            v = d.get(key, (0, 0, 0))
            if not isinstance(v, (list, tuple)) or len(v) != 3:
                raise ValueError(f"{key} is {_shown(v)}, not 3 integers")
            dims[key] = tuple(_int(x, key, 0, 2**31 - 1) for x in v)
        rec = cls(kind=kind, name=_str(d.get("name") or f"[{kind}]", "name", MAX_NAME),
                  start_ns=_int(d["start_ns"], "start_ns"), end_ns=_int(d["end_ns"], "end_ns"),
                  stream=_int(d.get("stream", -1), "stream", -1), **dims,
                  nvtx=_str(d.get("nvtx", ""), "nvtx", MAX_NAME), bytes=_int(d.get("bytes", 0), "bytes"),
                  **{k: _str(d.get(k, ""), k, MAX_NAME) for k in _PRIMITIVE_FIELDS})
        if rec.end_ns < rec.start_ns:
            raise ValueError(f"record {_shown(rec.name)} ends before it starts")
        return rec

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "start_ns": self.start_ns,
             "end_ns": self.end_ns, "stream": self.stream}
        if self.kind == "kernel":
            d.update(grid=list(self.grid), block=list(self.block))
        elif self.kind == "primitive":
            d.update({k: getattr(self, k) for k in _PRIMITIVE_FIELDS})
        else:
            d["bytes"] = self.bytes
        if self.nvtx:
            d["nvtx"] = self.nvtx
        return d


_PRIMITIVE_FIELDS = ("impl", "prop", "formats", "shape", "engine")

# Bounds on what a trace file may hold (names of real kernels stay under a few hundred characters)
MAX_NAME = 4096
MAX_LABEL = 200
MAX_FILE_BYTES = 64 * 2**20
INT_MAX = 2**63 - 1


def _shown(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def _int(v, what: str, lo: int = 0, hi: int = INT_MAX) -> int:
    """An integer field of a trace file: an integer (or its decimal text) within [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (isinstance(v, str) and len(v) > 20):
        raise ValueError(f"{what} is {_shown(v)}, not an integer")
    try:
        n = int(v)
    except (ValueError, OverflowError):
        raise ValueError(f"{what} is {_shown(v)}, not an integer") from None
    if not lo <= n <= hi:
        raise ValueError(f"{what} {_shown(n)} is out of range ({lo}..{hi})")
    return n


def _str(v, what: str, limit: int) -> str:
    text = str(v) if isinstance(v, (str, int, float)) else None
    if text is None:
        raise ValueError(f"{what} is {_shown(v)}, not a string")
    if len(text) > limit:
        raise ValueError(f"{what} is {len(text)} characters long (at most {limit})")
    return text


@dataclasses.dataclass
class Trace:
    """One traced call of one implementation; ``meta`` holds op, framework, path, shape, dtype."""
    label: str
    records: list[KernelRecord]
    meta: dict = dataclasses.field(default_factory=dict)
    wall_ns: int | None = None      # traced wall time: inflated by the tracer
    source: str = "cupti"           # cupti | torch.profiler | reference file name

    @property
    def kernels(self) -> list[KernelRecord]:
        return [r for r in self.records if r.kind == "kernel"]

    def to_dict(self) -> dict:
        return {"label": self.label, "meta": self.meta, "wall_ns": self.wall_ns,
                "records": [r.to_dict() for r in self.records]}


# -- reference-file format ---------------------------------------------------------------------

def load(path: str | Path, raw: bytes | None = None) -> tuple[dict, list[Trace]]:
    """``(env, traces)`` from a JSON file in the reference layout.  ``raw``: the file's bytes,
    already read by the caller (the command line opens user paths safely: microbench.files)."""
    if raw is None:
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise BadInput(f"trace file {str(path)!r} does not exist") from None
        except OSError as e:
            raise BadInput(f"trace file {str(path)!r} cannot be read: {e.strerror or e}") from None
    from kernels import untrusted
    path = Path(path)
    expected = "expected an object with 'env' and 'traces' (profiles/reference format)"
    if len(raw) > MAX_FILE_BYTES:
        raise BadInput(f"trace file {str(path)!r} is larger than {MAX_FILE_BYTES // 2**20} MiB; {expected}")
    try:   # untrusted input: bounded integers and nesting, no lone surrogates (kernels.untrusted)
        data = untrusted.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput(f"trace file {str(path)!r} is not JSON; {expected}") from None
    except untrusted.Untrusted as e:
        raise BadInput(f"trace file {str(path)!r} cannot be used: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("traces"), list) \
            or not isinstance(data.get("env", {}), dict):
        raise BadInput(f"trace file {str(path)!r} is not a trace file; {expected}")
    traces = []
    for i, t in enumerate(data["traces"]):
        try:   # untrusted input: any missing key or wrong type is one error naming the trace
            _check_meta(dict(t.get("meta", {})))
            if not t["records"]:
                raise ValueError("it has no records")
            traces.append(Trace(label=_str(t["label"], "label", MAX_LABEL), meta=dict(t.get("meta", {})),
                                wall_ns=None if t.get("wall_ns") is None else _int(t["wall_ns"], "wall_ns"),
                                records=[KernelRecord.from_dict(r) for r in t["records"]],
                                source=path.name))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise BadInput(f"trace file {str(path)!r}: trace {i} is not in the reference format "
                           f"({what})") from None
    return dict(data.get("env", {})), traces


def _check_meta(meta: dict) -> None:
    """The meta fields the analysis reads have the types it expects (ValueError otherwise)."""
    for k, v in meta.items():
        if not isinstance(k, str) or len(k) > MAX_LABEL:
            raise ValueError(f"meta has a key {_shown(k)}")
        if k in ("op", "framework", "path", "dtype") and not isinstance(v, str):
            raise ValueError(f"meta.{k} is {_shown(v)}, not a string")
        if isinstance(v, str) and len(v) > MAX_LABEL:
            raise ValueError(f"meta.{k} is {len(v)} characters long (at most {MAX_LABEL})")
        if k in ("T", "B", "H", "I", "L", "steps") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"meta.{k} is {_shown(v)}, not a positive integer")
        if not isinstance(v, (str, int, float, bool)) and v is not None:
            raise ValueError(f"meta.{k} is {_shown(v)}, not a string or a number")


def dump(traces: Iterable[Trace], path: str | Path, env: dict) -> None:
    """Write traces in the reference layout (so a new GPU's traces can be committed as-is)."""
    Path(path).write_text(json.dumps({"env": env, "traces": [t.to_dict() for t in traces]},
                                     indent=1))


def select(traces: list[Trace], labels: Iterable[str]) -> list[Trace]:
    """The traces with these labels, in the given order; an unknown label raises BadInput."""
    by_label = {t.label: t for t in traces}
    out = []
    for lab in labels:
        if lab not in by_label:
            raise BadInput(f"no trace labelled {lab!r}; recorded: {', '.join(by_label)}")
        out.append(by_label[lab])
    return out


# -- names -------------------------------------------------------------------------------------

_LENGTH = re.compile(r"\d{1,9}(?!\d)")


def _fallback_parts(name: str) -> tuple[list[str], bool]:
    """Scope parts of an Itanium-mangled name and whether template arguments follow.

    Enough for kernel names (``_Z15elemWiseRNNcellI...``, ``_ZN2at6native...kernelI...``);
    anything it does not understand ends the scan, so at worst the name comes out shorter.
    """
    i, parts = 2, []
    if name.startswith("L", i):                       # internal linkage
        i += 1
    nested = name.startswith("N", i)
    if nested:
        i += 1
        while i < len(name) and name[i] in "KVr":     # cv-qualifiers of a member function
            i += 1
    while i < len(name):
        if name.startswith("St", i):
            parts.append("std")
            i += 2
            continue
        m = _LENGTH.match(name, i)      # at most 9 digits: a longer "length" is not a name
        if not m:
            break
        n, j = int(m.group()), i + len(m.group())
        ident = name[j:j + n]
        parts.append("(anonymous)" if ident.startswith("_GLOBAL__N") else ident)
        i = j + n
        if not nested:
            break
    return parts, name.startswith("I", i)


def short_name(name: str) -> str:
    """A readable kernel name: demangled (``cxxfilt`` if installed), no return type or arguments."""
    if not name.startswith("_Z"):
        return name
    try:
        import cxxfilt
        full = cxxfilt.demangle(name)
    except Exception:  # not installed, or a name it rejects: use the small parser
        parts, templated = _fallback_parts(name)
        return "::".join(parts) + ("<...>" if templated else "") if parts else name
    depth = 0
    for k, ch in enumerate(full):                     # cut the argument list at depth 0
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            full = full[:k]
            break
    return full[5:] if full.startswith("void ") else full


def base_name(name: str) -> str:
    """The innermost identifier, no scope or template: ``elemWiseRNNcell``, ``lstm_cell_forward``."""
    if name.startswith("_Z"):
        parts, _ = _fallback_parts(name)
        if parts:
            return parts[-1]
    if name.startswith("void "):                      # demangled, as nsys and ncu print them
        name = name[5:]
    return re.split(r"[<(]", name, maxsplit=1)[0].split("::")[-1]


# -- NVTX attribution --------------------------------------------------------------------------

class RangeLog:
    """Push/pop ranges with timestamps from ``clock`` (the tracer's clock), closed as paths."""

    def __init__(self, clock: Callable[[], int]):
        self.clock = clock
        self.stack: list[tuple[str, int]] = []
        self.closed: list[tuple[int, int, str]] = []   # (start, end, "op/variant/backend/...")

    def push(self, name: str) -> None:
        self.stack.append((name, self.clock()))

    def pop(self) -> None:
        if not self.stack:            # a range opened before the capture began: not ours
            return
        path = "/".join(n for n, _ in self.stack)
        _, t0 = self.stack.pop()
        self.closed.append((t0, self.clock(), path))


def range_at(ranges: list[tuple[int, int, str]], t: int) -> str:
    """Innermost range path containing host time ``t`` (the deepest one); '' if none."""
    best = None                      # nested ranges open later: the latest start is innermost
    for t0, t1, path in ranges:
        if t0 <= t <= t1 and (best is None or (t0, len(path)) > (best[0], len(best[1]))):
            best = (t0, path)
    return best[1] if best else ""


@contextlib.contextmanager
def _log_ranges(clock: Callable[[], int]):
    """While capturing, also log the ranges :mod:`kernels.nvtx` pushes (it keeps pushing to NVTX).

    kernels.nvtx looks its push/pop functions up on each range, so swapping them for the
    capture's duration is enough; they are put back even if the traced call raises.
    """
    from kernels import nvtx
    push, pop = nvtx._load()
    log = RangeLog(clock)

    def _push(name):
        log.push(name)
        push(name)

    def _pop():
        pop()
        log.pop()

    nvtx._push, nvtx._pop = _push, _pop
    try:
        with nvtx.forced_on():        # the trace attributes kernels to ranges: push them
            yield log
    finally:
        nvtx._push, nvtx._pop = push, pop


# -- capture -----------------------------------------------------------------------------------

def _default_sync() -> None:
    """Wait for the GPU with whichever array library the process already loaded."""
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.runtime.deviceSynchronize()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.synchronize()


def from_cupti(activities: Iterable[Any], kind_enum: Any) -> tuple[list[KernelRecord], dict]:
    """Activity objects from cupti-python -> (records, {correlation id: host launch time}).

    Only attributes the CUPTI records carry are read, so tests can pass plain namespaces.
    """
    kernel_kinds = {int(kind_enum.CONCURRENT_KERNEL)}
    if hasattr(kind_enum, "KERNEL"):
        kernel_kinds.add(int(kind_enum.KERNEL))
    api_kinds = {int(kind_enum.RUNTIME), int(kind_enum.DRIVER)}
    records, launch = [], {}
    for a in activities:
        k = int(a.kind)
        if k in kernel_kinds:
            r = KernelRecord("kernel", a.name, int(a.start), int(a.end), int(a.stream_id),
                             (a.grid_x, a.grid_y, a.grid_z), (a.block_x, a.block_y, a.block_z))
        elif k in (int(kind_enum.MEMCPY), int(kind_enum.MEMSET)):
            kind = "memcpy" if k == int(kind_enum.MEMCPY) else "memset"
            r = KernelRecord(kind, f"[{kind}]", int(a.start), int(a.end), int(a.stream_id),
                             bytes=int(a.bytes))
        elif k in api_kinds:
            launch[int(a.correlation_id)] = int(a.start)
            continue
        else:
            continue
        records.append((int(a.correlation_id), r))
    return records, launch


def _finish(pairs, launch, ranges, t0, t1, label, meta, source) -> Trace:
    """Attribute ranges, sort, make times relative to the first record (as the reference is)."""
    recs = []
    for corr, r in pairs:
        t = launch.get(corr)
        path = range_at(ranges, t) if t is not None else ""
        recs.append(dataclasses.replace(r, nvtx=path))
    recs.sort(key=lambda r: r.start_ns)
    base = recs[0].start_ns if recs else 0
    recs = [dataclasses.replace(r, start_ns=r.start_ns - base, end_ns=r.end_ns - base) for r in recs]
    return Trace(label=label, records=recs, meta=dict(meta or {}), wall_ns=t1 - t0, source=source)


def _capture_cupti(cupti, fn, sync, label, meta) -> Trace:
    K = cupti.ActivityKind
    kinds = [K.CONCURRENT_KERNEL, K.MEMCPY, K.MEMSET, K.RUNTIME, K.DRIVER]
    acts: list = []

    def requested():
        return 8 * 1024 * 1024, 0           # buffer bytes, max records (0: as many as fit)

    def completed(activities):
        pairs, launch = from_cupti(activities, K)
        acts.append((pairs, launch))         # converted now: CUPTI reuses the buffer

    cupti.activity_register_callbacks(requested, completed)
    enabled = []
    try:
        for k in kinds:
            cupti.activity_enable(k)
            enabled.append(k)
        with _log_ranges(cupti.get_timestamp) as log:
            t0 = cupti.get_timestamp()
            fn()
            sync()
            t1 = cupti.get_timestamp()
        cupti.activity_flush_all(1)
    finally:
        for k in enabled:
            cupti.activity_disable(k)
    pairs = [p for ps, _ in acts for p in ps]
    launch = {c: t for _, ls in acts for c, t in ls.items()}
    return _finish(pairs, launch, log.closed, t0, t1, label, meta, "cupti")


def _capture_torch(torch, fn, sync, label, meta) -> Trace:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter_ns()
        fn()
        sync()
        t1 = time.perf_counter_ns()
    pairs = []
    for ev in prof.events():
        if ev.device_type != DeviceType.CUDA:
            continue
        low = ev.name.lower()
        kind = "memcpy" if "memcpy" in low else "memset" if "memset" in low else "kernel"
        rec = KernelRecord(kind, ev.name, int(ev.time_range.start * 1000),
                           int(ev.time_range.end * 1000),
                           int(getattr(ev, "device_resource_id", -1) or -1))
        pairs.append((None, rec))
    return _finish(pairs, {}, [], t0, t1, label, meta, "torch.profiler")


def capture(fn: Callable[[], Any], *, label: str = "trace", meta: dict | None = None,
            sync: Callable[[], None] | None = None) -> Trace:
    """Run ``fn()`` once and return its :class:`Trace` (warm it up before: this is one call).

    ``sync`` must wait for the GPU; by default CuPy's or torch's, whichever is loaded.
    """
    sync = sync or _default_sync
    try:
        from cupti import cupti
    except ImportError:
        cupti = None
    if cupti is not None:
        return _capture_cupti(cupti, fn, sync, label, meta)
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        return _capture_torch(torch, fn, sync, label, meta)
    raise MissingDependency("cupti-python", "kernel traces",
                            "install it (pip install cupti-python) on a machine with an NVIDIA "
                            "GPU, or torch with CUDA for the torch.profiler fallback")
