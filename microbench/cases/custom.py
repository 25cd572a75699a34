"""Custom LSTM cells (``--cell layernorm|peephole``): builders following :mod:`microbench.cases.rnn`
(the same runner, :class:`kernels.recurrent.RNN`, with the cell's generated pointwise kernels).

Registered as ("lstm", "<cell>-<variant>", backend) with ``cell`` set (``registry.ours("lstm",
cell=...)``; ``--cell`` selects them).  The problem is an LSTM
:class:`~microbench.problems.RNNProblem` (``op == "lstm"``); the cell picks the parameters.
The check's tolerance follows the problem's measured conditioning (:mod:`.conditioning`).
"""
from __future__ import annotations

import functools

import numpy as np

from kernels import dtypes
from kernels.backends import get_backend
from kernels.custom import (CPU_BACKENDS, CUSTOM_CELLS, CUSTOM_PARAMS, CUSTOM_REFERENCES,
                            GPU_BACKENDS, CustomLSTM)
from kernels.errors import BadInput, Unsupported

from ..checks import to_host
from ..problems import RNNProblem
from ..registry import Check, Prepared, VariantRecord, code_of, register
from . import conditioning as cond
from .rnn import gemms_per_step, python_loop_note

__all__ = ["build_custom", "check_custom", "make_custom_inputs", "custom_reference_outputs"]


def make_custom_inputs(problem: RNNProblem, seed: int, precision: str, cell: str) -> dict:
    """Parameters, input and initial states from the seed (as :func:`microbench.cases.rnn.make_inputs`:
    drawn in float64, rounded to the storage type; the reference runs on the rounded values)."""
    if problem.op != "lstm":
        raise BadInput(f"--cell {cell} is an LSTM cell; the problem is a {problem.op}")
    if cell not in CUSTOM_PARAMS:
        raise BadInput(f"cell {cell!r} is unknown; allowed: {', '.join(CUSTOM_PARAMS)}")
    rng = np.random.default_rng(seed)
    params = CUSTOM_PARAMS[cell].random(problem.I, problem.H, problem.L, seed=seed)
    st = dtypes.storage(precision)
    x = rng.standard_normal((problem.T, problem.B, problem.I)).astype(st)
    shape = (problem.L, problem.B, problem.H)
    h0 = (0.5 * rng.standard_normal(shape)).astype(st)
    c0 = (0.5 * rng.standard_normal(shape)).astype(st)
    return {"params": params.astype(st), "x": x, "h0": h0, "c0": c0}


@functools.lru_cache(maxsize=4)
def custom_reference_outputs(problem: RNNProblem, seed: int, precision: str, cell: str) -> tuple:
    inp = make_custom_inputs(problem, seed, precision, cell)
    y, (h, c) = CUSTOM_REFERENCES[cell](inp["x"], inp["params"], inp["h0"], inp["c0"])
    return y, h, c


@functools.lru_cache(maxsize=4)
def custom_tolerances(problem: RNNProblem, seed: int, precision: str, cell: str) -> tuple:
    """Tolerances of y, h_n, c_n: the precision's, or more where the float64 reference itself
    moves under one rounding of the inputs (the layer-norm LSTM at benchmark sizes is chaotic;
    see :mod:`.conditioning`)."""
    inp = make_custom_inputs(problem, seed, precision, cell)
    u, rng = cond.unit_roundoff(precision), np.random.default_rng([seed, 3])
    y, (h, c) = CUSTOM_REFERENCES[cell](
        cond.perturb(inp["x"], rng, u), cond.perturb_params(inp["params"].astype(np.float64), rng, u),
        cond.perturb(inp["h0"], rng, u), cond.perturb(inp["c0"], rng, u))
    return cond.tolerances(custom_reference_outputs(problem, seed, precision, cell), (y, h, c), precision)


