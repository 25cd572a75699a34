"""The project's CUDA C run on the CPU: g++ builds a .cu against ``tests/cuda_host/`` (every CUDA
thread a fiber with its own stack; see the comment at the top of ``mb_host.h`` for what is
modelled and what is not), and :class:`HostKernel` launches an entry the way CuPy's
``RawKernel`` does: ``kernel(grid, block, args, shared_mem=...)``, arrays passed as pointers,
NumPy scalars by their own width.  Every argument is checked against the entry's parameter types as the compiler sees
them, so a launcher that passes an int32 where the kernel takes a 64-bit stride, or float32 data
to an fp16 entry, fails here as it would corrupt memory on the GPU.

The source is compiled unchanged except for one rewrite: ``extern __shared__ T name[];`` becomes a
pointer to the block's dynamic shared memory (NaN-filled, guard zones checked after the launch).
:func:`build` takes the source text, so a test can compile a mutated copy.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INCLUDE = Path(__file__).resolve().parent / "cuda_host"
# -fsanitize=alignment: a misaligned vector load (a fault on the GPU) is reported by mb_host.h,
# which defines the handler; linked without -fsanitize, so libubsan stays out of the process.
FLAGS = ("-std=c++17", "-fPIC", "-fno-strict-aliasing", "-w", "-fsanitize=alignment",
         "-fsanitize-recover=alignment")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;")


class HostLaunchError(AssertionError):
    """A launch the GPU would refuse, or a fault the host model saw (deadlock, shared-memory
    overrun, a guard zone of a device array overwritten, an argument of the wrong type)."""


class HostBuildError(RuntimeError):
    """g++ could not compile the host build; the message carries its log."""


def gxx() -> str | None:
    return shutil.which("g++")


def launch_bound(source: str) -> str:
    """The one ``__launch_bounds__`` thread count the source's entries declare (a macro name)."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", source, flags=re.S)
    bounds = set(re.findall(r"__launch_bounds__\(\s*(\w+)", code))
    if len(bounds) != 1:
        raise HostBuildError(f"expected one __launch_bounds__ thread count, found {sorted(bounds)}")
    return bounds.pop()


def host_source(source: str, entries, filename: str = "kernel.cu") -> str:
    """The translation unit g++ compiles: the shim, the rewritten .cu (its lines numbered as in
    ``filename``), one wrapper per entry."""
    text, n = _EXTERN_SHARED.subn(
        lambda m: f"{m.group(1)}* const {m.group(2)} = reinterpret_cast<{m.group(1)}*>(mb_dynamic_smem);",
        source)
    if n > 1:
        raise HostBuildError(f"{n} extern __shared__ declarations; the host model expects at most one")
    bound = launch_bound(source)
    wrappers = "\n".join(f"MB_HOST_ENTRY({e}, {bound})" for e in entries)
    return f'#include "mb_host.h"\n#line 1 "{filename}"\n{text}\n#line 1 "host_wrappers.cpp"\n{wrappers}\n'


@dataclass
class _Job:
    source: str
    entries: tuple
    name: str
    opt: str


_CACHE: dict = {}
_LAUNCH = threading.Lock()      # the runtime's state is global: one launch at a time per process


