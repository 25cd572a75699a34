"""Finding and loading cuDNN 9 (``libcudnn.so.9`` and its sub-libraries) through ctypes.

Where it looks, in this order (the first place that has ``libcudnn.so.9`` wins):

1. ``$MICROBENCH_CUDNN_PATH``: a directory holding ``libcudnn.so.9`` or the path of that file
   (several, separated by ``os.pathsep``).  When the variable is set *only* those places are
   searched, so a wrong setting is reported instead of silently replaced by another cuDNN.
2. The ``nvidia-cudnn-cu13`` and ``nvidia-cudnn-cu12`` wheels: ``nvidia/cudnn/lib`` of the
   installed distribution, then of every ``sys.path`` entry (covers a wheel unpacked onto
   ``PYTHONPATH`` without metadata, as on the GPU test machine).
3. The system loader path (``LD_LIBRARY_PATH``, ``ld.so.cache``): ``dlopen("libcudnn.so.9")``.

``libcudnn.so.9`` is a small shim that forwards every call to a sub-library it opens by name
(``libcudnn_graph``, ``_ops``, ``_cnn``, ``_adv``, the engine libraries).  The sub-libraries of
the directory found are loaded first, by absolute path and ``RTLD_GLOBAL``, in dependency order
(graph <- ops <- cnn, adv), so the shim's by-name opens resolve to the same files even when the
directory is not on the loader path.  ``cudnnGetVersion``, ``cudnnGetErrorString`` and
``cudnnGetLastErrorString`` work without a GPU; ``cudnnCreate`` needs one (it returns
CUDNN_STATUS_NOT_INITIALIZED without).

Nothing here imports CuPy: ``microbench env`` and the registry ask :func:`describe` cheaply.
"""
from __future__ import annotations

import ctypes
import importlib.metadata as md
import os
import sys
import threading

from .. import vendorlib
from ..errors import MissingDependency
from ..vendorlib import SYSTEM, Candidate
from . import errors as cerr

ENV_VAR = "MICROBENCH_CUDNN_PATH"
MAIN = "libcudnn.so.9"
# Loaded before MAIN, in this order (each needs the ones before it); absent ones are skipped.
SUBLIBS = ("libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9", "libcudnn_adv.so.9")
WHEELS = ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12")
WHEEL_SUBDIR = os.path.join("nvidia", "cudnn", "lib")
HINT = (f"pip install nvidia-cudnn-cu13 (or -cu12), or set {ENV_VAR} to the directory holding "
        f"{MAIN}")


class Found(vendorlib.Found):
    main = MAIN


def _wheel_candidates(search_path) -> list:
    out, seen = [], set()
    if search_path is None:  # installed distributions first: their metadata says where
        for dist in WHEELS:
            try:
                d = str(md.distribution(dist).locate_file(WHEEL_SUBDIR))
            except md.PackageNotFoundError:
                continue
            d = os.path.abspath(d)
            if d not in seen:
                seen.add(d)
                out.append(Candidate(d, f"wheel {dist}", vendorlib.has_file(d, MAIN)))
        search_path = sys.path
    for entry in search_path:
        d = os.path.abspath(os.path.join(entry or os.curdir, WHEEL_SUBDIR))
        if d in seen or not os.path.isdir(d):
            continue
        seen.add(d)
        out.append(Candidate(d, "sys.path", vendorlib.has_file(d, MAIN)))
    return out


def find(env: dict | None = None, search_path=None, *, system: bool = True) -> Found:
    """Where cuDNN is, without loading it.

    ``env`` defaults to ``os.environ`` and ``search_path`` to the installed wheels plus
    ``sys.path``: the tests pass a fake tree.  ``system=False`` leaves the loader path out.
    A Found with ``directory=SYSTEM`` means "no directory of ours; let dlopen search".
    """
    return vendorlib.find(Found, ENV_VAR, env, lambda name: name == MAIN,
                          lambda: _wheel_candidates(search_path), system=system)


