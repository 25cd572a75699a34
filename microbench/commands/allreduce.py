"""``allreduce``: all-reduce alone over torch.distributed, at DeepBench's message sizes, reported the
way nccl-tests reports it.

    torchrun --nproc-per-node 2 -m microbench allreduce            # 2 ranks on this host (gloo on CPUs)

Sizes: DeepBench's all-reduce benchmark (``code/kernels/all_reduce_problems.h`` of
baidu-research/DeepBench: 100000, 3097600, 4194304, 6553600, 16777217, 38360000 and 64500000
elements; DeepBench counts floats, and a bf16 row moves the same element count in half the bytes).

Per size and dtype: a SUM all-reduce of a rank-dependent pattern is checked first (small integers,
exact in bf16 too: rank r holds (r + 1) * p, the result must be n(n+1)/2 * p everywhere; a wrong
element fails the row, like nccl-tests' #wrong); the timed calls then reduce a zero buffer, in
place, each followed by the device's synchronize.  As in nccl-tests:

    time    mean over the timed calls of each rank, averaged over the ranks
    algbw   S / time, S the message size in bytes (count x element size)
    busbw   algbw x 2 (n - 1) / n: the traffic each rank's link carries in a ring all-reduce,
            comparable across rank counts and with nccl-tests' all_reduce_perf

The median and IQR of rank 0's per-call times give the spread.
"""
from __future__ import annotations

import argparse
import time

from kernels.errors import BadInput

from .. import distributed as mdist
from ..args import csv_list

# baidu-research/DeepBench code/kernels/all_reduce_problems.h (element counts, float)
DEEPBENCH_SIZES = (100000, 3097600, 4194304, 6553600, 16777217, 38360000, 64500000)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}

EPILOG = """examples:
  torchrun --nproc-per-node 2 -m microbench allreduce                     # DeepBench sizes, fp32 and bf16
  torchrun --nproc-per-node 2 -m microbench allreduce --sizes 100000,4194304 --dtype fp32
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m microbench allreduce --device cuda                               # 16 GPUs, NCCL
"""


def add_parsers(sub) -> None:
    p = sub.add_parser("allreduce", help="all-reduce alone over torch.distributed (start with torchrun)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Time a SUM all-reduce at DeepBench's message sizes on every rank of the "
                                   "group torchrun started; report time, algorithm and bus bandwidth "
                                   "(nccl-tests' definitions).")
    add_dist_args(p)
    p.add_argument("--sizes", metavar="LIST", default="deepbench",
                   help="element counts (comma list; K/M suffixes allowed) or 'deepbench' (default: "
                        + ", ".join(map(str, DEEPBENCH_SIZES)) + ")")
    p.add_argument("--dtype", metavar="LIST", default="fp32,bf16", help="comma list of fp32, bf16, fp16, fp64 "
                                                                       "(default fp32,bf16)")
    p.add_argument("--iters", type=int, metavar="N",
                   help="timed calls per size (default: as many as fit in --min-time, 5 to 1000)")
    p.add_argument("--min-time", type=float, default=0.5, metavar="S", help="seconds per size (default 0.5)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed calls first (default 2)")
    p.add_argument("--json", metavar="PATH", help="rank 0 appends one JSON line per size and dtype")
    p.add_argument("--quiet", action="store_true", help="print the table only")
    p.set_defaults(func=cmd_allreduce)


def add_dist_args(p) -> None:
    from kernels import devices
    from ..distributed import BACKENDS, DEFAULT_TIMEOUT_S
    d = p.add_argument_group("distributed")
    d.add_argument("--device", type=devices.argparse_type, default="auto", metavar="DEVICE",
                   help="auto (default): each rank on cuda:LOCAL_RANK when GPUs are there, else the CPU; "
                        "cpu; cuda; cuda:K (one rank)")
    d.add_argument("--dist-backend", default="auto", choices=BACKENDS,
                   help="auto (default): nccl on GPUs, gloo on CPUs; a missing NCCL falls back to gloo "
                        "with the reason shown")
    d.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"process-group timeout: a collective that does not complete in S seconds ends "
                        f"the run with a message naming the rank (default {DEFAULT_TIMEOUT_S:g})")


