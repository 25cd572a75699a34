"""conv2d builders on the GPU (CuPy): our CUDA C / cuBLAS variants, checked against the float64
reference before timing.  Registered as ("conv", variant, "cupy") beside the CPU records of the
same name and algorithm (``winograd`` is F(4x4,3x3) and ``winograd_f2`` F(2x2,3x3) on both).

Each builder raises :class:`kernels.errors.Unsupported` with the reason when there is no GPU, no
CuPy, or the variant does not serve the shape or precision (:func:`kernels.conv.gpu.accepts_gpu`;
every variant serves NCHW and NHWC activations), and :class:`kernels.errors.BadInput` when the
case cannot fit in the GPU's free memory.
"""
from __future__ import annotations

import functools

from kernels import dtypes
from kernels.conv import ConvProblem
from kernels.errors import MissingDependency, Unsupported

from ..checks import compare, to_host
from ..registry import Check, Prepared, VariantRecord, register
from .conv import TOL_SCALE, make_inputs, reference_output

BACKEND = "cupy"


def _tol_scale(variant: str) -> float:
    """Judged as the CPU rows of the same name are (one algorithm, one rounding)."""
    return TOL_SCALE.get(variant, 1.0)


def build_conv_gpu(problem: ConvProblem, seed: int, *, variant: str, precision: str,
                   plan=None) -> Prepared:
    from kernels import gpu
    from kernels.conv import gpu as cg
    ok, reason = gpu.detect()
    if not ok:
        raise Unsupported(f"the {variant} GPU variant needs a GPU: {reason}")
    reason = cg.accepts_gpu(variant, problem, precision)
    if reason:
        raise Unsupported(reason)
    try:
        import cupy as cp
    except ImportError as e:
        raise MissingDependency("cupy", f"the {variant} GPU conv variant", "pip install cupy-cuda13x") from e
    gpu.check_fits(cg.device_bytes(variant, problem, precision),
                   what=f"conv {variant} {problem.describe()} {precision}")
    x, w, b = make_inputs(problem, seed, precision)
    xd, wd = cp.asarray(x), cp.asarray(w)
    bd = cp.asarray(b) if b is not None else None
    fn = cg.RUNNERS[variant]
    run = functools.partial(fn, xd, wd, bd, problem)
    tol = dtypes.tolerance(precision) * _tol_scale(variant)

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        return compare([to_host(run() if out is None else out)], [reference_output(problem, seed, precision)], precision,
                       names=("y",), tol=tol)

    return Prepared(inputs={"x": xd, "w": wd, "b": bd}, run=run, flops=problem.flops,
                    bytes=problem.bytes(precision), check=check,
                    info={"layout": problem.layout,
                          "workspace_bytes": cg.workspace_bytes(variant, problem, precision)})


def _no_host_workspace(problem, precision) -> int:
    """A GPU algorithm's workspace is device memory (kernels.conv.gpu.workspace_bytes, checked
    against the GPU's free memory when the case is built), none of it on the host."""
    return 0


def _register():
    """One record per GPU algorithm, from its row in kernels.conv.gpu.ALGORITHMS."""
    from kernels.conv.gpu import ALGORITHMS
    for name, algo in ALGORITHMS.items():
        register(VariantRecord("conv", name, BACKEND, functools.partial(build_conv_gpu, variant=name),
                               algo.about, code=f"kernels.conv.gpu:{algo.launcher}", dtypes=algo.dtypes,
                               tol_scale=_tol_scale(name), workspace=_no_host_workspace,
                               suites=algo.suites))


_register()