def _key(job: _Job) -> str:
    h = hashlib.sha256(job.source.encode())
    h.update(" ".join(job.entries + (job.opt,)).encode())
    for f in sorted(INCLUDE.glob("*.h")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _compile(job: _Job, workdir: Path) -> Path:
    compiler = gxx()
    if compiler is None:
        raise HostBuildError("g++ is not on the PATH")
    d = Path(workdir) / f"{job.name}-{_key(job)}"
    lib = d / f"{job.name}.so"
    if lib.exists():
        return lib
    d.mkdir(parents=True, exist_ok=True)
    src = d / f"{job.name}.cpp"
    src.write_text(host_source(job.source, job.entries, f"{job.name}.cu"))
    obj = d / f"{job.name}.o"
    for cmd in ([compiler, *FLAGS, job.opt, f"-I{INCLUDE}", "-c", "-o", str(obj), str(src)],
                [compiler, "-shared", "-o", str(lib), str(obj)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise HostBuildError(f"g++ could not build {job.name}:\n{proc.stderr[-6000:]}")
    return lib


def build_all(jobs, workdir: Path, opt: str = "-O1") -> list:
    """Compile several ``(source, entries, name)`` at once (two at a time); a :class:`HostModule`
    each, cached in this process by the text compiled.  ``opt="-O0"`` halves the compile time of
    builds that run little (planted bugs) at the cost of slower kernels."""
    jobs = [_Job(s, tuple(e), n, opt) for s, e, n in jobs]
    todo = [j for j in jobs if _key(j) not in _CACHE]
    with ThreadPoolExecutor(max_workers=2) as pool:
        libs = list(pool.map(lambda j: _compile(j, workdir), todo))
    for j, lib in zip(todo, libs):
        code = re.sub(r"//[^\n]*|/\*.*?\*/", "", j.source, flags=re.S)
        _CACHE[_key(j)] = HostModule(lib, j.entries, bool(re.search(r"(?<!extern )__shared__", code)))
    return [_CACHE[_key(j)] for j in jobs]


def build(source: str, entries, name: str, workdir: Path, opt: str = "-O1") -> "HostModule":
    return build_all([(source, entries, name)], workdir, opt)[0]


class _Config(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint64),
                ("cooperative", ctypes.c_int32), ("order", ctypes.c_int64)]


class HostModule:
    def __init__(self, lib: Path, entries, static_shared: bool = False):
        self.path = lib
        self.static_shared = static_shared     # a __shared__ array: one copy, blocks in turn
        self.lib = ctypes.CDLL(str(lib))
        self.entries = tuple(entries)
        self._kernels = {}

    def get_function(self, entry: str, cooperative: bool = False) -> "HostKernel":
        if entry not in self.entries:
            raise KeyError(f"{entry!r} is not an entry of this build; have {', '.join(self.entries)}")
        if cooperative and self.static_shared:
            raise HostBuildError(f"{entry}: a cooperative launch runs its blocks at once, but this "
                                 "source declares static __shared__ arrays (one copy in the host model)")
        key = (entry, cooperative)
        if key not in self._kernels:
            self._kernels[key] = HostKernel(self, entry, cooperative)
        return self._kernels[key]


class HostKernel:
    """One entry, called like CuPy's RawKernel.  ``cooperative`` mirrors
    ``RawKernel(..., enable_cooperative_groups=True)``; ``launches`` counts calls."""

    def __init__(self, module: HostModule, entry: str, cooperative: bool):
        self.module, self.entry, self.cooperative = module, entry, cooperative
        self._fn = getattr(module.lib, f"host_{entry}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Config), ctypes.c_char_p, ctypes.c_size_t]
        sig = getattr(module.lib, f"host_sig_{entry}")
        sig.restype = ctypes.c_char_p
        self.params = tuple(sig().decode().split())
        self.launches = 0
        self.order = 0            # who goes first when a barrier opens: 0 lowest, 1 highest, else a seed
        self.guards = []          # GuardedMemory objects whose zones are checked after every launch

    def slots(self, args) -> np.ndarray:
        """The 8-byte argument slots, after checking each argument against its parameter."""
        if len(args) != len(self.params):
            raise HostLaunchError(f"{self.entry} takes {len(self.params)} arguments, got {len(args)}")
        out = np.zeros(len(args), np.uint64)
        for i, (a, p) in enumerate(zip(args, self.params)):
            where = f"{self.entry} argument {i} ({p})"
            if p.startswith("*"):
                if isinstance(a, np.ndarray):
                    if a.dtype.name != p[1:]:
                        raise HostLaunchError(f"{where}: an array of {a.dtype.name}")
                    out[i] = a.__array_interface__["data"][0]
                elif type(a) is np.uint64:         # how CuPy passes a raw (e.g. null) pointer
                    out[i] = a
                else:
                    raise HostLaunchError(f"{where}: {type(a).__name__} is not an array or np.uint64")
            else:
                if type(a) is not np.dtype(p).type:
                    raise HostLaunchError(f"{where}: {type(a).__name__} {a!r}; CuPy would pass it "
                                          f"with another width or type")
                out[i] = np.array(a).astype(np.int64).view(np.uint64) if p.startswith("int") else \
                    np.array(a).astype(np.uint64)
        return out

    def __call__(self, grid, block, args, shared_mem: int = 0):
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        slots = self.slots(args)
        cfg = _Config((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), int(shared_mem),
                      int(self.cooperative), int(self.order))
        err = ctypes.create_string_buffer(4096)
        with _LAUNCH:
            rc = self._fn(slots.ctypes.data, ctypes.byref(cfg), err, len(err))
        self.launches += 1
        if rc:
            raise HostLaunchError(f"{self.entry} grid {grid} block {block}: {err.value.decode()}")
        for g in self.guards:
            g.check(f"after {self.entry}")


# -- device arrays framed by guard zones -------------------------------------------------------------
GUARD_BYTES = 256
_NAN_WORD = 0x7fc07fc0        # a NaN as fp32, and both its halves NaNs as fp16 and bf16


class GuardedMemory:
    """Allocates arrays inside NaN-filled buffers with guard zones on both sides, and checks that no
    launch wrote into a zone (an out-of-bounds store).  An out-of-bounds load reads NaN."""

    def __init__(self):
        self._frames = []

    def empty(self, shape, dtype) -> np.ndarray:
        """Uninitialised memory: every byte pattern a NaN (unwritten outputs fail the comparison)."""
        dtype = np.dtype(dtype)
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        words = (nbytes + 2 * GUARD_BYTES + 32) // 4
        raw = np.full(words, _NAN_WORD, np.uint32).view(np.uint8)
        off = (-raw.ctypes.data) % 16 + GUARD_BYTES       # arrays 16-byte aligned, as cudaMalloc's
        arr = raw[off:off + nbytes].view(dtype).reshape(shape)
        self._frames.append((raw, off, nbytes))
        return arr

    def array(self, a, dtype=None) -> np.ndarray:
        a = np.asarray(a)
        out = self.empty(a.shape, a.dtype if dtype is None else dtype)
        out[...] = a.astype(out.dtype) if dtype is not None else a
        return out

    def check(self, when: str = ""):
        for raw, off, nbytes in self._frames:
            pattern = np.full(raw.size // 4, _NAN_WORD, np.uint32).view(np.uint8)
            before, after = raw[:off], raw[off + nbytes:]
            if not np.array_equal(before, pattern[:off]):
                raise HostLaunchError(f"a store before the start of a {nbytes}-byte device array {when}")
            if not np.array_equal(after, pattern[off + nbytes:]):
                first = int(np.flatnonzero(after != pattern[off + nbytes:])[0])
                raise HostLaunchError(f"a store {first} bytes past the end of a {nbytes}-byte device "
                                      f"array {when}")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m
