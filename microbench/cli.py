"""Command line: ``python -m microbench {lstm,gru,env} ...``.

Bad input ends the run with one line on stderr (``microbench: error: ...``), exit code 2, and
no traceback.  A failed case is shown as FAILED in the table and in the JSON, the other cases
still run, and the exit code is 1.
"""
from __future__ import annotations

import argparse
import json
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


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: the message names the value and the choices
        raise UsageError(message)


def _csv(text: str) -> list:
    return [p.strip() for p in text.split(",") if p.strip()]


def _add_timing(p):
    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=float, default=0.2, metavar="S", help="seconds of warm-up calls (default 0.2)")
    g.add_argument("--min-time", type=float, default=1.0, metavar="S",
                   help="measure at least this many seconds per case (default 1.0)")
    g.add_argument("--max-time", type=float, default=20.0, metavar="S",
                   help="stop sampling a case after this many seconds (default 20)")
    g.add_argument("--min-samples", type=int, default=5, metavar="N", help="samples at least (default 5)")
    g.add_argument("--max-noise", type=float, default=0.05, metavar="F",
                   help="sample until IQR/median is below this (default 0.05); noisier results are flagged ~")


def _add_rnn(sub, op: str, variant_names: list):
    p = sub.add_parser(op, help=f"time {op.upper()} variants", epilog=EPILOG_RNN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"Check every {op.upper()} variant against the float64 reference, "
                                   "then time it and print a table (one row per variant).")
    v = p.add_argument_group("variants")
    for name in variant_names:
        v.add_argument(f"--{name}", dest="variant_flags", action="append_const", const=name,
                       help=f"run the {name} variant")
    v.add_argument("--all", action="store_true", help="run every variant (the default when none is named)")
    v.add_argument("--ladder", action="store_true",
                   help="naive, then each fusion step added in turn, with the speedup per rung")
    v.add_argument("--opt", metavar="STEPS",
                   help="fusion steps for the fused variant: comma list of group_gemm, hoist_input, "
                        "pretranspose, fuse_pointwise; or all (default) or none")
    v.add_argument("--backend", metavar="LIST", help="comma list (default: every backend of the device)")
    v.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): a GPU if one is found, else the CPU")
    v.add_argument("--dtype", metavar="LIST", default="fp32", help="comma list of fp64, fp32 (default fp32)")
    s = p.add_argument_group("sizes")
    s.add_argument("-T", type=int, default=100, help="sequence length (default 100)")
    s.add_argument("-B", type=int, default=64, help="batch (default 64)")
    s.add_argument("-H", type=int, default=512, help="hidden size (default 512)")
    s.add_argument("-I", type=int, default=None, help="input size (default: H)")
    s.add_argument("-L", type=int, default=1, help="layers (default 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and states (default 0)")
    _add_timing(p)
    o = p.add_argument_group("output")
    o.add_argument("--threads", metavar="LIST", help="sweep CPU thread counts, e.g. 1,2 (BLAS and numba)")
    o.add_argument("--json", metavar="PATH", help="append one JSON line per case (schema: docs/results.md)")
    o.add_argument("--nvtx", choices=("on", "case", "off"), default="on",
                   help="NVTX ranges: on (case and phases, default), case (case ranges only), off")
    o.add_argument("--quiet", action="store_true", help="print the table only (no header, no progress)")
    p.set_defaults(func=cmd_rnn, op=op)


def build_parser() -> Parser:
    from . import registry
    from . import cases  # noqa: F401  (fills the registry)
    parser = Parser(prog="microbench",
                    description="LSTM, GRU and convolution layers taken apart at kernel level.")
    sub = parser.add_subparsers(dest="command", metavar="{lstm,gru,env}", required=True)
    for op in ("lstm", "gru"):
        _add_rnn(sub, op, registry.variants(op))
    e = sub.add_parser("env", help="print the environment (CPU, GPU, libraries)")
    e.add_argument("--json", action="store_true", help="as JSON")
    e.set_defaults(func=cmd_env)
    return parser


# -- commands ----------------------------------------------------------------------------------
def cmd_env(args) -> int:
    from rich.table import Table

    from . import env as menv
    info = menv.collect()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    t = Table(title="microbench env", show_header=False)
    rows = [("date", info["date"]), ("python", info["python"]), ("platform", info["platform"]),
            ("cpu", f"{info['cpu']} ({info['cores']} cores)")]
    for b in info["blas"]:
        rows.append(("blas", ", ".join(f"{k}={v}" for k, v in b.items())))
    g = info["gpu"]
    rows.append(("gpu", ", ".join(f"{k}={v}" for k, v in g.items())))
    for k, v in info["libraries"].items():
        rows.append((k, v))
    nv = info["nvtx"]
    rows.append(("nvtx", f"{'available' if nv['available'] else 'not installed'}, "
                         f"{nv['cost_per_range_s'] * 1e6:.2f} us per range (push+pop) with no profiler"))
    for k, v in info["env_vars"].items():
        rows.append((k, v))
    rows.append(("env_id", info["env_id"]))
    for k, v in rows:
        t.add_row(k, str(v))
    _console().print(t)
    return 0


