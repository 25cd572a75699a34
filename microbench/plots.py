"""Plots of result records (matplotlib, Agg): each function takes records and returns a :class:`Plot`.

    ladder_plot       one panel per ladder (op, shape, dtype, backend, threads): a bar per rung,
                      median with the IQR as whisker, speedup vs naive above each whisker; a log
                      axis when one rung is far off the rest, whiskers past the room clipped with
                      a mark and their q3 printed
    convergence_plot  per op and shape (:mod:`microbench.convergence`): each framework's paths
                      and our naive, best own and direct-vendor rows on one log scale, the rows that
                      reach the vendor's layer primitive shaded as a band; beside them where each
                      row's time goes, from the oneDNN traces records carry
    roofline_plot     GFLOP/s against arithmetic intensity (FLOPs / compulsory bytes), against the
                      machine's measured roofs when given (:func:`microbench.peaks.roofs`), else
                      the best points of the file, drawn dashed and called lower bounds; colour:
                      implementation, marker: thread count, bars: q1-q3; a ring marks a point
                      above its roof (orange: an effective Winograd/FFT rate), an x a contended one
    thread_plot       per op and shape, each framework's best path and ours: ms per call (IQR
                      whiskers, log axis when the medians spread widely) and speedup vs the fewest
                      threads

Every figure comes as PNG (for the page) and as SVG and PDF (:data:`FORMATS`, for papers), with a
caption naming the machines, dates, commits and sample counts (:func:`caption`), drawn into the
figure too.  ``Plot.data`` holds what was drawn, by panel, so tests check figures by their data
and labels (``ladder_model``, ``thread_model`` and :func:`microbench.convergence.model` build it);
contended rows (``contention.contended``) and points above their roof (``above_roof``) are marked in
every figure.  A plot with no data to show returns ``Plot(png=None, note=why)``; the report prints
the note.  Records are the normalized dicts of :mod:`microbench.store` (status ok with stats).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kernels.untrusted import visible  # noqa: E402  (record text: control characters shown, not drawn)

from .recview import (computation_of, framework_of, gpu_busy, group_by, impl_name,  # noqa: E402,F401
                      ok_records, shape_text, threads_of)
from .store import machine  # noqa: E402  (ratios and panels never mix machines)

MAX_PANELS = 12
THREADS_LOG_SPAN = 10  # thread figure: medians further apart than this, a log time axis
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


def plain_text(plot_fn):
    """Draw a plot with math text off: labels come from records, and matplotlib would parse a
    ``$...$`` in one as TeX (a bad expression raises while the figure is saved).  rc_context,
    not a global setting, so a program that imports this module keeps its own rcParams."""
    import functools

    @functools.wraps(plot_fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
            return plot_fn(*args, **kwargs)
    return wrapper


def _ms(rec) -> float:
    return rec["stats"]["median_s"] * 1e3


def _err_ms(rec) -> tuple:
    st = rec["stats"]
    med = st["median_s"]
    return (max(med - st.get("q1_s", med), 0) * 1e3, max(st.get("q3_s", med) - med, 0) * 1e3)


FORMATS = ("svg", "pdf")
# the file stems of the figures (Plot.name), known before any is drawn: a report checks every
# path it may write before it writes one
NAMES = ("ladder", "convergence", "roofline", "threads")


def _render(fig, caption: str = "", right: float = 1.0, top: float = 0.95) -> tuple:
    """(png bytes, {"svg": ..., "pdf": ...}): the PNG for the page, vector files for papers; the
    caption (machine, commit, samples) is drawn under the figure so a copied file stays labelled."""
    import textwrap
    import warnings
    if caption:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(caption, 180)), fontsize=6.5, color="#444444",
                 ha="left", va="bottom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # tight_layout's "not compatible" notes
        fig.tight_layout(rect=(0, 0.04 if caption else 0, right, top))
    out = {}
    for fmt in ("png",) + FORMATS:
        buf = io.BytesIO()
        meta = {"Creator": "microbench"} if fmt in ("svg", "pdf") else None
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", metadata=meta)
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out.pop("png"), out


def _plot(title, fig, note, *, name, caption="", data=None, right: float = 1.0, top: float = 0.95) -> Plot:
    png, files = _render(fig, caption, right, top)
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
    parts = [visible("; ".join(sorted(set(machines.values())))) or "machine not recorded",
             visible(f"microbench commit {', '.join(sorted(commits))}") if commits else "commit not recorded",
             f"{len(recs)} measurements, {min(ns)}-{max(ns)} samples each" if ns else f"{len(recs)} measurements",
             "median per point, bars: interquartile range"]
    if dates:
        parts.insert(1, visible(dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}"))
    smoke = sum(bool((r.get("options") or {}).get("smoke")) for r in recs)
    if smoke:          # a smoke run's numbers are not measurements (MICROBENCH_SMOKE)
        parts.insert(0, f"SMOKE: {smoke} of {len(recs)} points from smoke runs, not measurements")
    return ". ".join(parts) + "."


def _grid(n: int, w: float = 6.0, h: float = 3.8):
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


# -- whiskers and marks ---------------------------------------------------------------------------

WHISKER_ROOM = 1.6   # linear axis: a whisker may run to 1.6x the largest median, beyond is clipped
LOG_ROOM = 4.0       # log axis: a factor of 4 past the extreme medians
CONTENDED_COLOR, CLIP_COLOR = "#c0392b", "#c0392b"


def marks_of(rec: dict) -> dict:
    """The record's flags a figure shows: ``contended`` (True/False, None: not measured) and
    ``above_roof`` (True/False, None: no roof in the record)."""
    c = rec.get("contention")
    contended = c.get("contended") if isinstance(c, dict) and isinstance(c.get("contended"), bool) else None
    roof = rec.get("above_roof")
    return {"contended": contended, "above_roof": roof if isinstance(roof, bool) else None}


def fmt_ms(v: float) -> str:
    """A time in ms for a label: three significant digits, thousands written out."""
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def _plain_log_ticks(axis) -> None:
    """Log axis ticks as plain numbers (1, 2, 5, 10, ...), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def mark_text(marks: dict) -> str:
    return "".join(f" [{w}]" for w, k in (("contended", "contended"), ("above roof", "above_roof")) if marks.get(k))


