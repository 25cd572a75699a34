"""Backends: where a variant runs and with which array module.

One record per backend.  ``xp`` is the array module the step loop is written against, so the
orchestration in :mod:`kernels.recurrent` is the same code on NumPy and on CuPy; ``pointwise`` names the
fused pointwise provider in :mod:`fusion.pointwise`.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .dtypes import canonical
from .errors import BadInput, MissingDependency, Unsupported
from .gpu import CUDA_BACKENDS


@dataclass(frozen=True)
class Backend:
    name: str
    device: str                 # "cpu" or "cuda"
    xp_module: str              # array module of the step loop
    dtypes: tuple               # precisions it computes
    requires: tuple = ()        # importable modules it needs
    pointwise: str = ""         # fused pointwise provider
    about: str = ""
    no_steps: tuple = ()        # fusion steps this backend cannot run, and why
    no_steps_why: str = ""
    # steps it accepts but that change nothing on it (the numpy backend's graph: on the CPU that
    # step is numba's compiled step loop; on NumPy a plan with it is a plain call, which is how
    # the GPU orchestration runs in tests): left out of its full plan and its ladder
    idle_steps: tuple = ()
    # launches the pointwise kernels fusion.cellexpr generates (custom cells, the fused vanilla
    # cell); PyCUDA has no launcher for them
    generated: bool = True
    # precisions among ``dtypes`` it computes only where the CPU has bf16 dot-product instructions
    # (kernels.cpu_bf16); elsewhere a case in one is skipped with the missing ISA named
    native_only: tuple = ()

    def missing(self) -> str | None:
        """Why this backend cannot run here, or None."""
        if self.device == "cuda":
            from . import gpu
            ok, reason = gpu.detect()
            if not ok:
                return f"backend {self.name} needs a GPU: {reason}"
            mismatch = gpu.driver_mismatch() if "cupy" in self.requires else None
            if mismatch:
                return f"backend {self.name}: {mismatch}"
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return str(MissingDependency(mod, f"backend {self.name}", f"pip install {mod}"))
        return None

    def xp(self):
        reason = self.missing()
        if reason:
            raise Unsupported(reason)
        return importlib.import_module(self.xp_module)

    @property
    def unplanned(self) -> tuple:
        """Steps its full plan and ladder leave out: those it cannot run and those idle on it."""
        return self.no_steps + self.idle_steps

    def check_plan(self, plan) -> None:
        """Unsupported (a skip with the reason) for a plan holding a step this backend lacks."""
        bad = [n for n in self.no_steps if n in plan]
        if bad:
            raise Unsupported(f"backend {self.name} cannot run step {', '.join(bad)}: {self.no_steps_why}")

    def check_dtype(self, dtype) -> str:
        name = canonical(dtype)
        if name not in self.dtypes:
            raise Unsupported(f"dtype {name} is not available on backend {self.name}; "
                              f"allowed: {', '.join(self.dtypes)}")
        if name in self.native_only:
            from .cpu_bf16 import missing
            why = missing()
            if why:
                raise Unsupported(f"dtype {name} on backend {self.name}: {why}")
        return name


BACKENDS = {b.name: b for b in (
    # bf16 on NumPy is the CPU twin of the GPU bf16 path: ml_dtypes storage, fp32-accumulated GEMMs
    # rounded once to bf16 (fusion.gemm.matmul); slow, there for checking, not for timing.
    Backend("numpy", "cpu", "numpy", ("fp32", "fp64", "bf16"), (), "numpy",
            "NumPy ufuncs and BLAS GEMMs (whatever BLAS NumPy links: OpenBLAS in the wheels)",
            idle_steps=("graph",)),
    # bf16 on numba: oneDNN bf16 GEMMs (fp32 accumulation, rounded once to bf16 as cuBLAS does
    # for the GPU bf16 path) under pretranspose, fp32 cell kernels on bf16 storage
    # (fusion.pointwise_bf16); only on a CPU with AVX512-BF16 or AMX.
    Backend("numba", "cpu", "numpy", ("fp32", "fp64", "bf16"), ("numba",), "numba",
            "BLAS GEMMs through NumPy, pointwise kernels compiled by numba (@njit(parallel=True))",
            native_only=("bf16",)),
    # oneDNN's primitives called directly (kernels.onednn): the onednn variants' rows only.
    Backend("onednn", "cpu", "numpy", ("fp32", "bf16"), (), "",
            "oneDNN primitives (libdnnl.so.3 through ctypes): the CPU's vendor library"),
    *(Backend(**spec) for spec in CUDA_BACKENDS),
)}


# Backends that only a vendor library's variants run on (no naive/fused step loop of ours).
LIBRARY_BACKENDS = ("onednn",)


def step_backends(device: str | None = None, generated: bool = False) -> tuple:
    """Names of the backends our naive/fused step loop runs on (not the vendor-library ones), on
    ``device`` when given; ``generated``: only those that launch fusion.cellexpr's generated
    kernels.  The one list the registry, the custom cells and the pointwise providers follow."""
    return tuple(b.name for b in BACKENDS.values() if b.name not in LIBRARY_BACKENDS
                 and (device is None or b.device == device) and (b.generated or not generated))


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInput(f"backend {name!r} is unknown; allowed: {', '.join(BACKENDS)}") from None
