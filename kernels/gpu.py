"""Is there a usable NVIDIA GPU, and does a case fit in its memory?  Without importing CuPy,
torch or numba: the CLI, the registry and the test collection ask this before any GPU package
is loaded, and importing CuPy alone takes longer than asking the driver.

:func:`detect` talks to the driver library (``libcuda.so.1``) through ctypes: ``cuInit`` and
``cuDeviceGetCount``.  Calling ``cuInit`` in a process that later forks makes the child unable
to use CUDA, so a parent that forks workers should ask in a subprocess.

Also here: the records of the GPU backends (:data:`CUDA_BACKENDS`), as keyword dictionaries for
:class:`kernels.backends.Backend`, so this module does not import :mod:`kernels.backends` and
that module can import this one.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import sys

from .errors import BadInput, Unsupported

DRIVER_LIB = "libcuda.so.1"

# Keyword arguments of kernels.backends.Backend, one dictionary per GPU backend.  Every one keeps
# its arrays and cuBLAS GEMMs in CuPy (so xp is cupy); they differ in how the fused pointwise
# kernel is built and launched.  bf16 arrays are CuPy 14's ml_dtypes bfloat16 (GEMMs through
# cublasGemmEx with fp32 compute); the .cu has bf16 entries, numba.cuda has no bfloat16 array
# type.  tf32 stores fp32 and sets CuPy's float32 GEMM compute type to TF32 for the call
# (:func:`cublas_math`).
CUDA_BACKENDS = (
    dict(name="cupy", device="cuda", xp_module="cupy", dtypes=("fp32", "tf32", "fp16", "bf16"),
         requires=("cupy",), pointwise="cupy",
         about="CuPy arrays and cuBLAS GEMMs; fused pointwise kernel kernels/cuda/rnn_pointwise.cu "
               "compiled by NVRTC (cupy.RawModule), launched on CuPy's current stream"),
    dict(name="pycuda", device="cuda", xp_module="cupy", dtypes=("fp32", "tf32", "fp16", "bf16"),
         requires=("cupy", "pycuda"), pointwise="pycuda", generated=False,
         # PyCUDA cannot launch on a stream it did not create, so its kernels run on the legacy
         # default stream: the steps that put the pointwise kernel on another stream are out.
         no_steps=("wavefront", "graph"),
         no_steps_why="PyCUDA launches on the legacy default stream, and these steps run the "
                      "pointwise kernel on other streams (use the cupy backend)",
         about="CuPy arrays and cuBLAS GEMMs; the same .cu compiled by PyCUDA's SourceModule (nvcc) "
               "in CuPy's primary context, prepared launches on the default stream"),
    dict(name="numba-cuda", device="cuda", xp_module="cupy", dtypes=("fp32", "tf32", "fp16"),
         requires=("cupy", "numba_cuda"), pointwise="numba-cuda",
         about="CuPy arrays and cuBLAS GEMMs; fused pointwise kernel written in numba.cuda "
               "(the numba-cuda package, NVIDIA's maintained CUDA target)"),
)



# The CUDA ordinal every GPU case of this process uses (kernels.devices.select sets it; kept here,
# below devices, so the driver queries that default to it need not import devices).
_SELECTED = 0


def selected() -> int:
    """The CUDA ordinal this process's GPU cases use (``--device cuda:K``; 0 by default)."""
    return _SELECTED


def set_selected(index: int) -> None:
    global _SELECTED
    _SELECTED = int(index)

def _load_driver():
    """The driver library, or a string saying why it cannot be loaded."""
    try:
        return ctypes.CDLL(DRIVER_LIB)
    except OSError as e:
        return f"no NVIDIA driver: {DRIVER_LIB} cannot be loaded ({e})"


def _error_name(lib, rc: int) -> str:
    name = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(rc, ctypes.byref(name)) == 0 and name.value:
            return f"{name.value.decode()} ({rc})"
    except AttributeError:
        pass
    return f"CUDA driver error {rc}"


