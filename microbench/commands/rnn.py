"""``lstm``, ``gru`` and ``rnn`` (the vanilla cell): check and time our RNN variants (and, with
--frameworks, the frameworks')."""
from __future__ import annotations

import argparse

from kernels import devices
from kernels.errors import BadInput

from ..args import console, named_list, seed_arg
from ..cli import EPILOG_RNN, add_output, add_timing


def add_parsers(sub) -> None:
    from .. import cases  # noqa: F401  (fills the registry)
    from .. import registry
    for op in ("lstm", "gru", "rnn"):
        _add_rnn(sub, op, registry.variants(op))


_HELP = {"lstm": "time LSTM variants", "gru": "time GRU variants",
         "rnn": "time vanilla RNN variants (h = relu|tanh(W x + U h + b), DeepBench's 'vanilla')"}
def _dtype_help() -> str:
    """The precisions each device's backends compute, from the backend table (never out of step)."""
    from kernels.backends import BACKENDS
    parts = []
    for device, words in (("cpu", "on the CPU"), ("cuda", "on a GPU")):
        names = [b for b in BACKENDS.values() if b.device == device]
        dts = list(dict.fromkeys(d for b in names for d in b.dtypes))
        only = {d: [b.name for b in names if d in b.dtypes] for d in dts}
        text = ", ".join(d + (f" ({'/'.join(only[d])} only)" if len(only[d]) < len(names) else "") for d in dts)
        native = [f"{b.name}'s {'/'.join(b.native_only)} needs AVX512-BF16 or AMX" for b in names if b.native_only]
        parts.append(f"{text} {words}" + (f" ({'; '.join(native)})" if native else ""))
    return "; ".join(parts)


def _cells(op: str | None = None) -> tuple:
    """``plain`` and the custom cells with records for the op (their family's; every op's when None)."""
    from .. import registry
    return ("plain",) + tuple(dict.fromkeys(r.cell for r in registry.listing(op) if r.cell != "plain"
                                            and r.direction == "fwd" and not r.framework))


def _cell_help(op: str) -> str:
    """--cell's help, from the registered cells (kernels.custom.CUSTOM_CELLS: one row per cell)."""
    from kernels.custom import CUSTOM_CELLS, FAMILIES
    own = "; ".join(f"{c} ({CUSTOM_CELLS[c].about})" for c in _cells(op)[1:] if c in CUSTOM_CELLS)
    family = {"lstm": "LSTM", "gru": "GRU", "rnn": "vanilla RNN"}[op]
    return (f"the cell: plain (default); {own or f'no custom {family} cell is registered'}. A custom "
            f"cell of the {family} family ({FAMILIES[op]}; one row of kernels.custom.CUSTOM_CELLS) "
            "runs the naive and fused variants (with --opt and --ladder) on the same runner and backends")


