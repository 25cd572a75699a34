"""Why runtimes converge, kernel by kernel: analysis of traces, sentences from the numbers, tables.

:func:`analyze` turns traces (or kernel summaries parsed from Nsight reports) into per-
implementation figures -- wall, GPU-busy (union of kernel intervals), idle, kernel count,
launches per step, top kernels, time per class -- and into comparisons: implementations of the
same problem (do they run identical kernels? which GEMM precision?) and one implementation in two
dtypes.  :func:`sentences` states the findings, every number taken from the analysis.
:func:`explain_reference` rebuilds the explanation from the committed H100 traces: what a machine
without a GPU shows, labelled with where and when they were recorded.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from pathlib import Path
from typing import Iterable

from kernels.errors import BadInput
from profiles import trace as tr
from profiles.classify import classify, gemm_precision

REFERENCE = Path(__file__).parent / "reference" / "h100-2026-11-26-torch-jax.json"
OPS = {"lstm": "lstm", "gru": "gru", "conv": "conv2d"}     # CLI name -> meta["op"]
COMPUTE = ("gemm", "cudnn_rnn", "conv", "pointwise", "other")  # what a comparison looks at
_NOT_PROBLEM = {"framework", "path", "jax", "torch", "tensorflow", "mxnet", "chainer"}  # impl, not problem
TOP = 5


@dataclasses.dataclass
class KernelRow:
    """All launches of one kernel name in one implementation."""
    name: str
    count: int
    total_ns: int
    kind: str = "kernel"

    @property
    def cls(self) -> str:
        return classify(self.name, self.kind)

    @property
    def short(self) -> str:
        return tr.short_name(self.name)


@dataclasses.dataclass
class ImplStats:
    label: str
    meta: dict
    rows: list[KernelRow]                 # by total time, largest first
    busy_ns: int                          # union of intervals; sum of kernel times for summaries
    wall_ns: int | None = None
    wall_traced: bool = False             # True: measured with the tracer on (inflated)
    busy_from_sum: bool = False           # True: no intervals, busy = sum of kernel times
    gaps_ns: list[int] = dataclasses.field(default_factory=list)  # largest idle gaps, GPU side

    @property
    def name(self) -> str:
        """Short implementation name for sentences: ``torch/cudnn``, ``jax/cudnn``, else label."""
        fw, path = self.meta.get("framework"), self.meta.get("path")
        return f"{fw}/{path.split()[0]}" if fw and path else self.label

    @property
    def kernels(self) -> int:
        return sum(r.count for r in self.rows if r.kind == "kernel")

    @property
    def steps(self) -> int | None:
        return self.meta.get("T")

    @property
    def per_step(self) -> float | None:
        return self.kernels / self.steps if self.steps else None

    @property
    def idle_ns(self) -> int | None:
        return None if self.wall_ns is None else max(self.wall_ns - self.busy_ns, 0)

    def by_class(self) -> dict[str, tuple[int, int]]:
        out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for r in self.rows:
            out[r.cls][0] += r.count
            out[r.cls][1] += r.total_ns
        return {k: (c, t) for k, (c, t) in out.items()}

    def gemm_precisions(self) -> set[str]:
        return {p for r in self.rows if r.cls == "gemm" for p in [gemm_precision(r.name)] if p}


@dataclasses.dataclass
class Comparison:
    kind: str                    # "same problem" | "dtype"
    a: ImplStats
    b: ImplStats
    shared: list[KernelRow]      # compute kernels with identical names, counted on a's side


@dataclasses.dataclass
class Analysis:
    op: str
    source: str
    impls: list[ImplStats]
    comparisons: list[Comparison]
    notes: list[str] = dataclasses.field(default_factory=list)


# -- per implementation ------------------------------------------------------------------------

def _rows(records: Iterable[tr.KernelRecord]) -> list[KernelRow]:
    acc: dict[tuple[str, str], list[int]] = {}
    for r in records:
        a = acc.setdefault((r.kind, r.name), [0, 0])
        a[0] += 1
        a[1] += r.duration_ns
    rows = [KernelRow(name, c, t, kind) for (kind, name), (c, t) in acc.items()]
    return sorted(rows, key=lambda r: -r.total_ns)


def _merge(records: Iterable[tr.KernelRecord]) -> list[tuple[int, int]]:
    """Busy intervals: kernel/copy intervals on any stream, overlaps merged."""
    merged: list[list[int]] = []
    for s, e in sorted((r.start_ns, r.end_ns) for r in records):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def stats_from_trace(t: tr.Trace, wall_ns: int | None = None) -> ImplStats:
    """Figures for one trace; ``wall_ns`` is the untraced wall time when it was measured."""
    spans = _merge(t.records)
    busy = sum(e - s for s, e in spans)
    gaps = sorted((b[0] - a[1] for a, b in zip(spans, spans[1:])), reverse=True)[:3]
    traced = wall_ns is None
    return ImplStats(t.label, dict(t.meta), _rows(t.records), busy,
                     wall_ns=t.wall_ns if traced else wall_ns,
                     wall_traced=traced and t.wall_ns is not None, gaps_ns=gaps)


def stats_from_rows(label: str, rows: list[KernelRow], meta: dict | None = None,
                    wall_ns: int | None = None) -> ImplStats:
    """Figures from a kernel summary (nsys/ncu): busy is the sum of kernel times, no gaps."""
    rows = sorted(rows, key=lambda r: -r.total_ns)
    return ImplStats(label, dict(meta or {}), rows, sum(r.total_ns for r in rows),
                     wall_ns=wall_ns, busy_from_sum=True)


# -- comparisons -------------------------------------------------------------------------------

def _problem(meta: dict, drop: Iterable[str] = ()) -> tuple:
    skip = _NOT_PROBLEM | set(drop)
    return tuple(sorted((k, str(v)) for k, v in meta.items() if k not in skip))


def _shared(a: ImplStats, b: ImplStats) -> list[KernelRow]:
    names_b = {r.name for r in b.rows if r.cls in COMPUTE}
    return [r for r in a.rows if r.cls in COMPUTE and r.name in names_b]


def compare(impls: list[ImplStats]) -> list[Comparison]:
    """Pairs of the same problem in different implementations, and of one implementation in
    two dtypes (layout may change with the dtype, as NHWC does for fp16 convolutions)."""
    out = []
    for a, b in itertools.combinations(impls, 2):
        if a.meta and _problem(a.meta) == _problem(b.meta):
            out.append(Comparison("same problem", a, b, _shared(a, b)))
        elif (a.meta and a.name == b.name and a.meta.get("dtype") != b.meta.get("dtype")
              and _problem(a.meta, ("dtype", "layout")) == _problem(b.meta, ("dtype", "layout"))):
            out.append(Comparison("dtype", a, b, _shared(a, b)))
    return out


def analyze(traces: list[tr.Trace], walls: dict[str, int] | None = None, op: str = "",
            source: str = "", extra: list[ImplStats] = ()) -> Analysis:
    """Analysis of traces (plus ready-made ``extra`` stats, e.g. from Nsight summaries).

    ``walls`` maps a label to its untraced wall time in ns; an unknown label raises BadInput.
    """
    walls = dict(walls or {})
    labels = {t.label for t in traces}
    for lab in walls:
        if lab not in labels:
            raise BadInput(f"wall time given for {lab!r}, which is not a trace here; "
                           f"traces: {', '.join(sorted(labels))}")
    impls = [stats_from_trace(t, walls.get(t.label)) for t in traces] + list(extra)
    return Analysis(op, source, impls, compare(impls))


# -- sentences ---------------------------------------------------------------------------------

def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms" if ns < 1e5 else f"{ns / 1e6:.2f} ms"


def _problem_text(s: ImplStats) -> str:
    m = s.meta
    if "H" in m:
        return f"{str(m.get('op', '')).upper()} H{m['H']} B{m.get('B', '?')} T{m.get('T', '?')} {m.get('dtype', '')}"
    return " ".join(f"N{m[k]}" if k == "N" else str(m[k])
                    for k in ("op", "layer", "N", "dtype", "layout") if k in m)


def brief(name: str) -> str:
    """A kernel name short enough for a sentence: the base name of a C++ symbol, or a library
    kernel name cut after its tile size (``sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8``)."""
    if name.startswith("_Z") or "(" in name:         # mangled, or demangled with arguments
        return tr.base_name(name)
    return re.split(r"_(?:stage\d|warp|execute|g1_)", name, maxsplit=1)[0]


def _same_problem(c: Comparison) -> str | None:
    a, b = sorted((c.a, c.b), key=lambda s: s.busy_ns)        # a: the less busy one
    ca, cb = a.by_class(), b.by_class()
    cudnn = [r for r in c.shared if r.cls in ("cudnn_rnn", "conv")]
    if cudnn:
        k = max(cudnn, key=lambda r: r.total_ns)
        ra = next(r for r in a.rows if r.name == k.name)
        rb = next(r for r in b.rows if r.name == k.name)
        text = (f"{_problem_text(a)}: {a.name} and {b.name} run the same "
                f"{brief(k.name)} kernel ({ra.count} vs {rb.count} launches, "
                f"{_ms(ra.total_ns)} vs {_ms(rb.total_ns)})")
        ga, gb = ca.get("gemm", (0, 0)), cb.get("gemm", (0, 0))
        pa, pb = a.gemm_precisions(), b.gemm_precisions()
        diff = b.busy_ns - a.busy_ns
        if ga[0] == gb[0] and pa != pb and diff > 0 and gb[1] - ga[1] >= 0.5 * diff:
            return (text + f"; {a.name} is faster ({_ms(a.busy_ns)} vs {_ms(b.busy_ns)} GPU-busy) "
                    f"because its {ga[0]} GEMMs use {'/'.join(sorted(pa)).upper()} "
                    f"({_ms(ga[1])} vs {_ms(gb[1])} in {'/'.join(sorted(pb)).upper()}).")
        return (text + f"; GPU-busy {_ms(a.busy_ns)} vs {_ms(b.busy_ns)} "
                f"({100 * diff / max(b.busy_ns, 1):.0f}% apart): they converge on cuDNN.")
    fused = [s for s in (a, b) if "cudnn_rnn" in s.by_class()]
    same_fw = a.meta.get("framework") == b.meta.get("framework")
    if len(fused) == 1 and same_fw and a.per_step and b.per_step:
        f = fused[0]
        g = b if f is a else a
        cg, cf = g.by_class(), f.by_class()
        return (f"{_problem_text(a)}: without cuDNN, {g.name} launches {g.per_step:.1f} kernels "
                f"per step ({cg.get('gemm', (0, 0))[0]} GEMMs, "
                f"{cg.get('pointwise', (0, 0))[0]} pointwise) against {f.per_step:.1f} for "
                f"{f.name} ({cf.get('gemm', (0, 0))[0]} GEMMs, "
                f"{cf['cudnn_rnn'][0]} cuDNN RNN kernels), and keeps the GPU busy "
                f"{_ms(g.busy_ns)} against {_ms(f.busy_ns)} ({g.busy_ns / max(f.busy_ns, 1):.1f}x).")
    return None


def _dtype(c: Comparison) -> str:
    hi, lo = sorted((c.a, c.b), key=lambda s: -s.busy_ns)
    top_hi, top_lo = hi.rows[0], lo.rows[0]
    change = ("the same top kernel" if top_hi.name == top_lo.name else
              f"{brief(top_lo.name)} ({top_lo.count} launch{'es' * (top_lo.count > 1)}, "
              f"{_ms(top_lo.total_ns)}, {top_lo.cls}) instead of {brief(top_hi.name)} "
              f"({top_hi.count} launch{'es' * (top_hi.count > 1)}, {_ms(top_hi.total_ns)})")
    count = (f", with {lo.kernels} kernels instead of {hi.kernels}"
             if lo.kernels != hi.kernels else "")
    return (f"{hi.name} {_problem_text(lo)} is busy {_ms(lo.busy_ns)} against {_ms(hi.busy_ns)} "
            f"in {hi.meta.get('dtype')} ({hi.busy_ns / max(lo.busy_ns, 1):.1f}x less){count}; "
            f"its top kernel is {change}.")


def sentences(an: Analysis) -> list[str]:
    """Plain findings, each built from the analysis' numbers."""
    out = []
    for c in sorted(an.comparisons, key=lambda c: c.kind == "dtype"):   # convergence first
        s = _same_problem(c) if c.kind == "same problem" else _dtype(c)
        if s:
            out.append(s)
    single = [s for s in an.impls if s.rows and s.busy_ns > 0 and s.rows[0].total_ns >= 0.9 * s.busy_ns
              and s.rows[0].cls in ("conv", "cudnn_rnn")]
    if single:
        share = min(s.rows[0].total_ns / s.busy_ns for s in single)
        out.append(f"In {len(single)} of {len(an.impls)} runs one cuDNN kernel does at least "
                   f"{100 * share:.0f}% of the GPU work ({', '.join(sorted({brief(s.rows[0].name) for s in single}))}): "
                   f"there the framework only picks which cuDNN kernel runs.")
    walled = [s for s in an.impls if s.wall_ns and s.wall_ns > 0]
    if walled:
        best = max(walled, key=lambda s: s.busy_ns / s.wall_ns)
        gap = max((g for s in walled for g in s.gaps_ns[:1]), default=0)
        traced = any(s.wall_traced for s in walled)
        out.append(f"The GPU is busy at most {100 * best.busy_ns / best.wall_ns:.0f}% of the "
                   f"{'traced ' if traced else ''}wall time ({best.label}); the rest is host and "
                   f"framework time between kernels{' and the tracer itself' if traced else ''}, "
                   f"with single gaps up to {_ms(gap)}"
                   + (" -- measure wall time untraced before comparing it." if traced else "."))
    return out