def axis_for(medians: list, q1s: list, q3s: list, span: float) -> dict:
    """Scale and limits of a time axis that the medians decide, not the widest whisker: log when
    the medians spread more than ``span`` (one outlier on a linear axis flattens the rest), and
    whiskers that run past the room left are clipped there, each clip reported."""
    lo_m, hi_m = min(medians), max(medians)
    log = hi_m / max(lo_m, 1e-12) > span
    cap_hi = hi_m * (LOG_ROOM if log else WHISKER_ROOM)
    cap_lo = lo_m / LOG_ROOM if log else 0.0
    whiskers = [(max(q1, cap_lo), min(q3, cap_hi), q1 < cap_lo, q3 > cap_hi) for q1, q3 in zip(q1s, q3s)]
    top = max(w[1] for w in whiskers)
    bottom = min(w[0] for w in whiskers)
    ylim = (bottom / 1.6, top * 2.2) if log else (0.0, top * 1.18)
    return {"scale": "log" if log else "linear", "ylim": ylim, "whiskers": whiskers}


def _draw_whiskers(ax, xs, meds, whiskers, *, vertical: bool = True, color="black") -> None:
    """IQR whiskers as drawn: a cap at each end (sized in points, whatever the axis), or at a
    clipped end a red arrow head at the axis room, never a silent cut."""
    for x, m, (lo, hi, clo, chi) in zip(xs, meds, whiskers):
        seg = ([x, x], [lo, hi]) if vertical else ([lo, hi], [x, x])
        ax.plot(*seg, color=color, lw=1.1, zorder=3)
        for end, clipped, up in ((lo, clo, False), (hi, chi, True)):
            at = (x, end) if vertical else (end, x)
            if clipped:
                mk = ("^" if up else "v") if vertical else (">" if up else "<")
                ax.plot(*at, marker=mk, color=CLIP_COLOR, ms=7, zorder=4, ls="")
            else:
                ax.plot(*at, marker="_" if vertical else "|", color=color, ms=9, mew=1.1, zorder=3, ls="")


