"""2-D convolution: one geometry, one float64 reference, five CPU forward variants (backward
phases in :mod:`kernels.conv.backward`, the training step in :mod:`kernels.conv.train`).

    from kernels.conv import conv2d, ConvProblem
    problem = ConvProblem(N=8, C=64, H=56, W=56, K=64, R=3, S=3, pad=1)
    x, w, b = problem.random_inputs(np.random.default_rng(0), "fp32")
    y = conv2d(x, w, b, problem, variant="implicit_gemm")

Activations are ``problem.layout`` (NCHW or NHWC), the filter is always KCRS (see
:mod:`kernels.conv.geometry`).  :data:`CONV_VARIANTS` is the registry the CLI keys into; each
record's ``accepts(problem, dtype)`` returns None or the reason the case is skipped, and ``run``
raises :class:`kernels.errors.Unsupported` with that same reason.  Variant modules are imported on
first use, so importing this package does not import numba.

A row says everything the benchmark reads about its variant: the precisions it computes
(``dtypes``, the one place they are written: ``accepts`` refuses the others before asking the
module about the geometry, and a module that checks them itself reads its row's), its host
workspace per call (``workspace``, an estimate from :mod:`kernels.conv.workspace` the planner adds
to a case's memory need) and whether the suites run it unasked (``suites``; ``conv --VARIANT``
and ``suite --variants`` still reach it when False).

``prepare(w, b, problem)`` builds a layer once: a callable ``x -> y`` with what the weights fix
done at build (a framework's layer, cuDNN's and oneDNN's primitives do the same): the ``_packed``
variants transform and pack the filter into the oneDNN GEMM's layout, allocate their workspaces
and compile their kernels there, so a call only computes.  A variant without a ``prepare<suffix>``
entry is its ``run`` with the weights bound.  The benchmark builds a layer per case and times its
calls (microbench/cases/conv.py); :func:`conv2d` builds one for the one call.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..dtypes import canonical, storage
from ..errors import BadInput, Unsupported
from . import workspace as ws
from .geometry import LAYOUTS, ConvProblem, check_inputs
from .reference import conv2d_reference, conv2d_slow


@dataclass(frozen=True)
class ConvVariant:
    """One registry record: a variant's name, what it serves, and how to run it."""

    name: str
    module: str                          # kernels.conv.<module>
    description: str
    dtypes: tuple = ("fp32", "fp64")
    devices: tuple = ("cpu",)
    suffix: str = ""                     # the module's accepts<suffix> / run<suffix> entries
    backend: str = "numba"               # where its work happens (numba kernels, or NumPy + BLAS)
    # host bytes one call allocates besides x, w, b, y: (problem, itemsize) -> bytes; by default
    # im2col's column matrix, an upper bound for the algorithms here (kernels.conv.workspace)
    workspace: Callable = ws.column_matrix
    suites: bool = True                  # the conv suites run it unless --variants leaves it out

    def _mod(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def accepts(self, problem: ConvProblem, dtype) -> str | None:
        """None if this variant computes ``problem`` at ``dtype``, else the reason it does not
        (the row's dtypes first, then the module's geometry limits)."""
        name = canonical(dtype)
        if name not in self.dtypes:
            return f"{self.name} computes in {', '.join(self.dtypes)}, not {name}"
        return getattr(self._mod(), "accepts" + self.suffix)(problem, name)

    def workspace_bytes(self, problem: ConvProblem, dtype) -> int:
        """Host memory one call needs besides x, w, b and y (its row's estimate)."""
        return int(self.workspace(problem, storage(canonical(dtype)).itemsize))

    def run(self, x, w, b, problem: ConvProblem):
        """``y`` in ``problem.layout`` and the inputs' dtype."""
        return getattr(self._mod(), "run" + self.suffix)(x, w, b, problem)

    def prepare(self, w, b, problem: ConvProblem):
        """The layer built for these weights: ``layer(x) -> y``, ``layer.info()`` (what the record
        shows: layout, GEMM provider and form), ``layer.close()`` (releases library handles)."""
        entry = getattr(self._mod(), "prepare" + self.suffix, None)
        if entry is not None:
            return entry(w, b, problem)
        return BoundLayer(self, w, b, problem)


class BoundLayer:
    """A variant without a build step: each call is its ``run`` on the bound weights."""

    def __init__(self, variant: ConvVariant, w, b, problem: ConvProblem):
        self.variant, self.w, self.b, self.problem = variant, w, b, problem

    def __call__(self, x):
        return self.variant.run(x, self.w, self.b, self.problem)

    def info(self) -> dict:
        return {"layout": self.problem.layout}

    def close(self) -> None:
        pass


CONV_VARIANTS = {v.name: v for v in (
    ConvVariant("direct", "direct",
                "seven nested loops, numba parallel over (n, k) output planes, no data rearranged",
                workspace=ws.none),
    ConvVariant("im2col", "im2col",
                "explicit column matrix (strided view + one copy), then one BLAS GEMM per group",
                backend="numpy", workspace=ws.column_matrix),
    ConvVariant("implicit_gemm", "implicit_gemm",
                "numba GEMM tiles gathering their column-matrix slice on the fly into L1",
                workspace=ws.none),
    ConvVariant("winograd", "winograd",
                "F(4x4,3x3): channel-vectorized numba transforms + 36 batched BLAS GEMMs; "
                "3x3, stride 1, dilation 1, groups 1; a NaN input spreads over the 4x4 output "
                "tiles whose 6x6 input tiles hold it (more NaN outputs than the reference)",
                workspace=ws.winograd(4)),
    ConvVariant("winograd_f2", "winograd",
                "F(2x2,3x3): numba-fused transforms + 16 batched BLAS GEMMs (2.25x the multiplies "
                "of F(4x4), a tenth of its rounding)", suffix="_f2", workspace=ws.winograd(2)),
    ConvVariant("im2col_packed", "im2col_packed",
                "im2col built as a layer: numba-parallel column matrix, one oneDNN matmul per group "
                "(filter packed at build for NHWC; fp64 on BLAS); 1x1 stride 1 unpadded: one GEMM "
                "on the input itself, no copy", workspace=ws.column_matrix),
    ConvVariant("implicit_packed", "implicit_packed",
                "implicit GEMM on oneDNN's packed matmul: a team of threads, each gathering an "
                "L2-sized slice of the column matrix and multiplying it with its own single-threaded "
                "GEMM into y; groups=1 (fp64, or no shared OpenMP runtime: im2col_packed's path)",
                workspace=ws.column_matrix),
    ConvVariant("winograd_packed", "winograd_packed",
                "F(4x4,3x3) built as a layer: filter transformed and packed once for oneDNN's matmul "
                "(fp32; BLAS in fp64), numba transforms reading and writing the activations' own "
                "layout, the 36 GEMMs one batched call", workspace=ws.winograd(4)),
    ConvVariant("winograd_f2_packed", "winograd_packed",
                "F(2x2,3x3) as winograd_packed: 16 GEMMs in one batched oneDNN call", suffix="_f2",
                workspace=ws.winograd(2)),
)}


def get_variant(name: str) -> ConvVariant:
    if name not in CONV_VARIANTS:
        raise BadInput(f"conv variant {name!r} is unknown; allowed: {', '.join(CONV_VARIANTS)}")
    return CONV_VARIANTS[name]


def conv2d(x, w, b, problem: ConvProblem, variant: str = "im2col"):
    """Forward convolution by ``variant``; raises Unsupported (with the reason) if it can't.
    One call: a ``_packed`` variant builds its layer (packs the filter) for it and releases it."""
    v = get_variant(variant)
    dt = check_inputs(x, w, b, problem)
    reason = v.accepts(problem, dt)
    if reason:
        raise Unsupported(reason)
    layer = v.prepare(w, b, problem)
    try:
        return layer(x)
    finally:
        layer.close()


__all__ = ["CONV_VARIANTS", "ConvProblem", "ConvVariant", "LAYOUTS", "conv2d", "conv2d_reference",
           "conv2d_slow", "get_variant"]