def check_custom(outputs, problem: RNNProblem, seed: int, precision: str, cell: str) -> Check:
    """y, h_n, c_n of a custom-cell row (ours or a framework's) against the float64 reference."""
    return cond.compare_each(outputs, custom_reference_outputs(problem, seed, precision, cell),
                             custom_tolerances(problem, seed, precision, cell), ("y", "h_n", "c_n"))


def build_custom(problem: RNNProblem, seed: int, *, cell: str, variant: str, backend: str,
                 precision: str, plan=None) -> Prepared:
    """``variant``: naive | fused; ``backend``: numpy | numba (CPU) or cupy | numba-cuda (GPU:
    CuPy arrays and cuBLAS GEMMs, the generated CUDA C or numba.cuda kernel; precisions fp32,
    tf32, fp16).  Without a GPU a GPU backend raises :class:`~kernels.errors.Unsupported` with the
    reason (the case is skipped).  ``plan``: the fused variant's fusion steps (None: every step of
    the backend), as for the plain cells: the same runner, :class:`kernels.recurrent.RNN`."""
    if backend in GPU_BACKENDS:
        reason = get_backend(backend).missing()   # before drawing inputs: no GPU, no CuPy, ...
        if reason:
            raise Unsupported(reason)
    inp = make_custom_inputs(problem, seed, precision, cell)
    impl = CustomLSTM(inp["params"], cell=cell, variant=variant, backend=backend, dtype=precision,
                      opts=plan, reuse_outputs=True, track_params=False)   # no checksum in timed calls
    impl.prepare(problem.T, problem.B)   # packed weights (oneDNN provider) made here, not timed
    xp = impl.xp
    x, h0, c0 = (xp.asarray(inp[k]) for k in ("x", "h0", "c0"))   # on the device before timing
    if "graph" in impl.plan and xp.__name__ == "cupy":
        x, h0, c0 = impl.graph_inputs(x, h0, c0)   # the graph's own buffers: nothing copied in
    run = lambda: impl(x, h0, c0)  # noqa: E731

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        y, (h, c) = run() if out is None else out
        return check_custom([to_host(a) for a in (y, h, c)], problem, seed, precision, cell)

    itemsize = np.dtype(impl.dtype).itemsize
    pointwise = "generated fused kernel" if impl.in_place else "op by op"
    if impl.in_place and impl.backend.device == "cuda":
        pointwise += " (CUDA C, RawModule)" if backend == "cupy" else " (numba.cuda)"
    info = {"cell": cell, "pointwise": pointwise, "gemms_per_step": gemms_per_step(impl),
            "tolerance": f"per output max(precision tolerance, {cond.SENSITIVITY_FACTOR:g} x "
                         "measured conditioning)"}
    if impl.gemm_info:     # CPU fused: which GEMM provider ran (and why not oneDNN)
        info["gemm"] = dict(impl.gemm_info, step=impl.layers[-1].proj_h.info())
    if python_loop_note(impl):
        info["step_loop"] = python_loop_note(impl)
    return Prepared(inputs={"x": x, "h0": h0, "c0": c0}, run=run, flops=problem.flops(),
                    bytes=problem.bytes(itemsize), check=check, info=info)


# What --cell computes: fp32, fp64 on the CPU (CustomLSTM refuses others there); on a GPU the
# generated kernel's fp32, tf32, fp16.
CPU_PRECISIONS = ("fp32", "fp64")
GPU_PRECISIONS = ("fp32", "tf32", "fp16")

for _cell in CUSTOM_CELLS:
    for _variant in ("naive", "fused"):
        for _backend in CPU_BACKENDS + GPU_BACKENDS:
            register(VariantRecord(
                "lstm", f"{_cell}-{_variant}", _backend,
                functools.partial(build_custom, cell=_cell, variant=_variant, backend=_backend),
                f"{_cell} LSTM, {_variant}", fusable=_variant == "fused", code=code_of(CustomLSTM),
                cell=_cell,
                dtypes=GPU_PRECISIONS if _backend in GPU_BACKENDS else CPU_PRECISIONS))
