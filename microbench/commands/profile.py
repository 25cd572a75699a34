"""``profile nsys|ncu <bench args>``: the Nsight command line that records exactly the timed kernels."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from kernels.errors import BadInput

EPILOG = """examples:
  python -m microbench profile nsys lstm --fused -H 512 -B 64
  python -m microbench profile ncu --run lstm --fused

--run and --output belong before the benchmark's arguments; given after them they are still
taken as profile's own (no benchmark takes them).
"""


def add_parsers(sub) -> None:
    p = sub.add_parser("profile", help="print (or --run) the nsys/ncu command for a benchmark",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="nsys records only the --profile region (cudaProfilerStart/Stop); "
                                   "ncu filters on the case's NVTX range microbench@op/variant/.")
    p.add_argument("tool", choices=("nsys", "ncu"))
    p.add_argument("--run", action="store_true", help="run the command instead of printing it")
    p.add_argument("--output", metavar="PATH", help="report file (nsys default: microbench)")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="benchmark arguments, e.g. lstm --fused")
    p.set_defaults(func=cmd_profile)


def _own_flags(args) -> None:
    """Take --run / --output back from the benchmark arguments (REMAINDER swallows everything after
    the benchmark's name, and no benchmark accepts these two)."""
    bench, i = [], 0
    while i < len(args.bench):
        a = args.bench[i]
        if a == "--run":
            args.run = True
        elif a == "--output" or a.startswith("--output="):
            if a == "--output":
                if i + 1 >= len(args.bench):
                    raise BadInput("--output needs a path")
                i += 1
                args.output = args.bench[i]
            else:
                args.output = a.split("=", 1)[1]
        else:
            bench.append(a)
        i += 1
    args.bench = bench


def cmd_profile(args) -> int:
    from profiles import nsight
    _own_flags(args)
    kw = {"python": sys.executable if args.run else "python"}
    if args.output:
        kw["output"] = args.output
    op, variant, backend = nvtx_target(list(args.bench))
    argv = nsight.profile_command(args.tool, args.bench, ops=_ops(), variant=variant, backend=backend, **kw)
    if not args.run:
        print(nsight.shell(argv))
        return 0
    if shutil.which(argv[0]) is None:
        raise BadInput(f"{argv[0]} is not on PATH; install Nsight {'Systems' if argv[0] == 'nsys' else 'Compute'} "
                       "or run without --run to print the command")
    return subprocess.call(argv)


def _ops() -> list:
    """The benchmark ops: the registry's."""
    from .. import cases  # noqa: F401  (fills the registry)
    from .. import registry
    return registry.ops()


def nvtx_target(bench: list) -> tuple:
    """``(op, variant, backend)`` of the NVTX ranges the benchmark's cases run in, named as the
    registry names its records (``lstm``, ``layernorm-fused``, ``numba``); variant None when the
    arguments select several variants, backend None unless one variant on one backend.  The
    benchmark's own parser reads the arguments first, so a bad flag or value is refused here
    instead of being printed into (or run as) an Nsight command line."""
    from .. import registry
    from ..args import UsageError, csv_list
    from ..cli import build_parser
    ops = _ops()
    if not bench or bench[0] not in ops:
        got = bench[0] if bench else "nothing"
        raise BadInput(f"profile needs a benchmark op first, got {got!r}; allowed: {', '.join(ops)}")
    try:
        args = build_parser().parse_args(bench)
    except UsageError as e:
        raise BadInput(f"benchmark arguments {' '.join(bench)!r}: {e}") from None
    names = _variants_run(args)
    cell = getattr(args, "cell", "plain")
    known = list(dict.fromkeys(r.variant for d in registry.DIRECTIONS for r in registry.ours(args.op, cell, d)))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput(f"benchmark arguments {' '.join(bench)!r} select {', '.join(unknown)}, which no "
                       f"{args.op} record of cell {cell} has; registered: {', '.join(known)}")
    variant = names[0] if len(names) == 1 else None
    chosen = csv_list(args.backend) if getattr(args, "backend", None) else []
    backend = chosen[0] if variant and len(chosen) == 1 else None
    return args.op, variant, backend


def _variants_run(args) -> list:
    """The registry variant names the benchmark's cases will have (ours; frameworks push no ranges)."""
    from .. import registry
    op, cell = args.op, getattr(args, "cell", "plain")
    flags = list(dict.fromkeys(getattr(args, "variant_flags", None) or ()))
    if getattr(args, "ladder", False) or getattr(args, "all", False) or not flags:
        forward = list(dict.fromkeys(r.variant for r in registry.ours(op, cell)))
    else:
        forward = [f if cell == "plain" else f"{cell}-{f}" for f in flags]
    if not getattr(args, "backward", False):
        return forward
    backward = list(dict.fromkeys(r.variant for r in registry.ours(op, cell, "bwd")))
    # conv --backward runs the forward rows and each backward phase; lstm/gru/rnn the training step
    return forward + backward if op == "conv" else backward