# -- the committed reference traces ------------------------------------------------------------

def _cudnn_version(v) -> str:
    try:
        v = int(v)
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    except (TypeError, ValueError, OverflowError):
        return str(v)


def explain_reference(op: str, path: str | Path | None = None,
                      frameworks: Iterable[str] | None = None,
                      variants: Iterable[str] | None = None, raw: bytes | None = None) -> Analysis:
    """The explanation rebuilt from committed traces (default: the H100 set) for ``op``.

    ``frameworks`` filters on ``meta["framework"]`` (torch, jax), ``variants`` on the first word
    of ``meta["path"]`` (cudnn, aten); a name with no trace raises BadInput.
    """
    if op not in OPS:
        raise BadInput(f"explain {op!r} is unknown; allowed: {', '.join(OPS)}")
    env, traces = tr.load(path or REFERENCE, raw)
    traces = [t for t in traces if t.meta.get("op") == OPS[op]]
    for key, wanted, get in (("framework", frameworks, lambda t: t.meta.get("framework")),
                             ("variant", variants, lambda t: str(t.meta.get("path", "")).split()[0])):
        if wanted is None:
            continue
        wanted = list(wanted)
        have = sorted({get(t) for t in traces})
        for w in wanted:
            if w not in have:
                raise BadInput(f"no reference {op} trace for {key} {w!r}; recorded: {', '.join(have)}")
        traces = [t for t in traces if get(t) in wanted]
    if not traces:
        raise BadInput(f"no reference trace for {op!r} in {Path(path or REFERENCE).name}")
    source = (f"recorded with CUPTI on an {env.get('gpu', 'unknown GPU')}, driver "
              f"{env.get('driver', '?')}, cuDNN {_cudnn_version(env.get('cudnn'))}, torch "
              f"{env.get('torch', '?')}, on {env.get('date', '?')}")
    an = analyze(traces, op=op, source=source)
    an.notes.append("Rebuilt from committed traces, not measured here: a live explanation needs an "
                    "NVIDIA GPU with cupti-python (or torch with CUDA). Wall times are traced "
                    "(CUPTI on) and several times the untraced ones.")
    return an