class Library:
    """A loaded cuDNN: the shim plus the sub-libraries that were preloaded.

    :meth:`fn` binds a C function once (argtypes, restype int = cudnnStatus_t); :meth:`call`
    calls it and raises :class:`kernels.cudnn.errors.CudnnError` on any status but success.
    """

    def __init__(self, main: ctypes.CDLL, directory: str, source: str, sublibs: dict,
                 searched: tuple = ()):
        self.main = main
        self.directory = directory
        self.source = source
        self.sublibs = sublibs          # soname -> absolute path loaded
        self.searched = searched
        self._fns: dict = {}
        self._lock = threading.Lock()
        main.cudnnGetVersion.restype = ctypes.c_size_t
        main.cudnnGetVersion.argtypes = []
        main.cudnnGetErrorString.restype = ctypes.c_char_p
        main.cudnnGetErrorString.argtypes = [ctypes.c_int]
        try:
            main.cudnnGetCudartVersion.restype = ctypes.c_size_t
            main.cudnnGetCudartVersion.argtypes = []
        except AttributeError:
            pass
        try:  # cuDNN 9 and late 8.x; older libraries lack it
            main.cudnnGetLastErrorString.restype = None
            main.cudnnGetLastErrorString.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
            self._has_last_error = True
        except AttributeError:
            self._has_last_error = False

    # -- facts ------------------------------------------------------------------------------
    @property
    def version_int(self) -> int:
        """``cudnnGetVersion()``: ``major*10000 + minor*100 + patch`` for cuDNN 9."""
        return int(self.main.cudnnGetVersion())

    @property
    def version(self) -> str:
        return format_version(self.version_int)

    @property
    def cudart_version(self) -> int | None:
        try:
            return int(self.main.cudnnGetCudartVersion())
        except AttributeError:
            return None

    def error_string(self, status: int) -> str:
        s = self.main.cudnnGetErrorString(int(status))
        return s.decode(errors="replace") if s else ""

    def last_error(self) -> str:
        """``cudnnGetLastErrorString``: cuDNN's detail about the last failure on this thread
        (reading it clears it)."""
        if not self._has_last_error:
            return ""
        buf = ctypes.create_string_buffer(1024)
        self.main.cudnnGetLastErrorString(buf, len(buf))
        return buf.value.decode(errors="replace").strip()

    # -- calls ------------------------------------------------------------------------------
    def fn(self, name: str, argtypes, restype=ctypes.c_int):
        """The C function ``name`` with its prototype set (bound once per name)."""
        f = self._fns.get(name)
        if f is None:
            with self._lock:
                try:
                    f = getattr(self.main, name)
                except AttributeError:
                    raise MissingDependency(
                        f"cuDNN function {name}", "the cudnn variants",
                        f"{MAIN} from {self.directory} (cuDNN {self.version}) does not export it; "
                        f"cuDNN >= 9 is needed") from None
                f.argtypes = list(argtypes)
                f.restype = restype
                self._fns[name] = f
        return f

    def call(self, name: str, *args) -> None:
        """Call a bound function and raise on a status other than success."""
        f = self._fns.get(name)
        if f is None:
            raise KeyError(f"{name} is not bound; call Library.fn({name!r}, argtypes) first")
        cerr.check(name, f(*args), self)


def format_version(v: int) -> str:
    """92801 -> '9.28.1' (cuDNN 9's numbering); 8907 -> '8.9.7' (cuDNN 8's)."""
    v = int(v)
    if v >= 90000:
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def _dlopen(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def load_from(found: Found) -> Library:
    """Load the cuDNN that :func:`find` located; MissingDependency naming every place searched."""
    if found.directory is None:
        where = found.searched_text() or "nowhere (no candidate directory)"
        raise MissingDependency("cuDNN 9 (libcudnn.so.9)", "the cudnn variants",
                                f"searched: {where}; {HINT}")
    sublibs = {}
    if found.directory == SYSTEM:
        for name in SUBLIBS:
            try:
                _dlopen(name)
                sublibs[name] = name
            except OSError:
                pass  # the shim opens what it needs itself; a missing one fails at its first call
        try:
            main = _dlopen(MAIN)
        except OSError as e:
            where = found.searched_text()
            raise MissingDependency("cuDNN 9 (libcudnn.so.9)", "the cudnn variants",
                                    f"searched: {where}; dlopen({MAIN}): {e}; {HINT}") from None
        directory = loaded_directory() or SYSTEM
    else:
        for name in SUBLIBS:
            p = os.path.join(found.directory, name)
            if os.path.isfile(p):
                try:
                    _dlopen(p)
                except OSError as e:
                    raise MissingDependency(
                        f"cuDNN sub-library {name}", "the cudnn variants",
                        f"{p} exists but cannot be loaded: {e}") from None
                sublibs[name] = p
        p = os.path.join(found.directory, MAIN)
        try:
            main = _dlopen(p)
        except OSError as e:
            raise MissingDependency("cuDNN 9 (libcudnn.so.9)", "the cudnn variants",
                                    f"{p} exists but cannot be loaded: {e}") from None
        directory = found.directory
    lib = Library(main, directory, found.source, sublibs, found.searched)
    if lib.version_int < 90000:
        raise MissingDependency("cuDNN 9", "the cudnn variants",
                                f"{directory} has cuDNN {lib.version}; the v8 RNN API as used "
                                f"here needs cuDNN >= 9; {HINT}")
    return lib


def loaded_directory() -> str | None:
    """The directory of the cuDNN already mapped into this process, if any (Linux:
    /proc/self/maps): where PyTorch's cuDNN came from, so ours can load the same build."""
    path = vendorlib.mapped_path(MAIN)
    return None if path is None else os.path.dirname(path)


# The process's cuDNN, found and loaded on first use; _loader.cache_clear() forgets it.
_loader = vendorlib.Loader(lambda: load_from(find()))


def load() -> Library:
    """The process's cuDNN (found and loaded once); raises MissingDependency with the places
    searched when there is none.  Change MICROBENCH_CUDNN_PATH before the first call."""
    return _loader()


def available() -> tuple:
    """``(ok, reason)``: whether cuDNN loads here (a GPU is not needed for this answer)."""
    return _loader.available(lambda lib: f"cuDNN {lib.version} from {lib.directory} ({lib.source})")


def version() -> str | None:
    """``'9.28.1'``, or None when cuDNN cannot be loaded."""
    return _loader.version()


def describe() -> dict:
    """What ``microbench env`` prints about cuDNN: version, where from, or why it is missing."""
    def facts(lib):
        out = {"version": lib.version, "version_int": lib.version_int, "path": lib.directory,
               "source": lib.source, "sublibraries": sorted(lib.sublibs)}
        cudart = lib.cudart_version
        if cudart:
            out["built_for_cudart"] = f"{cudart // 1000}.{cudart % 1000 // 10}"
        return out
    return _loader.describe(facts)