# -- ladder --------------------------------------------------------------------------------------

LADDER_LOG_SPAN = 8.0   # medians further apart than this: log axis (an outlier would flatten the rest)


def ladder_model(records: list) -> dict:
    """The ladder figure as data: per ladder (op, shape, dtype, backend, threads, machine) its
    rungs (median, IQR, the whisker as drawn and whether it was clipped, speedup vs naive, marks)
    and the axis (scale, limits)."""
    recs = [r for r in ok_records(records) if (r.get("options") or {}).get("rung")]
    groups = group_by(recs, lambda r: (r["op"], shape_text(r), r.get("dtype"), r.get("backend"),
                                     threads_of(r), r.get("env_id"), machine(r)))
    panels = []
    for key in list(groups)[:MAX_PANELS]:
        rows = groups[key]
        meds = [_ms(r) for r in rows]
        q1s = [r["stats"].get("q1_s", r["stats"]["median_s"]) * 1e3 for r in rows]
        q3s = [r["stats"].get("q3_s", r["stats"]["median_s"]) * 1e3 for r in rows]
        axis = axis_for(meds, q1s, q3s, LADDER_LOG_SPAN)
        names = [visible(r["options"]["rung"]) for r in rows]
        naive = next((m for n, m in zip(names, meds) if n == "naive"), None)
        op, shape, dtype, backend, thr = key[:5]
        panels.append({
            "title": visible(f"{op} {shape} {dtype} {backend}") + (f", {thr} thr" if thr else ""),
            "scale": axis["scale"], "ylim": axis["ylim"],
            "rungs": [{"name": n, "median_ms": m, "q1_ms": a, "q3_ms": b, "whisker": (w[0], w[1]),
                       "clipped": w[2] or w[3], "speedup": naive / m if naive else None,
                       "label_at_ms": w[1], **marks_of(r)}
                      for n, m, a, b, w, r in zip(names, meds, q1s, q3s, axis["whiskers"], rows)]})
    return {"panels": panels, "ladders": len(groups)}


@plain_text
def ladder_plot(records: list, caption: str = "") -> Plot:
    title = "Fusion ladder: time per rung"
    model = ladder_model(records)
    if not model["panels"]:
        return Plot(title, None, "no ladder records (run lstm/gru --ladder or a suite with ladder entries)")
    fig, axes = _grid(len(model["panels"]))
    clipped = contended = 0
    for ax, pan in zip(axes, model["panels"]):
        rungs = pan["rungs"]
        xs = list(range(len(rungs)))
        meds = [g["median_ms"] for g in rungs]
        colors = ["#999999" if g["name"] == "naive" else OURS_COLOR for g in rungs]
        if pan["scale"] == "log":
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        bottom = pan["ylim"][0] if pan["scale"] == "log" else 0.0
        bars = ax.bar(xs, [m - bottom for m in meds], bottom=bottom, color=colors, zorder=2)
        for b, g in zip(bars, rungs):
            if g["contended"]:
                b.set_hatch("///")
                b.set_edgecolor(CONTENDED_COLOR)
        _draw_whiskers(ax, xs, meds, [(*g["whisker"], g["whisker"][0] > g["q1_ms"], g["whisker"][1] < g["q3_ms"])
                                      for g in rungs])
        for x, g in zip(xs, rungs):
            # above the whisker as drawn: a label never sits on a whisker
            text = f"{g['speedup']:.2f}x" if g["speedup"] else ""
            if g["clipped"] and g["whisker"][1] < g["q3_ms"]:
                text += f"\n(q3 {fmt_ms(g['q3_ms'])} ms)"
            ax.annotate(text, (x, g["label_at_ms"]), ha="center", va="bottom", fontsize=7.5,
                        xytext=(0, 4), textcoords="offset points", zorder=5)
        clipped += sum(g["clipped"] for g in rungs)
        contended += sum(bool(g["contended"]) for g in rungs)
        ax.set_xticks(xs, [g["name"] + mark_text(g).replace(" [", "\n[") for g in rungs], rotation=25,
                      ha="right", fontsize=8)
        ax.set_ylim(*pan["ylim"])
        ax.set_title(pan["title"], fontsize=9)
        ax.set_ylabel("ms per call (median, IQR whisker)" + (", log scale" if pan["scale"] == "log" else ""))
    fig.suptitle(title + " (label: speedup vs naive; red arrow: whisker clipped, q3 given)", fontsize=11)
    n = model["ladders"]
    drawn = len(model["panels"])
    note = f"{n} ladder(s)" + (f"; {n - drawn} more ladder(s) not drawn" if n > drawn else "")
    if clipped:
        note += f"; {clipped} whisker(s) clipped at the axis (marked, q3 printed)"
    if contended:
        note += f"; {contended} contended rung(s) hatched"
    return _plot(title, fig, note, name="ladder", caption=caption, data=model)


