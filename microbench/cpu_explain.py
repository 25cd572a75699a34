"""``explain lstm|gru|conv --device cpu``: the convergence story told live, from oneDNN traces.

For each implementation asked for -- ours (``onednn``, ``onednn_reorder`` for RNNs) and each
framework path (``torch/fused``, ``mxnet/fused``, ``tensorflow/generic``, ...) -- this module
builds the case on the same weights and inputs, checks it against the float64 reference, times
it untraced (a short harness run), then runs it a few more times with oneDNN's verbose mode on
and parses the primitives it executed (:mod:`profiles.onednn_trace`).  :func:`sentences` states
what the traces show -- which rows run the same primitive and implementation and how close their
times are, what a framework adds around it (weight and activation reorders, per-step GEMM
primitives), where oneDNN versions differ -- with every number computed from this run.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from kernels.errors import BadInput, MicrobenchError, Unsupported
from profiles import onednn_trace as ot

CALLS = 5            # traced calls per implementation (rows report the median call)


@dataclasses.dataclass
class Row:
    """One implementation: its untraced time and the primitives it executed per call."""
    label: str
    wall_s: float | None = None
    checked: str = ""
    version: str = ""                    # oneDNN version seen in its log
    primitives: list = dataclasses.field(default_factory=list)   # onednn_trace.PrimitiveRow
    note: str = ""                       # why there is no trace / no time
    steps: int | None = None
    record: dict | None = None           # its result record (with its trace), when asked for
    traced: bool = False                 # its trace was captured (an empty one says: no primitive)
    contended: str = ""                  # why its untraced samples did not get their threads ('' if they did)
    advice: str = ""                     # ... and what helps

    def of(self, cls: str) -> list:
        return [p for p in self.primitives if p.cls == cls]

    def count(self, cls: str | None = None) -> int:
        return sum(p.count for p in self.primitives if cls is None or p.cls == cls)

    def time_s(self, cls: str | None = None) -> float:
        return sum(p.total_ns for p in self.primitives if cls is None or p.cls == cls) / 1e9

    @property
    def main(self):
        """The compute primitive that takes most time (not a reorder), or None."""
        compute = [p for p in self.primitives if p.cls not in ("reorder", "copy")]
        return max(compute, key=lambda p: p.total_ns) if compute else None


def _settings():
    from microbench import smoke
    from microbench.harness import Settings
    return smoke.settings(Settings(warmup=0.1, min_time=0.5, max_time=5.0, min_samples=3, max_noise=1.0))


def _measure(run: Callable):
    from microbench.harness import CpuTimer, measure
    return measure(run, _settings(), CpuTimer())


def _time_row(row: Row, m, rec: dict) -> None:
    """The row's untraced wall time from a Measurement, and whether its samples got their threads
    (microbench.contention): a contended time is shown, never compared."""
    from microbench import contention
    from microbench.threads import usable_cpus
    row.wall_s = float(m.median)
    c = contention.judge(m.readings, m.samples, m.cpu_s, threads=None, usable=usable_cpus()[0])
    if c["contended"]:
        row.contended, row.advice = c["why"], contention.advice(rec)


def _record(registry_record, problem, seed: int, env: dict | None, chk, prep, m) -> dict | None:
    """The row's result record, as the benchmark commands write it for the same case (same
    identity), when ``env`` is given: report draws its trace beside the convergence figure."""
    if env is None:
        return None
    from microbench import results
    from microbench.harness import CpuTimer
    from microbench.runner import Case
    case = Case(registry_record, problem, "fp32", seed)
    ok = chk.passed
    rec = results.record(case=case, status="ok" if ok else "failed", env=env, check=chk, prepared=prep,
                         measurement=m if ok else None, error=None if ok else (chk.detail or "check failed"))
    rec["options"]["mode"] = getattr(m, "mode", "") or "warm"
    if ok:
        rec["timer"] = getattr(m, "timer", "") or CpuTimer.name
    return rec


def trace_field(row: Row) -> dict:
    """A row's trace as a record keeps it (``onednn_trace``): the primitives of one call (median
    of :data:`CALLS` traced calls), oneDNN's version, and why there is none where there is none."""
    return {"tool": "oneDNN verbose", "version": row.version or None, "calls": CALLS,
            "primitives": [{"kind": p.kind, "impl": p.impl, "prop": p.prop, "class": p.cls,
                            "count": p.count, "ns_per_call": p.total_ns, "formats": p.formats}
                           for p in row.primitives],
            "note": row.note}


LAYER_CLASS = {"lstm": "fused_rnn", "gru": "fused_rnn", "rnn": "fused_rnn", "conv": "conv"}


