"""oneDNN primitive traces: capture of oneDNN's verbose log, its parser, and classification.

The CPU's counterpart of a CUPTI kernel trace.  With verbose mode on, oneDNN prints one line per
executed primitive: kind (``rnn``, ``reorder``, ``convolution``, ``matmul``, ...),
implementation (``brgemm:avx2``, ``jit:avx512_core``, ``ref:any``), propagation kind, memory
descriptors (data type and layout of every argument), problem description and time in ms.
:func:`parse` turns such a log into :class:`profiles.trace.KernelRecord` records of kind
``primitive`` (name = primitive kind; ``impl``, ``prop``, ``formats``, ``shape`` filled), grouped
in a :class:`profiles.trace.Trace`, so the same analysis code reads GPU and CPU traces.

Who reads which switch (checked on the libraries the project pins, not assumed):

- oneDNN 3.x (our ``onednn-cpu-gomp`` 3.2; PyTorch 2.13's 3.12; TensorFlow 2.21's):
  ``ONEDNN_VERBOSE`` (and ``DNNL_VERBOSE``); our library also at run time through
  ``dnnl_set_verbose``.  Lines start ``onednn_verbose,``; 3.12 adds a format version (``v1``)
  and the word ``primitive`` before the event.
- MXNet 1.9.1 bundles oneDNN **2.4.4**, which reads ``DNNL_VERBOSE`` or ``MKLDNN_VERBOSE`` and
  ignores ``ONEDNN_VERBOSE``; its lines start ``dnnl_verbose,`` and name memory descriptors
  ``src_f32::blocked:abcd:f0`` instead of ``src:f32::blocked:abcd::f0``.
- JAX (XLA:CPU) does not use oneDNN for these layers: there is no log to read.

The parser is tolerant by design: a log is program output that can be cut off (a killed worker,
a full disk) or interleaved with other prints; lines it does not understand are counted in
``Parsed.skipped``, never raised, and a truncated last line is dropped and reported.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import sys
import tempfile
from typing import Callable

from profiles import trace as tr

PREFIXES = ("onednn_verbose", "dnnl_verbose", "mkldnn_verbose")
VERBOSE_ENV = {"ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1", "MKLDNN_VERBOSE": "1"}
BEGIN, END = "microbench-trace-begin", "microbench-trace-end"

# primitive kind -> class, and why: what the class means for the convergence story
CLASSES = {
    "rnn": ("fused_rnn", "oneDNN's fused RNN primitive: the whole layer in one call (converged)"),
    "matmul": ("gemm", "a GEMM per call: the generic path issues these step by step"),
    "inner_product": ("gemm", "a GEMM per call: the generic path issues these step by step"),
    "gemm": ("gemm", "a GEMM per call"),
    "gemm_api": ("gemm", "oneDNN's BLAS-like dnnl_sgemm, called per GEMM (TensorFlow's MatMul)"),
    "reorder": ("reorder", "layout conversion: overhead around the compute primitive"),
    "convolution": ("conv", "oneDNN's convolution primitive"),
    "deconvolution": ("conv", "oneDNN's (de)convolution primitive"),
    "eltwise": ("pointwise", "element-wise math (activations)"),
    "binary": ("pointwise", "element-wise math (add, mul)"),
    "sum": ("pointwise", "element-wise sum"),
    "softmax": ("pointwise", "softmax"),
    "concat": ("copy", "concatenation"),
}
PRIMITIVE_CLASSES = ("fused_rnn", "gemm", "reorder", "conv", "pointwise", "copy", "other")


def classify_primitive(kind: str) -> str:
    return CLASSES.get(kind, ("other", ""))[0]


@dataclasses.dataclass
class Parsed:
    """What a log held: the primitive executions, the library version, and what was left out."""
    records: list
    version: str = ""             # "3.2.0", from the info line, when the log has one
    isa: str = ""
    created: int = 0              # primitive creations seen (create:cache_miss / _hit)
    skipped: int = 0              # lines that were not oneDNN's or could not be read
    truncated: bool = False       # the last verbose line was cut off
    text: str = ""                # the log parsed (kept so a capture can be saved as a fixture)

    def trace(self, label: str, meta: dict | None = None) -> tr.Trace:
        m = dict(meta or {})
        if self.version:
            m.setdefault("onednn", self.version)
        if self.isa:
            m.setdefault("isa", self.isa)
        wall = self.records[-1].end_ns - self.records[0].start_ns if self.records else 0
        return tr.Trace(label=label, records=list(self.records), meta=m, wall_ns=wall,
                        source="onednn verbose")


_FLOAT = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
_MD = re.compile(r"^(?P<arg>[a-z_]+?)(?:_|:)(?P<dt>f32|bf16|f16|f64|s32|s8|u8|undef|boolean)"
                 r"(?::[^:]*)?:(?P<kind>blocked|any|opaque|wino|rnn_packed|sparse|undef)"
                 r":(?P<tag>[A-Za-z0-9]+)")


def _formats(text: str) -> str:
    """'src:f32 abc, wei_layer:f32 abdEc16e, ...': argument, data type and layout of each md."""
    out = []
    for item in text.split():
        m = _MD.match(item)
        if m:
            out.append(f"{m['arg']}:{m['dt']} {m['tag'] if m['kind'] == 'blocked' else m['kind']}")
    return ", ".join(out)


def _ns(ms: str) -> int:
    """'1796123704777.586914' (ms) -> integer ns, exactly (a float would round at 1e18)."""
    from decimal import Decimal
    return int(Decimal(ms.strip()) * 1_000_000)


def _is_time(s: str) -> bool:
    return bool(_FLOAT.match(s.strip()))


def parse(text: str) -> Parsed:
    """Every ``exec`` line of a verbose log, as primitive records in order of execution.

    Times: a record lasts its reported exec time; with timestamps (``*_VERBOSE_TIMESTAMP=1``,
    taken when execution starts) it starts there, relative to the first record; otherwise records
    are laid end to end from 0.
    """
    out = Parsed([], text=text)
    lines = text.replace("\r", "").split("\n")
    complete = text.endswith("\n")
    t_next = 0
    base = None
    for n, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("#"):       # blank, or a comment a capture wrote
            continue
        last = n == len(lines) - 1
        if last and not complete:                  # cut off mid-line: whatever it was
            out.truncated = any(p in line for p in PREFIXES)
            out.skipped += not out.truncated
            continue
        f = line.split(",")
        if f[0] not in PREFIXES:
            if any(p in line for p in PREFIXES):
                out.skipped += 1            # a verbose line glued to other output
            elif line not in (BEGIN, END):
                out.skipped += 1
            continue
        i = 1
        if i < len(f) and re.fullmatch(r"v\d+", f[i]):        # 3.x format version
            i += 1
        stamp = None
        if i < len(f) and _is_time(f[i]):
            stamp = _ns(f[i])          # ms since the epoch: exact integer ns, no float rounding
            i += 1
        if i < len(f) and f[i] in ("primitive", "graph", "common", "ukernel"):
            if f[i] != "primitive" and f[i + 1:i + 2] != ["info"]:
                out.skipped += 1
                continue
            i += 1
        event = f[i] if i < len(f) else ""
        if event == "info":
            rest = ",".join(f[i + 1:])
            m = re.search(r"oneDNN v(\d+\.\d+\.\d+)", rest)
            if m:
                out.version = m.group(1)
            m = re.search(r"isa:(.+)$", rest)
            if m:
                out.isa = m.group(1).strip()
            continue
        if event.startswith("create"):
            out.created += 1
            continue
        if event != "exec":
            out.skipped += 1
            continue
        body = f[i + 1:]
        if len(body) < 7 or not _is_time(body[-1]):
            out.skipped += 1
            continue
        engine, kind, impl, prop, mds = body[0], body[1], body[2], body[3], body[4]
        ms = float(body[-1])
        dur = int(round(ms * 1e6))
        if stamp is not None:            # the timestamp (ms) is taken when execution starts
            start = stamp
            if base is None:
                base = start
            start -= base
            end = start + dur
        else:
            start, end = t_next, t_next + dur
        t_next = end
        out.records.append(tr.KernelRecord(
            "primitive", kind, start, end, impl=impl, prop=prop, formats=_formats(mds),
            shape=body[-2], engine=engine))
    return out


def between_markers(text: str) -> str:
    """The log between the last BEGIN marker and the END after it (all of it without markers);
    an END that never came (the worker died) leaves the rest of the log, cut where it stops."""
    k = text.rfind(BEGIN)
    if k < 0:
        return text
    text = text[k + len(BEGIN):].lstrip("\n")
    e = text.find(END)
    return text if e < 0 else text[:e]


# -- capture -------------------------------------------------------------------------------------

def _libc():
    return ctypes.CDLL(None)


@contextlib.contextmanager
def stdout_to_file(path: str):
    """File descriptor 1 (where oneDNN prints) goes to ``path`` inside the block; C stdio is
    flushed on both sides, so no line lands on the wrong side of the switch."""
    libc = _libc()
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 1)
        yield
    finally:
        sys.stdout.flush()
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(fd)


def capture_ours(run: Callable[[], object], calls: int = 1, lib=None) -> Parsed:
    """Run our oneDNN variant ``calls`` times with oneDNN's verbose mode on (``dnnl_set_verbose``)
    and parse what it printed.  Warm the variant up before: creation lines are not wanted."""
    from kernels.onednn.lib import load
    lib = lib or load()
    with tempfile.TemporaryDirectory(prefix="microbench-onednn-") as d:
        path = os.path.join(d, "verbose.log")
        with stdout_to_file(path):
            lib.set_verbose(1)
            try:
                for _ in range(calls):
                    run()
            finally:
                lib.set_verbose(0)
        with open(path, errors="replace") as f:
            out = parse(f.read())
    # oneDNN prints its info lines once per process: a second capture has none
    out.version = out.version or lib.version
    return out


@contextlib.contextmanager
def verbose_environment():
    """Workers started inside the block run with every oneDNN generation's verbose switch on."""
    saved = {k: os.environ.get(k) for k in VERBOSE_ENV}
    os.environ.update(VERBOSE_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def capture_worker(worker, calls: int = 1) -> Parsed:
    """The primitives a framework worker (started under :func:`verbose_environment`) executes in
    ``calls`` calls of its built layer: its log between the worker's trace markers."""
    worker.request({"cmd": "trace", "calls": int(calls)})
    with open(worker.path("stderr.log"), "rb") as f:
        text = f.read().decode(errors="replace")
    # oneDNN prints its info lines (version, ISA) once, before the markers: keep them in front
    info = [ln for ln in text[:max(text.rfind(BEGIN), 0)].splitlines()
            if ln.split(",", 1)[0] in PREFIXES and ",info," in ln]
    return parse("".join(ln + "\n" for ln in info) + between_markers(text))


# -- summaries ------------------------------------------------------------------------------------

@dataclasses.dataclass
class PrimitiveRow:
    """All executions of one (kind, implementation, prop) in one trace."""
    kind: str
    impl: str
    prop: str
    count: int
    total_ns: int
    formats: str = ""

    @property
    def cls(self) -> str:
        return classify_primitive(self.kind)


def summarize(trace: tr.Trace, calls: int = 1) -> list:
    """Rows per (kind, impl, prop) with count and time *per call*, largest time first.

    A trace of ``calls`` identical calls is cut into equal parts; each row's time is the median
    over the calls of its time in that call (one slow call on a busy machine does not decide).
    When the records do not divide evenly, counts and times are plain averages.
    """
    recs = [r for r in trace.records if r.kind == "primitive"]
    calls = max(int(calls), 1)
    per = len(recs) // calls if recs and len(recs) % calls == 0 else 0
    parts = [recs[k * per:(k + 1) * per] for k in range(calls)] if per else [recs]
    acc: dict = {}
    for j, part in enumerate(parts):
        for r in part:
            a = acc.setdefault((r.name, r.impl, r.prop), [0, [0] * len(parts), r.formats])
            a[0] += 1
            a[1][j] += r.duration_ns
    div = 1 if per else calls
    rows = []
    for (k, i, p), (c, times, fm) in acc.items():
        t = sorted(times)[len(times) // 2] if per else sum(times) // div
        rows.append(PrimitiveRow(k, i, p, max(c // (len(parts) if per else div), 1), int(t), fm))
    return sorted(rows, key=lambda r: -r.total_ns)