# -- framework convergence ------------------------------------------------------------------------

VENDOR_COLOR, REORDER_COLOR, OTHER_PRIM_COLOR, OUTSIDE_COLOR = "#d9822b", "#b5485d", "#f2c48d", "#d9d9d9"
VENDOR_TEXT_COLOR = "#a85a12"
MARKERS = {"own": ("o", OURS_COLOR), "vendor-direct": ("D", VENDOR_COLOR), "framework": ("s", FRAMEWORK_COLOR)}


@plain_text
def convergence_plot(records: list, caption: str = "") -> Plot:
    """Per op and shape: the rows that reach the vendor library against the rest, and beside them
    where each row's time goes (from traces in the records); see :mod:`microbench.convergence`."""
    from . import convergence
    title = "Framework convergence at the vendor library"
    model = convergence.model(records)
    if not model.panels:
        return Plot(title, None, "no measured records", name="convergence")
    any_busy = any(gpu_busy(r) for r in ok_records(records))
    heights = [max(len(p.rows), 2) * 0.42 + 1.5 for p in model.panels]
    height = sum(heights) + 2.2                  # 1.7 inches of title and legend above the panels
    traced = any(p.traced for p in model.panels)      # without traces the right column only says so
    fig, axes = plt.subplots(len(model.panels), 2, figsize=(15, height), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2 if traced else 1.2], "height_ratios": heights})
    data = {}
    for (ax, ax2), p in zip(axes, model.panels):
        _convergence_panel(ax, ax2, p)
        data[p.title] = p.to_dict()
    _convergence_legend(fig, 1 - 0.62 / height)
    fig.suptitle(f"{title}: do the rows that reach oneDNN/cuDNN land together, and where does their "
                 "time go?", fontsize=11.5, y=1 - 0.08 / height)
    fig.text(0.5, 1 - 0.38 / height,
             "Left: each framework's paths and our naive, best own and direct-vendor rows (median, IQR "
             "whisker; one log scale, the same span in every panel); shaded: the rows that run the "
             "vendor's layer primitive.\nRight: where each row's time goes, from the oneDNN trace its "
             "record carries.", ha="center", va="center", fontsize=8.5)
    fws = sorted({r.framework for p in model.panels for r in p.rows if r.framework})
    note = f"frameworks: {', '.join(fws)}" if fws else "no framework records: our backends only"
    if model.panels_left_out:
        note += (f"; {model.panels_left_out} more shape(s) not drawn (each op in turn, the shapes with "
                 "the most framework and vendor rows first)")
    note += "; " + "; ".join(model.notes) if model.notes else ""
    note += "" if any_busy else "; wall time only"
    return _plot(title, fig, note, name="convergence", caption=caption, data=data, top=1 - 1.2 / height)


