"""``conv``: check and time the conv2d variants on one layer (explicit sizes or a named layer)."""
from __future__ import annotations

import argparse

from kernels import devices, dtypes
from kernels.errors import BadInput

from ..args import seed_arg
from ..cli import add_output, add_timing

EPILOG = """examples:
  python -m microbench conv --all --layer resnet50/res2_3x3 -N 8
  python -m microbench conv --im2col --winograd -N 1 -C 64 -H 56 -W 56 -K 64 -R 3 -S 3 --pad 1
  python -m microbench conv --all -N 2 -C 3 -H 31 -W 29 -K 8 -R 7 -S 7 --stride 2 --pad 3 --layout NHWC
  python -m microbench conv --backward --layer deepbench-training/017 -N 2   # forward, bwd-data, bwd-weights
"""


def add_parsers(sub) -> None:
    from .. import cases  # noqa: F401  (fills the registry)
    from .. import registry
    p = sub.add_parser("conv", help="time conv2d variants", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Check every conv2d variant against the float64 reference, then time it.")
    v = p.add_argument_group("variants")
    first: dict = {}
    for r in registry.ours("conv"):
        first.setdefault(r.variant, r)
    for rec in first.values():
        where = "" if rec.device == "cpu" else f" ({rec.device})"
        v.add_argument(f"--{rec.variant}", dest="variant_flags", action="append_const", const=rec.variant,
                       help=rec.about + where)
    v.add_argument("--all", action="store_true", help="every variant (the default when none is named)")
    v.add_argument("--device", type=devices.argparse_type, default="auto", metavar="DEVICE",
                   help="auto (default): a GPU if one is found and a GPU variant exists, else the CPU; cpu; cuda; cuda:K (the K-th GPU)")
    v.add_argument("--dtype", metavar="LIST", default="fp32",
                   help="comma list: fp64, fp32 on the CPU; fp32, tf32, fp16 on a GPU (default fp32)")
    v.add_argument("--backward", action="store_true",
                   help="also time backward-data (dx) and backward-weights (dw, db) of sum(y * dY) for a "
                        "fixed random dY, each phase its own row (variant+bwd_data, variant+bwd_weights) "
                        "checked against float64: the three phases DeepBench's training table times. "
                        "CPU variants with a backward pass: im2col, direct; on a GPU cuDNN's, per "
                        "algorithm (cudnn_ALGO+bwd_data, cudnn_ALGO+bwd_weights; cudnn+PHASE: its "
                        "heuristic pick) beside the legacy forward rows; with --frameworks, each "
                        "framework path's phases too (torch: aten.convolution_backward; tensorflow: "
                        "Conv2DBackpropInput/Filter; jax: jax.vjp; mxnet: y.backward; chainer: "
                        "Convolution2DFunction.backward; a geometry the framework refuses is a "
                        "skipped row saying so)")
    v.add_argument("--frameworks", metavar="LIST",
                   help="also run these frameworks' conv2d paths in worker processes with the same "
                        "inputs: comma list of torch, tensorflow, jax, mxnet, chainer, or all")
    v.add_argument("--python", metavar="FW=PATH", action="append",
                   help="run framework FW's worker under this interpreter (repeatable)")
    s = p.add_argument_group("layer (a named layer, or explicit sizes; explicit sizes override the layer's)")
    s.add_argument("--layer", metavar="NAME", help="e.g. resnet50/res2_3x3 (see `suite --list`)")
    for flag, help_ in (("-N", "batch"), ("-C", "input channels"), ("-H", "input height"),
                        ("-W", "input width"), ("-K", "output channels"), ("-R", "filter height"),
                        ("-S", "filter width")):
        s.add_argument(flag, type=int, help=help_)
    s.add_argument("--stride", type=int, help="stride (both axes)")
    s.add_argument("--pad", type=int, help="zero padding (both axes)")
    s.add_argument("--dilation", type=int, help="dilation (both axes)")
    s.add_argument("--groups", type=int, help="groups")
    s.add_argument("--layout", choices=("NCHW", "NHWC"), help="activation layout (default NCHW)")
    s.add_argument("--seed", type=seed_arg, default=0, help="seed of the inputs (default 0)")
    add_timing(p)
    add_output(p)
    p.set_defaults(func=cmd_conv, op="conv")


_DEFAULT = dict(N=8, C=64, H=56, W=56, K=64, R=3, S=3, stride=1, pad=1, dilation=1, groups=1, layout="NCHW")


def problem_from_args(args):
    from kernels.conv import ConvProblem
    from ..suites.conv_shapes import conv_layer
    if args.layer:
        base = conv_layer(args.layer, args.N)
        fields = dict(N=base.N, C=base.C, H=base.H, W=base.W, K=base.K, R=base.R, S=base.S,
                      stride=base.stride, pad=base.pad, dilation=base.dilation, groups=base.groups,
                      layout=base.layout)
    else:
        fields = dict(_DEFAULT)
    for k in ("N", "C", "H", "W", "K", "R", "S", "stride", "pad", "dilation", "groups", "layout"):
        v = getattr(args, k)
        if v is not None:
            fields[k] = v
    return ConvProblem(**fields)


def cmd_conv(args) -> int:
    from kernels import nvtx

    from .. import registry, report, smoke
    from ..cli import settings_from
    from ..runner import run_cases
    from ..planner import memory_need, parse_precisions, resolve_device
    from ..problems import check_memory
    from ..runner import Case
    from ..threads import parse_threads, prepare_numba_pool

    settings = settings_from(args)
    threads = parse_threads(args.threads)
    prepare_numba_pool(threads)
    nvtx.set_level(args.nvtx)
    problem = problem_from_args(args)
    precisions = parse_precisions(args.dtype)
    device = resolve_device(args.device, "conv")
    # what the device's conv records compute (oneDNN's bf16 included); a record that does not
    # compute a chosen one is a skipped row with its reason
    offered = [d for d in dtypes.PRECISIONS
               if any(d in r.precisions for r in registry.ours("conv") if r.device == device)]
    names = None if args.all or not args.variant_flags else list(dict.fromkeys(args.variant_flags))
    records = registry.select("conv", names, None, device)
    for p in precisions:
        if device == "cpu" and p not in offered:
            raise BadInput(f"--dtype {p}: the conv variants on the CPU compute {', '.join(offered)}")
        # the workspace of the chosen variants (each row's estimate), not every algorithm's
        check_memory(memory_need(problem, p, records), f"conv {problem.describe()} {p}")
    problem, _ = smoke.problem(problem)     # a smoke run shrinks what runs, never what is checked
    if getattr(args, "backward", False):
        from ..cases.conv import backward_records
        from kernels.conv.backward import BACKWARD
        if device == "cpu":
            back = backward_records(names)
            records = [r for r in records if r.variant in BACKWARD] + back
        else:   # cuDNN's phases: the legacy API's forward rows, then each phase per algorithm
            from kernels.cudnn.conv import FWD_ALGOS
            legacy = {"cudnn"} | {f"cudnn_{a}" for a in FWD_ALGOS}
            if names and not legacy & set(names):
                raise BadInput(f"--backward on {device}: the backward phases are cuDNN's; allowed "
                               "variants: cudnn, cudnn_<forward algorithm>")
            records = [r for r in records if r.variant in legacy] + backward_records(device=device)
    cases = [Case(r, problem, p, args.seed, None, t) for t in threads for p in precisions for r in records]
    if args.frameworks is not None:    # '' names no framework: parse_frameworks refuses it
        from ..cases.frameworks import framework_cases
        from ..frameworks.client import parse_python
        python = parse_python(args.python) if args.python else {}
        cases += framework_cases("conv", problem, args.frameworks, device, precisions, args.seed,
                                 threads, python)
        if getattr(args, "backward", False):
            from ..cases.frameworks import conv_backward_cases
            cases += conv_backward_cases(problem, args.frameworks, device, precisions, args.seed, threads, python)
    elif args.python:
        raise BadInput("--python only applies to framework workers; add --frameworks")
    outcomes, out, err = run_cases(cases, settings, args)
    report.table(outcomes, out, title="conv", baseline=baseline_of(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} case(s) FAILED[/]; see the table")
    return 1 if failed else 0


def baseline_of(outcomes) -> str:
    """The variant the "vs" column divides by, from what ran: ``direct`` when it ran, else the
    first of our rows that ran (the column's header names it); ``direct`` when none did."""
    ran = [o.case.variant for o in outcomes if o.status == "ok" and not o.case.record.framework]
    if "direct" in ran or not ran:
        return "direct"
    return ran[0]
