"""numba's ``njit`` with its compiled code kept on disk in the private cache (kernels.cachedir).

A process that runs the fused kernels, the compiled step loops or the numba convolutions used to
compile them first: seconds per kernel, every run.  :func:`njit` is ``numba.njit`` whose machine
code is saved the first time and loaded afterwards.  Where it is kept, and why it is safe:

- in ``private_dir("numba", KEY)`` (0700, owner checked): numba's index files are pickles, which
  must never come from a directory someone else can write to;
- ``KEY`` hashes this package's sources (every ``.py`` of kernels/ and fusion/), numba's and
  llvmlite's versions and the Python version, so code compiled from other sources is never
  loaded (numba's own check looks only at the file that defines the function, and our kernels
  inline helpers from other files); older keys are removed, the newest few kept;
- one cache file per function *and* compile options (``parallel``, ``error_model``, ...): numba
  keys its index by signature alone, so the serial and the parallel compilation of one Python
  function would otherwise take each other's place.

What cannot be cached compiles as before: functions that capture other jitted functions or
ctypes pointers in a closure (their pickled key differs in every process), and any function when
the cache is off (``MICROBENCH_JIT_CACHE=0``) or numba's internals it relies on are missing.
Code generated at run time (the Winograd transforms) is cached under a hash of its source text.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

ENV_OFF = "MICROBENCH_JIT_CACHE"
KEEP = 4                # cache generations (source hashes) kept


@functools.lru_cache(maxsize=1)
def _key() -> str:
    import llvmlite
    import numba
    h = hashlib.sha1()
    h.update(f"{sys.version_info[:3]} numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    here = Path(__file__).resolve().parent
    for pkg in (here, here.parent / "fusion"):
        for p in sorted(pkg.rglob("*.py")):
            h.update(str(p.relative_to(pkg.parent)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def cache_dir() -> Path | None:
    """This source tree's directory of numba's cache (None when the cache is off)."""
    if os.environ.get(ENV_OFF, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    from .cachedir import check_private, private_dir
    top = private_dir("numba")
    d = private_dir("numba", _key())
    os.utime(d)                     # the newest generation is the one used last
    old = sorted((p for p in top.iterdir() if p.is_dir() and p != d), key=lambda p: p.stat().st_mtime)
    for p in old[:max(0, len(old) - (KEEP - 1))]:
        try:
            check_private(p)
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
        except OSError:             # another process is using or removing it: leave it
            pass
    return d


def _cache_class():
    """numba's FunctionCache with a locator that puts each function's files in :func:`cache_dir`,
    named by its qualified name and a tag of its compile options; None where numba lacks it."""
    try:
        from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator
    except ImportError:             # pragma: no cover - numba moved its caching internals
        return None

    class Locator(_CacheLocator):
        def __init__(self, path: str, tag: str):
            self._path, self._tag = path, tag

        def ensure_cache_path(self):
            pass                    # made private by cache_dir(); numba's makedirs would not check

        def get_cache_path(self):
            return self._path

        def get_source_stamp(self):
            return _key()           # the directory is keyed by it too

        def get_disambiguator(self):
            return self._tag

        @classmethod
        def from_function(cls, py_func, py_file):
            where = getattr(py_func, "_microbench_cache", None)
            return cls(*where) if where else None

    class Impl(CompileResultCacheImpl):
        _locator_classes = [Locator]

    class Cache(FunctionCache):
        _impl_class = Impl

    return Cache


_CACHE = None


def njit(fn=None, *, source_key: str = "", **options):
    """``numba.njit(**options)``, cached in :func:`cache_dir` where possible (module docstring).
    ``source_key``: for a function compiled from generated source, a hash of that source."""
    if fn is None:
        return functools.partial(njit, source_key=source_key, **options)
    import numba
    disp = numba.njit(**options)(fn)
    enable_cache(disp, source_key)
    return disp


def enable_cache(disp, source_key: str = "") -> None:
    """Point dispatcher ``disp`` at the private cache (nothing happens where it is off)."""
    global _CACHE
    module = disp.py_func.__globals__.get("__name__")
    if uncachable(disp) or not module or module not in sys.modules:
        return          # numba rebuilds a cached function's environment by importing its module
    d = cache_dir()
    if d is None:
        return
    if _CACHE is None:
        _CACHE = _cache_class() or False
    if not _CACHE:
        return
    tag = hashlib.sha1(repr((sorted((k, repr(v)) for k, v in disp.targetoptions.items()),
                             disp.py_func.__code__.co_firstlineno, source_key)).encode()).hexdigest()[:10]
    disp.py_func._microbench_cache = (str(d), tag)
    disp._cache = _CACHE(disp.py_func)


def uncachable(disp) -> bool:
    """A dispatcher numba would refuse to cache anyway: one capturing jitted functions or other
    objects in a closure (its key changes from process to process)."""
    cells = disp.py_func.__closure__ or ()
    for c in cells:
        try:
            v = c.cell_contents
        except ValueError:
            return True
        if not isinstance(v, (bool, int, float, str, bytes, type(None))) and not _is_scalar(v):
            return True
    return False


def _is_scalar(v) -> bool:
    import numpy as np
    return isinstance(v, np.generic)