def _convergence_panel(ax, ax2, p) -> None:
    import numpy as np
    ys, y, prev = [], 0.0, None
    for r in p.rows:                         # a gap between groups (ours, each framework)
        if prev is not None and r.group != prev:
            y += 0.6
        ys.append(y)
        y += 1.0
        prev = r.group
    ax.set_xscale("log")
    ax.set_xlim(*p.xlim)
    _plain_log_ticks(ax.xaxis)
    if p.band.rows:
        ax.axvspan(p.band.lo_ms, p.band.hi_ms * (1.0 + 1e-3), color=VENDOR_COLOR, alpha=0.22, lw=0, zorder=0)
        for v in (p.band.lo_ms, p.band.hi_ms):
            ax.axvline(v, color=VENDOR_COLOR, lw=0.8, zorder=0)
    for yy, r in zip(ys, p.rows):
        mk, color = MARKERS[r.kind]
        hollow = r.kind == "framework" and r.role != "vendor-library path"
        ax.plot([r.q1_ms, r.q3_ms], [yy, yy], color=color, lw=1.4, zorder=2)
        ax.plot(r.median_ms, yy, marker=mk, ms=7, color=color, mfc="white" if hollow else color,
                mew=1.6, zorder=3, ls="")
        if r.contended:
            ax.plot(r.median_ms, yy, marker="x", ms=11, color=CONTENDED_COLOR, mew=2, zorder=4)
        ax.annotate(f"{fmt_ms(r.median_ms)} ms", (r.q3_ms, yy), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=7.5)
    for yy, r in zip(ys, p.rows):
        if r.busy_ms:
            ax.plot(r.busy_ms, yy, marker="|", ms=12, mew=2, color=BUSY_COLOR, zorder=4)
    labels = [f"{r.name}" + ("  (?)" if r.reaches is None else "") + mark_text(asdict_marks(r)) for r in p.rows]
    ax.set_yticks(ys, labels, fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), p.rows):
        if r.contended:
            tick.set_color(CONTENDED_COLOR)
        elif r.reaches:                  # a band member: its label says so, wherever its point lands
            tick.set_color(VENDOR_TEXT_COLOR)
            tick.set_fontweight("bold")
    ax.set_ylim(max(ys) + 0.8, -0.8)
    ax.grid(True, axis="x", which="both", alpha=0.25)
    ax.set_xlabel("ms per call (median, IQR whisker), log scale"
                  + (f"; a wider span than the other panels ({p.xlim[1] / p.xlim[0]:.0f}x)" if p.own_span else ""),
                  color=CONTENDED_COLOR if p.own_span else "black")
    def spread(s, what):
        n = len(s.rows)
        return f"{n} {what}" + (f" within {s.ratio:.2f}x" if n > 1 else "")
    ax.set_title(f"{p.title}\n{spread(p.band, f'row(s) reaching {p.vendor} (shaded)')}; "
                 f"{spread(p.rest, 'other row(s)')}"
                 + ("; contended rows (x) left out" if any(r.contended for r in p.rows) else ""), fontsize=9)
    # right: where the time goes, per row, in % of the row's untraced wall
    ax2.set_xlim(0, 100)
    ax2.set_ylim(max(ys) + 0.8, -0.8)
    ax2.set_yticks(ys, [""] * len(ys))
    ax2.set_xlabel("share of the row's untraced wall time (%)")
    segments = (("layer_ms", VENDOR_COLOR, ""), ("other_ms", OTHER_PRIM_COLOR, ""),
                ("reorder_ms", REORDER_COLOR, ""), ("outside_ms", OUTSIDE_COLOR, ".."))
    for yy, r in zip(ys, p.rows):
        e = r.explanation
        if e is None:
            if p.traced:
                ax2.text(1, yy, "no trace in the records", va="center", fontsize=7, color="#777777")
            continue
        total = e["traced_ms"] if e["exceeds"] else e["wall_ms"]
        left = 0.0
        for k, color, hatch in segments:
            v = e.get(k) or 0.0
            w = 100.0 * v / total if total else 0.0
            if w > 0:
                ax2.barh(yy, w, left=left, color=color, hatch=hatch, height=0.6, edgecolor="white", lw=0.3)
                left += w
        text = f"{e['wall_ms']:.3g} ms" + (f", {e['top']}" if e["top"] else ", no oneDNN primitive")
        if e["exceeds"]:
            text += "; traced > wall: shares of traced time"
        ax2.text(min(left, 100) + 1 if left < 60 else 1, yy - 0.38, text, va="bottom", fontsize=6.5,
                 color="#333333")
    if not p.traced:
        ax2.text(50, np.mean(ys), "No oneDNN traces in these records:\n`explain %s --device cpu --json FILE`\n"
                 "(same sizes) writes records that carry them" % p.op if p.device == "cpu" else
                 "No traces in these records", ha="center", va="center", fontsize=8, color="#555555",
                 bbox={"facecolor": "white", "edgecolor": "#bbbbbb"})
    ax2.set_title("where the time goes (from the oneDNN trace)", fontsize=9)


