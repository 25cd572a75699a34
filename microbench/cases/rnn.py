"""LSTM/GRU/vanilla-RNN builders: our naive and fused variants on every backend, checked against the reference."""
from __future__ import annotations

import functools

import numpy as np

from kernels import dtypes
from kernels.backends import step_backends
from kernels.params import PARAMS
from kernels.reference import REFERENCES
from kernels.recurrent import RNN

from ..checks import compare, to_host
from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, code_of, register

__all__ = ["build_rnn", "compare", "gemms_per_step", "make_inputs", "reference_outputs"]


def make_inputs(problem: RNNProblem, seed: int, precision: str, inputs_seed: int | None = None) -> dict:
    """Parameters, input and initial states, from the seed alone: every variant sees the same numbers.

    Drawn in float64, then rounded to the case's storage type; the reference runs on those
    rounded values, so the check measures the computation, not the rounding of the inputs.
    ``inputs_seed``: the same parameters with x, h0, c0 drawn from this seed instead (the gate's
    second inputs, :func:`second_inputs`).
    """
    rng = np.random.default_rng(seed if inputs_seed is None else inputs_seed)
    extra = {"nonlinearity": problem.nonlinearity} if problem.op == "rnn" else {}
    params = PARAMS[problem.op].random(problem.I, problem.H, problem.L, seed=seed, **extra)
    st = dtypes.storage(precision)
    # skip_input: x is the first layer's projection (T, B, G*H), drawn like one
    # (x W_ih^T has about this spread for the seeded weights)
    scale = 0.6 if problem.skip_input else 1.0
    x = (scale * rng.standard_normal((problem.T, problem.B, problem.input_width))).astype(st)
    shape = (problem.L, problem.B, problem.H)
    h0 = (0.5 * rng.standard_normal(shape)).astype(st)
    c0 = (0.5 * rng.standard_normal(shape)).astype(st) if problem.op == "lstm" else None
    return {"params": params.astype(st), "x": x, "h0": h0, "c0": c0}


@functools.lru_cache(maxsize=4)
def reference_outputs(problem: RNNProblem, seed: int, precision: str, inputs_seed: int | None = None) -> tuple:
    """float64 outputs (y, h_n[, c_n]) for the rounded inputs; cached across the variants of a run."""
    inp = make_inputs(problem, seed, precision, inputs_seed)
    skip = {"skip_input": problem.skip_input}
    if problem.op == "lstm":
        y, (h, c) = REFERENCES["lstm"](inp["x"], inp["params"], inp["h0"], inp["c0"], **skip)
        return y, h, c
    y, h = REFERENCES[problem.op](inp["x"], inp["params"], inp["h0"], **skip)
    return y, h


def second_inputs(problem: RNNProblem, seed: int, precision: str, flatten=None):
    """``Prepared.vary`` of an RNN case (microbench.callsample): x, h0 (and c0) drawn from another
    seed, with the same parameters, and the check of a call's outputs against their reference.
    ``flatten``: a call's return value -> (y, h_n[, c_n]) (default: the RNN call's)."""
    other_seed = seed + 1
    flatten = flatten or (lambda out: _flatten(problem.op, out))

    def vary():
        other = make_inputs(problem, seed, precision, inputs_seed=other_seed)
        ref = reference_outputs(problem, seed, precision, other_seed)
        new = {k: other[k] for k in ("x", "h0", "c0") if other[k] is not None}
        return new, lambda out: compare([to_host(a) for a in flatten(out)], ref, precision)
    return vary


def _flatten(cell: str, out) -> tuple:
    y, states = out
    return (y, *states) if cell == "lstm" else (y, states)


