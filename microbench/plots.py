"""Plots of result records (matplotlib, Agg): each function takes records and returns a :class:`Plot`.

    ladder_plot       one panel per ladder (op, shape, dtype, backend, threads): a bar per rung,
                      median with the IQR as error bar, speedup vs naive above each bar
    convergence_plot  one panel per shape, framework panels first: the best time of each
                      implementation (framework paths ``torch/fused``, ours ``ours: fused/numba``)
                      with IQR bars; wall time, and GPU-busy time beside it when records carry it
                      (``gpu_busy_s``), else labelled "wall only"
    roofline_plot     GFLOP/s against arithmetic intensity (FLOPs / compulsory bytes), against the
                      machine's measured roofs when given (:func:`microbench.peaks.roofs`), else
                      the best points of the file, drawn dashed and called lower bounds; colour:
                      implementation, marker: thread count, bars: q1-q3; a ring marks a point
                      above its roof (orange: an effective Winograd/FFT rate), an x a contended one
    thread_plot       ms per call (IQR bars) and speedup vs 1 thread (or the fewest threads), per case

Every figure comes as PNG (for the page) and as SVG and PDF (:data:`FORMATS`, for papers), with a
caption naming the machines, dates, commits and sample counts (:func:`caption`), drawn into the
figure too.  ``Plot.data`` holds what was drawn, by panel, so tests check figures by their data
and labels.  A plot with no data to show returns ``Plot(png=None, note=why)``; the report prints
the note.  Records are the normalized dicts of :mod:`microbench.store` (status ok with stats).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .store import machine  # noqa: E402  (ratios and panels never mix machines)

MAX_PANELS = 12
MAX_CONVERGENCE_PANELS = 6
MAX_SERIES = 10
LOG_SPAN = 30        # max/min ratio above which a time axis is drawn in log scale
OURS_COLOR, FRAMEWORK_COLOR, BUSY_COLOR = "#3b75af", "#6a9f58", "#e08a2c"


@dataclass
class Plot:
    title: str
    png: bytes | None
    note: str = ""
    data: dict = field(default_factory=dict)   # what is drawn, by panel: for tests and captions
    name: str = ""                             # file stem of the figure files (ladder, roofline, ...)
    files: dict = field(default_factory=dict)  # format -> bytes: "svg", "pdf" (vector, for papers)
    caption: str = ""                          # machine, commit, sample counts


# -- record helpers ------------------------------------------------------------------------------


def ok_records(records: list) -> list:
    """Records with a measurement, the last of each identity (a rerun supersedes)."""
    from .store import latest
    return [r for r in latest(records, with_env=True).values()
            if isinstance(r.get("stats"), dict) and (r["stats"].get("median_s") or 0) > 0]


def shape_text(rec: dict) -> str:
    s = rec.get("shape") or {}
    if rec.get("op") == "conv":
        return f"N{s.get('N')} C{s.get('C')} {s.get('H')}x{s.get('W')} K{s.get('K')} {s.get('R')}x{s.get('S')}"
    extra = "" if s.get("I") in (None, s.get("H")) else f" I{s.get('I')}"
    layers = "" if s.get("L", 1) == 1 else f" L{s.get('L')}"
    return f"H{s.get('H')} B{s.get('B')} T{s.get('T')}{extra}{layers}"


def threads_of(rec: dict):
    return (rec.get("options") or {}).get("threads")


def framework_of(rec: dict) -> str:
    """The framework of a framework row ("" for ours); older files kept it only under ``info``."""
    return str(rec.get("framework") or (rec.get("info") or {}).get("framework") or "")


def computation_of(rec: dict) -> str:
    """What a row computes beyond its shape: "" for a plain forward pass, else the cell
    (layernorm, peephole) and/or "training step" (forward + backward)."""
    info = rec.get("info") or {}
    cell = info.get("cell") if info.get("cell") not in (None, "plain") else ""
    step = "training step" if info.get("pass") == "forward+backward" else ""
    return ", ".join(w for w in (cell, step) if w)


def impl_name(rec: dict) -> str:
    """``torch/fused`` (framework/path) for framework rows, ``ours: fused/numba`` for ours."""
    fw = framework_of(rec)
    if fw:
        return f"{fw}/{rec.get('backend')}"
    return f"ours: {rec.get('label') or rec.get('variant') + '/' + str(rec.get('backend'))}"


def gpu_busy(rec: dict):
    """Seconds the GPU was busy per call, where a record carries it (profiles, framework adapters)."""
    for where in (rec, rec.get("stats") or {}, rec.get("info") or {}):
        v = where.get("gpu_busy_s")
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def _ms(rec) -> float:
    return rec["stats"]["median_s"] * 1e3


def _err_ms(rec) -> tuple:
    st = rec["stats"]
    med = st["median_s"]
    return (max(med - st.get("q1_s", med), 0) * 1e3, max(st.get("q3_s", med) - med, 0) * 1e3)


FORMATS = ("svg", "pdf")


def _render(fig, caption: str = "", right: float = 1.0) -> tuple:
    """(png bytes, {"svg": ..., "pdf": ...}): the PNG for the page, vector files for papers; the
    caption (machine, commit, samples) is drawn under the figure so a copied file stays labelled."""
    import textwrap
    import warnings
    if caption:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(caption, 180)), fontsize=6.5, color="#444444",
                 ha="left", va="bottom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # tight_layout's "not compatible" notes
        fig.tight_layout(rect=(0, 0.04 if caption else 0, right, 0.95))
    out = {}
    for fmt in ("png",) + FORMATS:
        buf = io.BytesIO()
        meta = {"Creator": "microbench"} if fmt in ("svg", "pdf") else None
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", metadata=meta)
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out.pop("png"), out


def _plot(title, fig, note, *, name, caption="", data=None, right: float = 1.0) -> Plot:
    png, files = _render(fig, caption, right)
    return Plot(title, png, note, data=data or {}, name=name, files=files, caption=caption)


def caption(records: list) -> str:
    """Where and from what the figures were made: machines, commits, sample counts."""
    recs = ok_records(records)
    machines, commits = {}, set()
    for r in recs:
        e = r.get("env") or {}
        gpu = e.get("gpu") or {}
        machines.setdefault(r.get("env_id"), f"{e.get('cpu', '?')} ({e.get('cores', '?')} cores)"
                            + (f", {gpu.get('name')}" if gpu.get("available") else ""))
        src = e.get("microbench") or {}
        if src.get("commit"):
            commits.add(src["commit"][:10] + ("+dirty" if src.get("dirty") else ""))
    ns = [r["stats"].get("n") for r in recs if isinstance(r["stats"].get("n"), int)]
    dates = sorted({str((r.get("env") or {}).get("date", ""))[:10] for r in recs} - {""})
    parts = ["; ".join(sorted(set(machines.values()))) or "machine not recorded",
             f"microbench commit {', '.join(sorted(commits))}" if commits else "commit not recorded",
             f"{len(recs)} measurements, {min(ns)}-{max(ns)} samples each" if ns else f"{len(recs)} measurements",
             "median per point, bars: interquartile range"]
    if dates:
        parts.insert(1, dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}")
    return ". ".join(parts) + "."


def _grid(n: int, w: float = 6.0, h: float = 3.8):
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _group(records: list, key) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


# -- ladder --------------------------------------------------------------------------------------


def ladder_plot(records: list, caption: str = "") -> Plot:
    title = "Fusion ladder: time per rung"
    recs = [r for r in ok_records(records) if (r.get("options") or {}).get("rung")]
    groups = _group(recs, lambda r: (r["op"], shape_text(r), r.get("dtype"), r.get("backend"),
                                     threads_of(r), r.get("env_id"), machine(r)))
    if not groups:
        return Plot(title, None, "no ladder records (run lstm/gru --ladder or a suite with ladder entries)")
    keys = list(groups)[:MAX_PANELS]
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        rows = groups[key]
        names = [r["options"]["rung"] for r in rows]
        ms = [_ms(r) for r in rows]
        err = list(zip(*[_err_ms(r) for r in rows]))
        colors = ["#999999" if n == "naive" else "#3b75af" for n in names]
        ax.bar(range(len(rows)), ms, yerr=err, color=colors, capsize=3)
        naive = next((m for n, m in zip(names, ms) if n == "naive"), None)
        for i, m in enumerate(ms):
            if naive:
                ax.annotate(f"{naive / m:.2f}x", (i, m), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 3), textcoords="offset points")
        ax.set_xticks(range(len(rows)), names, rotation=25, ha="right", fontsize=8)
        op, shape, dtype, backend, thr = key[:5]
        ax.set_title(f"{op} {shape} {dtype} {backend}" + (f", {thr} thr" if thr else ""), fontsize=9)
        ax.set_ylabel("ms per call (median, IQR bar)")
        ax.set_ylim(0, max(ms) * 1.2)
    fig.suptitle(title + " (label: speedup vs naive)", fontsize=11)
    more = f"; {len(groups) - len(keys)} more ladder(s) not drawn" if len(groups) > len(keys) else ""
    return _plot(title, fig, f"{len(groups)} ladder(s){more}", name="ladder", caption=caption)


# -- framework convergence ------------------------------------------------------------------------


def convergence_plot(records: list, caption: str = "") -> Plot:
    """Per shape, the best median of each implementation: framework paths (``torch/fused``) and our
    variants (``ours: fused/numba``), IQR error bars; panels with framework rows first."""
    title = "Framework convergence: best time per framework path"
    recs = ok_records(records)
    # one panel per computation: a training step and a forward pass, or the layer-norm cell and
    # the plain one, are different work and never share an axis
    groups = _group(recs, lambda r: (r["op"], shape_text(r), r.get("dtype"), threads_of(r), r.get("env_id"),
                                     machine(r), computation_of(r)))
    if not groups:
        return Plot(title, None, "no measured records")
    n_fw = lambda k: len({framework_of(r) for r in groups[k] if framework_of(r)})  # noqa: E731
    ranked = sorted(groups, key=lambda k: (-n_fw(k), -len({impl_name(r) for r in groups[k]})))
    shown = ranked[:MAX_CONVERGENCE_PANELS]
    any_busy = any(gpu_busy(r) for r in recs)
    fig, axes = _grid(len(shown))
    data = {}
    for ax, key in zip(axes, shown):
        best: dict = {}
        for r in groups[key]:
            name = impl_name(r)
            if name not in best or r["stats"]["median_s"] < best[name]["stats"]["median_s"]:
                best[name] = r
        names = sorted(best, key=lambda n: best[n]["stats"]["median_s"])
        wall = [_ms(best[n]) for n in names]
        err = list(zip(*[_err_ms(best[n]) for n in names]))
        y = list(range(len(names)))
        colors = [FRAMEWORK_COLOR if framework_of(best[n]) else OURS_COLOR for n in names]
        if any_busy:
            busy = [(gpu_busy(best[n]) or 0) * 1e3 for n in names]
            ax.barh([i - 0.2 for i in y], wall, height=0.4, xerr=err, color=colors, capsize=2)
            ax.barh([i + 0.2 for i in y], busy, height=0.4, color=BUSY_COLOR)
        else:
            ax.barh(y, wall, xerr=err, color=colors, capsize=2)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        for i, w in enumerate(wall):
            ax.annotate(f"{w:.3g} ms", (min(w + err[1][i], max(wall) * 1.6), i), va="center", fontsize=8,
                        xytext=(3, 0), textcoords="offset points")
        # the axis follows the medians; a very wide IQR bar runs off the edge rather than
        # squeezing every bar to nothing
        top = min(max(w + e for w, e in zip(wall, err[1])), max(wall) * 1.6)
        if max(wall) / max(min(wall), 1e-12) > LOG_SPAN:  # a linear axis would hide the fast rows
            ax.set_xscale("log")
            ax.set_xlim(min(wall) / 2, top * 4)
        else:
            ax.set_xlim(0, top * 1.35)
        op, shape, dtype, thr = key[:4]
        panel = f"{op} {shape} {dtype}" + (f", {key[-1]}" if key[-1] else "") + (f", {thr} thr" if thr else "")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("ms per call (median, IQR bar)" + (", log scale" if ax.get_xscale() == "log" else ""))
        data[panel] = {n: {"median_ms": w, "framework": framework_of(best[n]) or None,
                           "n": best[n]["stats"].get("n")} for n, w in zip(names, wall)}
    from matplotlib.patches import Patch
    handles = [Patch(color=OURS_COLOR, label="ours (microbench kernels)"),
               Patch(color=FRAMEWORK_COLOR, label="framework path")]
    if any_busy:
        handles.append(Patch(color=BUSY_COLOR, label="GPU busy"))
    axes[0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.08), fontsize=7, ncol=len(handles),
                   frameon=False)     # once, above the first panel, not per panel
    kind = "wall vs GPU-busy" if any_busy else "wall time only (no GPU-busy data in these records)"
    fig.suptitle(f"{title}: {kind}", fontsize=11)
    fws = sorted({framework_of(r) for r in recs if framework_of(r)})
    note = f"frameworks: {', '.join(fws)}" if fws else "no framework records: our backends only"
    if len(groups) > len(shown):
        note += f"; {len(groups) - len(shown)} more shape(s) not drawn (fewest framework rows)"
    return _plot(title, fig, note + ("" if any_busy else "; wall time only"), name="convergence",
                 caption=caption, data=data)


# -- roofline -------------------------------------------------------------------------------------


ABOVE_COLORS = {False: "#d62728", True: "#ff9f1c"}    # above the roof: plain, effective (Winograd/FFT)
CONTENDED_COLOR = "#222222"


def _point_flags(rec: dict, gflops: float, drawn_roof: float | None) -> tuple:
    """(above its roof, an effective rate, contended): above the record's own roof (``above_roof``)
    or above the measured ceiling drawn; contended: its samples did not get their threads."""
    from .contention import contended
    from .peaks import effective
    above = bool(rec.get("above_roof")) or (drawn_roof is not None and gflops > drawn_roof)
    return above, effective(rec), contended(rec)


def roofline_plot(records: list, caption: str = "", roofs: dict | None = None) -> Plot:
    """GFLOP/s against arithmetic intensity.  Ceilings: ``roofs`` measured on the machine
    (:func:`microbench.peaks.roofs`: a large GEMM and a streaming add), else the best point of the
    file, drawn dashed and labelled as lower bounds of the hardware's.  Colour: implementation;
    marker: thread count; bars: GFLOP/s at q3 and q1 of the samples."""
    title = "Roofline"
    pts = [r for r in ok_records(records)
           if (r.get("derived") or {}).get("gflops") and r.get("flops") and r.get("bytes")]
    if not pts:
        return Plot(title, None, "no records with FLOPs and bytes", name="roofline")
    import numpy as np
    measured = bool(roofs and roofs.get("gflops") and roofs.get("gbps"))
    if measured:
        peak_f, peak_b = roofs["gflops"], roofs["gbps"]
    else:
        peak_f = max(r["derived"]["gflops"] for r in pts)
        peak_b = max((r.get("derived") or {}).get("gbps") or r["bytes"] / r["stats"]["median_s"] / 1e9 for r in pts)
    ai = [r["flops"] / r["bytes"] for r in pts]
    ridge = peak_f / peak_b
    lo, hi = min(ai + [ridge]) / 4, max(ai + [ridge]) * 4
    x = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    style = {"color": "black", "lw": 1.5, "ls": "-" if measured else "--"}
    ax.loglog(x, np.minimum(peak_f, x * peak_b), **style)
    word = ("measured (a lower bound: measured busy)" if roofs.get("lower_bound") else "measured") if measured \
        else "best in file (lower bound)"
    ax.annotate(f"{word}: {peak_f:.1f} GFLOP/s" + (f" ({roofs.get('gemm')})" if measured else ""),
                (hi, peak_f), ha="right", va="bottom", fontsize=8)
    ax.annotate(f"{word}: {peak_b:.1f} GB/s" + (f" ({roofs.get('stream')})" if measured else ""),
                (lo * 1.1, lo * 1.1 * peak_b), ha="left", va="bottom", fontsize=8, rotation=0)
    series = _group(pts, impl_name)
    thr_marks = dict(zip(sorted({threads_of(r) or 0 for r in pts}), "os^Dv<>p*h"))
    ncol = 10 if len(series) <= 10 else 20              # distinct colours for up to 20 series
    cmap = plt.get_cmap(f"tab{ncol}")
    data = {}
    for i, (name, rs) in enumerate(list(series.items())[:20]):
        color = cmap(i % ncol)
        for t, mark in thr_marks.items():
            sub = [r for r in rs if (threads_of(r) or 0) == t]
            if not sub:
                continue
            xs = [r["flops"] / r["bytes"] for r in sub]
            ys = [r["derived"]["gflops"] for r in sub]
            lo_e = [y - r["flops"] / r["stats"].get("q3_s", r["stats"]["median_s"]) / 1e9 for r, y in zip(sub, ys)]
            hi_e = [r["flops"] / r["stats"].get("q1_s", r["stats"]["median_s"]) / 1e9 - y for r, y in zip(sub, ys)]
            ax.errorbar(xs, ys, yerr=[np.maximum(lo_e, 0), np.maximum(hi_e, 0)], fmt=mark, color=color,
                        ms=5, capsize=2, lw=0.8, alpha=0.9)
            flags = [_point_flags(r, y, peak_f if measured else None) for r, y in zip(sub, ys)]
            for (above, eff, busy), a, y in zip(flags, xs, ys):   # never shown silently
                if above:
                    ax.scatter([a], [y], s=110, facecolors="none", edgecolors=ABOVE_COLORS[eff], lw=1.4, zorder=5)
                if busy:
                    ax.scatter([a], [y], s=70, marker="x", color=CONTENDED_COLOR, lw=1.4, zorder=6)
            data.setdefault(name, []).extend(
                {"ai": a, "gflops": y, "threads": t or None, "shape": shape_text(r), "above_roof": f[0],
                 "effective": f[1], "contended": f[2]} for a, y, r, f in zip(xs, ys, sub, flags))
    from matplotlib.lines import Line2D
    impl_handles = [Line2D([], [], color=cmap(i % ncol), marker="o", ls="", label=n)
                    for i, n in enumerate(list(series)[:20])]
    thr_handles = [Line2D([], [], color="gray", marker=m, ls="", label=f"{t} thr" if t else "default threads")
                   for t, m in thr_marks.items()]
    flagged = [f for pts_ in data.values() for f in pts_]
    if any(f["above_roof"] and not f["effective"] for f in flagged):
        thr_handles.append(Line2D([], [], marker="o", ms=9, mfc="none", mec=ABOVE_COLORS[False], ls="",
                                  label="above its roof"))
    if any(f["above_roof"] and f["effective"] for f in flagged):
        thr_handles.append(Line2D([], [], marker="o", ms=9, mfc="none", mec=ABOVE_COLORS[True], ls="",
                                  label="above its roof: effective rate (Winograd/FFT)"))
    if any(f["contended"] for f in flagged):
        thr_handles.append(Line2D([], [], marker="x", color=CONTENDED_COLOR, ls="",
                                  label="contended (not its own time)"))
    # figure-level legends in the strip tight_layout leaves on the right (never clipped)
    fig.legend(handles=impl_handles, fontsize=7, loc="upper right", bbox_to_anchor=(0.995, 0.93),
               title="implementation", title_fontsize=8)
    fig.legend(handles=thr_handles, fontsize=7, loc="lower right", bbox_to_anchor=(0.995, 0.08),
               title="threads, marks", title_fontsize=8)
    ax.set_xlabel("arithmetic intensity (GEMM FLOPs / compulsory bytes)")
    ax.set_ylabel("GFLOP/s (median; bars: q1-q3)")
    if measured:
        ax.set_title(f"Roofline: ceilings measured on {roofs.get('where', 'this machine')} "
                     f"({roofs.get('date', '')[:16]})", fontsize=10)
        note = (f"ceilings measured: {peak_f:.1f} GFLOP/s ({roofs.get('gemm')}), {peak_b:.1f} GB/s "
                f"({roofs.get('stream')}) on {roofs.get('where', 'this machine')} at {roofs.get('date', '?')}")
    else:
        ax.set_title("Roofline: ceilings are the best points of this file (no measured roofs for "
                     "this machine), not hardware peaks", fontsize=10)
        note = (f"ceilings estimated from the best records: {peak_f:.1f} GFLOP/s, {peak_b:.2f} GB/s "
                "(not hardware peaks: lower bounds of them; run report on the machine that took the "
                "records to measure its roofs)")
    ax.grid(True, which="both", alpha=0.3)
    return _plot(title, fig, note, name="roofline", caption=caption, data=data, right=0.76)


# -- thread scaling -------------------------------------------------------------------------------


def scaling_series(records: list) -> list:
    """[(name, {threads: record})] for cases recorded at two or more thread counts."""
    from .store import identity
    groups: dict = {}
    for r in ok_records(records):
        t = threads_of(r)
        if not t:
            continue
        opts = {k: v for k, v in (r.get("options") or {}).items() if k != "threads"}
        key = identity({**r, "options": opts}) + (machine(r),)   # never a speedup across machines
        groups.setdefault(key, {})[t] = r
    out = []
    for by_t in groups.values():
        if len(by_t) >= 2:
            r = next(iter(by_t.values()))
            name = f"{r['op']} {shape_text(r)} {r.get('dtype')} {r.get('label')}"
            out.append((name, dict(sorted(by_t.items()))))
    return out


def thread_plot(records: list, caption: str = "") -> Plot:
    title = "Thread scaling: ms per call and speedup vs the fewest threads"
    series = scaling_series(records)
    if not series:
        return Plot(title, None, "no case recorded at two or more thread counts (use --threads 1,2,...)")
    # round-robin over (op, shape, dtype), so every kind of case shows before any repeats
    by_kind: dict = {}
    for name, by_t in series:
        r = next(iter(by_t.values()))
        by_kind.setdefault((r["op"], shape_text(r), r.get("dtype")), []).append((name, by_t))
    shown, queues = [], list(by_kind.values())
    while len(shown) < MAX_SERIES and any(queues):
        for q in queues:
            if q and len(shown) < MAX_SERIES:
                shown.append(q.pop(0))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    allt = sorted({t for _, by_t in shown for t in by_t})
    for name, by_t in shown:
        ts = list(by_t)
        ms = [_ms(by_t[t]) for t in ts]
        a1.errorbar(ts, ms, yerr=list(zip(*[_err_ms(by_t[t]) for t in ts])), marker="o", capsize=2,
                    label=name)
        a2.plot(ts, [ms[0] / m for m in ms], marker="o", label=name)
    a2.plot(allt, [t / allt[0] for t in allt], color="black", ls="--", lw=1, label="ideal")
    for a in (a1, a2):
        a.set_xticks(allt)
        a.set_xlabel("threads")
        a.grid(True, alpha=0.3)
    a1.set_ylim(bottom=0)
    a1.set_ylabel("ms per call (median, IQR bar)")
    a2.set_ylabel(f"speedup vs {allt[0]} thread{'s' * (allt[0] > 1)}")
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=11)
    more = f"; {len(series) - len(shown)} more not drawn" if len(series) > len(shown) else ""
    return _plot(title, fig, f"{len(series)} case(s) at several thread counts{more}", name="threads",
                 caption=caption)


ALL = (ladder_plot, convergence_plot, roofline_plot, thread_plot)


def all_plots(records: list, roofs: dict | None = None) -> list:
    """Every plot, each captioned with the machines, commits and sample counts of ``records``;
    ``roofs``: measured machine ceilings for the roofline (:mod:`microbench.peaks`)."""
    cap = caption(records)
    return [f(records, cap, roofs) if f is roofline_plot else f(records, cap) for f in ALL]