def asdict_marks(r) -> dict:
    return {"contended": r.contended, "above_roof": r.above_roof}


def _convergence_legend(fig, y: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Line2D([], [], marker="o", color=OURS_COLOR, ls="", label="ours: own kernels"),
               Line2D([], [], marker="D", color=VENDOR_COLOR, ls="", label="ours: direct oneDNN/cuDNN call"),
               Line2D([], [], marker="s", color=FRAMEWORK_COLOR, ls="", label="framework: vendor-library path"),
               Line2D([], [], marker="s", color=FRAMEWORK_COLOR, mfc="white", ls="",
                      label="framework: generic loop / other path"),
               Line2D([], [], marker="x", color=CONTENDED_COLOR, ls="", mew=2, label="contended (not comparable)"),
               Patch(color=VENDOR_COLOR, alpha=0.3, label="vendor band"),
               Patch(color=VENDOR_COLOR, label="layer primitive (rnn / convolution)"),
               Patch(color=OTHER_PRIM_COLOR, label="other oneDNN primitives (GEMM, element-wise)"),
               Patch(color=REORDER_COLOR, label="reorders"),
               Patch(facecolor=OUTSIDE_COLOR, hatch="..", label="outside oneDNN"),
               Line2D([], [], ls="", label="bold brown label: runs the vendor's layer primitive (band member)"),
               Line2D([], [], ls="", label="(?): no trace or declaration says whether it reaches the vendor")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncol=4, fontsize=7.5,
               frameon=False)


# -- roofline -------------------------------------------------------------------------------------


ABOVE_COLORS = {False: "#d62728", True: "#ff9f1c"}    # above the roof: plain, effective (Winograd/FFT)


def _point_flags(rec: dict, gflops: float, drawn_roof: float | None) -> tuple:
    """(above its roof, an effective rate, contended): above the record's own roof (``above_roof``)
    or above the measured ceiling drawn; contended: its samples did not get their threads."""
    from .contention import contended
    from .peaks import effective
    above = bool(rec.get("above_roof")) or (drawn_roof is not None and gflops > drawn_roof)
    return above, effective(rec), contended(rec)


@plain_text
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
    series = group_by(pts, impl_name)
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
            name = visible(f"{r['op']} {shape_text(r)} {r.get('dtype')} {r.get('label')}")
            out.append((name, dict(sorted(by_t.items()))))
    return out


MAX_THREAD_PANELS = 4
ROLE_TEXT = {"ours: own": "our best own kernel", "ours: vendor": "our direct vendor call",
             "ours: naive": "our naive kernel"}


