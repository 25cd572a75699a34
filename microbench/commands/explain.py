"""``explain lstm|gru|conv``: kernel by kernel, why the runtimes converge once they reach cuDNN."""
from __future__ import annotations

import argparse

from ..args import console, named_list, output_path

EPILOG = """examples:
  python -m microbench explain lstm                       # this machine has no GPU: the H100 traces
  python -m microbench explain lstm --frameworks torch,jax --variants cudnn
  python -m microbench explain gru --reference my-traces.json
  python -m microbench explain lstm --device cpu --frameworks torch,mxnet   # oneDNN, traced live
  python -m microbench explain lstm --device cpu --json e.jsonl   # records with traces, for report
"""


def add_parsers(sub) -> None:
    p = sub.add_parser("explain", help="why framework runtimes converge at cuDNN, kernel by kernel",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Wall time, GPU-busy time, gaps, kernel counts, launches per step, "
                                   "top kernels and shared kernels per implementation, and sentences "
                                   "computed from those numbers.")
    p.add_argument("op", choices=("lstm", "gru", "conv"))
    p.add_argument("--frameworks", metavar="LIST", help="e.g. torch,jax (default: every one traced)")
    p.add_argument("--variants", metavar="LIST", help="paths to keep, e.g. cudnn,aten (default: all)")
    p.add_argument("--reference", metavar="PATH",
                   help="a trace file in the profiles/reference format (default: the committed H100 set)")
    p.add_argument("--cpu", action="store_true",
                   help="also profile PyTorch's fused and generic CPU paths here (torch.profiler); "
                        "the default when no GPU is found and torch is installed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cpu: trace oneDNN's primitives live here (ours and --frameworks, default "
                        "torch,mxnet) and explain from them; cuda/auto: the GPU traces (reference "
                        "or --reference), plus PyTorch's CPU profile where no GPU is found")
    for flag, what, default in (("-T", "sequence length", 50), ("-B", "batch", 16), ("-H", "hidden size", 256)):
        p.add_argument(flag, type=int, default=default, help=f"{what} of the CPU profile (default {default})")
    p.add_argument("-C", type=int, default=32, help="conv, --device cpu: channels in and out (default 32)")
    p.add_argument("--size", type=int, default=28, help="conv, --device cpu: image height and width (default 28)")
    p.add_argument("--save-logs", metavar="DIR",
                   help="--device cpu: also write each framework's raw oneDNN verbose log to DIR")
    p.add_argument("--python", metavar="FW=PATH", action="append",
                   help="--device cpu: run framework FW's worker under this interpreter")
    p.add_argument("--json", metavar="PATH", type=output_path,
                   help="--device cpu: append one record per timed row, with the oneDNN primitives "
                        "of its traced calls (report draws them beside the convergence figure)")
    p.set_defaults(func=cmd_explain)


def cmd_explain_cpu(args) -> int:
    """--device cpu: ours and the frameworks through oneDNN, traced here (microbench.cpu_explain)."""
    from kernels.params import check_dim
    from .. import cpu_explain

    from ..cases.frameworks import parse_frameworks
    from ..frameworks.client import parse_python
    if args.reference or args.variants:
        from kernels.errors import BadInput
        raise BadInput("--device cpu traces live; --reference and --variants apply to GPU traces")
    T, B, H, C, size = (check_dim(f"-{n}", getattr(args, n)) for n in ("T", "B", "H", "C", "size"))
    frameworks = parse_frameworks(args.frameworks or "torch,mxnet")
    problem = cpu_explain.problem_for(args.op, T, B, H, C, size)
    err = console(stderr=True)
    logs = {} if args.save_logs else None
    writer = env = None
    if args.json:                  # the path is checked before anything runs
        from .. import env as menv
        from ..results import JsonlWriter
        writer = JsonlWriter(args.json)
        env = menv.collect()
        from ..peaks import cpu_roof
        cpu_roof("fp32", None)     # the roof the records carry (fp32, default threads), measured first
    try:
        rows = cpu_explain.collect(args.op, problem, frameworks, python=parse_python(args.python),
                                   logs=logs, env=env,
                                   progress=lambda what: err.print(f"tracing {what} ...", highlight=False))
        for rec in cpu_explain.records(rows) if writer else ():
            writer.write(rec)
    finally:
        if writer:
            writer.close()
    cpu_explain.render(rows, args.op, console())
    if logs:
        from pathlib import Path
        d = Path(args.save_logs)
        d.mkdir(parents=True, exist_ok=True)
        for label, text in logs.items():
            (d / f"{label.replace('/', '-')}-{args.op}.log").write_text(text)
        err.print(f"wrote {len(logs)} verbose log(s) to {d}")
    return 0