def build_rnn(problem: RNNProblem, seed: int, *, variant: str, backend: str, precision: str,
              plan=None) -> Prepared:
    inp = make_inputs(problem, seed, precision)
    # track_params off: the weights never change here, and a timed call must not checksum them
    impl = RNN(inp["params"], variant=variant, backend=backend, dtype=precision, opts=plan,
               reuse_outputs=True, skip_input=problem.skip_input, track_params=False)
    impl.prepare(problem.T, problem.B)   # packed weights (oneDNN provider) made here, not timed
    xp = impl.xp
    x, h0 = xp.asarray(inp["x"]), xp.asarray(inp["h0"])
    c0 = xp.asarray(inp["c0"]) if inp["c0"] is not None else None
    if "graph" in impl.plan and xp.__name__ == "cupy":
        # the graph's own input buffers: a timed call copies nothing in and nothing out
        x, h0, c0 = impl.graph_inputs(x, h0, c0)
    if problem.op == "lstm":
        run = lambda: impl(x, h0, c0)  # noqa: E731
    else:
        run = lambda: impl(x, h0)  # noqa: E731

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        out = _flatten(problem.op, run() if out is None else out)
        return compare([to_host(a) for a in out], reference_outputs(problem, seed, precision), precision)

    itemsize = np.dtype(impl.dtype).itemsize
    info = {"plan": impl.plan.label, "gemms_per_step": gemms_per_step(impl)}
    if impl.gemm_info:     # CPU pretranspose: which GEMM provider ran (and why not oneDNN)
        info["gemm"] = dict(impl.gemm_info, step=impl.layers[-1].proj_h.info())
        if impl.layers[0].hoist:
            info["gemm"]["input"] = impl.layers[0].proj_x.info()
    if impl.compiled_loop:  # fusion.cpuloop: each layer's steps in one native call
        info["step_loop"] = "compiled (numba: packed oneDNN GEMM + fused kernel per step)"
        team = impl._team_loop(len(impl.layers) - 1, problem.B)   # built by prepare above
        if team is not None:        # every layer has the same H, so all or none form a team
            info["step_loop"] = (f"compiled, one team of {team.threads} threads over all steps "
                                 "(each thread: a packed oneDNN GEMM on its hidden units' columns + "
                                 "the fused kernel on them, a barrier per step)")
            # the step GEMMs that run are the team's, one per thread (the projection's own M=B
            # primitive runs only if a call hands the steps back to the one-thread-issued loop)
            info["gemm"]["step"] = {f"M={problem.B}": team.info()}
    elif python_loop_note(impl):
        info["step_loop"] = python_loop_note(impl)
    return Prepared(inputs={"x": x, "h0": h0, "c0": c0}, run=run, flops=problem.flops(),
                    bytes=problem.bytes(itemsize), check=check, info=info,
                    vary=second_inputs(problem, seed, precision))


def python_loop_note(impl: RNN) -> str | None:
    """What a case records when its plan asks for the CPU's graph step (the compiled step loop)
    and the Python loop runs instead, with the reason; None otherwise."""
    if impl.step_loop_why and "graph" in impl.plan and impl.backend.device == "cpu":
        return f"Python loop: {impl.step_loop_why}"
    return None


def gemms_per_step(impl: RNN) -> int:
    """GEMM calls per step of a built runner (the recurrent ones, plus the input ones unless hoisted)."""
    lay = impl.layers[0]
    return lay.proj_h.gemms_per_call + (0 if lay.hoist or lay.given else lay.proj_x.gemms_per_call)


_ABOUT = {
    "naive": "per-gate GEMMs for x and h every step, one array operation per pointwise op",
    "fused": "fusion steps applied (--opt picks them, --ladder adds them one by one)",
}

for _op in ("lstm", "gru", "rnn"):
    for _variant in ("naive", "fused"):
        for _backend in step_backends():
            if _op == "rnn" and _variant == "fused" and _backend not in step_backends(generated=True):
                continue    # no launcher for the generated vanilla-cell kernel there (naive runs)
            register(VariantRecord(
                _op, _variant, _backend,
                functools.partial(build_rnn, variant=_variant, backend=_backend),
                _ABOUT[_variant], fusable=_variant == "fused", code=code_of(RNN)))
