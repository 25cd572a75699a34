"""``scale lstm|gru|conv``: a data-parallel training step on 1..N ranks, started by torchrun.

    torchrun --nproc-per-node 2 -m microbench scale lstm --device cpu -T 10 -B 8 -H 64

One torchrun launch of N ranks measures every n in --ranks (default 1, 2, 4, ... and N) on the
ranks 0..n-1, so the table has the 1x and Nx columns of one run.  microbench.scaling describes the
two rows (ours, PyTorch DDP), the gradient check and the phases.
"""
from __future__ import annotations

import argparse
import sys

from kernels.errors import BadInput

from .. import distributed as mdist
from ..args import csv_list

EPILOG = """examples:
  torchrun --nproc-per-node 2 -m microbench scale lstm --device cpu -T 10 -B 8 -H 64
  torchrun --nproc-per-node 4 -m microbench scale gru --device cuda -H 1024 -B 64 --scaling weak
  torchrun --nproc-per-node 2 -m microbench scale conv --device cpu --layer resnet50/res2_3x3 -B 4
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m microbench scale lstm --device cuda --ranks 1,8,16
  nsys profile --trace=cuda,nvtx,osrt torchrun --nproc-per-node 2 -m microbench scale lstm   # phases as NVTX ranges
"""


def add_parsers(sub) -> None:
    from .allreduce import add_dist_args
    p = sub.add_parser("scale", help="data-parallel training step on 1..N ranks (start with torchrun)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Time a data-parallel training step (ours: fused forward + kernels.backward "
                                   "with bucketed all-reduce; PyTorch DDP) on 1..N ranks, weak and strong "
                                   "scaling, gradients checked against a float64 step on the whole batch.")
    p.add_argument("op", choices=("lstm", "gru", "conv"), help="the layer")
    add_dist_args(p)
    s = p.add_argument_group("sizes (RNN: -T -H -I -L; conv: --layer or -C -H -W -K -R -S --stride --pad ...)")
    s.add_argument("-T", type=int, default=50, help="sequence length (default 50)")
    s.add_argument("-B", type=int, default=32, help="batch of one rank at n=1 (default 32; conv: N): weak scaling "
                                                    "keeps it per rank, strong scaling splits it over the n ranks")
    s.add_argument("-H", type=int, default=None, help="RNN hidden size (default 256); conv input height (default 32)")
    s.add_argument("-I", type=int, default=None, help="input size (default: H)")
    s.add_argument("-L", type=int, default=2, help="layers (default 2: the top layer's all-reduce overlaps "
                                                   "the lower layer's backward)")
    for flag, help_ in (("-C", "conv input channels (default 32)"), ("-W", "conv input width (default: H)"),
                        ("-K", "conv output channels (default 32)"), ("-R", "conv filter height (default 3)"),
                        ("-S", "conv filter width (default: R)")):
        s.add_argument(flag, type=int, help=help_)
    s.add_argument("--layer", metavar="NAME", help="conv: a named layer, e.g. resnet50/res2_3x3 (its N is -B)")
    s.add_argument("--stride", type=int, help="conv stride (default 1)")
    s.add_argument("--pad", type=int, help="conv padding (default (R-1)/2)")
    s.add_argument("--dilation", type=int, help="conv dilation (default 1)")
    s.add_argument("--groups", type=int, help="conv groups (default 1)")
    s.add_argument("--layout", choices=("NCHW", "NHWC"), help="conv activation layout (default NCHW)")
    s.add_argument("--dtype", default="fp32", choices=("fp32", "fp64"), help="fp32 (default) or fp64")
    s.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    r = p.add_argument_group("runs")
    r.add_argument("--ranks", metavar="LIST", help="rank counts to measure (default 1, 2, 4, ... and the world size)")
    r.add_argument("--scaling", metavar="LIST", default="weak,strong", help="weak, strong or both (default)")
    r.add_argument("--impl", metavar="LIST", default="ours,ddp", help="ours, ddp or both (default)")
    r.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    r.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    r.add_argument("--bucket-mb", type=float, default=25.0, metavar="MB",
                   help="gradient bucket size in MiB, for ours and DDP's bucket_cap_mb (default 25, DDP's)")
    r.add_argument("--nvtx", choices=("on", "case", "off"), default="on", help="NVTX phase ranges (default on)")
    r.add_argument("--json", metavar="PATH", help="rank 0 appends one JSON line per configuration")
    r.add_argument("--quiet", action="store_true", help="print the table only")
    p.set_defaults(func=cmd_scale)


