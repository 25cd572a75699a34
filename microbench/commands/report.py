"""``report FILE... [--html out.html] [--md out.md]``: tables and plots of results files.

Without an output flag the tables print to the terminal.  ``--html`` writes one self-contained
page (PNG plots embedded as base64), ``--md`` a Markdown file with the same tables and images
(data URIs); beside either, every figure also as SVG and PDF (``r.html`` -> ``r-roofline.svg``),
captioned with the machine, commit and sample counts.  ``--csv`` writes one row per case.  The
plots are those of :mod:`microbench.plots`: the fusion ladder, framework convergence, a roofline
(with this machine's measured roofs when the records were taken here, else the best points of
the file, labelled as such), and thread scaling.  Outputs are
written to a temporary file and renamed; before anything is written, every path the command may
write (each output and each figure file beside --html/--md) is compared, resolved, with every
input and with the other outputs, so a failed or mistaken report never damages results or its
own outputs.  Record text is untrusted: each target escapes it (HTML entities; Markdown without
raw HTML, links or emphasis; CSV cells that a spreadsheet would run as a formula; control
characters and rich markup on the terminal).
"""
from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from kernels.errors import BadInput
from kernels.untrusted import terminal, visible
from rich.markup import escape


def add_parsers(sub) -> None:
    from ..args import output_path
    p = sub.add_parser("report", help="tables and plots (HTML, Markdown) of results files",
                       description="Tables of results files; with --html/--md also plots (ladder, "
                                   "framework convergence, roofline, thread scaling) embedded as PNG, "
                                   "and each figure as SVG and PDF files beside the report.")
    p.add_argument("files", nargs="+", metavar="FILE", help="results files (JSON lines, from --json)")
    p.add_argument("--html", metavar="PATH", type=output_path, help="write a self-contained HTML report")
    p.add_argument("--md", metavar="PATH", type=output_path, help="write a Markdown report (images as data URIs)")
    p.add_argument("--csv", metavar="PATH", type=output_path, help="write one CSV row per case (numbers in "
                   "seconds, for spreadsheets and pandas)")
    p.add_argument("--title", default="microbench report", help="report title")
    p.add_argument("--no-roofs", action="store_true",
                   help="do not measure this machine's roofs for the roofline (they are measured, in "
                        "a few seconds, only when the records were taken on this machine)")
    p.set_defaults(func=cmd_report)


# -- tables as rows of text ------------------------------------------------------------------------

RESULT_COLUMNS = ("op", "shape", "dtype", "thr", "case", "median", "mark", "+-IQR", "CPU/wall", "GFLOP/s",
                  "GB/s", "check", "status")


def result_rows(records: list) -> list:
    """One row per case; the median's marks in a column of their own ("mark": ~ noisy, !
    contended, ^ above the roof), times with a unit per cell."""
    from .. import contention, store
    from ..recview import shape_text, threads_of
    from ..report import fmt_time, row_marks
    rows = []
    for r in store.latest(records, with_env=True, status=None).values():
        st = r.get("stats") if isinstance(r.get("stats"), dict) else None
        d = r.get("derived") or {}
        chk = r.get("check") or {}
        err = chk.get("max_rel_err")
        thr = threads_of(r)
        status = r.get("status", "?") if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error') or ''}"
        cont = contention.of(r)
        if cont["contended"]:
            status += f" (contended: {cont['why']})"
        cpw = cont.get("cpu_per_wall")
        rows.append((r.get("op", "?"), shape_text(r), r.get("dtype", "?"), str(thr) if thr else "-",
                     str(r.get("label", "?")),
                     fmt_time(st["median_s"]) if st else "-", row_marks(r) if st else "",
                     f"{100 * st['rel_noise']:.1f}%" if st and "rel_noise" in st else "-",
                     f"{cpw:.2f}" if isinstance(cpw, (int, float)) else "-",
                     f"{d['gflops']:.2f}" if d.get("gflops") else "-",
                     f"{d['gbps']:.3f}" if d.get("gbps") else "-",
                     f"{err:.1e}" if isinstance(err, (int, float)) else "-", status))
    return rows


def scaling_rows(records: list) -> tuple:
    """(columns, rows) of the thread table: ms per thread count and speedup vs the fewest."""
    from ..plots import scaling_series
    series = scaling_series(records)
    counts = sorted({t for _, by_t in series for t in by_t})
    cols = ("case", *[f"{t} thr ms" for t in counts], *[f"x{t}" for t in counts[1:]])
    rows = []
    for name, by_t in series:
        base_t = min(by_t)
        base = by_t[base_t]["stats"]["median_s"]
        ms = [f"{by_t[t]['stats']['median_s'] * 1e3:.3f}" if t in by_t else "-" for t in counts]
        sp = [f"{base / by_t[t]['stats']['median_s']:.2f}" if t in by_t else "-" for t in counts[1:]]
        rows.append((name, *ms, *sp))
    return cols, rows