def breakdown(primitives: list, wall_s: float | None, op: str) -> dict:
    """Where one call's time goes, from its trace: in oneDNN's layer primitive (the RNN or the
    convolution), in other oneDNN primitives (GEMMs, element-wise), in reorders, and outside oneDNN
    (the untraced wall less the traced primitive time).  ``primitives``: PrimitiveRow objects or a
    record's ``onednn_trace.primitives``.  ``exceeds``: the traced time is above the untraced wall
    (verbose mode and load inflated the traced calls), so there is no outside share to give."""
    def get(p, k):
        return p[k] if isinstance(p, dict) else getattr(p, {"class": "cls", "ns_per_call": "total_ns"}.get(k, k))
    out = {"layer_s": 0.0, "other_s": 0.0, "reorder_s": 0.0}
    layer = LAYER_CLASS.get(op)
    for p in primitives:
        cls, s = get(p, "class"), get(p, "ns_per_call") / 1e9
        out["layer_s" if cls == layer else "reorder_s" if cls == "reorder" else "other_s"] += s
    traced = sum(out.values())
    exceeds = bool(wall_s) and traced > wall_s
    out.update(traced_s=traced, wall_s=wall_s, exceeds=exceeds,
               outside_s=None if exceeds or not wall_s else wall_s - traced)
    return out


def _ours(op: str, problem, seed: int, variant: str, env: dict | None = None) -> Row:
    from microbench import cases  # noqa: F401  (fills the registry)
    from microbench.registry import REGISTRY
    label = f"ours/{variant}"
    rec = REGISTRY[(op, variant, "onednn")]
    try:
        prep = rec.build(problem, seed, precision="fp32")
    except Unsupported as e:
        return Row(label, note=f"skipped: {e}")
    try:
        chk = prep.check()
        row = Row(label, checked=f"max rel err {chk.max_rel_err:.1e}" + ("" if chk.passed else " FAILED"))
        m = _measure(prep.run)
        _time_row(row, m, {"framework": ""})
        row.record = _record(rec, problem, seed, env, chk, prep, m)
        parsed = ot.capture_ours(prep.run, CALLS)
        row.version = parsed.version or prep.info.get("onednn", "")
        row.primitives = ot.summarize(parsed.trace(label), CALLS)
        row.traced = True
        return row
    finally:
        if prep.close:
            prep.close()


def _framework(op: str, problem, seed: int, framework: str, path: str, python: str | None,
               logs: dict | None, env: dict | None = None) -> Row:
    """Two workers: one without verbose mode (check and untraced time), then one started with
    oneDNN's verbose switches on (the trace): TensorFlow and MXNet read them only at start-up."""
    from microbench.cases.frameworks import build_framework, default_python
    from microbench.frameworks.client import Worker
    label = f"{framework}/{path}"
    build = lambda: build_framework(problem, seed, framework=framework, path=path,  # noqa: E731
                                    device="cpu", precision="fp32",
                                    python=python or default_python(framework))
    try:
        prep = build()
    except Unsupported as e:
        return Row(label, note=f"skipped: {e}")
    except MicrobenchError as e:
        return Row(label, note=f"failed: {e}")
    try:
        chk = prep.check()
        row = Row(label, checked=f"max rel err {chk.max_rel_err:.1e}" + ("" if chk.passed else " FAILED"))
        m = prep.measure(_settings())
        _time_row(row, m, {"framework": framework, "info": prep.info})
        if env is not None:
            from microbench.registry import REGISTRY
            row.record = _record(REGISTRY[(op, framework, path)], problem, seed, env, chk, prep, m)
    except MicrobenchError as e:
        return Row(label, note=f"failed: {e}")
    finally:
        if prep.close:
            prep.close()
    try:
        with ot.verbose_environment():
            prep = build()
    except MicrobenchError as e:
        row.note = f"no trace: {e}"
        return row
    try:
        worker = getattr(prep.close, "__self__", None)
        if not isinstance(worker, Worker):
            row.note = "no worker to trace"
            return row
        parsed = ot.capture_worker(worker, CALLS)
        if logs is not None:
            logs[label] = parsed.text or "# no oneDNN verbose line between the trace markers\n"
        row.version = parsed.version
        row.primitives = ot.summarize(parsed.trace(label), CALLS)
        row.traced = True
        if not parsed.records:
            row.note = "executed no oneDNN primitive"
        return row
    except MicrobenchError as e:
        row.note = f"no trace: {e}"
        return row
    finally:
        if prep.close:
            prep.close()


