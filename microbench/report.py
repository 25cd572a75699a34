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


def time_unit(values) -> tuple:
    """(unit, scale, decimals) for a column of seconds: one unit per column, chosen by the largest
    value, with enough decimals that the smallest keeps three significant digits (at most 3)."""
    import math
    vals = [v for v in values if v and v > 0]
    if not vals:
        return "us", 1e6, 1
    top = max(vals)
    unit, scale = ("s", 1.0) if top >= 1 else ("ms", 1e3) if top >= 1e-3 else ("us", 1e6)
    small = min(vals) * scale
    decimals = min(3, max(0, 2 - math.floor(math.log10(small)))) if small > 0 else 1
    return unit, scale, decimals


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


def table(outcomes: list, console: Console, *, ladder: bool = False, title: str = "",
          baseline: str = "naive", peak_gflops: float | None = None) -> None:
    """Variants as rows; one table per (problem, dtype, threads) group.

    ``baseline``: the variant the speedup column divides by (same backend where there is one).
    ``peak_gflops``: a measured ceiling; adds a "% peak" column.
    """
    groups: dict = {}
    for o in outcomes:
        groups.setdefault(_group_key(o), []).append(o)
    notes = set()
    for (problem, precision, threads), rows in groups.items():
        thr = "default threads" if threads is None else f"{threads} thread{'s' * (threads > 1)}"
        t = Table(title=f"{smoke_mark()}{title or problem.op} {problem.label} {precision} {rows[0].case.device}, {thr}",
                  box=box.SIMPLE_HEAD, title_justify="left")
        t.add_column("case")
        t.add_column("median", justify="right")
        t.add_column("+-IQR", justify="right")
        t.add_column("min", justify="right")
        t.add_column(f"vs {baseline}", justify="right")
        if ladder:
            t.add_column("vs prev", justify="right")
        t.add_column("GFLOP/s", justify="right")
        if peak_gflops:
            t.add_column("% peak", justify="right")
        t.add_column("max rel err", justify="right")
        t.add_column("note")
        unit, scale, dec = time_unit([x for o in rows if o.status == "ok"
                                      for x in (o.measurement.median, o.measurement.min)])
        col = lambda v: f"{v * scale:.{dec}f} {unit}"  # noqa: E731  (one unit per column)
        naive = {o.case.backend: o.measurement.median for o in rows
                 if o.case.variant == baseline and o.status == "ok"}
        any_base = next(iter(naive.values()), None)
        prev = {}
        for o in rows:
            c = o.case
            if o.status != "ok":
                err = f"{o.check.max_rel_err:.1e}" if o.check is not None else "-"
                word = "[red]FAILED[/]" if o.status == "failed" else "[yellow]skipped[/]"
                cells = ([c.label, "-", "-", "-", "-"] + (["-"] if ladder else []) + ["-"]
                         + (["-"] if peak_gflops else []) + [err, f"{word}: {o.error}"])
                t.add_row(*cells)
                continue
            m = o.measurement
            med = col(m.median) + (" ~" if m.noisy else "  ")   # "~" in a column of its own width
            if m.noisy:
                notes.add("~ noisy: IQR/median above --max-noise; rerun with a larger --min-time")
            base = naive.get(c.backend, any_base)
            vs = f"{base / m.median:.2f}x" if base else "-"
            cells = [c.label, med, f"{100 * m.rel_noise:.1f}%", col(m.min), vs]
            if ladder:
                p = prev.get(c.backend)
                cells.append(f"{p / m.median:.2f}x" if p else "-")
                prev[c.backend] = m.median
            gf = o.record["derived"]["gflops"]
            note = ""
            nv = o.record.get("nvtx") or {}
            if nv.get("est_overhead_frac") and nv["est_overhead_frac"] > 0.01:
                note = f"NVTX ~{100 * nv['est_overhead_frac']:.0f}%"
            opts = o.record.get("options") or {}
            if opts.get("mode_asked"):
                note = (note + "; " if note else "") + f"ran {opts['mode']} (asked {opts['mode_asked']})"
            gemm = (o.record.get("info") or {}).get("gemm") or {}
            if gemm.get("fallback"):
                note = (note + "; " if note else "") + "BLAS GEMMs (no oneDNN packing)"
                notes.add(f"BLAS GEMMs: pretranspose ran without packed oneDNN weights: {gemm.get('reason', '')}")
            warn = (o.record.get("gpu_state") or {}).get("warning")
            if warn:
                note = (note + "; " if note else "") + f"[yellow]{warn}[/]"
            effective = c.variant.startswith("winograd")
            if effective:
                notes.add("* effective GFLOP/s: the direct convolution's FLOPs / time; Winograd "
                          "multiplies less, so it can exceed the measured GEMM peak")
            cells.append((f"{gf:.1f}" + ("*" if effective else "")) if gf else "-")
            if peak_gflops:
                cells.append(f"{100 * gf / peak_gflops:.0f}%" if gf else "-")
            cells += [f"{o.check.max_rel_err:.1e}", note]
            t.add_row(*cells)
        console.print(t)
    if ladder:
        shown = {o.case.rung.lstrip("+") for o in outcomes}
        for name in STEPS:
            if name in shown:
                console.print(f"  [bold]+{name}[/]: {STEPS[name].why}")
    ok = [o for o in outcomes if o.status == "ok"]
    if ok:
        nv = ok[0].record.get("nvtx") or {}
        cost = nv.get("cost_per_range_s")
        call = ("training step (forward + backward; GFLOP/s from 3x the forward GEMM FLOPs)"
                if "fwd+bwd" in title else "forward call")
        lines = [f"GFLOP/s counts multiply-adds as 2 FLOPs (GEMM FLOPs only for RNNs); time is per "
                 f"{call}, median of the samples; vs {baseline} = {baseline} time / this time."]
        if peak_gflops:
            lines.append(f"% peak: of {peak_gflops:.0f} GFLOP/s, a 1024^3 GEMM through NumPy's BLAS "
                         "measured on this machine just before.")
        most = max(o.record["nvtx"]["ranges_per_run"] for o in ok if o.record.get("nvtx"))
        from profiles import nvtx
        if cost is not None and nv.get("level") not in (None, "off") and most:
            lines.append(f"{nvtx.describe()}: {most} per call at most, {cost * 1e6:.2f} us each here, "
                         "included in our rows' times (framework rows push none); --nvtx off removes them.")
        elif nv.get("level") == "off":
            lines.append(f"{nvtx.describe()}; --nvtx on pushes them (nsys/ncu turn them on by themselves).")
        for line in lines + sorted(notes):
            console.print(f"[dim]{line}[/]")
