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
from .conv import TOL_SCALE as CPU_TOL_SCALE
from .conv import make_inputs, reference_output

BACKEND = "cupy"

ABOUT = {
    "direct": "CUDA C, one thread per output element running the seven loops "
              "(kernels/cuda/conv2d.cu conv2d_direct)",
    "im2col": "column matrix built on the device (strided copy in CuPy), one cuBLAS GEMM per group",
    "implicit_gemm": "CUDA C GEMM tiles (64x64x16, 4x4 per thread; 128x128x8, 8x8, on large "
                     "layers), column-matrix slices gathered into shared memory on the fly",
    "winograd_f2": "F(2x2,3x3): CUDA C input/output transforms, filter transform and 16 batched "
                "cuBLAS GEMMs in CuPy; 3x3 stride 1 dilation 1 groups 1",
    "winograd": "F(4x4,3x3): CUDA C input/output transforms on 6x6 tiles, filter transform "
                   "and 36 batched cuBLAS GEMMs in CuPy; 3x3 stride 1 dilation 1 groups 1",
}

# Judged as the CPU rows of the same name are.
TOL_SCALE = {"winograd": CPU_TOL_SCALE.get("winograd", 1.0),
             "winograd_f2": CPU_TOL_SCALE.get("winograd_f2", 1.0)}


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
    tol = dtypes.tolerance(precision) * TOL_SCALE.get(variant, 1.0)

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        return compare([to_host(run() if out is None else out)], [reference_output(problem, seed, precision)], precision,
                       names=("y",), tol=tol)

    return Prepared(inputs={"x": xd, "w": wd, "b": bd}, run=run, flops=problem.flops,
                    bytes=problem.bytes(precision), check=check,
                    info={"layout": problem.layout,
                          "workspace_bytes": cg.workspace_bytes(variant, problem, precision)})


for _name in ABOUT:
    register(VariantRecord("conv", _name, BACKEND, functools.partial(build_conv_gpu, variant=_name),
                           ABOUT[_name]))
