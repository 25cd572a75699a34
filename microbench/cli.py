"""Command line: ``python -m microbench COMMAND ...``, one module per command in
:mod:`microbench.commands` (lstm, gru, rnn, conv, suite, compare, report, explain, profile,
allreduce, scale, variants, env: :data:`COMMANDS`).

Bad input ends the run with one line on stderr (``microbench: error: ...``), exit code 2, and
no traceback.  A failed case is shown as FAILED in the table and in the JSON, the other cases
still run, and the exit code is 1.
"""
from __future__ import annotations

import argparse
import re
import sys

from kernels.errors import BadInput, MicrobenchError

EPILOG_RNN = """examples:
  python -m microbench lstm --fused                      # default device, default sizes
  python -m microbench lstm --ladder -H 512 -B 64 -T 100 --device cpu
  python -m microbench gru --all --backend numba --dtype fp32,fp64 -L 2
  python -m microbench lstm --fused --opt group_gemm,hoist_input --threads 1,2 --json out.jsonl
"""


class UsageError(Exception):
    pass


COMMAND_LINE = None     # the arguments main() was given: records keep the command line


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # type=int / type=float of every option (subcommands are Parsers too): ASCII numbers only
        self.register("type", int, ascii_int)
        self.register("type", float, ascii_float)

    def error(self, message):  # one line, no usage block: the message names the value and the choices
        raise UsageError(message)


# Python's int() and float() take any Unicode decimal digit ('٤', '１６') and '_' separators
# ('1_6'); a command line takes ASCII decimal numbers only.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_int(text, what: str) -> int:
    """An integer written in ASCII decimal digits (BadInput naming ``what`` otherwise)."""
    t = str(text).strip()
    if not _INT.fullmatch(t):
        raise BadInput(f"{what} {text!r} is not an integer (ASCII decimal digits, e.g. 16)")
    return int(t)


def ascii_int(text: str) -> int:
    """argparse type of integer options (registered for ``type=int``)."""
    try:
        return parse_int(text, "")
    except BadInput:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (ASCII decimal digits, e.g. 16)") from None


def ascii_float(text: str) -> float:
    """argparse type of number options (registered for ``type=float``): ASCII decimal notation."""
    t = str(text).strip()
    if not _FLOAT.fullmatch(t):
        raise argparse.ArgumentTypeError(f"invalid number: {text!r} (ASCII decimal notation, e.g. 0.5 or 2e-3)")
    return float(t)


def csv_list(text: str) -> list:
    return [p.strip() for p in text.split(",") if p.strip()]


def named_list(flag: str, text: str | None, allowed: str = "") -> list | None:
    """A comma list given to ``flag`` (None when the flag is absent); one that names nothing
    (``--backend ,``, ``--backend ''``) is refused rather than read as "all"."""
    if text is None:
        return None
    names = list(dict.fromkeys(csv_list(text)))
    if not names:
        raise BadInput(f"{flag} {text!r} names nothing" + (f"; allowed: {allowed}" if allowed else ""))
    return names


SEED_MAX = 2**63 - 1


def seed_arg(text: str) -> int:
    """argparse type of --seed: NumPy's generators take a non-negative integer."""
    n = ascii_int(text)
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{n} is out of range; allowed: 0..{SEED_MAX}")
    return n


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


def output_path(text: str) -> str:
    """argparse type of output paths: an empty one is refused (it would silently write nothing)."""
    if not text:
        raise argparse.ArgumentTypeError("'' is empty; give a file path")
    return text


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


def run_cases(cases: list, settings, args) -> tuple:
    """Run cases in order with a progress bar; append each record to --json as it finishes."""
    from .progress import Progress

    from profiles import capture

    from . import env as menv
    from . import report
    from .results import JsonlWriter
    from .runner import run_case, run_interleaved

    capture.enable(getattr(args, "profile", False))
    if settings.graph and any(c.device != "cuda" for c in cases):
        raise BadInput("--graph replays CUDA graphs, but these cases run on the CPU; drop --graph "
                       "or use --device cuda")

    writer = JsonlWriter(args.json) if args.json else None
    out, err = console(), console(stderr=True)
    warn_threads(cases, err)
    env = menv.collect()
    if not args.quiet:
        report.header(env, out)
    nvtx_cost = env["nvtx"]["cost_per_range_s"]
    outcomes = []
    try:
        # A bar on a terminal (redrawn between samples, never by a thread), else a line per case.
        with Progress(err, len(cases), quiet=args.quiet) as bar:
            if settings.rounds > 1:      # every case finishes after the last round
                outcomes = run_interleaved(cases, settings, env, nvtx_cost, bar)
                for o in outcomes:
                    if writer:
                        writer.write(o.record)
            else:
                for case in cases:
                    bar.start(case.title)
                    o = run_case(case, settings, env, nvtx_cost, progress=bar.within)
                    outcomes.append(o)
                    if writer:
                        writer.write(o.record)
                    bar.done(o)
    finally:
        if writer:
            writer.close()
    busy = menv.busy_warning(env.get("affinity") or env.get("cores"))
    if busy and any(c.device == "cpu" for c in cases):
        from rich.markup import escape
        err.print(f"[yellow]warning:[/] {escape(busy)}", highlight=False)
    return outcomes, out, err


def warn_threads(cases, err) -> None:
    from rich.markup import escape

    from .threads import oversubscription_warning
    warning = oversubscription_warning({c.threads for c in cases})
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def console(stderr: bool = False):
    from rich.console import Console
    # Piped output (CI logs, files) gets a wide table rather than rich's 80-column default.
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)


def main(argv=None) -> int:
    global COMMAND_LINE
    COMMAND_LINE = list(sys.argv[1:] if argv is None else argv)
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
