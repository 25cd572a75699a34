"""conv2d builders: our CPU variants, checked against the float64 reference before timing; with
``--backward`` (and in training suites) also their backward-data and backward-weights phases."""
from __future__ import annotations

import functools

import numpy as np

from kernels import dtypes
from kernels.conv import CONV_VARIANTS, ConvProblem, conv2d_reference
from kernels.errors import Unsupported

from ..checks import compare
from ..registry import Check, Prepared, VariantRecord, code_of, register

# Winograd's transforms amplify rounding: F(4x4,3x3) in fp32 reached 8.5e-6 of the output's
# magnitude at C=512 (tests/test_conv.py), too close to the 1e-5 fp32 tolerance to be stable.
TOL_SCALE = {"winograd": 3.0, "winograd_packed": 3.0}


def make_inputs(problem: ConvProblem, seed: int, precision: str, x_seed: int | None = None) -> tuple:
    """(x, w, b) from the seed; ``x_seed``: the same weights with x drawn from this seed instead
    (the gate's second input, :func:`second_input`)."""
    x, w, b = problem.random_inputs(np.random.default_rng(seed), precision)
    if x_seed is not None:
        x = problem.random_inputs(np.random.default_rng(x_seed), precision)[0]
    return x, w, b


@functools.lru_cache(maxsize=4)
def reference_output(problem: ConvProblem, seed: int, precision: str, x_seed: int | None = None) -> np.ndarray:
    x, w, b = make_inputs(problem, seed, precision, x_seed)
    return conv2d_reference(x, w, b, problem)


def second_input(problem: ConvProblem, seed: int, precision: str, tol: float):
    """``Prepared.vary`` of a forward conv case (microbench.callsample): x from another seed, the
    same weights, and the check of a call's output against its reference."""
    def vary():
        x2 = make_inputs(problem, seed, precision, seed + 1)[0]
        ref = reference_output(problem, seed, precision, seed + 1)
        return {"x": x2}, lambda out: compare([out], [ref], precision, names=("y",), tol=tol)
    return vary


def build_conv(problem: ConvProblem, seed: int, *, variant: str, precision: str, plan=None) -> Prepared:
    v = CONV_VARIANTS[variant]
    reason = v.accepts(problem, precision)
    if reason:
        raise Unsupported(reason)
    x, w, b = make_inputs(problem, seed, precision)
    # the layer is built here (filter packed, workspaces allocated, kernels compiled): untimed
    layer = v.prepare(w, b, problem)
    run = lambda: layer(x)  # noqa: E731
    tol = dtypes.tolerance(precision) * TOL_SCALE.get(variant, 1.0)

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        return compare([run() if out is None else out], [reference_output(problem, seed, precision)], precision, names=("y",), tol=tol)

    return Prepared(inputs={"x": x, "w": w, "b": b}, run=run, flops=problem.flops,
                    bytes=problem.bytes(precision), check=check, info={"layout": problem.layout, **layer.info()},
                    vary=second_input(problem, seed, precision, tol), close=layer.close)


for _name, _v in CONV_VARIANTS.items():   # the backend of its row: where its work happens
    register(VariantRecord("conv", _name, _v.backend, functools.partial(build_conv, variant=_name),
                           _v.description, code=f"kernels.conv.{_v.module}:run{_v.suffix}",
                           dtypes=_v.dtypes, tol_scale=TOL_SCALE.get(_name, 1.0), suites=_v.suites,
                           workspace=_v.workspace_bytes))


# -- backward phases (conv --backward, training suites) -------------------------------------------
# Registered with direction "bwd" (registry.ours("conv") and the CLI flags are the forward
# variants).  Each phase is its own case and record, as DeepBench times them.
PHASE_ABOUT = {"bwd_data": "backward-data: dx from dy and w", "bwd_weights": "backward-weights: dw, db from x and dy"}


def upstream_grad(problem: ConvProblem, seed: int, precision: str) -> np.ndarray:
    """dy (shape of y): standard normal from its own stream of the seed, in the storage type."""
    rng = np.random.default_rng([seed, 2])
    return rng.standard_normal(problem.y_shape).astype(dtypes.storage(precision))