def env_rows(records: list) -> list:
    seen = {}
    for r in records:
        e = r.get("env") or {}
        eid = r.get("env_id") or "?"
        if eid in seen:
            continue
        gpu = e.get("gpu") or {}
        libs = e.get("libraries") or {}
        seen[eid] = (eid, str(e.get("date", "?")), f"{e.get('cpu', '?')} ({e.get('cores', '?')} cores)",
                     str(gpu.get("name")) if gpu.get("available") else "none",
                     ", ".join(f"{k} {v}" for k, v in libs.items()))
    return list(seen.values())


ENV_COLUMNS = ("env_id", "date", "cpu", "gpu", "libraries")

CONV_GEOMETRY = ("stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w", "groups")
CSV_COLUMNS = ("op", "variant", "backend", "framework", "label", "device", "dtype", "T", "B", "I", "H", "L",
               "N", "C", "W", "K", "R", "S", *CONV_GEOMETRY, "layout", "threads", "mode", "nvtx",
               "suite", "suite_entry", "status", "n", "median_s", "q1_s", "q3_s", "min_s", "mean_s",
               "rel_noise", "cpu_per_wall", "contended", "gflops", "flops_kind", "roof_gflops",
               "roof_lower_bound", "above_roof", "gbps", "max_rel_err", "error", "env_id", "date",
               "commit", "dirty")


