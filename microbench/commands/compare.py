"""``compare A.jsonl B.jsonl``: the cases both files hold, side by side, with ratios and a noise verdict.

Cases are matched by identity without the environment (store.identity with_env=False): the same
op, variant, backend, framework, dtype, shape and options, measured on two machines, two library
versions, or before and after a change.  Each row gets a verdict, as nvbench's and
pytest-benchmark's comparisons do, from a statistical test and a minimum effect size:

    B faster/slower  the stored samples of A and B differ (two-sided Mann-Whitney U test, SciPy,
                     p < --alpha) AND the medians differ by at least --min-effect (default 5%)
    within noise     the test does not separate them (p >= --alpha): no evidence of a change
    below N%         the samples differ, but by less than --min-effect: real but too small to
                     matter (runs minutes apart drift by a few percent)
    not comparable   A's or B's samples did not get their threads (the record's ``contention``:
                     they waited for a core while other processes ran); no ratio, left out of the
                     counts and the geometric mean

The p-value is printed per row: the confidence of that verdict.  Timing samples are not quite
independent (drift, a busy neighbour), so p is a guide, not an exact error rate; the effect
threshold is what keeps identical code from being called different.  Records without enough
stored samples (fewer than 3 per side) fall back to the interquartile ranges: apart and beyond
the minimum effect, or within noise.

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
    p.add_argument("--alpha", type=float, default=ALPHA, metavar="P",
                   help=f"significance level of the Mann-Whitney U test on the samples (default {ALPHA})")
    p.add_argument("--min-effect", type=float, default=MIN_EFFECT, metavar="FRAC",
                   help=f"smallest relative change of the median reported as faster/slower "
                        f"(default {MIN_EFFECT}: 5%%)")
    p.set_defaults(func=cmd_compare)


ALPHA = 0.01          # significance level of the test
MIN_EFFECT = 0.05     # smallest relative change of the median that counts
MIN_SAMPLES = 3       # fewer stored samples per side: the IQR rule instead of the test
NOT_COMPARABLE = "not comparable"   # a side's samples did not get their threads (contended)
SMOKE_VERDICT = "smoke run: not a measurement"


@dataclass(frozen=True)
class Row:
    what: str        # op, shape and dtype
    label: str       # variant/backend (or rung), threads
    a: dict          # stats of A
    b: dict          # stats of B
    ratio: float     # median B / median A (< 1: B is faster)
    verdict: str     # "within noise", "below 5%", "B faster", "B slower", "not comparable"
    p: float | None = None   # two-sided Mann-Whitney U p-value (None: too few samples stored)
    why: str = ""    # not comparable: which side's samples did not get their threads, and why
    sides: str = ""  # ... "A", "B" or "A and B"


def mann_whitney_p(a, b) -> float | None:
    """Two-sided Mann-Whitney U p-value of two sample lists, or None if either is too short."""
    if a is None or b is None or len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return None
    from scipy.stats import mannwhitneyu
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def verdict(a: dict, b: dict, samples_a=None, samples_b=None, *, alpha: float = ALPHA,
            min_effect: float = MIN_EFFECT) -> str:
    """The verdict of one row from the stats (and, where stored, the samples) of A and B."""
    return judge(a, b, samples_a, samples_b, alpha=alpha, min_effect=min_effect)[0]


def judge(a: dict, b: dict, samples_a=None, samples_b=None, *, alpha: float = ALPHA,
          min_effect: float = MIN_EFFECT) -> tuple:
    """(verdict, p): the Mann-Whitney U test over the samples plus the minimum effect size;
    without samples, 'apart' means the IQRs [q1, q3] do not overlap."""
    ratio = b["median_s"] / a["median_s"]
    p = mann_whitney_p(samples_a, samples_b)
    if p is None:
        apart = max(a["q1_s"], b["q1_s"]) > min(a["q3_s"], b["q3_s"])
    else:
        apart = p < alpha
    if not apart:
        return "within noise", p
    if abs(ratio - 1) < min_effect:
        return f"below {100 * min_effect:g}%", p
    return ("B faster" if ratio < 1 else "B slower"), p


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


def _samples(rec: dict):
    s = rec.get("samples_s")
    if isinstance(s, list) and s and all(isinstance(v, (int, float)) and v > 0 for v in s):
        return s
    return None


def pair(records_a: list, records_b: list, *, across_machines: bool = False, alpha: float = ALPHA,
         min_effect: float = MIN_EFFECT) -> tuple:
    """(rows, only_in_a, only_in_b): rows for the cases both hold, in A's order.  Rows whose A and
    B come from different machines raise BadInput unless ``across_machines``."""
    from .. import contention, store
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
        hit = [side for side, r in (("A", ra), ("B", rb)) if contention.contended(r)]
        if hit:   # a side whose samples did not get their threads measured the machine, not the code
            why = "; ".join(f"{side}: {contention.of(r)['why']}" for side, r in (("A", ra), ("B", rb))
                            if side in hit)
            rows.append(Row(_what(ra), _label(ra), sa, sb, sb["median_s"] / sa["median_s"], NOT_COMPARABLE,
                            None, why, " and ".join(hit)))
            continue
        v, p = judge(sa, sb, _samples(ra), _samples(rb), alpha=alpha, min_effect=min_effect)
        if (ra.get("options") or {}).get("smoke") or (rb.get("options") or {}).get("smoke"):
            v, p = SMOKE_VERDICT, None        # capped timing (MICROBENCH_SMOKE): not measurements
        rows.append(Row(_what(ra), _label(ra), sa, sb, sb["median_s"] / sa["median_s"], v, p))
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
    from rich.table import Table

    from kernels.untrusted import terminal as escape    # record text: no control codes, no markup

    from .. import store
    from ..args import console
    from ..report import fmt_time

    out, err = console(), console(stderr=True)
    try:
        only = re.compile(args.only) if args.only is not None else None
    except re.error as e:
        raise BadInput(f"--only {args.only!r} is not a regular expression: {e}") from None
    if not 0 < args.alpha < 1:
        raise BadInput(f"--alpha {args.alpha} is outside (0, 1); e.g. 0.01")
    if not 0 <= args.min_effect < 1:
        raise BadInput(f"--min-effect {args.min_effect} is outside [0, 1); e.g. 0.05 for 5%")
    recs_a, bad_a = store.load(files_of(args.a))
    recs_b, bad_b = store.load(files_of(args.b))
    store.print_skipped(bad_a + bad_b, err)
    rows, only_a, only_b = pair(recs_a, recs_b, across_machines=getattr(args, "across_machines", False),
                                alpha=args.alpha, min_effect=args.min_effect)
    if only is not None:
        rows = [r for r in rows if only.search(f"{r.what} {r.label}")]
    if not rows:
        raise BadInput(f"no case with a measurement appears in both {args.a} and {args.b}"
                       + (f" matching --only {args.only!r}" if only is not None else ""))
    t = Table(title=escape(f"compare  A = {args.a}   B = {args.b}"), box=box.SIMPLE_HEAD, title_justify="left")
    for c, j in (("case", "left"), ("variant", "left"), ("A median", "right"), ("A IQR", "right"),
                 ("B median", "right"), ("B IQR", "right"), ("B/A", "right"), ("p", "right"),
                 ("verdict", "left")):
        t.add_column(c, justify=j)
    for r in rows:
        style = {"B faster": "green", "B slower": "red", NOT_COMPARABLE: "yellow"}.get(r.verdict, "dim")
        sides = f" ({r.sides} contended)" if r.sides else ""
        t.add_row(escape(r.what), escape(r.label), fmt_time(r.a["median_s"]), f"{100 * r.a['iqr_s'] / r.a['median_s']:.1f}%",
                  fmt_time(r.b["median_s"]), f"{100 * r.b['iqr_s'] / r.b['median_s']:.1f}%",
                  "-" if r.verdict == NOT_COMPARABLE else f"{r.ratio:.2f}x",
                  "-" if r.p is None else f"{r.p:.1e}" if r.p < 0.01 else f"{r.p:.2f}",
                  f"[{style}]{r.verdict}{sides}[/]")
    out.print(t)
    bad = [r for r in rows if r.verdict == NOT_COMPARABLE]
    rows = [r for r in rows if r.verdict != NOT_COMPARABLE]
    changed = [r for r in rows if r.verdict in ("B faster", "B slower")]
    small = [r for r in rows if r.verdict.startswith("below")]
    smoke = [r for r in rows if r.verdict == SMOKE_VERDICT]
    geo = math.exp(sum(math.log(r.ratio) for r in rows) / len(rows)) if rows else None
    out.print(f"{len(rows) + len(bad)} case(s) in both; {len(changed)} differ (p < {args.alpha:g} and at least "
              f"{100 * args.min_effect:g}%), {len(small)} differ by less than {100 * args.min_effect:g}%, "
              f"{len(rows) - len(changed) - len(small) - len(smoke)} within noise"
              + (f", {len(smoke)} from smoke runs (not measurements)" if smoke else "")
              + (f", {len(bad)} not comparable (contended)" if bad else "")
              + (f"; geometric mean B/A {geo:.2f}x" if geo is not None else "")
              + (" over the comparable rows" if bad and geo is not None else ""))
    notes = []
    if bad:
        from .. import contention
        notes.append(f"not comparable: {len(bad)} row(s) whose samples did not get their threads in A or B "
                     f"(e.g. {bad[0].label}: {bad[0].why}); they are left out of the counts and the mean; "
                     f"rerun them on a quiet machine. {contention.ROUNDS_NOTE}")
    if only_a or only_b:
        notes.append(f"only in A: {only_a}, only in B: {only_b} (not compared)")
    notes += [f"A: {line}" for line in store.shards(recs_a)] + [f"B: {line}" for line in store.shards(recs_b)]
    if bad_a or bad_b:
        notes.append(f"lines that are not usable records, skipped: A {len(bad_a)}, B {len(bad_b)}")
    notes.append("B/A < 1: B is faster. p: two-sided Mann-Whitney U test over the stored samples "
                 "(the smaller, the surer a difference; '-': too few samples, then the IQRs [q1, q3] "
                 "of A and B decide: within noise when they overlap).")
    for n in notes:
        out.print(f"[dim]{escape(n)}[/]")
    return 0