@functools.lru_cache(maxsize=1)
def detect() -> tuple:
    """``(available, reason)``: whether the driver sees a GPU; the reason says what was found or
    why not, in one line (it becomes a skip reason)."""
    lib = _load_driver()
    if isinstance(lib, str):
        return False, lib
    rc = lib.cuInit(0)
    if rc != 0:
        # CUDA_ERROR_NO_DEVICE (100) also covers CUDA_VISIBLE_DEVICES="" and a device the driver
        # cannot use; CUDA_ERROR_INSUFFICIENT_DRIVER (35) a driver older than the toolkit.
        return False, f"cuInit failed: {_error_name(lib, rc)}"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return False, f"cuDeviceGetCount failed: {_error_name(lib, rc)}"
    if count.value == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return False, "the NVIDIA driver reports no GPU" + (
            f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
    names = []
    for i in range(count.value):
        dev, buf = ctypes.c_int(0), ctypes.create_string_buffer(128)
        if lib.cuDeviceGet(ctypes.byref(dev), i) == 0 and lib.cuDeviceGetName(buf, 128, dev) == 0:
            names.append(buf.value.decode(errors="replace"))
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    v = version.value
    return True, (f"{count.value} GPU{'s' if count.value > 1 else ''}: {', '.join(names) or '?'} "
                  f"(driver CUDA {v // 1000}.{v % 1000 // 10})")


def available() -> bool:
    return detect()[0]


# CUdevice_attribute (cuda.h): the compute capability
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 75, 76


def describe(index: int | None = None) -> dict:
    """The GPU a run uses, for the environment record and the table header: ``available`` and
    ``reason`` (:func:`detect`), and with a GPU its ``name``, ``memory_gib`` (total),
    ``compute_capability``, ``cuda`` (the CUDA version the driver supports), ``driver`` (the
    driver's own version, from NVML or /proc; None where neither says), ``index`` (the CUDA
    ordinal, default the one --device selected) and ``count``.  Through the driver API, like
    :func:`detect`: nothing heavy is imported.  A query the driver refuses leaves its field None."""
    ok, reason = detect()
    out = {"available": ok, "reason": reason}
    if not ok:
        return out
    lib = _load_driver()
    if isinstance(lib, str):
        return {"available": False, "reason": lib}
    if index is None:
        index = selected()
    dev, count = ctypes.c_int(0), ctypes.c_int(0)
    name, total = ctypes.create_string_buffer(128), ctypes.c_size_t(0)
    major, minor, version = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    out.update({"index": index, "count": None, "name": None, "memory_gib": None,
                "compute_capability": None, "cuda": None, "driver": driver_version()})
    if lib.cuDeviceGetCount(ctypes.byref(count)) == 0:
        out["count"] = count.value
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        out["cuda"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
    if lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return out
    if lib.cuDeviceGetName(name, len(name), dev) == 0:
        out["name"] = name.value.decode(errors="replace")
    if lib.cuDeviceTotalMem_v2(ctypes.byref(total), dev) == 0:
        out["memory_gib"] = round(total.value / 2**30, 1)
    if (lib.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) == 0
            and lib.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                         dev) == 0):
        out["compute_capability"] = f"{major.value}.{minor.value}"
    return out


def driver_version() -> str | None:
    """The NVIDIA driver's version ("580.65.06"): NVML's answer where pynvml is installed, else
    the kernel module's line in /proc/driver/nvidia/version; None where neither says."""
    try:
        import pynvml
        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:       # no pynvml, or an NVML that cannot start: the kernel module's line
        pass
    try:
        with open("/proc/driver/nvidia/version") as f:
            import re
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", f.read())
            return m.group(1) if m else None
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def driver_cuda_version() -> int | None:
    """The CUDA version the driver supports, as CUDA encodes it (13000 = 13.0), or None."""
    lib = _load_driver()
    if isinstance(lib, str) or lib.cuInit(0) != 0:
        return None
    version = ctypes.c_int(0)
    return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def cupy_cuda_major() -> int | None:
    """The CUDA major version the installed CuPy wheel is built for (cupy-cuda13x -> 13), or None
    (no CuPy, or a source build whose version cannot be told from its name)."""
    import importlib.metadata as md
    import re
    for dist in md.distributions():
        m = re.fullmatch(r"cupy-cuda(\d+)x", (dist.metadata.get("Name") or "").lower())
        if m:
            return int(m.group(1))
    return None


def driver_mismatch(driver: int | None = None, cupy_major: int | None = None) -> str | None:
    """Why the installed CuPy cannot run on this driver (one line), or None.  A CUDA 13 CuPy on a
    driver that supports CUDA 12 fails on its first call; say so before any case runs."""
    driver = driver_cuda_version() if driver is None else driver
    cupy_major = cupy_cuda_major() if cupy_major is None else cupy_major
    if driver is None or cupy_major is None or driver // 1000 >= cupy_major:
        return None
    return (f"the installed cupy-cuda{cupy_major}x needs a driver for CUDA {cupy_major}; this driver "
            f"supports CUDA {driver // 1000}.{driver % 1000 // 10}: update the driver, or install "
            f"cupy-cuda{driver // 1000}x (scripts/setup picks the CuPy that matches the driver)")


