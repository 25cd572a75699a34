"""``compare A.jsonl B.jsonl``: the cases both files hold, side by side, with ratios and a noise verdict.

Cases are matched by identity without the environment (store.identity with_env=False): the same
op, variant, backend, framework, dtype, shape and options, measured on two machines, two library
versions, or before and after a change.  Each row gets a verdict:

    within noise   the two interquartile ranges [q1, q3] overlap: the difference is inside the
                   spread measured in both runs, so it is not evidence of a change
    B faster/slower  the ranges are apart; the ratio B/A says by how much

Where a file holds a case more than once (a rerun), its last ok record counts.  Each side may be
several files (comma list or a quoted glob: the shards of one sharded suite run), merged in order.
A row whose A and B records come from different machines (store.machine: host and device model)
is refused unless --across-machines says that is the comparison wanted.
"""
from __future__ import annotations

from dataclasses import dataclass

from kernels.errors import BadInput


def add_parsers(sub) -> None:
    p = sub.add_parser("compare", help="compare two results files case by case",
                       description="The cases two --json files share, side by side: medians, the ratio "
                                   "B/A and whether the difference is inside the measured spread.")
    p.add_argument("a", metavar="A.jsonl", help="baseline results file(s): a comma list or a quoted glob "
                                                "(e.g. 'base-*.jsonl', the shards of one run) merge")
    p.add_argument("b", metavar="B.jsonl", help="results file(s) compared with the baseline, the same way")
    p.add_argument("--across-machines", action="store_true",
                   help="allow rows whose A and B were measured on different machines (host or device model)")
    p.add_argument("--only", metavar="REGEX", help="rows whose case text matches")
    p.set_defaults(func=cmd_compare)


@dataclass(frozen=True)
class Row:
    what: str        # op, shape and dtype
    label: str       # variant/backend (or rung), threads
    a: dict          # stats of A
    b: dict          # stats of B
    ratio: float     # median B / median A (< 1: B is faster)
    verdict: str     # "within noise", "B faster", "B slower"


def verdict(a: dict, b: dict) -> str:
    """'within noise' when the IQRs [q1, q3] of the two overlap, else which side is faster."""
    if max(a["q1_s"], b["q1_s"]) <= min(a["q3_s"], b["q3_s"]):
        return "within noise"
    return "B faster" if b["median_s"] < a["median_s"] else "B slower"


def _what(rec: dict) -> str:
    shape = rec.get("shape") or {}
    text = " ".join(f"{k}{v}" for k, v in shape.items()
                    if k in ("T", "B", "I", "H", "L", "N", "C", "W", "K", "R", "S", "stride_h", "pad_h"))
    return f"{rec.get('op')} {text} {rec.get('dtype')}"


def _label(rec: dict) -> str:
    thr = (rec.get("options") or {}).get("threads")
    return str(rec.get("label") or rec.get("variant")) + (f" {thr}thr" if thr else "")


def _stats_ok(rec: dict) -> bool:
    st = rec.get("stats")
    return isinstance(st, dict) and all(isinstance(st.get(k), (int, float)) for k in ("q1_s", "median_s", "q3_s")) \
        and st["median_s"] > 0


def files_of(text: str) -> list:
    """The files one side names: a comma list, each part a path or a glob pattern (sorted)."""
    import glob
    from pathlib import Path
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if not Path(part).exists() and any(ch in part for ch in "*?["):
            found = sorted(glob.glob(part))
            if not found:
                raise BadInput(f"{part!r} matches no file")
            out += found
        else:
            out.append(part)
    if not out:
        raise BadInput(f"{text!r} names no results file")
    return out


def pair(records_a: list, records_b: list, *, across_machines: bool = False) -> tuple:
    """(rows, only_in_a, only_in_b): rows for the cases both hold, in A's order.  Rows whose A and
    B come from different machines raise BadInput unless ``across_machines``."""
    from .. import store
    a = {k: r for k, r in store.latest(records_a).items() if _stats_ok(r)}
    b = {k: r for k, r in store.latest(records_b).items() if _stats_ok(r)}
    rows, mixed = [], []
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            continue
        if not store.same_machine(ra, rb):
            mixed.append((ra, rb))
            if not across_machines:
                continue
        sa, sb = ra["stats"], rb["stats"]
        rows.append(Row(_what(ra), _label(ra), sa, sb, sb["median_s"] / sa["median_s"], verdict(sa, sb)))
    if mixed and not across_machines:
        ra, rb = mixed[0]
        raise BadInput(f"{len(mixed)} case(s) were measured on different machines in A and B (e.g. "
                       f"{store.machine(ra)} vs {store.machine(rb)}): a ratio would mix the machines "
                       "with the change; pass --across-machines to compare them anyway")
    return rows, len(set(a) - set(b)), len(set(b) - set(a))


def cmd_compare(args) -> int:
    import math
    import re

    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from .. import store
    from ..cli import console
    from ..report import fmt_time

    out, err = console(), console(stderr=True)
    try:
        only = re.compile(args.only) if args.only is not None else None
    except re.error as e:
        raise BadInput(f"--only {args.only!r} is not a regular expression: {e}") from None
    recs_a, bad_a = store.load(files_of(args.a))
    recs_b, bad_b = store.load(files_of(args.b))
    store.print_skipped(bad_a + bad_b, err)
    rows, only_a, only_b = pair(recs_a, recs_b, across_machines=getattr(args, "across_machines", False))
    if only is not None:
        rows = [r for r in rows if only.search(f"{r.what} {r.label}")]
    if not rows:
        raise BadInput(f"no case with a measurement appears in both {args.a} and {args.b}"
                       + (f" matching --only {args.only!r}" if only is not None else ""))
    t = Table(title=escape(f"compare  A = {args.a}   B = {args.b}"), box=box.SIMPLE_HEAD, title_justify="left")
    for c, j in (("case", "left"), ("variant", "left"), ("A median", "right"), ("A IQR", "right"),
                 ("B median", "right"), ("B IQR", "right"), ("B/A", "right"), ("verdict", "left")):
        t.add_column(c, justify=j)
    for r in rows:
        style = {"within noise": "dim", "B faster": "green", "B slower": "red"}[r.verdict]
        t.add_row(escape(r.what), escape(r.label), fmt_time(r.a["median_s"]), f"{100 * r.a['iqr_s'] / r.a['median_s']:.1f}%",
                  fmt_time(r.b["median_s"]), f"{100 * r.b['iqr_s'] / r.b['median_s']:.1f}%",
                  f"{r.ratio:.2f}x", f"[{style}]{r.verdict}[/]")
    out.print(t)
    changed = [r for r in rows if r.verdict != "within noise"]
    geo = math.exp(sum(math.log(r.ratio) for r in rows) / len(rows))
    out.print(f"{len(rows)} case(s) in both; {len(changed)} differ beyond the spread, "
              f"{len(rows) - len(changed)} within noise; geometric mean B/A {geo:.2f}x")
    notes = []
    if only_a or only_b:
        notes.append(f"only in A: {only_a}, only in B: {only_b} (not compared)")
    notes += [f"A: {line}" for line in store.shards(recs_a)] + [f"B: {line}" for line in store.shards(recs_b)]
    if bad_a or bad_b:
        notes.append(f"lines that are not usable records, skipped: A {len(bad_a)}, B {len(bad_b)}")
    notes.append("B/A < 1: B is faster. within noise: the IQRs [q1, q3] of A and B overlap.")
    for n in notes:
        out.print(f"[dim]{escape(n)}[/]")
    return 0
