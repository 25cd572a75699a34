"""What the convergence figure draws, as data: :func:`model` (:mod:`.plots` draws it).

One panel per op and shape (and dtype, thread count, machine, computation):

- rows, in groups: ours -- the naive kernel (``naive``; ``direct``, the plain loop nest, for
  convolutions), the best other kernel of our own (the fusion ladder's best rung, ``fused``,
  ``winograd``, ...) and our direct calls of the vendor library (``onednn``, ``cudnn``) -- then
  each framework's paths: its generic cell loop, other paths, its vendor-library path;
- which rows reach the vendor library's layer primitive (oneDNN's or cuDNN's RNN or convolution):
  from the row's trace where a record carries one (``onednn_trace``, written by
  ``explain --device cpu --json``), else by construction (our direct calls, our own kernels), else
  as :data:`microbench.frameworks.VENDOR_LAYER` declares it; unknown where none tells;
- the band: how far apart the rows that reach it are, against how far apart the rest are
  (contended rows, whose times are not comparable, left out of both);
- per row, where its time goes (:func:`microbench.cpu_explain.breakdown`: the layer primitive,
  other primitives, reorders, outside oneDNN), only from a trace the records hold;
- one scale for the figure: every panel's time axis is logarithmic and spans the same ratio, so a
  band's width reads the same in every panel (a panel whose rows spread more than
  :data:`MAX_SHARED_SPAN` gets a wider span of its own, and says so, rather than squeezing the rest).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

MAX_PANELS = 6
MAX_VENDOR_ROWS = 3          # our direct vendor calls per panel (cuDNN has ten convolution algorithms)
MIN_SPAN = 4.0               # the narrowest time axis, as max/min: a tight band is not blown up
MAX_SHARED_SPAN = 100.0      # a panel that needs more (a contended row 1000x off) gets its own span
NAIVE = ("naive",)           # our naive variants (also "layernorm-naive", ...); conv: NAIVE_CONV
NAIVE_CONV = ("direct",)     # the convolution's plain loop nest
VENDOR_PATHS = ("fused", "cudnn")        # a framework's vendor-library path (CPU, GPU)
GENERIC_PATHS = ("generic", "nocudnn")   # its generic cell loop


@dataclass
class Row:
    name: str                    # "ours: fused/numba", "torch/fused"
    group: str                   # "ours" or the framework
    role: str                    # naive | best own kernel | vendor (direct call) | generic cell loop | ...
    kind: str                    # own | vendor-direct | framework
    median_ms: float
    q1_ms: float
    q3_ms: float
    n: int | None
    reaches: bool | None         # runs the vendor's layer primitive; None: nothing tells
    reaches_from: str            # trace | construction | declared | unknown
    contended: bool | None       # None: the record did not measure it
    contention_why: str
    above_roof: bool | None      # None: the record has no roof
    explanation: dict | None     # ms per call by where it goes, from a trace; None: no trace
    framework: str | None
    busy_ms: float | None = None  # GPU-busy time per call, where the record carries it


@dataclass
class Spread:
    rows: list                   # names
    lo_ms: float | None
    hi_ms: float | None

    @property
    def ratio(self) -> float | None:
        return self.hi_ms / self.lo_ms if self.rows and self.lo_ms else None


@dataclass
class Panel:
    title: str
    op: str
    device: str
    vendor: str                  # oneDNN | cuDNN
    rows: list
    band: Spread
    rest: Spread
    xlim: tuple = (0.0, 0.0)
    own_span: bool = False       # its rows spread too far for the figure's shared span
    traced: int = 0              # rows with a trace
    left_out: list = field(default_factory=list)   # our vendor rows not drawn

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = {r.name: asdict(r) for r in self.rows}
        for k in ("band", "rest"):
            d[k]["ratio"] = getattr(self, k).ratio
        return d


@dataclass
class Model:
    panels: list
    scale: str = "log"
    span: float = MIN_SPAN       # hi/lo of every panel's time axis
    panels_left_out: int = 0
    contention_measured: bool = False
    notes: list = field(default_factory=list)


# -- one row -------------------------------------------------------------------------------------

def _base(name: str) -> str:
    """A variant or path without its pass suffix: ``fused+bwd`` -> ``fused``."""
    return str(name or "").split("+")[0]


def is_vendor_direct(rec: dict) -> bool:
    """Our rows that call the vendor library directly (oneDNN's or cuDNN's layer primitive)."""
    from .recview import framework_of
    return not framework_of(rec) and (rec.get("backend") == "onednn" or _base(rec.get("variant")).startswith("cudnn"))


def _own_role(rec: dict) -> str:
    base = _base(rec.get("variant"))
    naive = NAIVE_CONV if rec.get("op") == "conv" else NAIVE
    if base in naive or any(base.endswith("-" + n) for n in naive):
        return "naive"
    return "best own kernel"


def _path_role(path: str) -> str:
    base = _base(path)
    if base in VENDOR_PATHS:
        return "vendor-library path"
    if base in GENERIC_PATHS:
        return "generic cell loop"
    return base or "path"


def _contention(rec: dict) -> tuple:
    c = rec.get("contention")
    if not isinstance(c, dict) or not isinstance(c.get("contended"), bool):
        return None, "not measured"
    return c["contended"], str(c.get("why") or "")


def _above_roof(rec: dict):
    v = rec.get("above_roof")
    return v if isinstance(v, bool) else None


def _trace_key(rec: dict) -> tuple:
    from . import store
    from .recview import computation_of, framework_of, threads_of
    return (rec.get("op"), rec.get("dtype"), store._freeze(rec.get("shape") or {}), rec.get("variant"),
            rec.get("backend"), framework_of(rec), threads_of(rec), store.machine(rec), computation_of(rec))


def traces(records: list) -> dict:
    """The last traced record of each case (all records, not only the ones drawn: a later
    untraced rerun of a case keeps its trace)."""
    out = {}
    for r in records:
        t = r.get("onednn_trace")
        if r.get("status") == "ok" and isinstance(t, dict) and isinstance(t.get("primitives"), list) \
                and isinstance(r.get("stats"), dict):
            out[_trace_key(r)] = r
    return out


def explanation(traced: dict) -> dict:
    """Milliseconds per call by where they go, from a traced record (its own untraced wall)."""
    from .cpu_explain import breakdown
    t = traced["onednn_trace"]
    b = breakdown(t["primitives"], traced["stats"]["median_s"], traced.get("op"))
    ms = {k.replace("_s", "_ms"): (v * 1e3 if isinstance(v, float) else v) for k, v in b.items()
          if k != "exceeds"}
    top = max(t["primitives"], key=lambda p: p.get("ns_per_call", 0), default=None)
    return {**ms, "exceeds": b["exceeds"], "primitives": len(t["primitives"]),
            "top": f"{top['kind']} {top.get('impl', '')}".strip() if top else "",
            "version": t.get("version"), "note": t.get("note") or "", "source": traced.get("source", "")}


def _reaches(rec: dict, expl: dict | None, traced: dict | None, device: str) -> tuple:
    from .cpu_explain import LAYER_CLASS
    from .frameworks import reaches_vendor
    from .recview import framework_of
    if traced is not None:
        layer = LAYER_CLASS.get(rec.get("op"))
        return any(p.get("class") == layer for p in traced["onednn_trace"]["primitives"]), "trace"
    fw = framework_of(rec)
    if not fw:
        return is_vendor_direct(rec), "construction"
    path = str(rec.get("backend") or "")
    if "+" in path:                   # a training step: the declarations are of the forward pass
        return None, "unknown"
    v = reaches_vendor(fw, device, path, rec.get("op"))
    return v, ("declared" if v is not None else "unknown")


def _row(rec: dict, name: str, group: str, role: str, kind: str, tr: dict) -> Row:
    from .recview import framework_of, gpu_busy
    st = rec["stats"]
    med = st["median_s"]
    traced = tr.get(_trace_key(rec))
    expl = explanation(traced) if traced is not None else None
    reaches, why = _reaches(rec, expl, traced, rec.get("device") or "cpu")
    contended, cwhy = _contention(rec)
    return Row(name, group, role, kind, med * 1e3, st.get("q1_s", med) * 1e3, st.get("q3_s", med) * 1e3,
               st.get("n"), reaches, why, contended, cwhy, _above_roof(rec), expl,
               framework_of(rec) or None, (gpu_busy(rec) or 0) * 1e3 or None)


# -- one panel -----------------------------------------------------------------------------------

def _best(recs: list) -> dict:
    return min(recs, key=lambda r: r["stats"]["median_s"])


def _spread(rows: list) -> Spread:
    rows = [r for r in rows if r.contended is not True]
    if not rows:
        return Spread([], None, None)
    return Spread([r.name for r in rows], min(r.median_ms for r in rows), max(r.median_ms for r in rows))


def panel(key: tuple, recs: list, tr: dict) -> Panel:
    from .frameworks import FRAMEWORKS
    from .recview import framework_of, impl_name
    op, shape, dtype, thr, _env, _machine, comp = key
    device = "cuda" if any(r.get("device") == "cuda" for r in recs) else "cpu"
    rows: list = []
    ours = [r for r in recs if not framework_of(r)]
    own = [r for r in ours if not is_vendor_direct(r)]
    for role in ("naive", "best own kernel"):
        pick = [r for r in own if _own_role(r) == role]
        if pick:
            r = _best(pick)
            rows.append(_row(r, impl_name(r), "ours", role, "own", tr))
    by_variant: dict = {}
    for r in ours:
        if is_vendor_direct(r):
            by_variant.setdefault(r.get("variant"), []).append(r)
    vendor = sorted((_best(v) for v in by_variant.values()), key=lambda r: r["stats"]["median_s"])
    default = [r for r in vendor if r.get("variant") in ("onednn", "cudnn")]
    keep = (default + [r for r in vendor if r not in default])[:MAX_VENDOR_ROWS]
    for r in sorted(keep, key=lambda r: r["stats"]["median_s"]):
        rows.append(_row(r, impl_name(r), "ours", "vendor (direct call)", "vendor-direct", tr))
    left_out = [impl_name(r) for r in vendor if r not in keep]
    fws = sorted({framework_of(r) for r in recs if framework_of(r)},
                 key=lambda f: (FRAMEWORKS.index(f) if f in FRAMEWORKS else len(FRAMEWORKS), f))
    order = {"generic cell loop": 0, "vendor-library path": 2}
    for fw in fws:
        paths: dict = {}
        for r in recs:
            if framework_of(r) == fw:
                paths.setdefault(r.get("backend"), []).append(r)
        for path in sorted(paths, key=lambda p: (order.get(_path_role(p), 1), p)):
            r = _best(paths[path])
            rows.append(_row(r, impl_name(r), fw, _path_role(path), "framework", tr))
    from kernels.untrusted import visible      # record text, shown rather than drawn
    title = visible(f"{op} {shape} {dtype}" + (f", {comp}" if comp else "")) + (f", {thr} thr" if thr else "") \
        + (" (GPU)" if device == "cuda" else "")
    band = _spread([r for r in rows if r.reaches is True])
    rest = _spread([r for r in rows if r.reaches is not True])
    return Panel(title, op, device, "cuDNN" if device == "cuda" else "oneDNN", rows, band, rest,
                 traced=sum(r.explanation is not None for r in rows), left_out=left_out)


# -- the figure ----------------------------------------------------------------------------------

def _score(recs: list) -> tuple:
    from .recview import framework_of
    return (len({framework_of(r) for r in recs if framework_of(r)}), any(is_vendor_direct(r) for r in recs),
            len(recs))


def choose(groups: dict, limit: int, score=None) -> list:
    """Panels to draw (keys of ``groups``, op first): every op gets its turn (a convolution is not
    crowded out by ten RNN shapes), each op's shapes by ``score`` (default: how much they
    compare: frameworks, vendor rows, rows), ties in their order."""
    score = score or (lambda k: _score(groups[k]))
    by_op: dict = {}
    for k in sorted(groups, key=score, reverse=True):
        by_op.setdefault(k[0], []).append(k)
    queues = list(by_op.values())
    out = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def model(records: list, limit: int | None = None) -> Model:
    """The convergence figure as data (see the module's docstring); at most ``limit`` panels
    (default :data:`MAX_PANELS`)."""
    from .recview import group_by, computation_of, ok_records, shape_text, threads_of
    from .store import machine
    recs = ok_records(records)
    groups = group_by(recs, lambda r: (r["op"], shape_text(r), r.get("dtype"), threads_of(r), r.get("env_id"),
                                     machine(r), computation_of(r)))
    keys = choose(groups, limit or MAX_PANELS)
    tr = traces(records)
    panels = [panel(k, groups[k], tr) for k in keys]
    # one scale: every axis logarithmic, spanning the same ratio (the widest panel's, with room)
    need = {id(p): 2.0 * max(r.q3_ms for r in p.rows) / max(min(r.q1_ms for r in p.rows), 1e-12) for p in panels}
    span = max([MIN_SPAN] + [n for n in need.values() if n <= MAX_SHARED_SPAN])
    for p in panels:
        lo, hi = min(r.q1_ms for r in p.rows), max(r.q3_ms for r in p.rows)
        mid = math.sqrt(lo * hi)
        p.own_span = need[id(p)] > span
        half = math.sqrt(need[id(p)] if p.own_span else span)
        p.xlim = (mid / half, mid * half)
    m = Model(panels, "log", span, len(groups) - len(keys),
              any(r.get("contention") is not None for r in recs))
    if not m.contention_measured:
        m.notes.append("contention not measured in these records")
    if panels and not any(p.traced for p in panels):
        m.notes.append("no oneDNN traces in these records (explain OP --device cpu --json FILE writes them)")
    return m