def _free_memory_driver(device: int) -> tuple:
    """``(free, total)`` bytes through the driver: the primary context is retained for the call
    (creating it costs a few hundred MB of device memory, released again if nobody else holds it)."""
    lib = _load_driver()
    if isinstance(lib, str):
        raise Unsupported(lib)
    dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    for what, rc in (("cuInit", lambda: lib.cuInit(0)),
                     ("cuDeviceGet", lambda: lib.cuDeviceGet(ctypes.byref(dev), device)),
                     ("cuDevicePrimaryCtxRetain",
                      lambda: lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))):
        code = rc()
        if code != 0:
            raise Unsupported(f"{what} failed for GPU {device}: {_error_name(lib, code)}")
    try:
        code = lib.cuCtxPushCurrent_v2(ctx)
        if code != 0:
            raise Unsupported(f"cuCtxPushCurrent failed: {_error_name(lib, code)}")
        try:
            code = lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
            if code != 0:
                raise Unsupported(f"cuMemGetInfo failed: {_error_name(lib, code)}")
        finally:
            lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    finally:
        lib.cuDevicePrimaryCtxRelease_v2(dev)
    return free.value, total.value


def free_memory(device: int | None = None) -> tuple:
    """``(free, total)`` bytes on ``device`` (None: the ordinal --device cuda:K selected).  With CuPy installed, its view: the driver's free
    memory plus what CuPy's memory pool holds but does not use (a later CuPy allocation reuses it)."""
    ok, reason = detect()
    if not ok:
        raise Unsupported(reason)
    if device is None:
        device = selected()
    if "cupy" in sys.modules or importlib.util.find_spec("cupy") is not None:
        import cupy
        with cupy.cuda.Device(device):
            free, total = cupy.cuda.runtime.memGetInfo()
            free += cupy.get_default_memory_pool().free_bytes()
        return free, total
    return _free_memory_driver(device)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(bytes_needed: int, *, device: int | None = None, what: str = "this case") -> int:
    """Raise :class:`BadInput` (one line) when an estimate of device memory exceeds what is free.

    Returns the free bytes.  The estimate is the caller's (weights, activations, workspace); the
    check keeps a case that can never fit from ending in an out-of-memory error half-way through
    a sweep.  No GPU: :class:`Unsupported` with the reason from :func:`detect`.
    """
    if bytes_needed < 0:
        raise BadInput(f"bytes_needed={bytes_needed} must be >= 0")
    if device is None:
        device = selected()
    free, total = free_memory(device)
    if bytes_needed > free:
        raise BadInput(f"{what} needs about {_gib(bytes_needed)} of GPU memory but GPU {device} has "
                       f"{_gib(free)} free of {_gib(total)}; use a smaller B, T, H or fewer layers")
    return free


@contextlib.contextmanager
def cublas_math(xp, precision: str):
    """TF32 GEMMs in CuPy while the body runs, for ``tf32`` only.

    CuPy picks the cuBLAS compute type of its float32 matmul/dot from a per-dtype setting
    (``cupy._core._routines_linalg.set_compute_type``; ``CUPY_TF32=1`` sets the same default).
    Setting it to ``COMPUTE_TYPE_TF32`` makes CuPy call ``cublasGemmEx`` with
    ``CUBLAS_COMPUTE_32F_FAST_TF32``: the explicit route, which leaves the handle's math mode
    alone.  (CuPy 14's ``cupy_backends.cuda.libs.cublas`` exports only ``CUBLAS_DEFAULT_MATH`` and
    ``CUBLAS_TENSOR_OP_MATH`` among the math modes, so naming ``CUBLAS_TF32_TENSOR_OP_MATH`` there
    fails.)  fp32 keeps CuPy's default (no TF32 unless ``CUPY_TF32`` asks, as PyTorch with
    allow_tf32 off); the previous setting is restored, so other code in the process is unaffected.
    """
    if precision != "tf32" or getattr(xp, "__name__", "") != "cupy":
        yield
        return
    import numpy
    linalg = tf32_switch(xp)
    old = linalg.get_compute_type(numpy.float32)
    linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        linalg.set_compute_type(numpy.float32, old)


def tf32_switch(xp):
    """CuPy's module that holds the GEMM compute type per dtype (a private module, so its absence
    is said in one line rather than as an AttributeError deep inside a case)."""
    try:
        from cupy._core import _routines_linalg as linalg
    except ImportError as e:
        raise Unsupported(f"tf32 needs cupy._core._routines_linalg (CuPy >= 8): {e}") from None
    missing = [n for n in ("get_compute_type", "set_compute_type", "COMPUTE_TYPE_TF32")
               if not hasattr(linalg, n)]
    if missing:
        raise Unsupported(f"tf32: this CuPy ({getattr(xp, '__version__', '?')}) lacks "
                          f"{', '.join(missing)} in cupy._core._routines_linalg")
    return linalg