def _add_rnn(sub, op: str, variant_names: list):
    p = sub.add_parser(op, help=_HELP[op], epilog=EPILOG_RNN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"Check every {op.upper()} variant against the float64 reference, "
                                   "then time it and print a table (one row per variant).")
    from .. import registry
    v = p.add_argument_group("variants")
    for name in variant_names:
        on = {r.device for r in registry.ours(op) if r.variant == name}
        where = " (GPU only)" if on == {"cuda"} else " (CPU only)" if on == {"cpu"} else ""
        v.add_argument(f"--{name}", dest="variant_flags", action="append_const", const=name,
                       help=f"run the {name} variant{where}")
    v.add_argument("--all", action="store_true", help="run every variant (the default when none is named)")
    v.add_argument("--ladder", action="store_true",
                   help="naive, then each fusion step added in turn, with the speedup per rung")
    v.add_argument("--opt", metavar="STEPS",
                   help="fusion steps for the fused variant: comma list of group_gemm, hoist_input, "
                        "fuse_pointwise, pretranspose, graph (on the CPU: the compiled step loop, "
                        "numba backend), on a GPU also streams, wavefront; "
                        "or all (default: every step the backend has) or none")
    v.add_argument("--backend", metavar="LIST", help="comma list (default: every backend of the device)")
    v.add_argument("--device", type=devices.argparse_type, default="auto", metavar="DEVICE",
                   help="auto (default): a GPU if one is found, else the CPU; cpu; cuda; cuda:K "
                        "(the K-th GPU, counted as CUDA_VISIBLE_DEVICES shows them)")
    v.add_argument("--dtype", metavar="LIST", default="fp32", help=f"comma list: {_dtype_help()} (default fp32)")
    if op == "rnn":
        v.add_argument("--nonlinearity", choices=("tanh", "relu"), default=None,
                       help="the vanilla cell's activation: tanh (default, PyTorch's nn.RNN default) or "
                            "relu (DeepBench's vanilla rows, cuDNN CUDNN_RNN_RELU)")
    v.add_argument("--skip-input", action="store_true",
                   help="time the recurrent part only, as DeepBench does (cuDNN CUDNN_SKIP_INPUT): the "
                        "first layer's input projection x W_ih^T is taken as given (a (T, B, G*H) input) "
                        "and GFLOP/s counts the recurrent GEMMs only; framework rows, which cannot "
                        "skip it, run the whole layer and say so")
    # every registered cell is a choice: one of another family gets a line naming its command
    v.add_argument("--cell", choices=_cells(), default="plain", metavar="CELL", help=_cell_help(op))
    v.add_argument("--backward", action="store_true",
                   help="time a training step instead of the forward pass: forward + backward of "
                        "sum(y * dY) for a fixed random dY, gradients for x, h0"
                        + (", c0" if op == "lstm" else "") + " and every weight. Ours: the fused "
                        "variant on the CPU"
                        + (", plain or --cell layernorm" if op == "lstm" else "")
                        + ", on backend numpy (kernels.backward: steps issued from Python) and numba "
                        "(kernels.train: compiled step loops on packed oneDNN GEMMs, fused numba kernels, "
                        "a thread team" + (" for the plain cell" if op == "lstm" else "") + ")"
                        + "; with --frameworks each framework's training step (torch, tensorflow, jax, mxnet, "
                        "chainer; a path that cannot be differentiated is a skipped row saying why). "
                        "y and every gradient are checked against float64; GFLOP/s counts 3x the "
                        "forward GEMM FLOPs")
    f = p.add_argument_group("frameworks")
    f.add_argument("--frameworks", metavar="LIST",
                   help="also run these frameworks' fused and generic paths, each in its own worker "
                        "process with the same weights: comma list of torch, tensorflow, jax, mxnet, chainer, or all "
                        "(cntk and caffe cannot be installed on a supported Python)"
                        + ("; with --cell layernorm their layer-norm LSTMs instead (torch eager and "
                           "torch.compile, jax lax.scan), with our layer-norm parameters" if op == "lstm" else ""))
    f.add_argument("--python", metavar="FW=PATH", action="append",
                   help="run framework FW's worker under this interpreter, e.g. mxnet=.venv-mxnet/bin/python "
                        "(repeatable; mxnet and chainer use .venv-mxnet when it exists)")
    s = p.add_argument_group("sizes")
    s.add_argument("-T", type=int, default=100, help="sequence length (default 100)")
    s.add_argument("-B", type=int, default=64, help="batch (default 64)")
    s.add_argument("-H", type=int, default=512, help="hidden size (default 512)")
    s.add_argument("-I", type=int, default=None, help="input size (default: H)")
    s.add_argument("-L", type=int, default=1, help="layers (default 1)")
    s.add_argument("--seed", type=seed_arg, default=0, help="seed of weights, inputs and states (default 0)")
    add_timing(p)
    add_output(p)
    p.set_defaults(func=cmd_rnn, op=op)


def _opt_plan(text: str | None, device: str):
    """--opt as a Plan; None when absent or "all", which means each backend's own every step
    (planner.default_plan), not the device's (a backend leaves out steps it lacks or that change
    nothing on it)."""
    from fusion.steps import Plan
    return Plan.parse(text, device) if text is not None and text.strip() != "all" else None


