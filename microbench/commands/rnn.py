"""``lstm`` and ``gru``: check and time our RNN variants (and, with --frameworks, the frameworks')."""
from __future__ import annotations

import argparse

from kernels.errors import BadInput

from ..cli import EPILOG_RNN, add_output, add_timing, console, csv_list


def add_parsers(sub) -> None:
    from .. import cases  # noqa: F401  (fills the registry)
    from .. import registry
    for op in ("lstm", "gru"):
        _add_rnn(sub, op, registry.variants(op))


def _dtype_help() -> str:
    """The precisions each device's backends compute, from the backend table (never out of step)."""
    from kernels.backends import BACKENDS
    parts = []
    for device, words in (("cpu", "on the CPU"), ("cuda", "on a GPU")):
        names = [b for b in BACKENDS.values() if b.device == device]
        dts = list(dict.fromkeys(d for b in names for d in b.dtypes))
        only = {d: [b.name for b in names if d in b.dtypes] for d in dts}
        text = ", ".join(d + (f" ({'/'.join(only[d])} only)" if len(only[d]) < len(names) else "") for d in dts)
        parts.append(f"{text} {words}")
    return "; ".join(parts)


def _add_rnn(sub, op: str, variant_names: list):
    p = sub.add_parser(op, help=f"time {op.upper()} variants", epilog=EPILOG_RNN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"Check every {op.upper()} variant against the float64 reference, "
                                   "then time it and print a table (one row per variant).")
    from .. import registry
    v = p.add_argument_group("variants")
    for name in variant_names:
        devices = {r.device for r in registry.ours(op) if r.variant == name}
        where = " (GPU only)" if devices == {"cuda"} else " (CPU only)" if devices == {"cpu"} else ""
        v.add_argument(f"--{name}", dest="variant_flags", action="append_const", const=name,
                       help=f"run the {name} variant{where}")
    v.add_argument("--all", action="store_true", help="run every variant (the default when none is named)")
    v.add_argument("--ladder", action="store_true",
                   help="naive, then each fusion step added in turn, with the speedup per rung")
    v.add_argument("--opt", metavar="STEPS",
                   help="fusion steps for the fused variant: comma list of group_gemm, hoist_input, "
                        "pretranspose, fuse_pointwise; or all (default) or none")
    v.add_argument("--backend", metavar="LIST", help="comma list (default: every backend of the device)")
    v.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): a GPU if one is found, else the CPU")
    v.add_argument("--dtype", metavar="LIST", default="fp32", help=f"comma list: {_dtype_help()} (default fp32)")
    if op == "lstm":
        v.add_argument("--cell", choices=("plain", "layernorm", "peephole"), default="plain",
                       help="the LSTM cell: plain (default), layernorm (Ba et al. 2016) or peephole; "
                            "custom cells run the naive and fused variants on the CPU backends")
    v.add_argument("--backward", action="store_true",
                   help="time a training step instead of the forward pass: forward + backward of "
                        "sum(y * dY) for a fixed random dY, gradients for x, h0"
                        + (", c0" if op == "lstm" else "") + " and every weight. Ours: the fused "
                        "variant (kernels.backward, numpy backend, CPU)"
                        + (", plain or --cell layernorm" if op == "lstm" else "")
                        + "; with --frameworks each framework's training step (torch, jax). "
                        "y and every gradient are checked against float64; GFLOP/s counts 3x the "
                        "forward GEMM FLOPs")
    f = p.add_argument_group("frameworks")
    f.add_argument("--frameworks", metavar="LIST",
                   help="also run these frameworks' fused and generic paths, each in its own worker "
                        "process with the same weights: comma list of torch, tensorflow, jax, mxnet, or all"
                        + ("; with --cell layernorm their layer-norm LSTMs instead (torch eager and "
                           "torch.compile, jax lax.scan), with our layer-norm parameters" if op == "lstm" else ""))
    f.add_argument("--python", metavar="FW=PATH", action="append",
                   help="run framework FW's worker under this interpreter, e.g. mxnet=.venv-mxnet/bin/python "
                        "(repeatable; mxnet uses .venv-mxnet when it exists)")
    s = p.add_argument_group("sizes")
    s.add_argument("-T", type=int, default=100, help="sequence length (default 100)")
    s.add_argument("-B", type=int, default=64, help="batch (default 64)")
    s.add_argument("-H", type=int, default=512, help="hidden size (default 512)")
    s.add_argument("-I", type=int, default=None, help="input size (default: H)")
    s.add_argument("-L", type=int, default=1, help="layers (default 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and states (default 0)")
    add_timing(p)
    add_output(p)
    p.set_defaults(func=cmd_rnn, op=op)


