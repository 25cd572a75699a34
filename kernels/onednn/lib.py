"""Finding and loading oneDNN (``libdnnl.so.3``) through ctypes, with its C prototypes.

Where it looks, in this order (the first place that has ``libdnnl.so.3`` wins):

1. ``$MICROBENCH_ONEDNN_PATH``: a directory holding ``libdnnl.so.3`` or the path of that file
   (several, separated by ``os.pathsep``).  When set, *only* those places are searched, so a
   wrong setting is reported instead of silently replaced by another oneDNN.
2. The ``onednn-cpu-gomp`` wheel (the project's choice: oneDNN 3.2 built for the CPU with GNU
   OpenMP, no other dependency) and its siblings ``onednn-cpu-iomp``, ``onednn-cpu-tbb`` and
   ``onednn``: they install ``libdnnl.so.3`` into ``<prefix>/lib``, found through the
   distribution's file list; then ``<sys.prefix>/lib`` itself.
3. The system loader path (``LD_LIBRARY_PATH``, ``ld.so.cache``): ``dlopen("libdnnl.so.3")``.

Why a wheel and not PyTorch's copy: PyTorch links oneDNN statically and exports none of its C
API, TensorFlow and MXNet likewise.  The newer ``onednn`` wheels (2025+) pull in Intel's SYCL
runtime; ``onednn-cpu-gomp`` needs only ``libgomp``.  The versions differ (PyTorch 2.13 bundles
3.12, MXNet 1.9.1 a 2.x), which the primitive traces show side by side.

Enum values are those of ``dnnl_types.h`` of oneDNN v3.2.  oneDNN numbers its format tags by
position in a long enum that grows between releases, so :func:`load_from` asks the library's own
``dnnl_fmt_tag2str`` (and friends) to name each number this package uses and refuses a library
that names one differently: a wrong number would silently mean another layout.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.metadata as md
import os
import sys
import threading

from .. import vendorlib
from ..errors import MissingDependency
from ..vendorlib import SYSTEM, Candidate
from . import errors as derr

ENV_VAR = "MICROBENCH_ONEDNN_PATH"
MAIN = "libdnnl.so.3"
WHEELS = ("onednn-cpu-gomp", "onednn-cpu-iomp", "onednn-cpu-tbb", "onednn")
HINT = (f"pip install onednn-cpu-gomp (or set {ENV_VAR} to the directory holding {MAIN})")
MIN_VERSION = (3, 0)

# -- enums (dnnl_types.h / dnnl_common_types.h, oneDNN v3.2) --------------------------------
DT = {"undef": 0, "f16": 1, "bf16": 2, "f32": 3, "s32": 4, "s8": 5, "u8": 6, "f64": 7}
TAG = {"undef": 0, "any": 1, "a": 2, "ab": 3, "abc": 4, "abcd": 5, "abcde": 6,
       "abdc": 20, "acdb": 22, "abdec": 31}
# the RNN and conv aliases of those tags (same numbers, named for what they hold)
TAG_ALIAS = {"x": "a", "tnc": "abc", "ldnc": "abcd", "ldgo": "abcd", "ldigo": "abcde",
             "ldgoi": "abdec", "ldio": "abcd", "ldoi": "abdc", "nchw": "abcd", "nhwc": "acdb",
             "oihw": "abcd"}
PROP = {"forward_training": 64, "forward_inference": 96}
DIRECTION_L2R = 1                   # dnnl_unidirectional_left2right
ALG = {"convolution_direct": 0x1, "convolution_winograd": 0x2, "convolution_auto": 0x3,
       "eltwise_relu": 0x20, "eltwise_tanh": 0x21}   # the last two: the vanilla RNN's activation
CPU_ENGINE = 1                      # dnnl_cpu
STREAM_DEFAULT = 1                  # dnnl_stream_default_flags (in order)
SCRATCHPAD_USER = 1                 # dnnl_scratchpad_mode_user
QUERY = {"impl_info_str": 8, "exec_arg_md": 255, "scratchpad_md": 136, "format_kind": 262}
FORMAT_KIND = {0: "undef", 1: "any", 2: "blocked", 3: "opaque"}
RUNTIME = {0: "none", 1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool", 256: "OpenCL",
           512: "SYCL"}
CPU_ISA = {0x0: "default", 0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xf: "avx2_vnni",
           0x1f: "avx2_vnni_2", 0x27: "avx512_core", 0x67: "avx512_core_vnni",
           0xe7: "avx512_core_bf16", 0x1ef: "avx512_core_fp16", 0xfef: "avx512_core_amx",
           0x1fef: "avx512_core_amx_fp16"}
# DNNL_ARG_* (dnnl_types.h)
ARG = {"src": 1, "src_layer": 1, "src_iter": 2, "src_iter_c": 3, "dst": 17, "dst_layer": 17,
       "dst_iter": 18, "dst_iter_c": 19, "weights": 33, "weights_layer": 33, "weights_iter": 34,
       "bias": 41, "scratchpad": 80, "from": 1, "to": 17}

MAX_NDIMS = 12
Dims = ctypes.c_int64 * MAX_NDIMS
P = ctypes.c_void_p
PP = ctypes.POINTER(ctypes.c_void_p)
I32, U32, SZ = ctypes.c_int, ctypes.c_uint, ctypes.c_size_t


class ExecArg(ctypes.Structure):
    """``dnnl_exec_arg_t``: {int arg; dnnl_memory_t memory;} (16 bytes on x86-64)."""
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class Version(ctypes.Structure):
    """``dnnl_version_t``."""
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


# name -> (restype, argtypes); restype int is dnnl_status_t.  Prototypes of dnnl.h / dnnl_common.h.
PROTOTYPES = {
    "dnnl_engine_create": (I32, [PP, I32, SZ]),
    "dnnl_engine_destroy": (I32, [P]),
    "dnnl_stream_create": (I32, [PP, P, U32]),
    "dnnl_stream_wait": (I32, [P]),
    "dnnl_stream_destroy": (I32, [P]),
    "dnnl_memory_desc_create_with_tag": (I32, [PP, I32, Dims, I32, I32]),
    "dnnl_memory_desc_destroy": (I32, [P]),
    "dnnl_memory_desc_get_size": (SZ, [P]),
    "dnnl_memory_desc_equal": (I32, [P, P]),
    "dnnl_memory_desc_query": (I32, [P, I32, P]),
    "dnnl_memory_create": (I32, [PP, P, P, P]),
    "dnnl_memory_destroy": (I32, [P]),
    "dnnl_memory_set_data_handle": (I32, [P, P]),
    "dnnl_primitive_attr_create": (I32, [PP]),
    "dnnl_primitive_attr_destroy": (I32, [P]),
    "dnnl_primitive_attr_set_scratchpad_mode": (I32, [P, I32]),
    "dnnl_primitive_attr_set_post_ops": (I32, [P, P]),
    "dnnl_post_ops_create": (I32, [PP]),
    "dnnl_post_ops_destroy": (I32, [P]),
    "dnnl_post_ops_append_sum": (I32, [P, ctypes.c_float, ctypes.c_int32, I32]),
    "dnnl_primitive_desc_destroy": (I32, [P]),
    "dnnl_primitive_desc_query": (I32, [P, I32, I32, P]),
    "dnnl_primitive_desc_query_md": (P, [P, I32, I32]),
    "dnnl_primitive_create": (I32, [PP, P]),
    "dnnl_primitive_destroy": (I32, [P]),
    "dnnl_primitive_execute": (I32, [P, P, I32, ctypes.POINTER(ExecArg)]),
    "dnnl_reorder_primitive_desc_create": (I32, [PP, P, P, P, P, P]),
    "dnnl_lstm_forward_primitive_desc_create": (I32, [PP, P, I32, I32] + [P] * 11 + [U32, P]),
    "dnnl_lbr_gru_forward_primitive_desc_create": (I32, [PP, P, I32, I32] + [P] * 7 + [U32, P]),
    # (pd, engine, prop_kind, activation, direction, 7 memory descs, flags, alpha, beta, attr)
    "dnnl_vanilla_rnn_forward_primitive_desc_create": (
        I32, [PP, P, I32, I32, I32] + [P] * 7 + [U32, ctypes.c_float, ctypes.c_float, P]),
    "dnnl_convolution_forward_primitive_desc_create": (
        I32, [PP, P, I32, I32, P, P, P, P, Dims, Dims, Dims, Dims, P]),
    "dnnl_matmul_primitive_desc_create": (I32, [PP, P, P, P, P, P, P]),
    "dnnl_set_verbose": (I32, [I32]),
    "dnnl_get_effective_cpu_isa": (I32, []),
    "dnnl_version": (ctypes.POINTER(Version), []),
}
# dnnl_debug.h: the library's own names for enum values (used to check our numbers)
NAMERS = ("dnnl_fmt_tag2str", "dnnl_dt2str", "dnnl_status2str", "dnnl_prop_kind2str",
          "dnnl_alg_kind2str", "dnnl_cpu_isa2str", "dnnl_runtime2str")


class Found(vendorlib.Found):
    main = MAIN


def _wheel_dirs() -> list:
    out = []
    for dist in WHEELS:
        try:
            d = md.distribution(dist)
        except md.PackageNotFoundError:
            continue
        for f in d.files or ():
            if f.name == MAIN:
                out.append((os.path.dirname(os.path.abspath(str(d.locate_file(f)))), f"wheel {dist}"))
                break
    return out


def find(env: dict | None = None, wheel_dirs=None, prefix: str | None = None, *,
         system: bool = True) -> Found:
    """Where oneDNN is, without loading it (the tests pass a fake tree)."""
    def candidates():
        cands, seen = [], set()
        for d, source in (_wheel_dirs() if wheel_dirs is None else wheel_dirs):
            if d not in seen:
                seen.add(d)
                cands.append(Candidate(d, source, vendorlib.has_file(d, MAIN)))
        d = os.path.abspath(os.path.join(sys.prefix if prefix is None else prefix, "lib"))
        if d not in seen:
            cands.append(Candidate(d, "sys.prefix", vendorlib.has_file(d, MAIN)))
        return cands
    return vendorlib.find(Found, ENV_VAR, env, lambda name: name.startswith("libdnnl.so"), candidates,
                          system=system)


class Library:
    """A loaded oneDNN: :meth:`call` raises :class:`OnednnError` on any status but success."""

    def __init__(self, cdll: ctypes.CDLL, path: str, source: str, searched: tuple = ()):
        self.cdll, self.path, self.source, self.searched = cdll, path, source, searched
        self._fns: dict = {}
        self._lock = threading.Lock()
        for name in NAMERS:
            f = getattr(cdll, name, None)
            if f is not None:
                f.restype, f.argtypes = ctypes.c_char_p, [ctypes.c_int]

    def fn(self, name: str):
        f = self._fns.get(name)
        if f is None:
            with self._lock:
                restype, argtypes = PROTOTYPES[name]
                try:
                    f = getattr(self.cdll, name)
                except AttributeError:
                    raise MissingDependency(f"oneDNN function {name}", "the onednn variants",
                                            f"{self.path} (oneDNN {self.version}) does not export "
                                            f"it; oneDNN >= 3.0 is needed") from None
                f.restype, f.argtypes = restype, argtypes
                self._fns[name] = f
        return f

    def call(self, name: str, *args) -> None:
        derr.check(name, self.fn(name)(*args))

    def name_of(self, namer: str, value: int) -> str | None:
        f = getattr(self.cdll, namer, None)
        if f is None:
            return None
        s = f(int(value))
        return s.decode() if s else None

    # -- facts ------------------------------------------------------------------------------
    @functools.cached_property
    def version_info(self) -> dict:
        v = self.fn("dnnl_version")().contents
        return {"major": v.major, "minor": v.minor, "patch": v.patch,
                "hash": (v.hash or b"").decode(errors="replace"),
                "cpu_runtime": RUNTIME.get(v.cpu_runtime, str(v.cpu_runtime)),
                "gpu_runtime": RUNTIME.get(v.gpu_runtime, str(v.gpu_runtime))}

    @property
    def version(self) -> str:
        v = self.version_info
        return f"{v['major']}.{v['minor']}.{v['patch']}"

    @property
    def isa(self) -> str:
        """The ISA oneDNN dispatches to on this CPU (``dnnl_get_effective_cpu_isa``)."""
        code = int(self.fn("dnnl_get_effective_cpu_isa")())
        return self.name_of("dnnl_cpu_isa2str", code) or CPU_ISA.get(code, hex(code))

    @property
    def isa_code(self) -> int:
        return int(self.fn("dnnl_get_effective_cpu_isa")())

    def set_verbose(self, level: int) -> None:
        self.call("dnnl_set_verbose", int(level))


def check_enums(lib: Library) -> list:
    """Every enum number this package passes, named by the library; the mismatches as text."""
    bad = []
    for name, value in TAG.items():
        got = lib.name_of("dnnl_fmt_tag2str", value)
        if got is not None and got != name:
            bad.append(f"format tag {value} is {got!r} there, {name!r} in oneDNN 3.2")
    for name, value in DT.items():
        got = lib.name_of("dnnl_dt2str", value)
        if got is not None and got != name:
            bad.append(f"data type {value} is {got!r} there, {name!r} in oneDNN 3.2")
    for value, name in derr.STATUS_NAMES.items():
        got = lib.name_of("dnnl_status2str", value)
        if got is not None and "dnnl_" + got != name and value <= 6:
            bad.append(f"status {value} is {got!r} there, {name!r} in oneDNN 3.2")
    for name, value in PROP.items():
        got = lib.name_of("dnnl_prop_kind2str", value)
        if got is not None and got != name:
            bad.append(f"prop kind {value} is {got!r} there, {name!r} in oneDNN 3.2")
    for name, value in ALG.items():
        got = lib.name_of("dnnl_alg_kind2str", value)
        if got is not None and got != name:
            bad.append(f"algorithm {value} is {got!r} there, {name!r} in oneDNN 3.2")
    return bad


def load_from(found: Found) -> Library:
    if found.directory is None:
        where = found.searched_text() or "nowhere (no candidate directory)"
        raise MissingDependency(f"oneDNN 3 ({MAIN})", "the onednn variants", f"searched: {where}; {HINT}")
    path = MAIN if found.directory == SYSTEM else os.path.join(found.directory, MAIN)
    try:
        cdll = ctypes.CDLL(path)
    except OSError as e:
        raise MissingDependency(f"oneDNN 3 ({MAIN})", "the onednn variants",
                                f"searched: {found.searched_text()}; dlopen({path}): {e}; {HINT}") from None
    lib = Library(cdll, path if found.directory != SYSTEM else _loaded_path() or path,
                  found.source, found.searched)
    v = lib.version_info
    if (v["major"], v["minor"]) < MIN_VERSION:
        raise MissingDependency("oneDNN >= 3.0", "the onednn variants",
                                f"{lib.path} is oneDNN {lib.version}; {HINT}")
    bad = check_enums(lib)
    if bad:
        raise MissingDependency("a oneDNN whose enums match oneDNN 3.2's", "the onednn variants",
                                f"{lib.path} (oneDNN {lib.version}): " + "; ".join(bad[:3]))
    return lib


def _loaded_path() -> str | None:
    return vendorlib.mapped_path(MAIN)


# The process's oneDNN, found and loaded on first use; _loader.cache_clear() forgets it.
_loader = vendorlib.Loader(lambda: load_from(find()))


def load() -> Library:
    """The process's oneDNN (found and loaded once); MissingDependency names the places searched."""
    return _loader()


def available() -> tuple:
    return _loader.available(lambda lib: f"oneDNN {lib.version} ({lib.isa}) from {lib.path} ({lib.source})")


def version() -> str | None:
    return _loader.version()


def describe() -> dict:
    """What ``microbench env`` prints about oneDNN: version, ISA, runtime, where from, or why not."""
    def facts(lib):
        v = lib.version_info
        return {"version": lib.version, "commit": v["hash"][:12], "isa": lib.isa,
                "cpu_runtime": v["cpu_runtime"], "path": lib.path, "source": lib.source}
    return _loader.describe(facts)
