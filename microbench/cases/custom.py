"""Custom cells (``--cell NAME``): builders following :mod:`microbench.cases.rnn` (the same runner,
:class:`kernels.recurrent.RNN`, with the cell's generated pointwise kernels).

Every row of :data:`kernels.custom.CUSTOM_CELLS` is registered as (family, "<cell>-<variant>",
backend) with ``cell`` set (``registry.ours(op, cell=...)``; ``--cell`` on ``lstm``, ``gru`` and
``rnn`` selects them): the op is the cell's family (an LSTM-family cell runs as ``lstm``, a
GRU-family one as ``gru``, a one-gate one as ``rnn``).  The problem is an
:class:`~microbench.problems.RNNProblem` of that op with ``cell`` set, so its G, weights, FLOPs,
bytes and memory estimate are the cell's.  The check's tolerance follows the problem's measured
conditioning (:mod:`.conditioning`).  :func:`add_cell` and :func:`remove_cell` register a cell
declared elsewhere (a test's throwaway cell) and take it out again.
"""
from __future__ import annotations

import functools

import numpy as np

from kernels import custom as kcustom
from kernels import dtypes
from kernels.backends import get_backend
from kernels.custom import CPU_BACKENDS, GPU_BACKENDS, CustomRNN, get_cell
from kernels.errors import BadInput, Unsupported

from ..checks import to_host
from ..problems import RNNProblem
from ..registry import REGISTRY, Check, Prepared, VariantRecord, code_of, register
from . import conditioning as cond
from .rnn import gemms_per_step, python_loop_note

__all__ = ["add_cell", "build_custom", "check_custom", "custom_reference_outputs", "make_custom_inputs",
           "remove_cell"]

OUTPUT_NAMES = ("y", "h_n", "c_n")


def _row(problem: RNNProblem, cell: str):
    row = get_cell(cell)
    if problem.op != row.family:
        raise BadInput(f"--cell {cell} is {kcustom.FAMILY_WORDS[row.family]} cell; the problem is {problem.op}")
    return row


def make_custom_inputs(problem: RNNProblem, seed: int, precision: str, cell: str) -> dict:
    """Parameters, input and initial states from the seed (as :func:`microbench.cases.rnn.make_inputs`:
    drawn in float64, rounded to the storage type; the reference runs on the rounded values).
    ``c0`` only for an LSTM-family cell."""
    row = _row(problem, cell)
    rng = np.random.default_rng(seed)
    params = row.params.random(problem.I, problem.H, problem.L, seed=seed)
    st = dtypes.storage(precision)
    x = rng.standard_normal((problem.T, problem.B, problem.I)).astype(st)
    shape = (problem.L, problem.B, problem.H)
    states = {name: (0.5 * rng.standard_normal(shape)).astype(st) for name in row.state_names}
    return {"params": params.astype(st), "x": x, **states}


def _flat(out, has_c: bool) -> tuple:
    """``(y, h_n[, c_n])`` of a runner's or reference's return value."""
    y, rest = out
    return (y, *rest) if has_c else (y, rest)


@functools.lru_cache(maxsize=4)
def custom_reference_outputs(problem: RNNProblem, seed: int, precision: str, cell: str) -> tuple:
    """``(y, h_n[, c_n])``, float64."""
    row = _row(problem, cell)
    inp = make_custom_inputs(problem, seed, precision, cell)
    return _flat(row.reference(inp["x"], inp["params"], *(inp[s] for s in row.state_names)), row.has_c)


@functools.lru_cache(maxsize=4)
def custom_tolerances(problem: RNNProblem, seed: int, precision: str, cell: str) -> tuple:
    """Tolerances of y, h_n (and c_n): the precision's, or more where the float64 reference itself
    moves under one rounding of the inputs (the layer-norm LSTM at benchmark sizes is chaotic;
    see :mod:`.conditioning`)."""
    row = _row(problem, cell)
    inp = make_custom_inputs(problem, seed, precision, cell)
    u, rng = cond.unit_roundoff(precision), np.random.default_rng([seed, 3])
    x = cond.perturb(inp["x"], rng, u)
    params = cond.perturb_params(inp["params"].astype(np.float64), rng, u)
    states = [cond.perturb(inp[s], rng, u) for s in row.state_names]
    moved = _flat(row.reference(x, params, *states), row.has_c)
    return cond.tolerances(custom_reference_outputs(problem, seed, precision, cell), moved, precision)


def check_custom(outputs, problem: RNNProblem, seed: int, precision: str, cell: str) -> Check:
    """y, h_n (and c_n) of a custom-cell row (ours or a framework's) against the float64 reference."""
    ref = custom_reference_outputs(problem, seed, precision, cell)
    return cond.compare_each(outputs, ref, custom_tolerances(problem, seed, precision, cell),
                             OUTPUT_NAMES[:len(ref)])