def resolve_device(requested: str, op: str) -> str:
    from . import env as menv
    from . import registry
    gpu = menv.gpu()
    has_cuda_backend = bool(registry.backends(op, "cuda"))
    if requested == "cuda":
        if not gpu.get("available"):
            raise BadInput(f"--device cuda: no CUDA GPU found ({gpu.get('reason', 'unknown')}); "
                           "allowed here: cpu, auto")
        if not has_cuda_backend:
            raise BadInput(f"--device cuda: no {op} backend for cuda is installed; allowed here: cpu, auto")
        return "cuda"
    if requested == "auto":
        return "cuda" if gpu.get("available") and has_cuda_backend else "cpu"
    return requested


def plan_cases(args) -> tuple:
    """(cases, device): every case the arguments ask for, validated before anything runs."""
    from fusion.steps import Plan, ladder
    from kernels import dtypes
    from kernels.backends import BACKENDS

    from . import registry
    from .problems import RNNProblem, check_memory
    from .runner import Case
    from .threads import parse_threads

    op = args.op
    problem = RNNProblem(op, args.T, args.B, args.I if args.I is not None else args.H, args.H, args.L)
    precisions = [dtypes.canonical(d) for d in _csv(args.dtype)]
    if not precisions:
        raise BadInput(f"--dtype {args.dtype!r} names no precision; allowed: fp64, fp32")
    for p in precisions:
        if p != "bf16":
            check_memory(problem.memory_estimate(dtypes.storage(p).itemsize), f"{op} {problem.label} {p}")
    thread_counts = parse_threads(args.threads)
    device = resolve_device(args.device, op)
    backend_names = _csv(args.backend) if args.backend else None
    if args.ladder and (args.opt or args.variant_flags):
        raise BadInput("--ladder chooses the variants and steps itself; drop --opt and the variant flags")
    variant_names = None if args.all or not args.variant_flags else list(dict.fromkeys(args.variant_flags))
    records = registry.select(op, variant_names, backend_names, device)
    if not records:
        raise BadInput(f"no {op} variant matches on {device}")
    for p in precisions:
        able = [r.backend for r in records if p in BACKENDS[r.backend].dtypes]
        if not able:
            have = sorted({d for r in records for d in BACKENDS[r.backend].dtypes})
            raise BadInput(f"--dtype {p}: the chosen backends on {device} compute {', '.join(have)}")
    plan = Plan.parse(args.opt, device) if args.opt else None
    cases = []
    for threads in thread_counts:
        for p in precisions:
            if args.ladder:
                for backend in dict.fromkeys(r.backend for r in records):
                    for label, rung_plan in ladder(device):
                        v = "naive" if label == "naive" else "fused"
                        rec = registry.REGISTRY[(op, v, backend)]
                        cases.append(Case(rec, problem, p, args.seed,
                                          rung_plan if v == "fused" else None, threads, label))
            else:
                for rec in records:
                    rp = (plan or Plan.full(device)) if rec.fusable else None
                    cases.append(Case(rec, problem, p, args.seed, rp, threads))
    return cases, device


def cmd_rnn(args) -> int:
    from rich.progress import Progress

    from profiles import nvtx

    from . import env as menv
    from . import report
    from .harness import Settings
    from .results import JsonlWriter
    from .runner import run_case
    from .threads import parse_threads, prepare_numba_pool

    settings = Settings(args.warmup, args.min_time, args.max_time, args.min_samples, args.max_noise)
    prepare_numba_pool(parse_threads(args.threads))
    nvtx.set_level(args.nvtx)
    cases, device = plan_cases(args)
    writer = JsonlWriter(args.json) if args.json else None
    out, err = _console(), _console(stderr=True)
    env = menv.collect()
    if not args.quiet:
        report.header(env, out)
    nvtx_cost = env["nvtx"]["cost_per_range_s"]
    outcomes = []
    try:
        # No auto-refresh: rich's refresh thread competes for the GIL whenever NumPy releases it
        # and made a 0.7 ms case measure 16 ms.  The bar is redrawn between cases only.
        with Progress(console=err, transient=True, disable=args.quiet, auto_refresh=False) as bar:
            task = bar.add_task("cases", total=len(cases))
            for case in cases:
                bar.update(task, description=f"{case.op} {case.label} {case.precision}", refresh=True)
                o = run_case(case, settings, env, nvtx_cost)
                outcomes.append(o)
                if writer:
                    writer.write(o.record)
                bar.advance(task)
    finally:
        if writer:
            writer.close()
    report.table(outcomes, out, ladder=args.ladder, title=f"{args.op}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} case(s) FAILED[/]; see the table" + (f" and {args.json}" if args.json else ""))
    return 1 if failed else 0


def _console(stderr: bool = False):
    from rich.console import Console
    # Piped output (CI logs, files) gets a wide table rather than rich's 80-column default.
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)


def main(argv=None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except (UsageError, MicrobenchError) as e:
        print(f"microbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("microbench: interrupted; every finished case is in the --json file", file=sys.stderr)
        return 130
