"""Build and load the project's CUDA C: one place for every launcher (pointwise, persistent,
conv, generated cells).

- :func:`read` / :func:`expand`: a source with its local ``#include "x.cuh"`` lines (files under
  ``kernels/cuda``) replaced by the header's text, ``#line`` markers kept so a compiler log names
  the header or the .cu and the right line.  Inlining, rather than an ``-I`` option, makes the text
  CuPy hashes for its kernel cache the whole program: an edited header cannot leave a stale cubin.
- :func:`compile_options`: the NVRTC options every compile gets (C++17 and the folders that hold
  ``cuda_fp16.h``/``cuda_bf16.h``, which NVRTC 13 does not ship built in).
- :func:`nvrtc_compile`: NVRTC through ``cuda.bindings``, no GPU needed (the tests, and PyCUDA
  where nvcc is absent): cubin or PTX bytes.
- :func:`function` / :func:`file_function`: one entry compiled by CuPy's ``RawModule`` (NVRTC)
  and loaded on a device; :func:`resources` reads what the loaded entry uses.

Every compile error raises :class:`~kernels.errors.KernelCompileError` with the compiler's log and
the options it ran with.  Nothing here imports CuPy or ``cuda.bindings`` at import time.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .errors import KernelCompileError, MissingDependency

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([\w.-]+)"[^\n]*$', re.M)

__all__ = ["CUDA_DIR", "KernelCompileError", "read", "expand", "cuda_include_dirs", "compile_options",
           "nvrtc_compile", "module", "function", "file_function", "resources"]


# -- source text ----------------------------------------------------------------------------
def expand(text: str, filename: str, _seen: set | None = None) -> str:
    """``text`` with each ``#include "x.cuh"`` of a file in ``kernels/cuda`` replaced by that file
    (recursively, each header once per translation unit: a repeated include leaves its line empty).
    Other includes are left to the compiler."""
    out, pos = [], 0
    seen = set() if _seen is None else _seen
    for m in _LOCAL_INCLUDE.finditer(text):
        header = CUDA_DIR / m.group(1)
        if not header.is_file():
            continue
        line = text.count("\n", 0, m.start()) + 2        # number of the line after the #include
        out.append(text[pos:m.start()])
        if m.group(1) not in seen:
            seen.add(m.group(1))
            body = expand(header.read_text(), header.name, seen)
            out.append(f'#line 1 "{header.name}"\n{body.rstrip()}\n#line {line} "{filename}"')
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def read(path: Path | str) -> str:
    """A .cu under ``kernels/cuda`` (a name or a path), local headers inlined: what every compiler
    of this project is given."""
    path = Path(path)
    if not path.is_absolute() and path.parent == Path("."):
        path = CUDA_DIR / path
    return expand(path.read_text(), path.name)


# -- options ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cuda_include_dirs() -> tuple:
    """Folders that hold ``cuda_fp16.h`` and ``cuda_bf16.h``.

    NVRTC 13.0 does not ship them built in ("could not open source file cuda_fp16.h"), so every
    compile gets ``-I`` for the first of: $CUDA_PATH/$CUDA_HOME, CuPy's CUDA path, /usr/local/cuda,
    the nvidia wheels' unified 13.x layout, numba-cuda's bundled copies.  Empty if none is found.
    """
    import importlib.util
    cands = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    cands = [os.path.join(c, "include") for c in cands if c]
    for mod, sub in (("nvidia", "cu13/include"), ("nvidia", "cuda_runtime/include"),
                     ("numba_cuda", "numba/cuda/include/13")):
        spec = importlib.util.find_spec(mod)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            cands.append(os.path.join(loc, sub))
    for c in cands:
        if os.path.isfile(os.path.join(c, "cuda_fp16.h")) and os.path.isfile(os.path.join(c, "cuda_bf16.h")):
            return (c,)
    return ()


def compile_options() -> tuple:
    """NVRTC options of every compile (RawModule adds the device's architecture)."""
    # CUDA 13 moved cuda/std/* (which cooperative_groups.h includes) under include/cccl.
    dirs = cuda_include_dirs()
    cccl = tuple(f"-I{d}/cccl" for d in dirs if Path(d, "cccl").is_dir())
    return ("--std=c++17",) + tuple(f"-I{d}" for d in dirs) + cccl


# -- NVRTC without a GPU ---------------------------------------------------------------------
def nvrtc_compile(source: str | Path, arch: str = "sm_90", *, cubin: bool = True,
                  filename: str | None = None) -> bytes:
    """Compile with NVRTC (through ``cuda.bindings``, no GPU needed): cubin (or PTX) bytes.

    ``source`` is a .cu path (read with :func:`read`) or CUDA C text (its local includes inlined);
    ``filename`` names it in the log.  The compiler CuPy's RawModule runs, with the same options.
    """
    if isinstance(source, Path):
        filename = filename or source.name
        source = read(source)
    else:
        filename = filename or "kernel.cu"
        source = expand(source, filename)
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise MissingDependency("cuda-bindings", "NVRTC compilation", "pip install cuda-bindings") from e
    opts = [o.encode() for o in (f"--gpu-architecture={arch}",) + compile_options()]

    def check(result, what):
        status = result[0] if isinstance(result, tuple) else result
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelCompileError(f"NVRTC {what} failed: {status.name}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    try:
        prog = check(nvrtc.nvrtcCreateProgram(source.encode(), filename.encode(), 0, [], []), "create")
    except RuntimeError as e:  # libnvrtc.so not found by cuda.pathfinder
        raise MissingDependency("libnvrtc", "NVRTC compilation",
                                f"pip install nvidia-cuda-nvrtc ({e})") from e
    try:
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        check(nvrtc.nvrtcGetProgramLog(prog, log), "log")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            shown = " ".join(o.decode() for o in opts)
            raise KernelCompileError(f"NVRTC could not compile {filename} for {arch} (options {shown}):\n"
                                     + log.decode(errors="replace").rstrip("\x00").strip())
        get_size, get = ((nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if cubin
                         else (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX))
        out = b" " * check(get_size(prog), "size")
        check(get(prog, out), "get")
        return out
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# -- CuPy: RawModule -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def module(code: str, device: int, cooperative: bool = False):
    """CuPy RawModule of ``code`` (already expanded) for ``device``; NVRTC runs on the first lookup.
    ``cooperative``: its entries launch with ``cuLaunchCooperativeKernel`` (grid-wide sync)."""
    import cupy
    with cupy.cuda.Device(device):
        return cupy.RawModule(code=code, options=compile_options(), enable_cooperative_groups=cooperative)


def function(code: str, symbol: str, device: int, *, name: str, filename: str = "kernel.cu",
             cooperative: bool = False):
    """Entry ``symbol`` of CUDA C text ``code`` (local includes inlined here), compiled and loaded on
    ``device``: a ``cupy.RawKernel``, launched on CuPy's current stream.  ``name`` says what failed
    to compile in the error, ``filename`` names the text in the log's line references.  Callers
    keep the result (a lookup hashes the whole text)."""
    import cupy
    from cupy.cuda.compiler import CompileException
    with cupy.cuda.Device(device):
        try:
            return module(expand(code, filename), device, cooperative).get_function(symbol)
        except CompileException as e:
            log = e.get_message() if hasattr(e, "get_message") else str(e)
            raise KernelCompileError(f"NVRTC (CuPy RawModule) could not compile {name} "
                                     f"(options {' '.join(compile_options())}):\n{log}") from None


@functools.lru_cache(maxsize=None)
def file_function(source: Path, symbol: str, device: int, cooperative: bool = False):
    """Entry ``symbol`` of a .cu under ``kernels/cuda``, loaded on ``device`` (cached by path: cheap
    to call before every launch)."""
    return function(read(source), symbol, device, name=str(source), filename=Path(source).name,
                    cooperative=cooperative)


_RESOURCES = ("num_regs", "local_size_bytes", "shared_size_bytes", "const_size_bytes", "max_threads_per_block")


def resources(kernel) -> dict:
    """What a loaded entry uses, as the driver reports it (``cuFuncGetAttribute``): registers per
    thread, local memory (spills and stack) and static shared and constant memory per thread/block
    in bytes, and the most threads per block it can launch with."""
    return {k: int(getattr(kernel, k)) for k in _RESOURCES}
