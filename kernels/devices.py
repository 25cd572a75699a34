"""Which GPU a run uses: ``--device cuda:K``, and the same physical device for NVML and workers.

Three numberings of the same GPUs exist and disagree:

- the **CUDA ordinal** K (what ``cuda:K``, CuPy's ``Device(K)`` and torch's ``cuda:K`` mean):
  counted among the GPUs ``CUDA_VISIBLE_DEVICES`` lets through, in ``CUDA_DEVICE_ORDER``
  (fastest first unless that says ``PCI_BUS_ID``);
- the **NVML index**: every GPU of the machine in PCI order, whatever ``CUDA_VISIBLE_DEVICES`` says;
- a worker process's ordinals, counted again among what its own environment lets through.

So the selected ordinal is carried across as the device's identity, never as a number: NVML is
asked for the handle of the ordinal's PCI bus id (``cuDeviceGetPCIBusId`` ->
``nvmlDeviceGetHandleByPciBusId``), and a framework worker gets ``CUDA_VISIBLE_DEVICES=GPU-<uuid>``
of the ordinal (``cuDeviceGetUuid``), so its ``cuda:0`` is that device.

:func:`select` validates K against the devices present (one line naming the allowed ones; on a
machine without a GPU, one line saying so) and makes CuPy and torch (where already imported or
importable) use it.  Everything here talks to the driver through ctypes (:mod:`kernels.gpu`), so
it imports nothing heavy.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys

from . import gpu as kgpu
from .errors import BadInput, Unsupported

KINDS = ("auto", "cpu", "cuda")
_PATTERN = re.compile(r"^cuda:(\d+)$")



def parse(text: str) -> tuple:
    """``(kind, index)`` of a --device value: auto, cpu, cuda or cuda:K (index None unless given).

    Only the syntax is checked here; :func:`select` checks K against the devices present."""
    t = str(text).strip().lower()
    if t in KINDS:
        return t, None
    m = _PATTERN.match(t)
    if m:
        return "cuda", int(m.group(1))
    raise BadInput(f"--device {text!r} is unknown; allowed: auto, cpu, cuda, cuda:K (K a GPU ordinal, "
                   "0 for the first)")


def argparse_type(text: str) -> str:
    """``type=`` for argparse: the value normalised (``CUDA:1`` -> ``cuda:1``), syntax checked."""
    import argparse
    try:
        kind, index = parse(text)
    except BadInput as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--device ")) from None
    return kind if index is None else f"cuda:{index}"


def _driver():
    lib = kgpu._load_driver()
    if isinstance(lib, str):
        raise Unsupported(lib)
    return lib


def count() -> int:
    """GPUs the driver lets this process see (0 without a driver or GPU)."""
    ok, _ = kgpu.detect()
    if not ok:
        return 0
    lib, n = _driver(), ctypes.c_int(0)
    return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def select(index: int | None, *, what: str = "--device") -> int:
    """Make CUDA ordinal ``index`` (None: 0) this process's GPU; BadInput when it is not there."""
    k = 0 if index is None else int(index)
    ok, reason = kgpu.detect()
    if not ok:
        raise BadInput(f"{what} cuda:{k}: no CUDA GPU found ({reason}); allowed here: cpu, auto")
    n = count()
    if not 0 <= k < n:
        allowed = ", ".join(f"cuda:{i}" for i in range(n))
        raise BadInput(f"{what} cuda:{k}: this machine shows {n} GPU{'s' if n != 1 else ''}; allowed: {allowed}"
                       + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
                          if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
    kgpu.set_selected(k)
    _use(k)
    return k


def _use(k: int) -> None:
    """Point CuPy's and torch's current device at ordinal k (their allocations follow it)."""
    if "cupy" in sys.modules or importlib.util.find_spec("cupy") is not None:
        try:
            import cupy
            cupy.cuda.Device(k).use()
        except Exception as e:  # a CuPy that cannot talk to this driver: its cases skip with the reason
            print(f"microbench: note: CuPy cannot use cuda:{k} ({e})", file=sys.stderr)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.set_device(k)


def selected() -> int:
    return kgpu.selected()


def name(index: int | None = None) -> str | None:
    """The GPU's name for an ordinal (None if the driver cannot say)."""
    try:
        lib = _driver()
        dev, buf = ctypes.c_int(0), ctypes.create_string_buffer(128)
        k = kgpu.selected() if index is None else index
        if lib.cuInit(0) == 0 and lib.cuDeviceGet(ctypes.byref(dev), k) == 0 \
                and lib.cuDeviceGetName(buf, 128, dev) == 0:
            return buf.value.decode(errors="replace")
    except Unsupported:
        pass
    return None


def pci_bus_id(index: int | None = None, *, lib=None) -> str:
    """``domain:bus:device.function`` of a CUDA ordinal, as the driver reports it (NVML takes it)."""
    lib = lib or _driver()
    k = kgpu.selected() if index is None else index
    dev, buf = ctypes.c_int(0), ctypes.create_string_buffer(32)
    for what, call in (("cuInit", lambda: lib.cuInit(0)),
                       ("cuDeviceGet", lambda: lib.cuDeviceGet(ctypes.byref(dev), k)),
                       ("cuDeviceGetPCIBusId", lambda: lib.cuDeviceGetPCIBusId(buf, 32, dev))):
        rc = call()
        if rc != 0:
            raise Unsupported(f"{what} failed for cuda:{k}: {kgpu._error_name(lib, rc)}")
    return buf.value.decode()


def uuid(index: int | None = None, *, lib=None) -> str:
    """``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`` of a CUDA ordinal (the form CUDA_VISIBLE_DEVICES
    and nvidia-smi use)."""
    lib = lib or _driver()
    k = kgpu.selected() if index is None else index
    dev, raw = ctypes.c_int(0), ctypes.create_string_buffer(16)
    for what, call in (("cuInit", lambda: lib.cuInit(0)),
                       ("cuDeviceGet", lambda: lib.cuDeviceGet(ctypes.byref(dev), k)),
                       ("cuDeviceGetUuid", lambda: lib.cuDeviceGetUuid(raw, dev))):
        rc = call()
        if rc != 0:
            raise Unsupported(f"{what} failed for cuda:{k}: {kgpu._error_name(lib, rc)}")
    h = raw.raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def nvml_handle(nv, index: int | None = None, *, lib=None):
    """The NVML handle of the physical GPU behind a CUDA ordinal (by PCI bus id, never by index)."""
    bus = pci_bus_id(index, lib=lib)
    get = getattr(nv, "nvmlDeviceGetHandleByPciBusId_v2", None) or nv.nvmlDeviceGetHandleByPciBusId
    return get(bus)


def worker_env(index: int | None = None) -> dict:
    """Environment for a child process that must use the same GPU as its ``cuda:0``."""
    try:
        return {"CUDA_VISIBLE_DEVICES": uuid(index)}
    except Unsupported:
        return {}
