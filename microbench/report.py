"""Terminal output: environment header and the results table (rich)."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from fusion.steps import STEPS

from . import smoke


def smoke_mark() -> str:
    """What starts every table title of a smoke run (microbench.smoke), else ''."""
    return smoke.TITLE_MARK if smoke.active() else ""


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def gpu_text(env: dict) -> str:
    """The header's GPU line: name, memory, compute capability, driver, CUDA and cuDNN versions,
    or why there is no GPU."""
    gpu = env.get("gpu") or {}
    if not gpu.get("available"):
        return f"none ({gpu.get('reason', 'not found')})"
    cd = env.get("cudnn") or {}
    mem = f", {gpu['memory_gib']} GiB" if gpu.get("memory_gib") is not None else ""
    cc = f", sm_{gpu['compute_capability'].replace('.', '')}" if gpu.get("compute_capability") else ""
    return (f"{gpu.get('name')}{mem}{cc}; driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}, "
            f"cuDNN {cd.get('version') if cd.get('available') else 'not found'}")


def header(env: dict, console: Console) -> None:
    libs = env.get("libraries", {})
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} thr, "
                     f"{b.get('architecture')})" for b in env.get("blas", []) if "error" not in b)
    gpu_line = gpu_text(env)
    console.print(f"[bold]microbench[/]  {env.get('date', '')}  env {env.get('env_id', '')}")
    console.print(f"CPU  {env.get('cpu')}, {env.get('cores')} cores; BLAS {blas or '?'}")
    console.print(f"GPU  {gpu_line}")
    od = env.get("onednn") or {}
    if od.get("available"):
        console.print(f"oneDNN {od.get('version')} ({od.get('isa')}, {od.get('cpu_runtime')})")
    console.print("libs " + ", ".join(f"{k} {v}" for k, v in libs.items()))
    if smoke.active():
        console.print(f"[bold yellow]{smoke.header_line()}[/]")


def _group_key(o):
    c = o.case
    return (c.problem, c.precision, c.threads)


MARKS = {
    "~": "~ noisy: IQR/median above --max-noise; rerun with a larger --min-time",
    "!": ("! contended: the samples did not get their threads (they waited for a core while other "
          "processes ran): not comparable with other rows; see the lines below"),
    "^": ("^ above the roof: GFLOP/s above the fastest GEMM measured on this machine for this "
          "precision and thread count"),
}


def row_marks(rec: dict) -> str:
    """'~' noisy, '!' contended, '^' above the roof: the marks of a record's median, in that order."""
    from . import contention
    st = rec.get("stats") if isinstance(rec.get("stats"), dict) else {}
    return ("~" if st.get("noisy") else "") + ("!" if contention.contended(rec) else "") + \
        ("^" if rec.get("above_roof") else "")