def plan_cases(args) -> tuple:
    """(cases, device): every case the arguments ask for, validated before anything runs."""
    from kernels.backends import BACKENDS

    from .. import registry
    from ..cases.frameworks import framework_cases, parse_frameworks
    from ..frameworks.client import parse_python
    from ..planner import default_plan, ladder_rungs, memory_need, parse_precisions, resolve_device
    from .. import smoke
    from ..problems import RNNProblem, check_memory
    from ..runner import Case
    from ..threads import parse_threads

    op = args.op
    skip = getattr(args, "skip_input", False)
    cell = getattr(args, "cell", "plain")
    problem = RNNProblem(op, args.T, args.B, args.I if args.I is not None else args.H, args.H, args.L,
                         nonlinearity=(getattr(args, "nonlinearity", None) or "") if op == "rnn" else "",
                         skip_input=skip, cell="" if cell == "plain" else cell)
    precisions = parse_precisions(args.dtype)
    backward = getattr(args, "backward", False)
    for p in precisions:
        check_memory(memory_need(problem, p), f"{op} {problem.label} {p}")
    problem, _ = smoke.problem(problem)     # a smoke run shrinks what runs, never what is checked
    thread_counts = parse_threads(args.threads)
    device = _backward_device(args.device) if backward else resolve_device(args.device, op)
    backend_names = named_list("--backend", args.backend, ", ".join(registry.backends(op)))
    if args.ladder and (args.opt is not None or args.variant_flags):
        raise BadInput("--ladder chooses the variants and steps itself; drop --opt and the variant flags")
    variant_names = None if args.all or not args.variant_flags else list(dict.fromkeys(args.variant_flags))
    fw_names = parse_frameworks(args.frameworks) if args.frameworks is not None else []
    python = parse_python(args.python) if args.python else {}
    if python and not fw_names:
        raise BadInput("--python only applies to framework workers; add --frameworks")
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
    plan = _opt_plan(args.opt, device)
    if plan is not None and not any(r.fusable for r in records):
        raise BadInput(f"--opt {args.opt!r} sets the fusion steps of the fused variant, which is not "
                       f"selected ({', '.join(dict.fromkeys(r.variant for r in records))}); add --fused "
                       "or drop --opt")
    cases = []
    for threads in thread_counts:
        for p in precisions:
            if args.ladder:
                fusable = dict.fromkeys(r.backend for r in records if r.fusable)
                cases += [Case(rec, problem, p, args.seed, rung_plan, threads, label)
                          for rec, rung_plan, label in ladder_rungs(op, fusable, device)]
            else:
                cases += [Case(rec, problem, p, args.seed, default_plan(rec, device, plan), threads)
                          for rec in records]
    if fw_names:
        cases += label_whole_layer(framework_cases(op, full_layer(problem), fw_names, device, precisions,
                                                   args.seed, thread_counts, python), problem)
    return cases, device


def full_layer(problem):
    """The problem a framework row runs: frameworks cannot take the input projection as given, so
    a skip-input problem runs as the whole layer there (its record says so: no skip_input)."""
    import dataclasses
    return dataclasses.replace(problem, skip_input=False) if problem.skip_input else problem


def label_whole_layer(cases: list, problem) -> list:
    """Framework rows of a skip-input run, labelled ``torch+input-gemm/fused``: they time more
    work than our skip-input rows (the input GEMM), which the label must say."""
    import dataclasses
    if not problem.skip_input:
        return cases
    return [dataclasses.replace(c, rung=f"{c.variant}+input-gemm") for c in cases]


def _backward_device(requested: str) -> str:
    """--backward runs kernels.backward and kernels.train: the CPU, whatever a GPU offers."""
    if devices.parse(requested)[0] == "cuda":
        raise BadInput(f"--backward runs on the CPU only (kernels.backward, kernels.train), "
                       f"not --device {requested}; allowed with --backward: --device cpu, auto")
    return "cpu"


