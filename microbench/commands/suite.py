"""``suite``: run a named set of shapes (DeepBench, ResNet-50, the quick tour) as one resumable study.

The plan comes first: every entry of the suite, the cases it expands to, the ones skipped (with
the reason) and an estimated time; then the cases run in order, each record appended to --json as
it finishes.  Ctrl-C stops between writes and leaves a valid file; ``--resume`` then skips every
case the file already holds for this environment (microbench/store.py defines "the same case").
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

from kernels import devices
from kernels.errors import BadInput

from kernels.untrusted import terminal
from rich.markup import escape

from ..args import csv_list, named_list, seed_arg
from ..cli import add_output, add_timing

EPILOG = """examples:
  python -m microbench suite --list                                  # the suites
  python -m microbench suite quick --json q.jsonl                    # a two-minute CPU tour
  python -m microbench suite quick --json q.jsonl --resume           # finish an interrupted run
  python -m microbench suite deepbench-rnn-inference --only 'lstm' --list   # the plan only
  python -m microbench suite deepbench-rnn-device --variants fused --threads 1,2 --json t.jsonl
  python -m microbench suite quick --device cpu --shard 2/4 --json q-2.jsonl   # one slice of four
"""

# Timing defaults when neither the suite nor the command line sets them (those of `lstm`).


def add_parsers(sub) -> None:
    from .. import cases  # noqa: F401  (fills the registry)
    p = sub.add_parser("suite", help="run a named suite of shapes (DeepBench, ResNet-50, quick)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Print the plan (cases and estimated time) of a named suite, then run it.")
    p.add_argument("name", nargs="?", help="suite name (see --list)")
    p.add_argument("--list", action="store_true",
                   help="without NAME: list the suites; with NAME: print the plan and stop")
    f = p.add_argument_group("filters")
    f.add_argument("--only", metavar="REGEX", help="entries whose name or shape matches (e.g. 'lstm', '/01[0-9]$')")
    f.add_argument("--variants", metavar="LIST",
                   help="our variants or ladder rungs to keep, e.g. naive,fused or naive,+group_gemm")
    f.add_argument("--frameworks", metavar="LIST", help="framework adapters to add (comma list or all)")
    f.add_argument("--backend", metavar="LIST", help="backends to keep (default: every backend of the device)")
    f.add_argument("--dtype", metavar="LIST", default="fp32",
                   help="comma list of precisions, e.g. fp32,fp64 (default fp32)")
    f.add_argument("--device", type=devices.argparse_type, default="auto", metavar="DEVICE",
                   help="auto (default): a GPU if one is found, else the CPU; cpu; cuda; cuda:K (the K-th GPU)")
    f.add_argument("--batch", type=int, metavar="N", help="override every entry's batch size")
    f.add_argument("--seed", type=seed_arg, default=0, help="seed of weights and inputs (default 0)")
    p.add_argument("--shard", metavar="K/N", type=parse_shard,
                   help="run only the K-th of N disjoint, deterministic slices of the plan (1 <= K <= N), "
                        "balanced by estimated time; every shard must be given the same suite, filters, "
                        "--dtype and --threads. 'auto': K/N from torchrun (RANK, WORLD_SIZE; each rank on "
                        "cuda:LOCAL_RANK) or a Slurm array job. {shard} in --json becomes K. report/compare "
                        "merge the shards' files")
    m = p.add_argument_group("what is timed (defaults: DeepBench's definitions, see suite --list)")
    m.add_argument("--input-gemm", action="store_true",
                   help="RNN rows: time the whole layer, the input GEMM included, instead of the "
                        "recurrent part only (skip-input, DeepBench's definition and the default)")
    m.add_argument("--forward-only", action="store_true",
                   help="training suites: time the forward pass instead of a training step")
    p.add_argument("--resume", action="store_true",
                   help="skip the cases --json already holds for this environment (ok or skipped)")
    add_timing(p)
    add_output(p)
    # None: "not given", so the suite's own timing (quick's is short) applies.
    p.set_defaults(func=cmd_suite, warmup=None, min_time=None, max_time=None, min_samples=None,
                   max_noise=None)


def parse_shard(text: str):
    """``K/N`` -> (K, N) with 1 <= K <= N, or ``auto`` (argparse type; a bad value is one line)."""
    import argparse
    if str(text).strip().lower() == "auto":
        return "auto"
    from ..args import parse_int
    k, sep, n = str(text).partition("/")
    try:
        k, n = parse_int(k, "K"), parse_int(n, "N")
    except BadInput:
        k = n = None
    if not sep or k is None or n < 1 or not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 1 <= K <= N (e.g. 1/2, 2/2)")
    return k, n


def auto_shard(args) -> tuple:
    """(K, N) from the launcher: torchrun's RANK/WORLD_SIZE (and each rank on cuda:LOCAL_RANK when
    the device is cuda or auto with a GPU), or a Slurm array job's task id among its tasks."""
    import os

    from kernels import gpu as kgpu
    env = os.environ
    if not ("RANK" in env and "WORLD_SIZE" in env) and \
            not ("SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env):
        raise BadInput("--shard auto needs torchrun (RANK, WORLD_SIZE) or a Slurm array job "
                       "(SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT); give --shard K/N")
    from ..args import parse_int

    def num(name, default=None):
        return parse_int(env[name] if default is None else env.get(name, default), name)
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            k, n = num("RANK") + 1, num("WORLD_SIZE")
            kind, index = devices.parse(args.device)
            if kind == "cuda" and index is None or kind == "auto" and kgpu.detect()[0]:
                args.device = f"cuda:{num('LOCAL_RANK', '0')}"
        else:
            first = num("SLURM_ARRAY_TASK_MIN", "0")
            k, n = num("SLURM_ARRAY_TASK_ID") - first + 1, num("SLURM_ARRAY_TASK_COUNT")
    except BadInput:
        raise BadInput("--shard auto: the launcher's rank variables are not integers") from None
    if not 1 <= k <= n:
        raise BadInput(f"--shard auto: shard {k} of {n} from the launcher is out of range (array ids must be "
                       "consecutive)")
    return k, n


def shard_of(costs: list, n: int) -> list:
    """The shard (0-based) of each planned case: longest estimated time first, each to the shard
    with the least time so far (ties: plan order, then the lower shard).  Depends on the plan
    alone, so N processes that plan the same cases slice it into the same disjoint, covering parts.

    Only the shards that get a case are held (a heap of at most one per case): every other shard
    has load 0, and the least of those is the lowest index not used yet, so N costs nothing
    (``--shard 1/100000000`` plans as fast as ``1/2``)."""
    import heapq
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    used: list = []           # heap of (load, shard) over the shards given a case so far
    fresh = 0                 # lowest shard not given a case yet (load 0, as every higher one)
    out = [0] * len(costs)
    for i in order:
        if fresh < n and (not used or (0.0, fresh) < used[0]):
            load, k = 0.0, fresh
            fresh += 1
        else:
            load, k = heapq.heappop(used)
        out[i] = k
        heapq.heappush(used, (load + costs[i], k))
    return out


def apply_shard(entries: list, shard: tuple, settings) -> dict:
    """Keep in each entry only the cases of shard (K, N); returns the ``shard`` field of the
    records: index, count, the plan's fingerprint (shards of one plan share it) and its size."""
    import hashlib

    from .. import store
    k, n = shard
    planned = [(e, "case", c) for e in entries for c in e.cases] + \
              [(e, "skip", cr) for e in entries for cr in e.skipped]
    ident = lambda item: store.case_identity(item[2] if item[1] == "case" else item[2][0], None)  # noqa: E731
    fingerprint = hashlib.sha1(repr(sorted(repr(ident(it)) for it in planned)).encode()).hexdigest()[:12]
    costs = [estimate_case_s(c, settings) if kind == "case" else 0.0 for _, kind, c in planned]
    owner = shard_of(costs, n)
    keep = {id(item[2]) for item, o in zip(planned, owner) if o == k - 1}
    for e in entries:
        e.cases = [c for c in e.cases if id(c) in keep]
        e.skipped = [cr for cr in e.skipped if id(cr) in keep]
    return {"index": k, "count": n, "plan": fingerprint, "plan_cases": len(planned)}


# -- planning ------------------------------------------------------------------------------------


RNN_OPS = ("lstm", "gru", "rnn")
RUNNABLE = RNN_OPS + ("conv",)


@dataclass
class Entry:
    spec: object
    cases: list = field(default_factory=list)
    skipped: list = field(default_factory=list)    # (case, reason): recorded as skipped
    reason: str = ""                                 # the whole entry cannot run (no case built)
    done: int = 0                                    # already in the file (--resume)
    est_s: float = 0.0
    outcomes: list = field(default_factory=list)     # filled as the cases run


def _settings(args, suite):
    from ..harness import Settings
    from ..planner import timing_defaults
    vals = {k: getattr(args, k) if getattr(args, k) is not None else suite.timing.get(k, d)
            for k, d in timing_defaults().items()}
    from .. import smoke
    return smoke.settings(Settings(vals["warmup"], vals["min_time"], vals["max_time"], vals["min_samples"],
                                   vals["max_noise"], cold=getattr(args, "cold", False),
                                   graph=getattr(args, "graph", False), rounds=getattr(args, "rounds", 1) or 1))


def mode_of(settings) -> str:
    """The ``mode`` option runner.run_case records (warm/cold, +graph)."""
    graph = "+graph" if getattr(settings, "graph", False) else ""
    return ("cold" if getattr(settings, "cold", False) else "warm") + graph


def _frameworks(text: str | None) -> list:
    """Framework names for --frameworks (None: none); the adapters' own parser names the allowed."""
    if text is None:
        return []
    from ..cases.frameworks import parse_frameworks
    return parse_frameworks(text)


def _framework_cases(op, problem, names, device, precisions, seed, threads) -> list:
    """Cases of every path of the named frameworks, threads bound the way the lstm command binds
    them (microbench.cases.frameworks); an op with no framework case gives none.  Frameworks
    cannot take the input projection as given: on a skip-input entry they run the whole layer,
    labelled so (``torch+input-gemm/fused``)."""
    if not names:
        return []
    from ..cases.frameworks import framework_cases
    from .rnn import full_layer, label_whole_layer
    whole = full_layer(problem) if getattr(problem, "skip_input", False) else problem
    try:
        return label_whole_layer(framework_cases(op, whole, names, device, precisions, seed, threads), problem) \
            if whole is not problem else framework_cases(op, problem, names, device, precisions, seed, threads)
    except BadInput:
        return []


def _check_variants(names: list, ops: set) -> None:
    from fusion.steps import STEPS

    from .. import registry
    allowed = {v for op in ops for v in registry.variants(op)} | {"naive", "fused+bwd"} | {f"+{s}" for s in STEPS}
    allowed |= {r.variant for op in ops for r in registry.ours(op, direction="bwd")}
    for n in names:
        if n not in allowed:
            raise BadInput(f"--variants {n!r} is unknown for this suite; allowed: {', '.join(sorted(allowed))}")


def _problem(spec, batch, input_gemm: bool = False):
    from ..problems import RNNProblem
    from ..suites.conv_shapes import conv_layer
    if spec.is_conv:
        return conv_layer(spec.layer, batch if batch is not None else spec.batch)
    return RNNProblem(spec.op, spec.T, spec.B if batch is None else batch,
                      spec.I if spec.I is not None else spec.H, spec.H, spec.L,
                      nonlinearity=spec.nonlinearity, skip_input=spec.skip_input and not input_gemm)


def _training_cases(spec, problem, device, precisions, frameworks, seed, threads, backends) -> tuple:
    """(cases, reason): an RNN entry's training-step cases, ours (kernels.backward and kernels.train on the
    CPU) and the frameworks' (whole layer, labelled), or why none can run."""
    from .. import registry
    from ..runner import Case
    from .rnn import full_layer, label_whole_layer
    if device != "cpu":
        return [], "the training step runs on the CPU only (kernels.backward, kernels.train); use --device cpu"
    cases = []
    for rec in registry.ours(spec.op, direction="bwd"):
        if backends is not None and rec.backend not in backends:
            continue
        cases += [Case(rec, problem, p, seed, None, t) for t in threads for p in precisions
                  if p in rec.precisions]
    if frameworks:
        from ..cases.frameworks import framework_cases
        try:
            cases += label_whole_layer(framework_cases(spec.op, full_layer(problem), frameworks, device, precisions,
                                                       seed, threads, backward=True), problem)
        except BadInput:
            pass
    if not cases:
        return [], "no training-step case left after the filters (ours: numpy, numba, fp32/fp64)"
    return cases, ""


def plan(args, suite, device: str) -> list:
    """Entries of the suite after the filters, each with the cases it runs or the reason it cannot."""
    from kernels.backends import BACKENDS

    from .. import registry, smoke
    from ..planner import default_plan, ladder_rungs, parse_precisions
    from ..problems import available_memory
    from ..runner import Case
    from ..threads import parse_threads

    try:
        only = re.compile(args.only) if args.only is not None else None
    except re.error as e:
        raise BadInput(f"--only {args.only!r} is not a regular expression: {e}") from None
    precisions = parse_precisions(args.dtype)
    threads_given = parse_threads(args.threads) if args.threads is not None else None
    if args.batch is not None and args.batch < 1:
        raise BadInput(f"--batch {args.batch} must be at least 1")
    variants = csv_list(args.variants) if args.variants is not None else None
    if variants is not None and not variants:
        raise BadInput(f"--variants {args.variants!r} names no variant")
    ops = {s.op for s in suite.specs}
    if variants:
        _check_variants(variants, ops)
    frameworks = _frameworks(args.frameworks)
    backends = named_list("--backend", args.backend)
    if backends is not None:
        known = {r.backend for r in registry.REGISTRY.values() if r.op in ops}
        for b in backends:
            if b not in known:
                raise BadInput(f"--backend {b!r} is unknown for this suite; allowed: {', '.join(sorted(known))}")
    avail = available_memory()

    def keep(name: str) -> bool:
        return variants is None or name in variants

    entries = []
    for spec in suite.specs:
        if only is not None and not (only.search(spec.name) or only.search(spec.describe())):
            continue
        e = Entry(spec)
        entries.append(e)
        if spec.op not in RUNNABLE:
            e.reason = f"no {spec.op} op in microbench (kept as DeepBench data)"
            continue
        if not any(k[0] == spec.op for k in registry.REGISTRY):
            e.reason = f"no {spec.op} variant is registered yet"
            continue
        asked = _problem(spec, args.batch, getattr(args, "input_gemm", False))
        problem, _ = smoke.problem(asked)     # a smoke run shrinks what runs, never what is checked
        threads = threads_given or list(spec.threads or [None])
        if spec.training and not spec.is_conv and not getattr(args, "forward_only", False):
            if variants is not None and not any(v in ("fused", "fused+bwd") for v in variants):
                e.reason = "no variant left after the filters (the training step is fused+bwd)"
                continue
            cases, e.reason = _training_cases(spec, problem, device, precisions, frameworks, args.seed,
                                              threads, backends)
            _fit_memory(e, cases, asked, avail)
            continue
        # a record that leaves itself out of suites (suites=False) runs only when --variants names it
        ours = [r for r in registry.ours(spec.op) if r.device == device
                and (backends is None or r.backend in backends)
                and (r.suites or (variants is not None and r.variant in variants))]
        theirs = _framework_cases(spec.op, problem, frameworks, device, precisions, args.seed, threads)
        built = []   # (record, plan, rung)
        if spec.ladder and not spec.is_conv:
            on = dict.fromkeys(r.backend for r in ours if r.fusable or r.variant == "naive")
            built += [(rec, rung_plan, label) for rec, rung_plan, label in ladder_rungs(spec.op, on, device)
                      if keep(label) or keep(rec.variant)]
        else:
            built += [(rec, default_plan(rec, device), "") for rec in ours if keep(rec.variant)]
        if not built and not theirs:
            e.reason = "no variant left after the filters" if (variants or backends) else \
                f"no {spec.op} variant runs on {device}"
            continue
        conv_training = spec.is_conv and spec.training and not getattr(args, "forward_only", False)
        if conv_training:
            # the training table's backward phases, each its own case (variant+bwd_data,
            # +bwd_weights): on the CPU ours (kernels.conv.backward), on a GPU cuDNN's per algorithm
            from ..cases.conv import backward_records
            built += [(rec, None, "") for rec in backward_records(device=device)
                      if (keep(rec.variant) or keep(rec.variant.partition("+")[0]))
                      and (backends is None or rec.backend in backends)]
            if frameworks:      # the frameworks' phases too (a geometry one refuses: a skipped row)
                from ..cases.frameworks import conv_backward_cases
                theirs += conv_backward_cases(problem, frameworks, device, precisions, args.seed, threads)
        cases = [Case(rec, problem, p, args.seed, rung_plan, t, rung)
                 for t in threads for p in precisions for rec, rung_plan, rung in built
                 if not (rec.backend in BACKENDS and p not in BACKENDS[rec.backend].dtypes)]
        _fit_memory(e, cases + theirs, asked, avail)
        if not e.cases and not e.skipped:
            e.reason = f"no chosen backend computes {', '.join(precisions)}"
    return entries


def _fit_memory(e, cases, problem, avail) -> None:
    """Split cases into the entry's runnable ones and its memory skips."""
    from ..planner import memory_need
    for case in cases:
        need = memory_need(problem, case.precision, [case.record])
        if hasattr(problem, "T") and ("+bwd" in case.variant or "+bwd" in case.backend):
            from ..cases.backward import memory_estimate
            need = memory_estimate(problem, _itemsize(case.precision))
        if avail is not None and need > avail:
            e.skipped.append((case, f"needs about {need / 2**30:.1f} GiB, more than the "
                                    f"{avail / 2**30:.1f} GiB of memory available"))
        else:
            e.cases.append(case)


def _itemsize(precision: str) -> int:
    from kernels import dtypes
    return dtypes.storage(precision).itemsize


# -- estimate ------------------------------------------------------------------------------------
# Rough rates of this kind of machine (a 2-core CPU with OpenBLAS); the estimate says "about".
_CPU_GFLOPS = {"fp32": 20.0, "fp64": 10.0}
_STEP_OVERHEAD_S = {"naive": 150e-6, "fused": 40e-6}


def estimate_run_s(case) -> float:
    """Seconds one timed call might take: GEMM FLOPs at a typical rate plus per-step Python cost."""
    flops = case.problem.flops() if callable(getattr(case.problem, "flops", None)) else case.problem.flops
    if hasattr(case.problem, "T") and ("+bwd" in case.variant or "+bwd" in case.backend):
        flops *= 3                      # a training step: forward, backward-data, backward-weights
    rate = _CPU_GFLOPS.get(case.precision, 20.0) * 1e9 * (50 if case.device == "cuda" else 1)
    steps = getattr(case.problem, "T", 1) * getattr(case.problem, "L", 1)
    per_step = _STEP_OVERHEAD_S.get(case.variant, 60e-6)
    return flops / rate + steps * per_step


# Rough seconds a framework's worker takes to start (import the framework) and build and compile
# its first call on a small machine; every framework case starts a fresh worker.
_WORKER_START_S = {"torch": 4.0, "tensorflow": 12.0, "jax": 6.0, "mxnet": 4.0, "chainer": 4.0}


def _framework(case) -> str:
    return getattr(case.record, "framework", "") or ""


def estimate_case_s(case, settings) -> float:
    """Build + reference check + warm-up + sampling, as the harness's stopping rule spends it.
    A framework row adds its worker's start-up and is counted at --max-time: in one DeepBench
    plan estimated at about 75 s the framework rows sampled until --max-time and the run took 13
    minutes."""
    run = estimate_run_s(case)
    if _framework(case):
        return worst_case_s(case, settings)
    sampling = min(settings.max_time, max(settings.min_time, settings.min_samples * run))
    sampling = max(sampling, min(3, settings.min_samples) * run)   # the harness takes 3 at least
    return 0.2 + 2 * run + max(settings.warmup, run) + sampling


def worst_case_s(case, settings) -> float:
    """Seconds if the case is noisy and samples until --max-time (3 samples at least), its
    worker's start-up included."""
    run = estimate_run_s(case)
    start = _WORKER_START_S.get(_framework(case), 0.0)
    return start + 0.2 + 2 * run + max(settings.warmup, run) + max(settings.max_time, min(3, settings.min_samples) * run)


def fmt_duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# -- command -------------------------------------------------------------------------------------


def list_suites(out) -> int:
    from rich import box
    from rich.table import Table

    from ..suites import catalog
    t = Table(title="suites (python -m microbench suite NAME)", box=box.SIMPLE_HEAD, title_justify="left")
    for c in ("name", "entries", "what", "times", "source"):
        t.add_column(c)
    for s in catalog.SUITES.values():
        t.add_row(s.name, str(len(s.specs)), s.about, s.times, s.source)
    out.print(t)
    return 0


def print_plan(entries, suite, settings, out, *, device, resume_note="", shard=None) -> tuple:
    from rich import box
    from rich.table import Table
    part = f", shard {shard['index']}/{shard['count']} of plan {shard['plan']}" if shard else ""
    t = Table(title=f"plan: suite {suite.name} on {device}{part} ({suite.source}); times: {suite.times}",
              box=box.SIMPLE_HEAD, title_justify="left")
    for c, j in (("entry", "left"), ("shape", "left"), ("cases", "right"), ("at most", "right"),
                 ("likely", "right"), ("note", "left")):
        t.add_column(c, justify=j)
    total_cases = total_est = total_max = 0.0
    n_done = n_skip = n_unrunnable = n_fw = 0
    for e in entries:
        note = e.reason
        if e.skipped:
            note = f"{len(e.skipped)} skipped: {e.skipped[0][1]}"
        if e.done:
            note = (note + "; " if note else "") + f"{e.done} already recorded"
        todo = len(e.cases)
        e.est_s = sum(estimate_case_s(c, settings) for c in e.cases)
        worst = sum(worst_case_s(c, settings) for c in e.cases)
        total_cases += todo
        total_est += e.est_s
        total_max += worst
        n_fw += sum(bool(_framework(c)) for c in e.cases)
        n_done += e.done
        n_skip += len(e.skipped)
        n_unrunnable += bool(e.reason)
        t.add_row(e.spec.name, e.spec.describe(), str(todo) if not e.reason else "-",
                  fmt_duration(worst) if todo else "-", fmt_duration(e.est_s) if todo else "-", escape(note))
    out.print(t)
    # the upper bound first: a case samples until --max-time whenever it misses --max-noise
    parts = [f"{int(total_cases)} case(s) to run: at most {fmt_duration(total_max)} (every case sampling "
             f"until --max-time {settings.max_time:g} s), likely about {fmt_duration(total_est)}"
             + (f" ({n_fw} framework case(s) counted at --max-time, worker start-up included)" if n_fw else "")]
    if n_done:
        parts.append(f"{n_done} already recorded{resume_note}")
    if n_skip:
        parts.append(f"{n_skip} skipped for memory (recorded as skipped)")
    if n_unrunnable:
        parts.append(f"{n_unrunnable} entr{'y' if n_unrunnable == 1 else 'ies'} cannot run here (see note)")
    out.print(escape("; ".join(parts)))
    return int(total_cases), n_done


def cmd_suite(args) -> int:
    from kernels import nvtx

    from .. import env as menv
    from .. import report, store
    from ..args import console
    from ..results import JsonlWriter
    from ..suites import catalog
    from ..threads import parse_threads, prepare_numba_pool
    from ..planner import resolve_device

    out, err = console(), console(stderr=True)
    if args.name is None:
        if args.list:
            return list_suites(out)
        raise BadInput(f"name a suite; allowed: {', '.join(catalog.SUITES)} (suite --list describes them)")
    suite = catalog.get(args.name)
    if not suite.specs:
        raise BadInput(f"suite {suite.name!r} is empty")
    settings = _settings(args, suite)
    if args.shard == "auto":
        args.shard = auto_shard(args)
        if args.json and "{shard}" not in args.json and args.shard[1] > 1:
            raise BadInput(f"--shard auto: {args.shard[1]} processes would append to one file {args.json!r}; "
                           "put {shard} in the path (e.g. --json 'run-{shard}.jsonl')")
    if args.json and "{shard}" in args.json:
        if not args.shard:
            raise BadInput(f"--json {args.json!r}: {{shard}} is replaced by the shard number; add --shard K/N")
        args.json = args.json.replace("{shard}", str(args.shard[0]))
    from profiles import capture
    capture.enable(getattr(args, "profile", False))
    counts = parse_threads(args.threads) if args.threads is not None else \
        sorted({t for spec in suite.specs for t in (spec.threads or ())}) or [None]
    prepare_numba_pool(counts)
    nvtx.set_level(args.nvtx)
    if args.resume and not args.json:
        raise BadInput("--resume needs --json PATH (the file whose cases are skipped)")
    ops = {s.op for s in suite.specs if s.op in RUNNABLE}
    device = resolve_device(args.device, next((o for o in RUNNABLE if o in ops), "lstm"))
    entries = plan(args, suite, device)
    if settings.graph and device != "cuda":
        raise BadInput("--graph replays CUDA graphs, but these cases run on the CPU; drop --graph "
                       "or use --device cuda")
    if not entries:
        raise BadInput(f"--only {args.only!r} matches no entry of suite {suite.name}")
    if all(e.reason for e in entries):
        raise BadInput(f"nothing in suite {suite.name} can run here: {entries[0].reason}")
    if all(not e.cases for e in entries) and not args.resume:
        raise BadInput(f"every case of suite {suite.name} is skipped: "
                       f"{next((e.skipped[0][1] for e in entries if e.skipped), 'see the plan')}")

    shard = apply_shard(entries, args.shard, settings) if args.shard else None
    env = menv.collect()
    done, bad_lines = set(), []
    if args.json and not args.list:
        writer = JsonlWriter(args.json)          # checks the path before anything runs
    else:
        writer = None
    if args.resume:
        from ..runner import Outcome
        done, bad_lines = store.done_keys(args.json)
        recorded = store.latest(store.read(args.json)[0], with_env=True, status=None) if done else {}
        mode = mode_of(settings)
        for e in entries:
            before = len(e.cases) + len(e.skipped)
            keys = {id(c): store.case_identity(c, env["env_id"], mode) for c in e.cases + [c for c, _ in e.skipped]}
            # the cases already recorded still appear in the final table, from the file
            for c in e.cases + [c for c, _ in e.skipped]:
                rec = recorded.get(keys[id(c)])
                if keys[id(c)] in done and rec is not None:
                    e.outcomes.append(Outcome(c, rec["status"], {**rec, "_resumed": True},
                                              error=rec.get("error") or ""))
            e.cases = [c for c in e.cases if keys[id(c)] not in done]
            e.skipped = [(c, r) for c, r in e.skipped if keys[id(c)] not in done]
            e.done = before - len(e.cases) - len(e.skipped)
    if not args.quiet:
        report.header(env, out)
    if bad_lines:
        err.print(f"[yellow]note[/]: {escape(args.json)}: {len(bad_lines)} line(s) are not usable records (a torn "
                  "or corrupt line, an invalid record); they are skipped and left in place")
        store.print_skipped(bad_lines, err)
    n_todo, n_done = print_plan(entries, suite, settings, out, device=device,
                                resume_note=f" in {args.json} for env {env['env_id']} (--resume)",
                                shard=shard)
    if args.list:
        return 0
    args.suite_obj = suite
    try:
        return _run(entries, settings, env, writer, args, out, err, n_todo, n_done, shard)
    finally:
        if writer:
            writer.close()


def _run(entries, settings, env, writer, args, out, err, n_todo, n_done, shard=None) -> int:
    from ..progress import Progress

    from .. import results
    from ..runner import Outcome, run_case, run_interleaved

    from ..runner import warn_threads
    warn_threads([c for e in entries for c in e.cases], err)
    from ..peaks import measure_for
    for note in measure_for([c for e in entries for c in e.cases]):   # the roofs the records carry
        err.print(f"note: {note}", highlight=False)
    nvtx_cost = env["nvtx"]["cost_per_range_s"]
    suite = args.suite_obj
    for e in entries:                      # memory skips are results too: record them first
        for case, reason in e.skipped:
            rec = results.record(case=case, status="skipped", env=env, error=reason)
            if shard:
                rec["shard"] = shard
            rec["suite"] = e.spec.trace(suite)
            if writer:
                writer.write(rec)
            e.outcomes.append(Outcome(case, "skipped", rec, error=reason))
    if n_todo == 0:
        if n_done:
            out.print(escape(f"nothing left to run: all {n_done} case(s) are recorded in {args.json}"))
        elif shard:
            out.print(escape(f"shard {shard['index']}/{shard['count']} holds no case to run (the plan has "
                             f"{shard['plan_cases']}; use fewer shards)"))
        summary(entries, out)
        return 0
    finished = 0
    try:
        with Progress(err, n_todo, quiet=args.quiet) as bar:
            for e in entries:
                # --rounds N: an entry's cases are timed interleaved (the rows compared together)
                interleaved = iter(run_interleaved(e.cases, settings, env, nvtx_cost, bar)) \
                    if settings.rounds > 1 and e.cases else None
                for case in e.cases:
                    if interleaved is not None:
                        o = next(interleaved)
                    else:
                        bar.start(f"{e.spec.name} {case.label} {case.precision}"
                                  + (f" {case.threads} thr" if case.threads else ""))
                        o = run_case(case, settings, env, nvtx_cost, progress=bar.within)
                    if shard:
                        o.record["shard"] = shard
                    o.record["suite"] = e.spec.trace(suite)   # which DeepBench (or our) row this is
                    if writer:
                        writer.write(o.record)
                    e.outcomes.append(o)
                    finished += 1
                    if interleaved is None:       # run_interleaved reports its own cases
                        bar.done(o)
    except KeyboardInterrupt:
        where = f"; {args.json} holds every finished case: rerun with --resume to finish" if writer else ""
        err.print(escape(f"microbench: interrupted after {finished} of {n_todo} case(s){where}"), highlight=False)
        return 130
    summary(entries, out)
    from ..runner import warn_contention
    warn_contention([o.record for e in entries for o in e.outcomes if not o.record.get("_resumed")], env,
                    [c for e in entries for c in e.cases], err)
    failed = sum(o.status == "failed" for e in entries for o in e.outcomes)
    if failed:
        err.print(f"[red]{failed} case(s) FAILED[/]; see the table" + (f" and {args.json}" if writer else ""))
    return 1 if failed else 0


def summary(entries, out) -> None:
    """One row per case: entry, case, dtype, threads, median (its marks beside it: ~ noisy,
    ! contended, ^ above the roof), spread, GFLOP/s, outcome."""
    from rich import box
    from rich.table import Table

    from .. import contention
    from ..report import MARKS, fmt_time, row_marks, smoke_mark
    t = Table(title=f"{smoke_mark()}results", box=box.SIMPLE_HEAD, title_justify="left")
    for c, j in (("entry", "left"), ("case", "left"), ("dtype", "left"), ("thr", "right"),
                 ("median", "right"), ("", "left"), ("+-IQR", "right"), ("GFLOP/s", "right"), ("note", "left")):
        t.add_column(c, justify=j)
    seen = set()
    for e in entries:
        for o in e.outcomes:
            c, r = o.case, o.record
            thr = "-" if c.threads is None else str(c.threads)
            if o.status != "ok":
                word = "[red]FAILED[/]" if o.status == "failed" else "[yellow]skipped[/]"
                t.add_row(e.spec.name, escape(c.label), c.precision, thr, "-", "", "-", "-", f"{word}: {terminal(o.error)}")
                continue
            st = r["stats"]     # a resumed record may be of an older layout: no rel_noise, no noisy
            gf = (r.get("derived") or {}).get("gflops")
            marks = row_marks(r)
            seen.update(marks)
            note = "recorded earlier (--resume)" if r.get("_resumed") else ""
            if contention.contended(r):
                note = (note + "; " if note else "") + "[red]contended[/]"
            t.add_row(e.spec.name, escape(c.label), c.precision, thr, fmt_time(st["median_s"]), marks,
                      f"{100 * st['rel_noise']:.1f}%" if "rel_noise" in st else "-", f"{gf:.1f}" if gf else "-", note)
    out.print(t)
    for mark in "~!^":
        if mark in seen:
            out.print(f"[dim]{escape(MARKS[mark])}[/]")