def parse_sizes(text: str) -> list:
    if text.strip().lower() == "deepbench":
        return list(DEEPBENCH_SIZES)
    out = []
    for part in csv_list(text):
        mult = {"k": 1000, "m": 1000 ** 2, "g": 1000 ** 3}.get(part[-1:].lower(), 1)
        digits = part[:-1] if mult > 1 else part
        # int() takes '٤', '１６' and '1_6': ASCII digits only
        n = int(digits) * mult if digits.isascii() and digits.isdigit() else 0
        if n < 1:
            raise BadInput(f"--sizes {part!r} is not a positive element count; e.g. 100000,4M or deepbench")
        out.append(n)
    if not out:
        raise BadInput(f"--sizes {text!r} names no size")
    return out


def parse_dtypes(text: str) -> list:
    out = []
    for d in csv_list(text):
        if d not in DTYPES:
            raise BadInput(f"--dtype {d!r} is unknown for allreduce; allowed: {', '.join(DTYPES)}")
        out.append(d)
    if not out:
        raise BadInput(f"--dtype {text!r} names no precision")
    return out


def bandwidths(nbytes: int, seconds: float, ranks: int) -> tuple:
    """(algbw, busbw) in GB/s, nccl-tests' definitions: S / t and S / t * 2 (n - 1) / n."""
    algbw = nbytes / seconds / 1e9 if seconds > 0 else float("nan")
    return algbw, algbw * (2 * (ranks - 1) / ranks)