def _choices(text: str, allowed: tuple, flag: str) -> list:
    out = []
    for v in csv_list(text):
        if v not in allowed:
            raise BadInput(f"{flag} {v!r} is unknown; allowed: {', '.join(allowed)}")
        out.append(v)
    if not out:
        raise BadInput(f"{flag} {text!r} names nothing; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(out))


def _ranks(text):
    if text is None:
        return None
    out = []
    for v in csv_list(text):
        digits = v[1:] if v[:1] in "+-" else v
        if not (digits.isascii() and digits.isdigit()):     # int() takes '٤', '１６' and '1_6'
            raise BadInput(f"--ranks {v!r} is not a rank count")
        out.append(int(v))
    return sorted(set(out))


def problem_factory(args):
    """``make(global_batch)`` for the op, and a one-line description of the per-rank shape."""
    from .. import scaling
    if args.op != "conv":
        for flag in ("C", "W", "K", "R", "S", "layer", "stride", "pad", "dilation", "groups", "layout"):
            if getattr(args, flag) is not None:
                raise BadInput(f"{'-' if len(flag) == 1 else '--'}{flag} is a conv size; scale {args.op} takes "
                               "-T -B -H -I -L")
        H = 256 if args.H is None else args.H
        I = args.I or H
        args.H, args.I = H, I
        return (lambda gb: scaling.global_problem(args.op, args.T, I, H, args.L, gb),
                f"T{args.T} H{H} I{I} L{args.L}")
    if args.I is not None:
        raise BadInput("-I is an RNN size; scale conv takes --layer or -C -H -W -K -R -S")
    if args.layer:
        from ..suites.conv_shapes import conv_layer
        base = conv_layer(args.layer, 1)
        geom = {k: getattr(base, k) for k in ("C", "H", "W", "K", "R", "S", "stride", "pad", "dilation",
                                              "groups", "layout")}
    else:
        R = args.R or 3
        geom = dict(C=32, H=32, W=None, K=32, R=R, S=None, stride=1, pad=None, dilation=1, groups=1, layout="NCHW")
    for k in ("C", "H", "W", "K", "R", "S", "stride", "pad", "dilation", "groups", "layout"):
        if getattr(args, k) is not None:
            geom[k] = getattr(args, k)
    geom["W"] = geom["W"] if geom["W"] is not None else geom["H"]
    geom["S"] = geom["S"] if geom["S"] is not None else geom["R"]
    geom["pad"] = geom["pad"] if geom["pad"] is not None else (geom["R"] - 1) // 2
    probe = scaling.conv_problem(geom, 1)            # validates the geometry now (one line if bad)
    return (lambda gb: scaling.conv_problem(geom, gb), probe.describe().split(" ", 1)[1])


def validate(args) -> None:
    for flag, v in (("-T", args.T), ("-B", args.B), ("-L", args.L), ("--steps", args.steps)):
        if v < 1:
            raise BadInput(f"{flag} {v} must be at least 1")
    if args.I is not None and args.I < 1:
        raise BadInput(f"-I {args.I} must be at least 1")
    if args.warmup < 0:
        raise BadInput(f"--warmup {args.warmup} must be 0 or more")
    if not args.bucket_mb > 0:
        raise BadInput(f"--bucket-mb {args.bucket_mb} must be positive")


def record(g, res, env, args, eff, make_problem) -> dict:
    """A microbench.result/1 record of one configuration (op scale-lstm / scale-gru)."""
    from .. import results
    c = res.config
    step = res.samples.get("step")
    stats = None
    if step:
        from ..stats import Measurement
        stats = Measurement(step).to_dict()
    return {"schema": results.SCHEMA, "op": f"scale-{c.cell}", "variant": c.impl, "backend": g.backend,
            "device": g.device, **results.placement(g.device, env), "dtype": args.dtype,
            "shape": {**make_problem(c.global_batch).shape(), "B": c.batch, "ranks": c.n,
                      "global_batch": c.global_batch},
            "options": {"plan": None, "threads": None, "seed": args.seed, "rung": None, "nvtx": args.nvtx,
                        "scaling": c.mode, "bucket_mb": args.bucket_mb, "mode": "warm",
                        **({"layout": make_problem(1).layout} if c.cell == "conv" else {})},
            "label": f"{c.impl}/{c.mode}/n{c.n}", "status": res.status, "error": res.error or None,
            "env_id": env.get("env_id"), "env": env, "timer": "perf_counter+sync",
            "samples_s": step if res.status == "ok" else None, "stats": stats if res.status == "ok" else None,
            "flops": None, "bytes": None, "derived": None,
            "check": ({"max_rel_err": res.check.get("max_rel_err"), "tol": res.check.get("tol", 0.0),
                       "passed": res.check["passed"],
                       "detail": res.check.get("detail", "")} if res.check else None),
            "nvtx": None,
            "info": {"phases": res.phases, "efficiency": eff, "world": g.world,
                     "exposed": "ours: waited after backward; ddp: backward minus backward under no_sync()",
                     **({"precision_switches": res.switches} if res.switches else {})}}


@mdist.rank_command
def cmd_scale(args) -> int:
    from kernels import nvtx

    from .. import env as menv
    from .. import scaling
    from ..args import console
    from ..results import JsonlWriter

    validate(args)
    make_problem, shape_text = problem_factory(args)
    modes = _choices(args.scaling, scaling.MODES, "--scaling")
    impls = _choices(args.impl, scaling.IMPLS, "--impl")
    ranks = _ranks(args.ranks)
    nvtx.set_level(args.nvtx)
    out, err = console(), console(stderr=True)
    g = mdist.init(args.device, args.dist_backend, args.timeout)
    clean = False
    try:
        configs = scaling.plan(g.world, ranks, modes, impls, args.op, args.B)
        groups = mdist.subgroups(g, sorted({c.n for c, _ in configs}))
        writer = JsonlWriter(args.json) if args.json and g.is_root else None
        if not args.quiet:
            mdist.note_launch(g, err, f"scale {args.op}")
            mdist.say(g, out, f"scale {args.op}: {shape_text} {args.dtype}, "
                              f"B{args.B} per rank (weak) / global (strong), {g.world} rank(s), {g.backend} "
                              f"on {g.device}, {args.steps} steps")
        env = menv.collect(cheap=True) if g.is_root else {}
        import torch.distributed as dist
        results = []
        for cfg, reason in configs:
            if reason:
                results.append(scaling.Result(cfg, "skipped", reason))
                continue
            if g.rank < cfg.n:
                res = scaling.run_config(g, groups[cfg.n], cfg, make_problem=make_problem, seed=args.seed,
                                         precision=args.dtype, steps=args.steps, warmup=args.warmup,
                                         bucket_mb=args.bucket_mb)
            else:
                res = scaling.Result(cfg, "skipped", "rank idle")
            with mdist.failures(g, "the barrier between configurations"):
                dist.barrier()
            results.append(res)
        eff = scaling.efficiency(results)
        if g.is_root:
            if writer:
                for res in results:
                    writer.write(record(g, res, env, args, eff.get(res.config), make_problem))
                writer.close()
            table(results, eff, out, g)
        failed = sum(r.status == "failed" for r in results)
        if failed and g.is_root:
            err.print(f"[red]{failed} configuration(s) FAILED the gradient check[/]")
        clean = True
        return 1 if failed else 0
    except mdist.RankFailure as e:
        print(f"microbench: error: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        mdist.finish(g, clean=clean)


def table(results, eff, out, g) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ..report import fmt_time
    t = Table(title="data-parallel training step (median of the slowest rank per step)", box=box.SIMPLE_HEAD,
              title_justify="left")
    for c, j in (("impl", "left"), ("scaling", "left"), ("ranks", "right"), ("B/rank", "right"),
                 ("B total", "right"), ("step", "right"), ("+-IQR", "right"), ("forward", "right"),
                 ("backward", "right"), ("all-reduce", "right"), ("exposed", "right"), ("hidden", "right"),
                 ("samples/s", "right"), ("efficiency", "right"), ("grad check", "left")):
        t.add_column(c, justify=j)
    for r in results:
        c = r.config
        if r.status != "ok":
            word = "[red]FAILED[/]" if r.status == "failed" else "[yellow]skipped[/]"
            t.add_row(c.impl, c.mode, str(c.n), str(c.batch), str(c.global_batch), *["-"] * 9,
                      f"{word}: {escape(r.error)}")
            continue
        ph = r.phases
        step = ph["step"]["median_s"]
        ar, exp = ph["allreduce"]["median_s"], ph["exposed"]["median_s"]
        hidden = f"{100 * max(0.0, 1 - exp / ar):.0f}%" if ar > 0 and c.n > 1 else "-"
        e = eff.get(c)
        t.add_row(c.impl, c.mode, str(c.n), str(c.batch), str(c.global_batch), fmt_time(step),
                  f"{100 * (ph['step']['q3_s'] - ph['step']['q1_s']) / step:.1f}%",
                  fmt_time(ph["forward"]["median_s"]), fmt_time(ph["backward"]["median_s"]),
                  fmt_time(ar), fmt_time(exp), hidden, f"{c.global_batch / step:.0f}",
                  f"{100 * e:.0f}%" if e is not None else "-",
                  f"ok ({r.check['max_rel_err']:.1e})")
    out.print(t)
    out.print("[dim]efficiency: weak t(1)/t(n), strong t(1)/(n t(n)), against the same row at 1 rank. all-reduce: "
              "the gradient buckets reduced alone; exposed: the part not hidden behind backward (ours: the wait "
              "after backward; ddp: backward minus backward under no_sync); hidden = 1 - exposed/all-reduce. "
              "Gradients: n x the averaged weight gradients and each rank's input (and state) gradients against one "
              "float64 step on the concatenated batch.[/]")