def problem_for(op: str, T: int, B: int, H: int, C: int = 32, size: int = 28):
    """The problem explain traces (shrunk under MICROBENCH_SMOKE, as the benchmarks' are)."""
    from microbench import smoke
    if op == "conv":
        from kernels.conv import ConvProblem
        return smoke.problem(ConvProblem(N=B, C=C, H=size, W=size, K=C, R=3, S=3, pad=1))[0]
    from microbench.problems import RNNProblem
    return smoke.problem(RNNProblem(op, T, B, H, H, 1))[0]


def collect(op: str, problem, frameworks: list, seed: int = 0, python: dict | None = None,
            logs: dict | None = None, progress: Callable[[str], None] | None = None,
            env: dict | None = None) -> list:
    """Rows for ours and for every path of every named framework, in that order; with ``env``
    (:func:`microbench.env.collect`) each timed row also carries its result record and trace
    (:func:`records`)."""
    from microbench.frameworks import PATHS
    if op not in ("lstm", "gru", "conv"):
        raise BadInput(f"explain covers lstm, gru, conv, not {op!r}")
    python = python or {}
    rows = []
    for variant in (("onednn",) if op == "conv" else ("onednn", "onednn_reorder")):
        if progress:
            progress(f"ours/{variant}")
        rows.append(_ours(op, problem, seed, variant, env))
    for fw in frameworks:
        for path in PATHS[fw].get("cpu", {}):
            if progress:
                progress(f"{fw}/{path}")
            row = _framework(op, problem, seed, fw, path, python.get(fw), logs, env)
            row.steps = getattr(problem, "T", None)
            rows.append(row)
    return rows


def records(rows: list) -> list:
    """The result records of the timed rows, each with its trace under ``onednn_trace`` (the
    primitives of one call; none, with the reason, for a row that executed none); a row whose
    trace could not be taken keeps its record without one (no trace is not "no primitive")."""
    out = []
    for r in rows:
        if r.record is not None:
            out.append({**r.record, "onednn_trace": trace_field(r)} if r.traced else dict(r.record))
    return out


# -- sentences -----------------------------------------------------------------------------------

def _name(p) -> str:
    return f"{p.kind} {p.impl}".strip()


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms"


def _pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / b:+.0f}%" if b else "n/a"


def _signed(s: float) -> str:
    return f"{s * 1e3:+.2f} ms"


def _account(ours, p, op: str) -> str:
    """ours/onednn against a framework row with the same compute primitive: the untraced
    difference, then the traced one split into the compute primitive, the reorders and (where
    the traces fit inside the walls) the time outside oneDNN."""
    parts = [f"the {ours.main.kind} primitive {_signed((ours.main.total_ns - p.main.total_ns) / 1e9)} "
             f"({ours.main.impl} in oneDNN {ours.version or '?'} against "
             f"{p.main.impl} in oneDNN {p.version or '?'})",
             f"reorders {_signed(ours.time_s('reorder') - p.time_s('reorder'))} "
             f"({ours.count('reorder')} against {p.count('reorder')} per call)"]
    if ours.time_s() <= ours.wall_s and p.time_s() <= p.wall_s:
        outside = (ours.wall_s - ours.time_s()) - (p.wall_s - p.time_s())
        parts.append(f"work outside oneDNN {_signed(outside)}")
    if ours.contended or p.contended:
        bad = ours if ours.contended else p
        return (f"ours/onednn vs {p.label}: not compared: {bad.label}'s untraced samples did not get "
                f"their threads ({bad.contended}), so its {_ms(bad.wall_s)} is the machine's, not the "
                f"code's; {bad.advice}.")
    text = (f"ours/onednn vs {p.label}: {_ms(ours.wall_s)} vs {_ms(p.wall_s)} untraced "
            f"({_pct(ours.wall_s, p.wall_s)}); traced, ours differs by " + ", ".join(parts) + ".")
    if p.wall_s and abs(ours.wall_s - p.wall_s) > 0.05 * p.wall_s:
        cmd = f"{op} --onednn --frameworks {p.label.split('/')[0]} --rounds 5"
        text += (" The rows were timed one after another, so part of a difference this size can "
                 f"be the machine's drift: `{cmd}` times them interleaved.")
    return text