def _sync(g):
    import torch
    if g.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def run_size(g, group, count: int, dtype: str, args) -> dict:
    """Check, then time one message size; every rank returns the same numbers (reduced over ranks)."""
    import torch
    import torch.distributed as dist
    from ..stats import Measurement

    tdt = getattr(torch, DTYPES[dtype])
    dev = g.torch_device()
    n = g.world
    with mdist.failures(g, f"all-reduce of {count} {dtype}"):
        # the check: small integers are exact in every dtype here (bf16 holds integers to 256)
        pattern = (torch.arange(count, device=dev) % 7).to(tdt)
        buf = pattern * (g.rank + 1)
        dist.all_reduce(buf, group=group)
        wrong = int((buf != pattern * (n * (n + 1) // 2)).sum())
        buf.zero_()
        for _ in range(max(0, args.warmup)):
            dist.all_reduce(buf, group=group)
        mdist.check_fault(g, "allreduce")
        iters = args.iters
        if iters is None:                       # one decision for all ranks: the slowest's probe
            t0 = _sync(g)
            dist.all_reduce(buf, group=group)
            probe = torch.tensor([_sync(g) - t0], dtype=torch.float64, device=dev)
            dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=group)
            iters = int(min(1000, max(5, args.min_time / max(float(probe), 1e-7))))
        samples = []
        dist.barrier(group=group)
        for _ in range(iters):
            t0 = _sync(g)
            dist.all_reduce(buf, group=group)
            samples.append(_sync(g) - t0)
        summary = torch.tensor([sum(samples) / len(samples), float(wrong)], dtype=torch.float64, device=dev)
        dist.all_reduce(summary, group=group)        # sums over ranks
    mean_s = float(summary[0]) / n
    m = Measurement(samples)
    algbw, busbw = bandwidths(count * buf.element_size(), mean_s, n)
    return {"count": count, "dtype": dtype, "bytes": count * buf.element_size(), "iters": iters,
            "time_s": mean_s, "algbw": algbw, "busbw": busbw, "wrong": int(summary[1]), "m": m}


def record(g, row: dict, env: dict) -> dict:
    """A microbench.result/1 record of one size (op allreduce; compare and report read it)."""
    from .. import results
    m = row["m"]
    wrong = row["wrong"]
    rec = {"schema": results.SCHEMA, "op": "allreduce", "variant": g.backend, "backend": "torch.distributed",
           "device": g.device, **results.placement(g.device, env),
           "dtype": row["dtype"], "shape": {"count": row["count"], "ranks": g.world},
           "options": {"plan": None, "threads": None, "seed": 0, "rung": None, "mode": "warm"},
           "label": f"allreduce/{g.backend}", "status": "ok" if wrong == 0 else "failed",
           "error": None if wrong == 0 else f"{wrong} element(s) wrong after the SUM all-reduce",
           "env_id": env.get("env_id"), "env": env, "timer": "perf_counter+sync",
           "samples_s": list(m.samples), "stats": m.to_dict(), "flops": None, "bytes": row["bytes"],
           "derived": {"gflops": None, "gbps": row["algbw"], "algbw_gbps": row["algbw"], "busbw_gbps": row["busbw"],
                       "time_s": row["time_s"]},
           "check": {"max_rel_err": 0.0 if wrong == 0 else None, "tol": 0.0, "passed": wrong == 0,
                     "detail": f"#wrong {wrong}"},
           "nvtx": None, "info": {"iters": row["iters"], "ranks": g.world,
                                  "time": "mean per call, averaged over ranks (nccl-tests)",
                                  "busbw": "algbw * 2(n-1)/n (nccl-tests)"}}
    if wrong:
        rec["samples_s"] = rec["stats"] = None
    return rec


@mdist.rank_command
def cmd_allreduce(args) -> int:
    from rich import box
    from rich.table import Table

    from .. import env as menv
    from ..args import console
    from ..report import fmt_time
    from ..results import JsonlWriter

    sizes, dtypes = parse_sizes(args.sizes), parse_dtypes(args.dtype)
    if args.iters is not None and args.iters < 1:
        raise BadInput(f"--iters {args.iters} must be at least 1")
    out, err = console(), console(stderr=True)
    g = mdist.init(args.device, args.dist_backend, args.timeout)
    clean = False
    try:
        writer = JsonlWriter(args.json) if args.json and g.is_root else None
        if not args.quiet:
            mdist.note_launch(g, err, "allreduce")
        env = menv.collect(cheap=True) if g.is_root else {}
        import torch.distributed as dist
        rows = []
        for dtype in dtypes:
            for count in sizes:
                row = run_size(g, dist.group.WORLD, count, dtype, args)
                rows.append(row)
                if writer:
                    writer.write(record(g, row, env))
        if writer:
            writer.close()
        if g.is_root:
            t = Table(title=f"all-reduce (sum) over {g.world} rank(s), {g.backend} on {g.device}",
                      box=box.SIMPLE_HEAD, title_justify="left")
            for c in ("size (B)", "count", "type", "time", "algbw GB/s", "busbw GB/s", "+-IQR", "iters", "#wrong"):
                t.add_column(c, justify="right")
            for r in rows:
                m = r["m"]
                t.add_row(str(r["bytes"]), str(r["count"]), r["dtype"], fmt_time(r["time_s"]),
                          f"{r['algbw']:.3f}", f"{r['busbw']:.3f}", f"{100 * m.rel_noise:.1f}%", str(r["iters"]),
                          str(r["wrong"]) if not r["wrong"] else f"[red]{r['wrong']}[/]")
            out.print(t)
            if not args.quiet:
                out.print("[dim]time: mean per call, averaged over ranks; algbw = bytes / time; busbw = algbw x "
                          "2(n-1)/n (nccl-tests' definitions); +-IQR: rank 0's per-call spread[/]")
        clean = True
        return 1 if any(r["wrong"] for r in rows) else 0
    except mdist.RankFailure as e:
        print(f"microbench: error: {e}", flush=True, file=__import__("sys").stderr)
        return 3
    finally:
        mdist.finish(g, clean=clean)
