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
    argv = nsight.profile_command(args.tool, args.bench, **kw)
    _check_bench_args(list(args.bench))
    if not args.run:
        print(nsight.shell(argv))
        return 0
    if shutil.which(argv[0]) is None:
        raise BadInput(f"{argv[0]} is not on PATH; install Nsight {'Systems' if argv[0] == 'nsys' else 'Compute'} "
                       "or run without --run to print the command")
    return subprocess.call(argv)


def _check_bench_args(bench: list) -> None:
    """The benchmark's own parser reads the arguments first, so a bad flag or value is refused
    here instead of being printed into (or run as) an Nsight command line."""
    from ..cli import UsageError, build_parser
    try:
        build_parser().parse_args(bench)
    except UsageError as e:
        raise BadInput(f"benchmark arguments {' '.join(bench)!r}: {e}") from None