def csv_text(records: list) -> str:
    """The last record of each case as CSV: raw numbers (seconds), one column per shape field."""
    import csv
    import io

    from .. import contention, store
    from ..recview import framework_of
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in store.latest(records, with_env=True, status=None).values():
        shape, opts = r.get("shape") or {}, r.get("options") or {}
        st = r.get("stats") if isinstance(r.get("stats"), dict) else {}
        d, chk = r.get("derived") or {}, r.get("check") or {}
        env = r.get("env") or {}
        src = env.get("microbench") or {}
        info = r.get("info") if isinstance(r.get("info"), dict) else {}
        suite = r.get("suite") if isinstance(r.get("suite"), dict) else {}
        roof = r.get("roof") if isinstance(r.get("roof"), dict) else {}
        cont = contention.of(r) if r.get("status") == "ok" else {}
        row = {"op": r.get("op"), "variant": r.get("variant"), "backend": r.get("backend"),
               "framework": framework_of(r), "label": r.get("label"), "device": r.get("device"),
               "dtype": r.get("dtype"), **{k: shape.get(k) for k in "TBIHLNCWKRS"},
               **{k: shape.get(k) for k in CONV_GEOMETRY}, "layout": info.get("layout"),
               "threads": opts.get("threads"), "mode": opts.get("mode"), "nvtx": opts.get("nvtx"),
               "suite": suite.get("suite"), "suite_entry": suite.get("entry"),
               "status": r.get("status"), **{k: st.get(k) for k in ("n", "median_s", "q1_s", "q3_s", "min_s",
                                                                     "mean_s", "rel_noise")},
               "cpu_per_wall": cont.get("cpu_per_wall"), "contended": cont.get("contended"),
               "gflops": d.get("gflops"), "flops_kind": info.get("flops_kind"),
               "roof_gflops": roof.get("gflops"), "roof_lower_bound": roof.get("lower_bound"),
               "above_roof": r.get("above_roof"),
               "gbps": d.get("gbps"), "max_rel_err": chk.get("max_rel_err"),
               "error": r.get("error"), "env_id": r.get("env_id"), "date": env.get("date"),
               "commit": src.get("commit"), "dirty": src.get("dirty")}
        w.writerow(["" if row[c] is None else csv_cell(row[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


# a cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_cell(value):
    """A CSV cell of record text that a spreadsheet shows as text: a leading formula character
    gets a ``'`` before it (numbers stay numbers)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


# -- writers ---------------------------------------------------------------------------------------


def _check_output(path, flag: str) -> Path:
    from ..files import check_output, shown
    # a regular file or a new one: the report is renamed into place, which would replace a
    # device node or a FIFO with a regular file
    check_output(path, flag)
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise BadInput(f"{flag} {shown(path)} cannot be written (permission denied)")
    return p


def _file_keys(path) -> set:
    """What identifies the file a path names: the path resolved (symbolic links, ``..``, the
    working directory) and, where it exists, its device and inode (a hard link, a bind mount)."""
    keys = {os.path.realpath(path)}
    try:
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    except (OSError, ValueError):
        pass
    return keys


def plan_outputs(args) -> tuple:
    """(csv path or None, [(flag, path)] of --html/--md): every path the command may write (the
    outputs and the figure files beside --html/--md) checked before anything is written: each
    a regular file or a new one, none an input file, none another output (the figures --html
    and --md both write beside a report of one stem are the same figure, written once)."""
    from ..files import shown
    outs = [(flag, _check_output(path, flag)) for flag, path in
            (("--csv", getattr(args, "csv", None)), ("--html", args.html), ("--md", args.md)) if path]
    if any(flag != "--csv" for flag, _ in outs):
        try:
            from .. import plots as mplots
        except ImportError as e:
            raise BadInput(f"--html/--md draw plots with matplotlib, which cannot be imported ({e}); "
                           "pip install 'microbench-kernels[report]' or pip install matplotlib") from None
    writes = []              # (what, path, the figure it holds or None)
    for flag, path in outs:
        writes.append((f"{flag} {shown(path)}", path, None))
        if flag != "--csv":
            for name in mplots.NAMES:
                for fmt in mplots.FORMATS:
                    fig = path.with_name(f"{path.stem}-{name}.{fmt}")
                    _check_output(fig, f"{flag} {shown(path)}: figure")
                    writes.append((f"the figure {shown(fig)} of {flag} {shown(path)}", fig, (name, fmt)))
    inputs = [(f, _file_keys(f)) for f in args.files]
    seen: list = []
    for what, path, figure in writes:
        keys = _file_keys(path)
        for f, fkeys in inputs:
            if keys & fkeys:
                raise BadInput(f"{what} is the input file {shown(f)}; it would be overwritten "
                               "(give the report another name)")
        for other, okeys, ofigure in seen:
            if keys & okeys and not (figure and figure == ofigure):
                raise BadInput(f"{what} and {other} are the same file; give each output its own path")
        seen.append((what, keys, figure))
    return (next((p for f, p in outs if f == "--csv"), None), [(f, p) for f, p in outs if f != "--csv"])


def _replace(path: Path, data: bytes, flag: str) -> None:
    """``data`` into ``path`` through a new temporary file beside it (created exclusively, so it
    never replaces anything; with the umask's mode, as a plain open would) renamed over the target."""
    import secrets
    from ..files import shown
    tmp = None
    try:
        for _ in range(100):
            try:
                f = open(path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp"), "xb")
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free temporary name beside {path.name}")
        tmp = f.name
        with f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise BadInput(f"{flag} {shown(path)} cannot be written: {e.strerror or e}") from None


def _write(path: Path, text: str, flag: str) -> None:
    # backslashreplace: a file name given in a non-UTF-8 encoding reaches the text as surrogates
    _replace(path, text.encode("utf-8", errors="backslashreplace"), flag)


def _write_bytes(path: Path, data: bytes, flag: str) -> None:
    _replace(path, data, flag)


def figure_paths(report: Path, plot) -> dict:
    """Format -> path of a plot's vector files beside the report: ``r.html`` -> ``r-roofline.svg``."""
    return {fmt: report.with_name(f"{report.stem}-{plot.name}.{fmt}") for fmt in plot.files}


def write_figures(report: Path, plots, flag: str, written: set | None = None) -> list:
    """Write each plot's figure files beside ``report``; ``written``: paths this command already
    wrote (the same figure beside --html and --md), not written twice."""
    written = set() if written is None else written
    files = []
    for p in plots:
        for fmt, path in figure_paths(report, p).items():
            if path not in written:
                _write_bytes(path, p.files[fmt], flag)
                written.add(path)
            files.append(path)
    return files


def _html_table(cols, rows) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _md_table(cols, rows) -> str:
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_MD_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# inline markup: code, emphasis, links and images, table cells, strikethrough, math, headings
_MD_INLINE = re.compile(r"[\\`*_\[\]|~$#]")
# what makes a line an ordered list item ("12. "); "-", "+" and "=" start a list or a setext
# underline ("#" and ">" are escaped anywhere)
_MD_ORDERED = re.compile(r"^\d{1,9}(?=[.)](\s|$))")


def _md_url(name: str) -> str:
    """A file name as a link destination in ``<...>``: percent-encoded (no ``>``, space or
    control character can end it or add to it)."""
    from urllib.parse import quote
    return quote(name, safe="", errors="surrogateescape")


def md_text(value) -> str:
    """Text (from a record, a file name) as Markdown that renders as that text: one line (control
    characters shown as escapes), no raw HTML, and every character that could start markup
    escaped."""
    text = visible(value).strip().translate(_MD_ENTITIES)
    text = _MD_INLINE.sub(lambda m: "\\" + m.group(), text)
    if text[:1] in ("-", "+", "="):
        return "\\" + text
    m = _MD_ORDERED.match(text)
    return text[:m.end()] + "\\" + text[m.end():] if m else text


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1300px}
table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.note{color:#555;font-size:13px}"""


def rerun_note(records: list) -> str:
    """Records superseded by a later record of the same case (a rerun into the same --json)."""
    from .. import store
    # a traced record (explain --json) of a case the benchmark also timed is not a rerun: the
    # figures take the trace from it and the time from the last record
    traced = [r for r in records if r.get("onednn_trace") is not None]
    plain = [r for r in records if r.get("onednn_trace") is None]
    n = sum(len(g) - len(store.latest(g, with_env=True, status=None)) for g in (traced, plain))
    if not n:
        return ""
    return (f"{n} record(s) are reruns of a case already in the file(s): each case shows its last "
            "record only (use a new --json per run, or --resume, to avoid duplicates)")


def noise_note(records: list) -> str:
    """A warning when many measurements missed their noise target (a busy machine, short cases)."""
    st = [r["stats"] for r in records if r.get("status") == "ok" and isinstance(r.get("stats"), dict)]
    noisy = sum(bool(s.get("noisy")) for s in st)
    if not st or noisy < max(1, len(st) // 4):
        return ""
    return (f"{noisy} of {len(st)} measurements are noisy (IQR/median above the target): the machine "
            "was busy or the cases short; compare such numbers only with care, or rerun them")


RESULTS_NOTE = ("median of the samples per call; mark: ~ IQR/median above the noise target, ! contended "
                "(the samples did not get their threads: other processes held the cores; not comparable), "
                "^ above the roof (GFLOP/s above the fastest GEMM measured for its precision and threads; "
                "Winograd and FFT rates are effective: the direct convolution's FLOPs); +-IQR: interquartile "
                "range / median; CPU/wall: CPU seconds the process got per second of its samples; "
                "GFLOP/s counts GEMM FLOPs (the roof each is held against is in the CSV); check: largest "
                "error relative to the float64 reference.")


def contention_note(records: list) -> str:
    """A warning when records were measured contended (their samples did not get their threads)."""
    from .. import contention, store
    latest = list(store.latest(records, with_env=True, status=None).values())
    return contention.summary(latest)


def render_html(title, sources, records, plots, skipped, out_path=None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>{len(records)} record(s) from {html.escape(', '.join(sources))}"
             + (f"; {skipped} line(s) that are not records were skipped" if skipped else "") + "</p>",
             f"<p class='note'><b>{html.escape(noise_note(records))}</b></p>" if noise_note(records) else "",
             f"<p class='note'><b>{html.escape(contention_note(records))}</b></p>" if contention_note(records) else "",
             f"<p class='note'>{html.escape(rerun_note(records))}</p>" if rerun_note(records) else "",
             "<h2>Environments</h2>", _html_table(ENV_COLUMNS, env_rows(records)), "<h2>Plots</h2>"]
    for p in plots:
        parts.append(f"<h3>{html.escape(p.title)}</h3>")
        if p.png:
            b64 = base64.b64encode(p.png).decode("ascii")
            links = " ".join(f"<a href='{html.escape(_md_url(path.name))}'>{fmt.upper()}</a>"
                             for fmt, path in figure_paths(Path(out_path or "report.html"), p).items())
            parts.append(f"<figure><img alt='{html.escape(p.title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption class='note'>{html.escape(p.caption)} {links}</figcaption></figure>")
        parts.append(f"<p class='note'>{html.escape(p.note)}</p>")
    cols, rows = scaling_rows(records)
    if rows:
        parts += ["<h2>Thread scaling</h2>", _html_table(cols, rows)]
    parts += ["<h2>Results</h2>", _html_table(RESULT_COLUMNS, result_rows(records)),
              f"<p class='note'>{html.escape(RESULTS_NOTE)}</p></body></html>"]
    return "\n".join(parts)


def render_md(title, sources, records, plots, skipped, out_path=None) -> str:
    # every text below but our own markup goes through md_text: records and file names are
    # untrusted, and Markdown renders raw HTML, links and images
    parts = [f"# {md_text(title)}", "", f"{len(records)} record(s) from {md_text(', '.join(sources))}"
             + (f"; {skipped} line(s) that are not records were skipped" if skipped else ""), "",
             *([f"**{md_text(noise_note(records))}**", ""] if noise_note(records) else []),
             *([f"**{md_text(contention_note(records))}**", ""] if contention_note(records) else []),
             *([f"_{md_text(rerun_note(records))}_", ""] if rerun_note(records) else []),
             "## Environments", "", _md_table(ENV_COLUMNS, env_rows(records)), "", "## Plots", ""]
    for p in plots:
        parts += [f"### {md_text(p.title)}", ""]
        if p.png:
            links = ", ".join(f"[{fmt.upper()}](<{_md_url(path.name)}>)"
                              for fmt, path in figure_paths(Path(out_path or "report.md"), p).items())
            parts += [f"![{md_text(p.title)}](data:image/png;base64,{base64.b64encode(p.png).decode('ascii')})", "",
                      f"{md_text(p.caption)} {links}", ""]
        parts += [f"_{md_text(p.note)}_", ""]
    cols, rows = scaling_rows(records)
    if rows:
        parts += ["## Thread scaling", "", _md_table(cols, rows), ""]
    parts += ["## Results", "", _md_table(RESULT_COLUMNS, result_rows(records)), "", f"_{RESULTS_NOTE}_", ""]
    return "\n".join(parts)


def _roofs(records: list, args, err) -> dict | None:
    """The machine's roofs for the roofline, measured now, when the records were taken on this
    machine with these libraries (same env_id); otherwise None (the plot says so)."""
    if getattr(args, "no_roofs", False):
        return None
    from .. import env as menv
    from .. import peaks
    here = menv.collect(cheap=True)
    ids = {r.get("env_id") for r in records if r.get("status") == "ok"}
    if ids != {here["env_id"]}:
        return None
    device = "cuda" if any(r.get("device") == "cuda" for r in records) and (here.get("gpu") or {}).get("available") \
        else "cpu"
    err.print(f"measuring this machine's roofs for the roofline ({device}: a GEMM and a streaming add)...",
              highlight=False)
    try:
        return peaks.roofs(device)
    except Exception as e:        # a GPU library missing or failing: the plot falls back, and says so
        err.print(escape(f"note: roofs not measured ({type(e).__name__}: {e})"), highlight=False)
        return None


def cmd_report(args) -> int:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from .. import store
    from ..args import console

    out, err = console(), console(stderr=True)
    csv_target, targets = plan_outputs(args)       # every path checked before any is written
    records, notes = store.load(args.files)
    store.print_skipped(notes, err)
    skipped = len(notes)
    for line in store.shards(records):     # a sharded suite's files, merged: say which are missing
        err.print(terminal(f"note: {line}"), highlight=False)
    if rerun_note(records):
        err.print(escape(f"note: {rerun_note(records)}"), highlight=False)
    if contention_note(records):
        err.print(terminal(f"warning: {contention_note(records)}"), highlight=False)
    if csv_target is not None:
        _write(csv_target, csv_text(records), "--csv")
        out.print(terminal(f"wrote {csv_target} ({len(records)} records)"), highlight=False)
        if not targets:
            return 0
    if not targets:
        for title, cols, rows in (("results", RESULT_COLUMNS, result_rows(records)),
                                  ("thread scaling", *scaling_rows(records))):
            if not rows:
                continue
            t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
            for c in cols:
                t.add_column(c)
            for row in rows:
                t.add_row(*(terminal(c) for c in row))   # record text: no control codes, no markup
            out.print(t)
        out.print(f"[dim]{escape(RESULTS_NOTE)}[/]")
        return 0
    from .. import plots as mplots           # importable: plan_outputs checked
    figures = mplots.all_plots(records, roofs=_roofs(records, args, err))
    written: set = set()
    for flag, path in targets:
        render = render_html if flag == "--html" else render_md
        _write(path, render(args.title, args.files, records, figures, skipped, out_path=path), flag)
        files = write_figures(path, [f for f in figures if f.png], flag, written)
        out.print(terminal(f"wrote {path} ({len(records)} records, {sum(1 for f in figures if f.png)} "
                           f"plots) and {len(files)} figure files beside it ({path.stem}-*.svg/.pdf)"),
                  highlight=False)
    return 0