def _thread_role(rec: dict) -> str:
    """Which series a scaling case can be: a framework's, our direct vendor call, or our own."""
    from .convergence import is_vendor_direct
    return framework_of(rec) or ("ours: vendor" if is_vendor_direct(rec) else "ours: own")


def thread_model(records: list) -> dict:
    """The thread figure as data: per op and shape (dtype, computation, machine), each framework's
    best path and our best own kernel and best direct vendor call (best: the lowest median at any
    thread count; naive rungs only where nothing else of ours scales), each with its points
    (median, IQR whisker as drawn, clipped or not, speedup vs its fewest threads, marks), and the
    time axis (log when the medians spread widely)."""
    series = scaling_series(records)
    panels: dict = {}
    for name, by_t in series:
        r = next(iter(by_t.values()))
        key = (r["op"], shape_text(r), r.get("dtype"), computation_of(r), machine(r))
        panels.setdefault(key, []).append((name, by_t))
    best = lambda by_t: min(v["stats"]["median_s"] for v in by_t.values())  # noqa: E731
    from .convergence import choose
    # each op in turn, its shapes by how many kinds of row scale there (frameworks, ours)
    score = lambda k: (len({_thread_role(next(iter(b.values()))) for _, b in panels[k]}),)  # noqa: E731
    out = []
    for key in choose(panels, MAX_THREAD_PANELS, score):
        roles: dict = {}
        for name, by_t in panels[key]:
            r = next(iter(by_t.values()))
            role = _thread_role(r)
            if role == "ours: own" and "naive" in ((r.get("options") or {}).get("rung"),
                                                   str(r.get("variant", "")).split("+")[0]):
                role = "ours: naive"
            roles.setdefault(role, []).append((name, by_t))
        if "ours: own" in roles:
            roles.pop("ours: naive", None)        # naive only where nothing else of ours scales
        chosen = []
        for role in sorted(roles, key=lambda k: (not k.startswith("ours"), k)):
            name, by_t = min(roles[role], key=lambda nb: best(nb[1]))
            r0 = next(iter(by_t.values()))
            chosen.append((role, impl_name(r0), by_t))
        meds = [_ms(rec) for _, _, by_t in chosen for rec in by_t.values()]
        q1s = [rec["stats"].get("q1_s", rec["stats"]["median_s"]) * 1e3 for _, _, b in chosen for rec in b.values()]
        q3s = [rec["stats"].get("q3_s", rec["stats"]["median_s"]) * 1e3 for _, _, b in chosen for rec in b.values()]
        axis = axis_for(meds, q1s, q3s, THREADS_LOG_SPAN)
        whiskers = iter(axis["whiskers"])
        ser = []
        for role, label, by_t in chosen:
            t0 = min(by_t)
            pts = []
            for t, rec in by_t.items():
                w = next(whiskers)
                pts.append({"threads": t, "median_ms": _ms(rec),
                            "q1_ms": rec["stats"].get("q1_s", rec["stats"]["median_s"]) * 1e3,
                            "q3_ms": rec["stats"].get("q3_s", rec["stats"]["median_s"]) * 1e3,
                            "whisker": (w[0], w[1]), "clipped": w[2] or w[3],
                            "speedup": by_t[t0]["stats"]["median_s"] / rec["stats"]["median_s"], **marks_of(rec)})
            ser.append({"name": label, "role": role, "points": pts})
        op, shape, dtype, comp, _m = key
        out.append({"title": visible(f"{op} {shape} {dtype}" + (f", {comp}" if comp else "")), "scale": axis["scale"],
                    "ylim": axis["ylim"], "series": ser,
                    "left_out": len(panels[key]) - len(chosen)})
    return {"panels": out, "cases": len(series), "shapes": len(panels)}