# -- tables ------------------------------------------------------------------------------------

def render(an: Analysis, console=None) -> None:
    """Rich tables: one row per implementation, top kernels, shared kernels, then the sentences.
    Labels, kernel names and the source line come from trace files (untrusted): every such text
    is printed through :func:`kernels.untrusted.terminal` (no control codes, no rich markup)."""
    from rich.console import Console
    from rich.table import Table

    from kernels.untrusted import terminal as esc
    console = console or Console()
    console.print(f"[bold]explain {esc(an.op)}[/bold]: {esc(an.source)}")
    for n in an.notes:
        console.print(f"[yellow]{esc(n)}[/yellow]")

    t = Table(title="Implementations (ms)")
    wall_head = "traced wall" if any(s.wall_traced for s in an.impls) else "wall"
    for col in ("implementation", wall_head, "GPU busy", "idle", "largest gap", "kernels",
                "per step", "time by class"):
        t.add_column(col, justify="left" if col in ("implementation", "time by class") else "right")
    for s in an.impls:
        cls = ", ".join(f"{k} {c}x {t_ / 1e6:.2f}" for k, (c, t_) in
                        sorted(s.by_class().items(), key=lambda kv: -kv[1][1]))
        t.add_row(esc(s.label), _num(s.wall_ns), _num(s.busy_ns) + ("*" if s.busy_from_sum else ""),
                  _num(s.idle_ns), _num(s.gaps_ns[0] if s.gaps_ns else None), str(s.kernels),
                  f"{s.per_step:.1f}" if s.per_step else "-", esc(cls))
    console.print(t)

    k = Table(title=f"Top {TOP} kernels by time")
    for col in ("implementation", "kernel", "class", "launches", "ms", "share"):
        k.add_column(col, justify="right" if col in ("launches", "ms", "share") else "left")
    for s in an.impls:
        for i, r in enumerate(s.rows[:TOP]):
            k.add_row(esc(s.label) if i == 0 else "", esc(_clip(r.short)), r.cls, str(r.count),
                      f"{r.total_ns / 1e6:.3f}", f"{100 * r.total_ns / max(s.busy_ns, 1):.0f}%")
    console.print(k)

    who: dict[str, list[str]] = collections.defaultdict(list)
    for s in an.impls:
        for r in s.rows:
            if r.cls in COMPUTE:
                who[r.name].append(f"{s.label} ({r.count}x)")
    shared = [(n, w) for n, w in who.items() if len(w) > 1]
    if shared:
        sh = Table(title="Same kernels in several implementations")
        sh.add_column("kernel")
        sh.add_column("class")
        sh.add_column("run by")
        for n, w in shared:
            sh.add_row(esc(_clip(tr.short_name(n))), classify(n), esc("; ".join(w)))
        console.print(sh)
    for line in sentences(an):
        console.print(f"- {esc(line)}")


def _num(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def _clip(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[:n - 3] + "..."