def table(outcomes: list, console: Console, *, ladder: bool = False, title: str = "",
          baseline: str = "naive") -> None:
    """Variants as rows; one table per (problem, dtype, threads) group.

    ``baseline``: the variant the speedup column divides by (same backend where there is one).
    A "% peak" column appears where records carry their roof (microbench.peaks.attach); a marks
    column beside the median flags noisy (~), contended (!) and above-roof (^) rows, each
    explained under the table.  Times are formatted per cell (1.58 ms, not 0.002 s).
    """
    from rich.markup import escape

    from . import contention
    groups: dict = {}
    for o in outcomes:
        groups.setdefault(_group_key(o), []).append(o)
    notes = set()
    marks_seen: set = set()
    contended_lines: dict = {}       # advice -> rows it applies to
    roofs: dict = {}
    for (problem, precision, threads), rows in groups.items():
        thr = "default threads" if threads is None else f"{threads} thread{'s' * (threads > 1)}"
        t = Table(title=f"{smoke_mark()}{title or problem.op} {problem.label} {precision} {rows[0].case.device}, {thr}",
                  box=box.SIMPLE_HEAD, title_justify="left")
        peak = any(o.status == "ok" and o.record.get("roof") for o in rows)
        t.add_column("case")
        t.add_column("median", justify="right")
        t.add_column("", justify="left")         # the marks, a column of their own (never shift the median)
        t.add_column("+-IQR", justify="right")
        t.add_column("min", justify="right")
        t.add_column("CPU/wall", justify="right")
        t.add_column(f"vs {baseline}", justify="right")
        if ladder:
            t.add_column("vs prev", justify="right")
        t.add_column("GFLOP/s", justify="right")
        if peak:
            t.add_column("% peak", justify="right")
        t.add_column("max rel err", justify="right")
        t.add_column("note")
        naive = {o.case.backend: o.measurement.median for o in rows
                 if o.case.variant == baseline and o.status == "ok"}
        any_base = next(iter(naive.values()), None)
        prev = {}
        for o in rows:
            c = o.case
            if o.status != "ok":
                err = f"{o.check.max_rel_err:.1e}" if o.check is not None else "-"
                word = "[red]FAILED[/]" if o.status == "failed" else "[yellow]skipped[/]"
                cells = ([c.label, "-", "", "-", "-", "-", "-"] + (["-"] if ladder else []) + ["-"]
                         + (["-"] if peak else []) + [err, f"{word}: {o.error}"])
                t.add_row(*cells)
                continue
            m, rec = o.measurement, o.record
            marks = row_marks(rec)
            marks_seen.update(marks)
            base = naive.get(c.backend, any_base)
            vs = f"{base / m.median:.2f}x" if base else "-"
            cont = contention.of(rec)
            cpw = cont.get("cpu_per_wall")
            cells = [c.label, fmt_time(m.median), marks, f"{100 * m.rel_noise:.1f}%", fmt_time(m.min),
                     f"{cpw:.2f}" if isinstance(cpw, (int, float)) else "-", vs]
            if ladder:
                p = prev.get(c.backend)
                cells.append(f"{p / m.median:.2f}x" if p else "-")
                prev[c.backend] = m.median
            gf = rec["derived"]["gflops"]
            note = ""
            if cont["contended"]:
                share = cont.get("wait_share")
                note = "[red]contended[/]" + (f" (waited {100 * share:.0f}%)" if share else "")
                contended_lines.setdefault(contention.advice(rec), []).append(c.label)
            nv = rec.get("nvtx") or {}
            if nv.get("est_overhead_frac") and nv["est_overhead_frac"] > 0.01:
                note = (note + "; " if note else "") + f"NVTX ~{100 * nv['est_overhead_frac']:.0f}%"
            opts = rec.get("options") or {}
            if opts.get("mode_asked"):
                note = (note + "; " if note else "") + f"ran {opts['mode']} (asked {opts['mode_asked']})"
            gemm = (rec.get("info") or {}).get("gemm") or {}
            if gemm.get("fallback"):
                note = (note + "; " if note else "") + "BLAS GEMMs (no oneDNN packing)"
                notes.add(f"BLAS GEMMs: pretranspose ran without packed oneDNN weights: {gemm.get('reason', '')}")
            warn = (rec.get("gpu_state") or {}).get("warning")
            if warn:
                note = (note + "; " if note else "") + f"[yellow]{warn}[/]"
            from .peaks import effective
            eff = effective(rec)
            if eff:
                notes.add("* effective GFLOP/s: the direct convolution's FLOPs / time; Winograd and FFT "
                          "multiply less, so it can exceed the measured GEMM roof")
            if rec.get("above_roof"):
                note = (note + "; " if note else "") + ("above the roof (effective rate)" if eff else
                                                        "[red]above the roof[/]")
            cells.append((f"{gf:.1f}" + ("*" if eff else "")) if gf else "-")
            roof = rec.get("roof")
            if peak:
                cells.append(f"{100 * gf / roof['gflops']:.0f}%" if gf and roof else "-")
            if roof:
                roofs[roof["source"]] = roof
            cells += [f"{o.check.max_rel_err:.1e}", note]
            t.add_row(*cells)
        console.print(t)
    if ladder:
        # the steps' reasons in the order the rungs ran (the ladder's order), not the table of steps
        rungs = dict.fromkeys(o.case.rung.lstrip("+") for o in outcomes if o.case.rung)
        for name in rungs:
            if name in STEPS:
                console.print(f"  [bold]+{name}[/]: {STEPS[name].why}")
    for mark in "~!^":
        if mark in marks_seen:
            notes.add(MARKS[mark])
    n_ok = sum(o.status == "ok" for o in outcomes)
    for advice, labels in contended_lines.items():
        labels = list(dict.fromkeys(labels))
        who = ("every row" if len(labels) == n_ok else ", ".join(labels[:4])
               + (f" and {len(labels) - 4} more" if len(labels) > 4 else ""))
        notes.add(f"! {who}: {advice}; {contention.ROUNDS_NOTE}")
    for roof in roofs.values():
        notes.add(f"% peak: of {roof['gflops']:.0f} GFLOP/s, {roof['source']}, measured on this machine just "
                  "before the cases" + (" (a lower bound of this machine's: measured while other processes "
                                        "held the cores, or in a smoke run)" if roof.get("lower_bound") else ""))
    notes = {escape(n) for n in notes}
    ok = [o for o in outcomes if o.status == "ok"]
    if ok:
        nv = ok[0].record.get("nvtx") or {}
        cost = nv.get("cost_per_range_s")
        call = ("training step (forward + backward; GFLOP/s from 3x the forward GEMM FLOPs)"
                if "fwd+bwd" in title else "forward call")
        lines = [f"GFLOP/s counts multiply-adds as 2 FLOPs (GEMM FLOPs only for RNNs); time is per "
                 f"{call}, median of the samples; vs {baseline} = {baseline} time / this time; "
                 "CPU/wall: CPU seconds the process got per second of its samples, all threads (about "
                 "the number of busy threads when the cores were its own)."]
        most = max((o.record["nvtx"]["ranges_per_run"] for o in ok if o.record.get("nvtx")), default=0)
        from kernels import nvtx
        if cost is not None and nv.get("level") not in (None, "off") and most:
            lines.append(f"{nvtx.describe()}: {most} per call at most, {cost * 1e6:.2f} us each here, "
                         "included in our rows' times (framework rows push none); --nvtx off removes them.")
        elif nv.get("level") == "off":
            lines.append(f"{nvtx.describe()}; --nvtx on pushes them (nsys/ncu turn them on by themselves).")
        for line in lines + sorted(notes):
            console.print(f"[dim]{line}[/]")
