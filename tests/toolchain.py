"""The compilers some tests need, and a loud skip where one is missing.

nvcc (with ptxas) comes from the CUDA toolkit on the PATH or from the nvidia-cuda-nvcc wheel of the
test extra (``nvidia/cu13/bin/nvcc``, which finds cicc in the nvidia-nvvm wheel beside it); it
needs a host C++ compiler too.  g++ comes from the system's package manager (Debian:
``apt-get install g++``): no registry wheel provides it.  A test that cannot run for want of one
skips with a reason starting with :data:`MISSING`, and tests/conftest.py counts those skips in
the summary, so a machine without a compiler cannot pass silently."""
from __future__ import annotations

import shutil
import site
import sys
from pathlib import Path

import pytest

MISSING = "TOOLCHAIN MISSING"


def nvcc() -> str | None:
    """nvcc on the PATH, else the nvidia-cuda-nvcc wheel's."""
    found = shutil.which("nvcc")
    if found:
        return found
    for d in [*site.getsitepackages(), *sys.path]:
        cand = Path(d) / "nvidia" / "cu13" / "bin" / "nvcc"
        if cand.is_file():
            return str(cand)
    return None


def gxx() -> str | None:
    return shutil.which("g++")


def why_missing(tool: str) -> str | None:
    """The skip reason when ``tool`` (nvcc or g++) cannot be run here, else None."""
    if tool == "nvcc":
        if nvcc() is None:
            return (f"{MISSING}: nvcc not found (not on the PATH, no nvidia-cuda-nvcc wheel: "
                    "pip install -e '.[test]', or a CUDA 13 toolkit)")
        tool = "g++"                       # nvcc compiles through the host compiler
    if gxx() is None:
        return f"{MISSING}: g++ not found (a C++ compiler from the system's packages: apt-get install g++)"
    return None


def needs(tool: str):
    """``@needs("nvcc")``: skip loudly without the tool."""
    reason = why_missing(tool)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def require(tool: str) -> None:
    """Inside a test: skip loudly without the tool."""
    reason = why_missing(tool)
    if reason:
        pytest.skip(reason)
