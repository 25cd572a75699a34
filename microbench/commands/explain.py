"""``explain lstm|gru|conv``: kernel by kernel, why the runtimes converge once they reach cuDNN."""
from __future__ import annotations

import argparse

from ..cli import console, csv_list

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
    for flag, what, default in (("-T", "sequence length", 50), ("-B", "batch", 16), ("-H", "hidden size", 256)):
        p.add_argument(flag, type=int, default=default, help=f"{what} of the CPU profile (default {default})")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from profiles import explain

    from .. import env as menv
    an = explain.explain_reference(
        args.op, args.reference,
        frameworks=csv_list(args.frameworks) if args.frameworks else None,
        variants=csv_list(args.variants) if args.variants else None)
    import importlib.util

    from kernels.params import check_dim
    gpu = menv.gpu()
    if not gpu.get("available"):
        an.notes.append(f"This machine has no usable GPU ({gpu.get('reason')}), so nothing was traced "
                        "here; on a GPU with cupti-python (pip install '.[gpu]') record new traces "
                        "with profiles.trace.capture and pass them with --reference.")
    out = console()
    explain.render(an, out)
    cpu_wanted = args.cpu or (not gpu.get("available") and importlib.util.find_spec("torch") is not None)
    if cpu_wanted and args.op != "conv":
        from profiles import cpu_profile
        T, B, H = (check_dim(f"-{n}", getattr(args, n)) for n in ("T", "B", "H"))
        cpu_profile.render(cpu_profile.profile_torch(args.op, T, B, H), args.op, out)
    elif cpu_wanted:
        out.print("- The CPU explanation covers lstm and gru; for conv see the reference traces above.")
    elif not gpu.get("available"):
        out.print("- No CPU profile either: it needs PyTorch (pip install -e '.[frameworks]').")
    return 0