def build_custom(problem: RNNProblem, seed: int, *, cell: str, variant: str, backend: str,
                 precision: str, plan=None) -> Prepared:
    """``variant``: naive | fused; ``backend``: numpy | numba (CPU) or cupy | numba-cuda (GPU:
    CuPy arrays and cuBLAS GEMMs, the generated CUDA C or numba.cuda kernel; precisions fp32,
    tf32, fp16).  Without a GPU a GPU backend raises :class:`~kernels.errors.Unsupported` with the
    reason (the case is skipped).  ``plan``: the fused variant's fusion steps (None: every step of
    the backend), as for the plain cells: the same runner, :class:`kernels.recurrent.RNN`.
    FLOPs, bytes: the problem's, whose G is the cell's (``problem.cell``; a problem without it
    is taken as this cell's)."""
    row = _row(problem, cell)
    if problem.cell != cell:     # the cell's own gate count and parameters in FLOPs and bytes
        import dataclasses
        problem = dataclasses.replace(problem, cell=cell, nonlinearity="")
    if backend in GPU_BACKENDS:
        reason = get_backend(backend).missing()   # before drawing inputs: no GPU, no CuPy, ...
        if reason:
            raise Unsupported(reason)
    inp = make_custom_inputs(problem, seed, precision, cell)
    impl = CustomRNN(inp["params"], cell=cell, variant=variant, backend=backend, dtype=precision,
                     opts=plan, reuse_outputs=True, track_params=False)   # no checksum in timed calls
    impl.prepare(problem.T, problem.B)   # packed weights (oneDNN provider) made here, not timed
    xp = impl.xp
    names = ("x",) + row.state_names
    arrays = [xp.asarray(inp[k]) for k in names]    # on the device before timing
    if "graph" in impl.plan and xp.__name__ == "cupy":
        arrays = list(impl.graph_inputs(*arrays))[:len(arrays)]   # the graph's own buffers
    run = lambda: impl(*arrays)  # noqa: E731

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        outs = _flat(run() if out is None else out, row.has_c)
        return check_custom([to_host(a) for a in outs], problem, seed, precision, cell)

    itemsize = np.dtype(impl.dtype).itemsize
    pointwise = "generated fused kernel" if impl.in_place else "op by op"
    if impl.in_place and impl.backend.device == "cuda":
        pointwise += " (CUDA C, RawModule)" if backend == "cupy" else " (numba.cuda)"
    info = {"cell": cell, "family": row.family, "gates": row.num_gates, "pointwise": pointwise,
            "gemms_per_step": gemms_per_step(impl),
            "tolerance": f"per output max(precision tolerance, {cond.SENSITIVITY_FACTOR:g} x "
                         "measured conditioning)"}
    if impl.gemm_info:     # CPU fused: which GEMM provider ran (and why not oneDNN)
        info["gemm"] = dict(impl.gemm_info, step=impl.layers[-1].proj_h.info())
    if python_loop_note(impl):
        info["step_loop"] = python_loop_note(impl)
    return Prepared(inputs=dict(zip(names, arrays)), run=run, flops=problem.flops(),
                    bytes=problem.bytes(itemsize), check=check, info=info)


# What --cell computes: fp32, fp64 on the CPU (the runner refuses others there for a declared
# cell); on a GPU the generated kernel's fp32, tf32, fp16.
CPU_PRECISIONS = ("fp32", "fp64")
GPU_PRECISIONS = ("fp32", "tf32", "fp16")
VARIANTS = ("naive", "fused")


def cell_records(name: str) -> list:
    """The records of a registered cell, in registration order."""
    return [r for r in REGISTRY.values() if r.cell == name and not r.framework and r.direction == "fwd"]


def _register_records(row) -> list:
    out = []
    for variant in VARIANTS:
        for backend in CPU_BACKENDS + GPU_BACKENDS:
            out.append(register(VariantRecord(
                row.family, f"{row.name}-{variant}", backend,
                functools.partial(build_custom, cell=row.name, variant=variant, backend=backend),
                f"{row.about}; {variant}", fusable=variant == "fused", code=code_of(CustomRNN),
                cell=row.name, dtypes=GPU_PRECISIONS if backend in GPU_BACKENDS else CPU_PRECISIONS)))
    return out


def add_cell(row) -> list:
    """Register a :class:`kernels.custom.CustomCell` with kernels.custom and its records here
    (``--cell NAME`` on its family's command follows); returns the records."""
    kcustom.register_cell(row)
    try:
        return _register_records(row)
    except Exception:
        remove_cell(row.name)
        raise


def remove_cell(name: str) -> None:
    """Take a cell and its records out again (the forward records :func:`add_cell` made)."""
    for r in cell_records(name):
        del REGISTRY[r.key]
    kcustom.unregister_cell(name)


for _shipped in kcustom.CUSTOM_CELLS.values():     # the rows kernels.custom ships
    _register_records(_shipped)