def resolve_device(requested: str, op: str) -> str:
    from .. import env as menv
    from .. import registry
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

    from .. import registry
    from ..cases.frameworks import framework_cases, parse_frameworks
    from ..frameworks.client import parse_python
    from ..problems import RNNProblem, check_memory
    from ..runner import Case
    from ..threads import parse_threads

    op = args.op
    problem = RNNProblem(op, args.T, args.B, args.I if args.I is not None else args.H, args.H, args.L)
    precisions = [dtypes.canonical(d) for d in csv_list(args.dtype)]
    if not precisions:
        raise BadInput(f"--dtype {args.dtype!r} names no precision; allowed: fp64, fp32")
    backward = getattr(args, "backward", False)
    for p in precisions:
        check_memory(problem.memory_estimate(dtypes.itemsize(p)), f"{op} {problem.label} {p}")
    thread_counts = parse_threads(args.threads)
    device = _backward_device(args.device) if backward else resolve_device(args.device, op)
    backend_names = csv_list(args.backend) if args.backend else None
    if args.ladder and (args.opt or args.variant_flags):
        raise BadInput("--ladder chooses the variants and steps itself; drop --opt and the variant flags")
    variant_names = None if args.all or not args.variant_flags else list(dict.fromkeys(args.variant_flags))
    fw_names = parse_frameworks(args.frameworks) if args.frameworks else []
    python = parse_python(args.python) if args.python else {}
    if python and not fw_names:
        raise BadInput("--python only applies to framework workers; add --frameworks")
    cell = getattr(args, "cell", "plain")
    if backward:
        return _backward_cases(args, cell, problem, precisions, thread_counts, device,
                               variant_names, backend_names, fw_names, python), device
    if cell != "plain":
        return _custom_cell_cases(args, cell, problem, precisions, thread_counts, device,
                                  variant_names, backend_names, fw_names, python), device
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
    if fw_names:
        cases += framework_cases(op, problem, fw_names, device, precisions, args.seed,
                                 thread_counts, python)
    return cases, device


def _backward_device(requested: str) -> str:
    """--backward runs kernels.backward with NumPy: the CPU, whatever a GPU offers."""
    if requested == "cuda":
        raise BadInput("--backward runs on the CPU only (kernels.backward on the numpy backend), "
                       "not --device cuda; allowed with --backward: --device cpu, auto")
    return "cpu"


def _backward_cases(args, cell, problem, precisions, thread_counts, device, variant_names,
                    backend_names, fw_names, python) -> list:
    """Training-step cases: our fused forward + backward, then the frameworks' training steps."""
    import functools

    from ..cases import backward as bwcases
    from ..cases.frameworks import framework_cases
    from ..problems import check_memory
    from ..registry import VariantRecord
    from ..runner import Case
    from kernels import dtypes
    if cell not in bwcases.BACKWARD_CELLS:
        raise BadInput(f"--backward: kernels.backward has no {cell} LSTM; allowed with --backward: "
                       f"--cell {', '.join(bwcases.BACKWARD_CELLS)}")
    if args.ladder or args.opt:
        raise BadInput("--backward times one arrangement (the fused one); drop --ladder and --opt")
    for v in variant_names or ():
        if v != "fused":
            raise BadInput(f"--backward: only the fused variant has a backward pass, not {v!r}; "
                           "allowed: --fused (or --all)")
    for b in backend_names or ():
        if b not in bwcases.BACKWARD_BACKENDS:
            raise BadInput(f"--backward runs on backend {', '.join(bwcases.BACKWARD_BACKENDS)} "
                           f"(kernels.backward), not {b!r}")
    for p in precisions:
        if p not in bwcases.BACKWARD_PRECISIONS:
            raise BadInput(f"--backward computes {', '.join(bwcases.BACKWARD_PRECISIONS)}, not {p}")
        check_memory(bwcases.memory_estimate(problem, dtypes.itemsize(p)),
                     f"{problem.op} {problem.label} {p} forward+backward")
    name = "fused+bwd" if cell == "plain" else f"{cell}-fused+bwd"
    cases = []
    for threads in thread_counts:
        for p in precisions:
            for b in bwcases.BACKWARD_BACKENDS:
                rec = VariantRecord(problem.op, name, b,
                                    functools.partial(bwcases.build_backward, cell=cell, backend=b),
                                    "fused forward + backward (kernels.backward)")
                cases.append(Case(rec, problem, p, args.seed, None, threads))
    if fw_names:
        cases += framework_cases(problem.op, problem, fw_names, device, precisions, args.seed,
                                 thread_counts, python, cell=cell, backward=True)
    return cases


