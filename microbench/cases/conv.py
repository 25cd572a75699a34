"""conv2d builders: our CPU variants, checked against the float64 reference before timing."""
from __future__ import annotations

import functools

import numpy as np

from kernels import dtypes
from kernels.conv import CONV_VARIANTS, ConvProblem, conv2d_reference
from kernels.errors import Unsupported

from ..checks import compare
from ..registry import Check, Prepared, VariantRecord, register

# Where each CPU variant's work happens, shown as the backend of its row.
BACKEND = {"direct": "numba", "im2col": "numpy", "implicit_gemm": "numba", "winograd": "numba",
           "winograd_f2": "numba"}

# Winograd's transforms amplify rounding: F(4x4,3x3) in fp32 reached 8.5e-6 of the output's
# magnitude at C=512 (tests/test_conv.py), too close to the 1e-5 fp32 tolerance to be stable.
TOL_SCALE = {"winograd": 3.0}


def make_inputs(problem: ConvProblem, seed: int, precision: str) -> tuple:
    return problem.random_inputs(np.random.default_rng(seed), precision)


@functools.lru_cache(maxsize=4)
def reference_output(problem: ConvProblem, seed: int, precision: str) -> np.ndarray:
    x, w, b = make_inputs(problem, seed, precision)
    return conv2d_reference(x, w, b, problem)


def build_conv(problem: ConvProblem, seed: int, *, variant: str, precision: str, plan=None) -> Prepared:
    v = CONV_VARIANTS[variant]
    reason = v.accepts(problem, precision)
    if reason:
        raise Unsupported(reason)
    x, w, b = make_inputs(problem, seed, precision)
    run = lambda: v.run(x, w, b, problem)  # noqa: E731
    tol = dtypes.tolerance(precision) * TOL_SCALE.get(variant, 1.0)

    def check(out=None) -> Check:   # out: a timed call's return value, else one call now
        return compare([run() if out is None else out], [reference_output(problem, seed, precision)], precision, names=("y",), tol=tol)

    return Prepared(inputs={"x": x, "w": w, "b": b}, run=run, flops=problem.flops,
                    bytes=problem.bytes(precision), check=check, info={"layout": problem.layout})


for _name, _v in CONV_VARIANTS.items():
    register(VariantRecord("conv", _name, BACKEND[_name], functools.partial(build_conv, variant=_name),
                           _v.description))