def _phase_reference(phase, problem, x, w, dy):
    from kernels.conv import backward as cb
    if phase == "bwd_data":
        return [cb.conv2d_backward_data_reference(dy, w, problem)]
    dw, db = cb.conv2d_backward_weights_reference(x, dy, problem)
    return [dw] + ([db] if db is not None else [])


@functools.lru_cache(maxsize=4)
def backward_reference(problem: ConvProblem, seed: int, precision: str, phase: str) -> tuple:
    """``(float64 outputs, tolerances)`` of a phase on the rounded inputs.  Tolerance per output:
    the precision's or 50x how far the float64 result moves when every input is perturbed by one
    rounding of the storage type, whichever is larger (:mod:`.conditioning`): a weight gradient
    sums N*P*Q products, and its fp32 rounding grows with that length."""
    from . import conditioning as cond
    x, w, _ = make_inputs(problem, seed, precision)
    dy = upstream_grad(problem, seed, precision)
    base = _phase_reference(phase, problem, x, w, dy)
    u, rng = cond.unit_roundoff(precision), np.random.default_rng([seed, 3])
    moved = _phase_reference(phase, problem, cond.perturb(x.astype(np.float64), rng, u),
                             cond.perturb(w.astype(np.float64), rng, u), cond.perturb(dy.astype(np.float64), rng, u))
    return tuple(base), cond.tolerances(base, moved, precision)


def build_conv_backward(problem: ConvProblem, seed: int, *, variant: str, phase: str, precision: str,
                        plan=None) -> Prepared:
    from kernels.conv import backward as cb
    from . import conditioning as cond
    reason = cb.accepts(problem, precision)
    if reason:
        raise Unsupported(reason)
    x, w, _ = make_inputs(problem, seed, precision)
    dy = upstream_grad(problem, seed, precision)
    names = ("dx",) if phase == "bwd_data" else (("dw", "db") if problem.bias else ("dw",))

    def run():
        return cb.backward(variant, phase, x, w, dy, problem)

    def check() -> Check:
        out = run()
        outs = [out] if phase == "bwd_data" else [a for a in out if a is not None]
        ref, tols = backward_reference(problem, seed, precision, phase)
        return cond.compare_each(outs, ref, tols, names)

    return Prepared(inputs={"x": x, "w": w, "dy": dy}, run=run, flops=problem.flops,
                    bytes=problem.bytes(precision), check=check,
                    info={"layout": problem.layout, "pass": phase, "outputs": list(names),
                          "loss": "sum(y * dy), dy fixed standard normal (seed stream [seed, 2])",
                          "flops_rule": "the forward's GEMM FLOPs: each backward phase is a GEMM of "
                                        "the same size"})


def backward_records(variants=None, device: str = "cpu") -> list:
    """The registered backward-phase records of ``device`` in registry order: on the CPU ours
    per (variant with a backward, phase), on a GPU cuDNN's (cudnn+PHASE, then cudnn_ALGO+PHASE).
    ``variants`` (CPU names) filters; an unknown or forward-only name raises BadInput naming the
    allowed ones."""
    from kernels.conv.backward import BACKWARD
    from kernels.errors import BadInput

    from ..registry import ours
    for v in variants or ():
        if v not in BACKWARD:
            raise BadInput(f"--backward: conv variant {v!r} has no backward pass; allowed: {', '.join(BACKWARD)}")
    return [r for r in ours("conv", direction="bwd") if r.device == device
            and (not variants or r.variant.partition("+")[0] in variants)]


def _register_backward() -> None:
    from kernels.conv.backward import BACKWARD, PHASES
    for v in (v for v in CONV_VARIANTS if v in BACKWARD):
        for phase, fn in zip(PHASES, BACKWARD[v]):
            register(VariantRecord("conv", f"{v}+{phase}", CONV_VARIANTS[v].backend,
                                   functools.partial(build_conv_backward, variant=v, phase=phase),
                                   f"{CONV_VARIANTS[v].description}; {PHASE_ABOUT[phase]}",
                                   code=code_of(fn), dtypes=CONV_VARIANTS[v].dtypes, direction="bwd"))


_register_backward()
