"""Command line: ``python -m microbench COMMAND ...``, one module per command in
:mod:`microbench.commands` (lstm, gru, rnn, conv, suite, compare, report, explain, profile,
allreduce, scale, variants, env: :data:`COMMANDS`).

Bad input ends the run with one line on stderr (``microbench: error: ...``), exit code 2, and
no traceback.  A failed case is shown as FAILED in the table and in the JSON, the other cases
still run, and the exit code is 1.
"""
from __future__ import annotations

import sys

from kernels.errors import MicrobenchError

from . import args as margs
from .args import Parser, UsageError, output_path

EPILOG_RNN = """examples:
  python -m microbench lstm --fused                      # default device, default sizes
  python -m microbench lstm --ladder -H 512 -B 64 -T 100 --device cpu
  python -m microbench gru --all --backend numba --dtype fp32,fp64 -L 2
  python -m microbench lstm --fused --opt group_gemm,hoist_input --threads 1,2 --json out.jsonl
"""


def add_timing(p):
    from .planner import timing_defaults
    d = timing_defaults()     # harness.Settings' defaults, written there once
    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=float, default=d["warmup"], metavar="S",
                   help=f"seconds of warm-up calls (default {d['warmup']})")
    g.add_argument("--min-time", type=float, default=d["min_time"], metavar="S",
                   help=f"measure at least this many seconds per case (default {d['min_time']})")
    g.add_argument("--max-time", type=float, default=d["max_time"], metavar="S",
                   help=f"stop sampling a case after this many seconds (default {d['max_time']:g})")
    g.add_argument("--min-samples", type=int, default=d["min_samples"], metavar="N",
                   help=f"samples at least (default {d['min_samples']})")
    g.add_argument("--max-noise", type=float, default=d["max_noise"], metavar="F",
                   help=f"sample until IQR/median is below this (default {d['max_noise']}); noisier "
                        "results are flagged ~")
    g.add_argument("--cold", action="store_true",
                   help="evict the last-level cache (CPU) or L2 (GPU) before every sample")
    g.add_argument("--graph", action="store_true",
                   help="GPU: capture one call as a CUDA graph and time its replays")
    g.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="time the cases interleaved in N rounds, each case taking its share of "
                        "the samples per round in a rotating order, so a slow phase of the machine "
                        "hits every case alike (default 1: one case after another); a case that has "
                        "spent --max-time leaves the rotation early, and its record says after how many rounds")


# Subcommand modules under microbench/commands/, in --help order; each has add_parsers(sub).
COMMANDS = ("rnn", "conv", "suite", "compare", "report", "explain", "profile", "allreduce", "scale",
            "variants", "env")


def settings_from(args):
    """The timing rule the flags ask for (capped when MICROBENCH_SMOKE is set: microbench.smoke)."""
    from . import smoke
    from .harness import Settings
    return smoke.settings(Settings(args.warmup, args.min_time, args.max_time, args.min_samples,
                                   args.max_noise, cold=args.cold, graph=args.graph,
                                   rounds=getattr(args, "rounds", 1)))


def add_output(p) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--threads", metavar="LIST", help="sweep CPU thread counts, e.g. 1,2 (BLAS, numba and OpenMP, "
                   "which oneDNN runs on)")
    o.add_argument("--json", metavar="PATH", type=output_path, help="append one JSON line per case (schema: docs/results.md)")
    o.add_argument("--nvtx", choices=("auto", "on", "case", "off"), default="auto",
                   help="NVTX ranges: auto (default: on only when nsys/ncu or another NVTX tool is "
                        "attached, since ranges cost time our rows would carry and framework rows "
                        "do not), on (case and phases), case (case ranges only), off")
    o.add_argument("--quiet", action="store_true", help="print the table only (no header, no progress)")
    o.add_argument("--profile", action="store_true",
                   help="bracket the measured samples with cudaProfilerStart/Stop (for nsys "
                        "--capture-range=cudaProfilerApi); no effect on the CPU")


def build_parser() -> Parser:
    import importlib
    from . import __version__
    parser = Parser(prog="microbench",
                    description="LSTM, GRU and convolution layers taken apart at kernel level.")
    parser.add_argument("--version", action="version", version=f"microbench {__version__}",
                        help="print the version and exit (env shows the git commit too)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"microbench.commands.{name}").add_parsers(sub)
    return parser


def main(argv=None) -> int:
    margs.COMMAND_LINE = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except (UsageError, MicrobenchError) as e:
        from kernels.untrusted import visible
        # messages quote values from files and the command line: shown, never sent to the terminal
        print(f"microbench: error: {visible(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("microbench: interrupted; every finished case is in the --json file", file=sys.stderr)
        return 130
