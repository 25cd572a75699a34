"""``explain lstm|gru|conv``: kernel by kernel, why the runtimes converge once they reach cuDNN."""
from __future__ import annotations

import argparse

from ..cli import console, named_list

EPILOG = """examples:
  python -m microbench explain lstm                       # this machine has no GPU: the H100 traces
  python -m microbench explain lstm --frameworks torch,jax --variants cudnn
  python -m microbench explain gru --reference my-traces.json
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
    for flag, default in (("-T", 50), ("-B", 16), ("-H", 256)):
        p.add_argument(flag, type=int, default=default, help=f"sizes of the CPU profile (default {default})")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
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
        with open_input(args.reference, "trace file") as f:
            raw = f.read()
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