def cmd_explain(args) -> int:
    if args.device == "cpu":
        return cmd_explain_cpu(args)
    if args.json:
        from kernels.errors import BadInput
        raise BadInput("--json writes the rows traced live on the CPU; it needs --device cpu")
    import importlib.util

    from kernels.params import check_dim
    from profiles import explain

    from .. import env as menv
    gpu = menv.gpu()
    cpu_wanted = args.cpu or (not gpu.get("available") and importlib.util.find_spec("torch") is not None)
    if cpu_wanted and args.op != "conv":   # sizes are checked before anything is printed
        from ..problems import RNNProblem, check_memory
        T, B, H = (check_dim(f"-{n}", getattr(args, n)) for n in ("T", "B", "H"))
        # the estimate the benchmarks use (fp32 buffers, the float64 reference's too): sizes that
        # cannot fit are refused before torch tries to allocate them
        check_memory(RNNProblem(args.op, T, B, H, H, 1).memory_estimate(4),
                     f"explain --cpu {args.op} T={T} B={B} H={H}")
    raw = None
    if args.reference:   # a user's path: a regular file or a pipe, one-line errors otherwise
        from ..files import open_input
        from profiles.trace import MAX_FILE_BYTES
        with open_input(args.reference, "trace file") as f:
            raw = f.read(MAX_FILE_BYTES + 1)     # one byte more than load() takes: never unbounded
    an = explain.explain_reference(
        args.op, args.reference, raw=raw,
        frameworks=named_list("--frameworks", args.frameworks),
        variants=named_list("--variants", args.variants))
    if not gpu.get("available"):
        an.notes.append(f"This machine has no usable GPU ({gpu.get('reason')}), so nothing was traced "
                        "here; on a GPU with cupti-python (pip install '.[gpu]') record new traces "
                        "with profiles.trace.capture and pass them with --reference.")
    out = console()
    explain.render(an, out)
    if cpu_wanted and args.op != "conv":
        from profiles import cpu_profile
        cpu_profile.render(cpu_profile.profile_torch(args.op, T, B, H), args.op, out)
    elif cpu_wanted:
        out.print("- The CPU explanation covers lstm and gru; for conv see the reference traces above.")
    elif not gpu.get("available"):
        out.print("- No CPU profile either: it needs PyTorch (pip install -e '.[frameworks]').")
    if not gpu.get("available"):
        _cpu_paths(args.op, out)
    return 0


def _cpu_paths(op: str, out) -> None:
    """What each framework's CPU rows run (``--frameworks all --device cpu`` times them): which
    reach a fused vendor kernel (oneDNN) and which run their own loop, as Chainer's NStep does."""
    from ..frameworks import FRAMEWORKS, PATHS
    out.print(f"- What each framework's CPU {op} rows run (time them with `{op} --frameworks all --device cpu`):")
    for fw in FRAMEWORKS:
        for path, ops in PATHS[fw]["cpu"].items():
            text = ops[op]
            out.print(f"  {fw}/{path}: " + (f"no such row ({text[len('skip: '):]})" if text.startswith("skip: ") else text))