def sentences(rows: list, op: str) -> list:
    """Plain statements computed from the rows (nothing here is written in advance)."""
    out = []
    traced = [r for r in rows if r.primitives]
    # 1. rows that run the same compute primitive and implementation
    groups: dict = {}
    for r in traced:
        m = r.main
        if m is not None:
            groups.setdefault((m.kind, m.impl, m.prop), []).append(r)
    for (kind, impl, prop), members in groups.items():
        if len(members) < 2:
            continue
        base = members[0]
        parts = [f"{r.label} {_ms(r.main.total_ns / 1e9)}" for r in members]
        walls = [f"{r.label} {_ms(r.wall_s)}" + (" (contended: not comparable)" if r.contended else "")
                 for r in members if r.wall_s]
        out.append(f"{', '.join(r.label for r in members)} execute the same oneDNN primitive: "
                   f"{f'{kind} {impl}'.strip()} ({prop}), {base.main.count} per call; its time per call: "
                   f"{'; '.join(parts)}" + (f"; untraced wall per call: {'; '.join(walls)}" if walls else "")
                   + ".")
    # 2. what differs: other implementations of the same primitive kind
    kinds: dict = {}
    for r in traced:
        if r.main is not None:
            kinds.setdefault(r.main.kind, {}).setdefault(r.main.impl, []).append(r)
    for kind, impls in kinds.items():
        if len(impls) < 2:
            continue
        desc = "; ".join(f"{', '.join(r.label for r in rs)}: {impl} "
                         f"(oneDNN {', '.join(sorted({r.version or '?' for r in rs}))}, "
                         f"{_ms(min(r.main.total_ns for r in rs) / 1e9)} per call)"
                         for impl, rs in impls.items())
        out.append(f"The {kind} primitive runs in {len(impls)} implementations: {desc}.")
    # 3. what each row adds around its compute primitive
    for r in traced:
        re_ = r.of("reorder")
        total = r.time_s()
        if re_:
            n, t = r.count("reorder"), r.time_s("reorder")
            what = ", ".join(sorted({p.formats.split(', ')[-1].split(' ')[-1] for p in re_ if p.formats}))
            out.append(f"{r.label} executes {n} reorder primitive(s) per call ({_ms(t)}, "
                       f"{100 * t / total:.0f}% of its primitive time)"
                       + (f", into layout(s) {what}" if what else "") + ".")
        g = r.of("gemm")
        if g and r.steps:
            n = r.count("gemm")
            out.append(f"{r.label} executes {n} GEMM primitive(s) per call ({n / r.steps:.1f} per "
                       f"step, {', '.join(sorted({_name(p) for p in g}))}) and no fused RNN "
                       f"primitive: the step-by-step pattern, {_ms(r.time_s('gemm'))} of primitive "
                       f"time.")
        if r.contended:
            out.append(f"{r.label}: its untraced samples did not get their threads ({r.contended}); "
                       f"{r.advice}.")
        elif r.wall_s and total and total <= r.wall_s:
            out.append(f"{r.label}: {_ms(r.wall_s)} per call untraced, of which oneDNN primitives "
                       f"take {_ms(total)} ({100 * total / r.wall_s:.0f}%, traced); the rest, "
                       f"{_ms(r.wall_s - total)}, is spent outside oneDNN.")
        elif r.wall_s and total:
            out.append(f"{r.label}: its traced primitive time ({_ms(total)}) exceeds its untraced "
                       f"wall ({_ms(r.wall_s)}): verbose mode and this machine's load inflated the "
                       f"traced calls, so read its counts and implementations, not those times.")
    for r in rows:
        if not r.primitives:
            why = r.note or "no primitive recorded"
            out.append(f"{r.label}: {why}" + ("" if why.startswith("skipped") else
                                              " (its work runs outside oneDNN: BLAS or its own kernels)")
                       + ".")
    # 4. versions
    vers = {r.label: r.version for r in traced if r.version}
    if len(set(vers.values())) > 1:
        out.append("oneDNN versions differ: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".")
    # 5. ours vs the closest framework row with the same primitive
    ours = next((r for r in rows if r.label == "ours/onednn" and r.wall_s), None)
    if ours and ours.main:
        peers = [r for r in traced if not r.label.startswith("ours/") and r.main
                 and r.main.kind == ours.main.kind and r.wall_s]
        for p in peers:
            out.append(_account(ours, p, op))
    return out


def render(rows: list, op: str, console) -> None:
    from rich.table import Table
    from microbench.report import smoke_mark
    t = Table(title=f"{smoke_mark()}CPU: {op} through oneDNN, primitives per call (this machine, traced live)",
              title_justify="left")
    for col in ("implementation", "wall (untraced)", "check", "oneDNN", "primitives per call"):
        t.add_column(col)
    for r in rows:
        prims = "; ".join(f"{_name(p)} x{p.count} {_ms(p.total_ns / 1e9)}"
                          for p in r.primitives[:4]) or r.note
        wall = (_ms(r.wall_s) + (" (contended)" if r.contended else "")) if r.wall_s else "-"
        t.add_row(r.label, wall, r.checked or "-", r.version or "-", prims)
    console.print(t)
    for s in sentences(rows, op):
        console.print(f"- {s}")