def _backward_cases(args, cell, problem, precisions, thread_counts, device, variant_names,
                    backend_names, fw_names, python) -> list:
    """Training-step cases: our fused forward + backward (the registry's "bwd" records of the
    cell), then the frameworks' training steps."""
    from .. import registry
    from ..cases import backward as bwcases
    from ..cases.frameworks import framework_cases
    from ..problems import check_memory
    from ..runner import Case
    from kernels import dtypes
    if cell not in bwcases.BACKWARD_CELLS:
        raise BadInput(f"--backward: kernels.backward has no {cell} {problem.op.upper()}; allowed with --backward: "
                       f"--cell {', '.join(bwcases.BACKWARD_CELLS)}")
    if args.ladder or args.opt is not None:
        raise BadInput("--backward times one arrangement (the fused one); drop --ladder and --opt")
    for v in variant_names or ():
        if v != "fused":
            raise BadInput(f"--backward: only the fused variant has a backward pass, not {v!r}; "
                           "allowed: --fused (or --all)")
    for b in backend_names or ():
        if b not in bwcases.BACKWARD_BACKENDS:
            raise BadInput(f"--backward runs on backend {', '.join(bwcases.BACKWARD_BACKENDS)} "
                           f"(numpy: kernels.backward; numba: kernels.train), not {b!r}")
    for p in precisions:
        if p not in bwcases.BACKWARD_PRECISIONS:
            raise BadInput(f"--backward computes {', '.join(bwcases.BACKWARD_PRECISIONS)}, not {p}")
        check_memory(bwcases.memory_estimate(problem, dtypes.itemsize(p)),
                     f"{problem.op} {problem.label} {p} forward+backward")
    recs = [r for r in registry.ours(problem.op, cell, "bwd") if not backend_names or r.backend in backend_names]
    cases = [Case(rec, problem, p, args.seed, None, threads)
             for threads in thread_counts for p in precisions for rec in recs]
    if fw_names:
        cases += label_whole_layer(framework_cases(problem.op, full_layer(problem), fw_names, device,
                                                   precisions, args.seed, thread_counts, python, cell=cell,
                                                   backward=True), problem)
    return cases


def _custom_cell_cases(args, cell, problem, precisions, thread_counts, device, variant_names,
                       backend_names, fw_names, python=None) -> list:
    """Cases of a custom cell (the registry's records of the cell, registered under its family's
    op, run by kernels.recurrent.RNN as the plain cells are): naive and fused on the device's
    backends, with --opt and --ladder, then (layer norm) the frameworks' layer-norm LSTMs."""
    from fusion.steps import ladder

    from .. import registry
    from ..cases.frameworks import framework_cases
    from ..runner import Case
    op = problem.op
    if fw_names and cell != "layernorm":
        raise BadInput(f"--cell {cell}: the frameworks have no {cell} {op.upper()} path to compare "
                       "(framework rows exist for --cell plain and layernorm); drop --frameworks")
    on = [r for r in registry.ours(op, cell) if r.device == device]
    prefix = f"{cell}-"
    allowed_v = tuple(dict.fromkeys(r.variant[len(prefix):] for r in on))
    allowed_b = tuple(dict.fromkeys(r.backend for r in on))
    if device == "cuda":
        dts = on[0].precisions
        for p in precisions:
            if p not in dts:
                raise BadInput(f"--cell {cell} on cuda computes {', '.join(dts)}, not {p}")
    for v in variant_names or ():
        if v not in allowed_v:
            raise BadInput(f"--cell {cell} has variants {', '.join(allowed_v)}, not {v!r}")
    for b in backend_names or ():
        if b not in allowed_b:
            raise BadInput(f"--cell {cell} runs on {device} backends {', '.join(allowed_b)}, not {b!r}")
    plan = _opt_plan(args.opt, device)
    if plan is not None and "fused" not in (variant_names or allowed_v):
        raise BadInput(f"--opt {args.opt!r} sets the fusion steps of the fused variant, which is not "
                       "selected; add --fused or drop --opt")

    def record(v, b):
        return registry.REGISTRY[(op, f"{prefix}{v}", b)]
    cases = []
    for threads in thread_counts:
        for p in precisions:
            if args.ladder:
                for b in backend_names or allowed_b:
                    for label, rung_plan in ladder(device):
                        v = "naive" if label == "naive" else "fused"
                        cases.append(Case(record(v, b), problem, p, args.seed,
                                          rung_plan if v == "fused" else None, threads, label))
                continue
            for v in variant_names or allowed_v:
                for b in backend_names or allowed_b:
                    # no --opt: plan None, every step of the backend (kernels.recurrent.RNN's default)
                    cases.append(Case(record(v, b), problem, p, args.seed,
                                      plan if v == "fused" else None, threads))
    if fw_names:
        cases += framework_cases(op, problem, fw_names, device, precisions, args.seed,
                                 thread_counts, python, cell=cell)
    return cases


def cmd_rnn(args) -> int:
    from kernels import nvtx

    from .. import report
    from ..cli import settings_from
    from ..runner import run_cases
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


