"""``variants [OP]``: every registered variant (microbench.registry), with where its code lives.

One row per record: op, variant (the CLI flag is ``--VARIANT``; cell and backward records are
chosen with ``--cell`` and ``--backward``), backend, device, dtypes, cell, direction, the
``module:function`` of its computation, and whether it can run here (the reason when not; a
reason several rows share, such as no GPU here, is printed once under the table and numbered).
"""
from __future__ import annotations

import json
from collections import Counter

from kernels.errors import BadInput

COLUMNS = ("op", "variant", "backend", "device", "dtypes", "cell", "dir", "code", "available here")


def add_parsers(sub) -> None:
    from .. import cases  # noqa: F401  (fills the registry)
    from .. import registry
    p = sub.add_parser("variants", help="list every registered variant and where its code lives",
                       description="List the registry: one row per variant of each op (ours; with "
                                   "--frameworks the framework rows too), with its backend, device, "
                                   "dtypes, cell, direction (fwd, or bwd: --backward and training "
                                   "suites), its code as module:function, and whether it can run "
                                   "on this machine (the reason when not).")
    p.add_argument("op", nargs="?", metavar="OP", help=f"one op ({', '.join(registry.ops())}); default: every op")
    p.add_argument("--frameworks", action="store_true", help="also list the framework rows (--frameworks)")
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    p.set_defaults(func=cmd_variants)


def rows(op: str | None = None, frameworks: bool = False) -> list:
    """The listing as dicts, ``op`` checked against the registered ops (BadInput names them)."""
    from .. import cases  # noqa: F401  (fills the registry)
    from .. import registry
    if op is not None and op not in registry.ops():
        raise BadInput(f"variants: op {op!r} is unknown; allowed: {', '.join(registry.ops())}")
    out = []
    for r in registry.listing(op):
        if r.framework and not frameworks:
            continue
        reason = registry.missing(r)
        out.append({"op": r.op, "variant": r.variant, "backend": r.backend, "device": r.device,
                     "dtypes": list(r.precisions), "cell": r.cell, "direction": r.direction,
                     "code": r.code, "available": reason is None, "reason": reason or "",
                     "framework": r.framework, "tol_scale": r.tol_scale, "about": r.about})
    return out


def cmd_variants(args) -> int:
    listing = rows(args.op, args.frameworks)
    if args.json:
        for row in listing:
            print(json.dumps(row))
        return 0
    # a cause shared by several rows (no GPU here: every cuda row of every backend) is said once,
    # under the table; the row keeps its own part ("backend cupy needs a GPU")
    def parts(reason: str) -> tuple:
        head, sep, cause = reason.partition(": ")
        return (head, cause) if sep and len(cause) > 40 else ("", reason)
    shared = Counter(parts(r["reason"])[1] for r in listing if not r["available"])
    footnotes: dict = {}

    def available(r) -> str:
        if r["available"]:
            return "yes"
        head, cause = parts(r["reason"])
        if shared[cause] > 1:
            n = footnotes.setdefault(cause, len(footnotes) + 1)
            return f"no: {head} ({n})" if head else f"no ({n})"
        return f"no: {r['reason']}"
    table = [COLUMNS] + [(r["op"], r["variant"], r["backend"], r["device"], ",".join(r["dtypes"]) or "-",
                          r["cell"], r["direction"], r["code"] or "-", available(r)) for r in listing]
    # plain aligned text, never wrapped: a code path or a reason must stay one greppable line
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    if footnotes:
        print()
        for cause, n in footnotes.items():
            print(f"({n}) {cause} ({shared[cause]} rows)")
    return 0