def thread_plot(records: list, caption: str = "") -> Plot:
    title = "Thread scaling: each framework's best path and ours"
    model = thread_model(records)
    if not model["panels"]:
        return Plot(title, None, "no case recorded at two or more thread counts (use --threads 1,2,...)")
    n = len(model["panels"])
    fig, axes = plt.subplots(n, 2, figsize=(13, 4.0 * n), squeeze=False)
    cmap = plt.get_cmap("tab10")
    clipped = 0
    for (a1, a2), pan in zip(axes, model["panels"]):
        allt = sorted({pt["threads"] for s in pan["series"] for pt in s["points"]})
        if pan["scale"] == "log":
            a1.set_yscale("log")
            _plain_log_ticks(a1.yaxis)
        for i, s in enumerate(pan["series"]):
            color = cmap(i % 10)
            ts = [pt["threads"] for pt in s["points"]]
            ms = [pt["median_ms"] for pt in s["points"]]
            ls = "--" if s["role"].startswith("ours") else "-"
            a1.plot(ts, ms, marker="o", color=color, ls=ls,
                    label=f"{s['name']}: {ROLE_TEXT.get(s['role'], 'best path')}")
            _draw_whiskers(a1, ts, ms, [(*pt["whisker"], pt["whisker"][0] > pt["q1_ms"], pt["whisker"][1] < pt["q3_ms"])
                                        for pt in s["points"]], color=color)
            for pt in s["points"]:
                if pt["clipped"] and pt["whisker"][1] < pt["q3_ms"]:
                    a1.annotate(f"q3 {fmt_ms(pt['q3_ms'])} ms", (pt["threads"], pt["whisker"][1]), fontsize=6.5,
                                color=CLIP_COLOR, xytext=(5, -3), textcoords="offset points")
                if pt["contended"]:
                    a1.plot(pt["threads"], pt["median_ms"], marker="x", ms=11, mew=2, color=CONTENDED_COLOR)
                if pt["above_roof"]:
                    a1.annotate("above roof", (pt["threads"], pt["median_ms"]), fontsize=6.5, color=CONTENDED_COLOR,
                                xytext=(4, -8), textcoords="offset points")
            a2.plot(ts, [pt["speedup"] for pt in s["points"]], marker="o", color=color, ls=ls, label=s["name"])
            clipped += sum(pt["clipped"] for pt in s["points"])
        a2.plot(allt, [t / allt[0] for t in allt], color="black", ls=":", lw=1, label="ideal")
        a1.set_ylim(*pan["ylim"])
        for a in (a1, a2):
            a.set_xticks(allt)
            a.set_xlabel("threads")
            a.grid(True, which="both", alpha=0.3)
        a1.set_ylabel("ms per call (median, IQR whisker)" + (", log scale" if pan["scale"] == "log" else ""))
        a1.set_title(pan["title"], fontsize=9)
        a2.set_ylabel(f"speedup vs {allt[0]} thread{'s' * (allt[0] > 1)}")
        a2.set_title(pan["title"] + ": speedup", fontsize=9)
        a1.legend(fontsize=7, loc="best")
    fig.suptitle(title + " (median, IQR whiskers; red arrow: whisker clipped; x: contended)", fontsize=11)
    shown = sum(len(p["series"]) for p in model["panels"])
    note = (f"{model['cases']} case(s) at several thread counts in {model['shapes']} shape(s); drawn: "
            f"{shown} series, each framework's best path and ours per shape")
    if model["shapes"] > len(model["panels"]):
        note += f"; {model['shapes'] - len(model['panels'])} more shape(s) not drawn"
    if clipped:
        note += f"; {clipped} whisker(s) clipped at the axis (marked)"
    return _plot(title, fig, note, name="threads", caption=caption, data=model)


ALL = (ladder_plot, convergence_plot, roofline_plot, thread_plot)


def all_plots(records: list, roofs: dict | None = None) -> list:
    """Every plot, each captioned with the machines, commits and sample counts of ``records``;
    ``roofs``: measured machine ceilings for the roofline (:mod:`microbench.peaks`)."""
    cap = caption(records)
    return [f(records, cap, roofs) if f is roofline_plot else f(records, cap) for f in ALL]