def _custom_cell_cases(args, cell, problem, precisions, thread_counts, device, variant_names,
                       backend_names, fw_names, python=None) -> list:
    """Cases of a custom LSTM cell (kernels.custom): naive and fused on the device's backends,
    then (layer norm) the frameworks' layer-norm LSTMs."""
    import functools

    from ..cases.custom import build_custom
    from ..cases.frameworks import framework_cases
    from ..registry import VariantRecord
    from ..runner import Case
    if args.ladder or args.opt:
        raise BadInput(f"--cell {cell} has one fused arrangement; drop --ladder and --opt")
    if fw_names and cell != "layernorm":
        raise BadInput(f"--cell {cell}: the frameworks have no {cell} LSTM path to compare "
                       "(framework rows exist for --cell plain and layernorm); drop --frameworks")
    from kernels.custom import CPU_BACKENDS, GPU_BACKENDS
    allowed_v = ("naive", "fused")
    allowed_b = CPU_BACKENDS if device == "cpu" else GPU_BACKENDS
    if device == "cuda":
        for p in precisions:
            if p not in ("fp32", "tf32", "fp16"):
                raise BadInput(f"--cell {cell} on cuda computes fp32, tf32, fp16, not {p}")
    for v in variant_names or ():
        if v not in allowed_v:
            raise BadInput(f"--cell {cell} has variants {', '.join(allowed_v)}, not {v!r}")
    for b in backend_names or ():
        if b not in allowed_b:
            raise BadInput(f"--cell {cell} runs on {device} backends {', '.join(allowed_b)}, not {b!r}")
    cases = []
    for threads in thread_counts:
        for p in precisions:
            for v in variant_names or allowed_v:
                for b in backend_names or allowed_b:
                    rec = VariantRecord("lstm", f"{cell}-{v}", b,
                                        functools.partial(build_custom, cell=cell, variant=v, backend=b),
                                        f"{cell} LSTM, {v}")
                    cases.append(Case(rec, problem, p, args.seed, None, threads))
    if fw_names:
        cases += framework_cases("lstm", problem, fw_names, device, precisions, args.seed,
                                 thread_counts, python, cell=cell)
    return cases


def cmd_rnn(args) -> int:
    from profiles import nvtx

    from .. import report
    from ..cli import run_cases, settings_from
    from ..threads import parse_threads, prepare_numba_pool

    settings = settings_from(args)
    prepare_numba_pool(parse_threads(args.threads))
    nvtx.set_level(args.nvtx)
    cases, device = plan_cases(args)
    outcomes, out, err = run_cases(cases, settings, args)
    cell = getattr(args, "cell", "plain")
    # escaped: the table title is rich markup, where "[layernorm]" would read as a style tag
    title = args.op if cell == "plain" else f"{args.op} \\[{cell}]"
    baseline = "naive" if cell == "plain" else f"{cell}-naive"
    if getattr(args, "backward", False):
        title += " fwd+bwd"
        baseline = "fused+bwd" if cell == "plain" else f"{cell}-fused+bwd"
    report.table(outcomes, out, ladder=args.ladder, title=title, baseline=baseline)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} case(s) FAILED[/]; see the table" + (f" and {args.json}" if args.json else ""))
    return 1 if failed else 0


