"""The environment a measurement belongs to: CPU, GPU, driver, libraries, threads.

Library versions come from package metadata, so nothing heavy (torch, tensorflow) is imported
just to print a version.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata as md
import json
import os
import platform
import sys

from profiles import nvtx

# distribution name -> label; base dependencies first, then optional ones
LIBRARIES = (
    ("numpy", "numpy"), ("numba", "numba"), ("rich", "rich"), ("nvtx", "nvtx"),
    ("threadpoolctl", "threadpoolctl"),
    ("cupy-cuda13x", "cupy"), ("cupy-cuda12x", "cupy"), ("pycuda", "pycuda"),
    ("numba-cuda", "numba-cuda"), ("cupti-python", "cupti-python"),
    ("nvidia-cudnn-cu13", "cudnn (wheel)"), ("nvidia-cudnn-cu12", "cudnn (wheel)"),
    ("nvidia-cudnn-frontend", "cudnn-frontend"), ("nvidia-ml-py", "nvidia-ml-py"),
    ("torch", "torch"), ("tensorflow", "tensorflow"), ("tensorflow-cpu", "tensorflow"),
    ("keras", "keras"), ("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"),
    ("mxnet", "mxnet"), ("matplotlib", "matplotlib"),
)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def libraries() -> dict:
    out = {}
    for dist, label in LIBRARIES:
        v = _version(dist)
        if v and label not in out:
            out[label] = v
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas() -> list:
    try:
        from threadpoolctl import threadpool_info
        import numpy  # noqa: F401  (loads NumPy's BLAS so threadpoolctl can see it)
        return [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for p in threadpool_info() if p.get("user_api") == "blas"]
    except Exception as e:  # threadpoolctl cannot inspect this platform
        return [{"error": str(e)}]


def gpu() -> dict:
    """GPU facts through the driver API (no CUDA toolkit or Python GPU package needed)."""
    from kernels import gpu as kgpu
    if hasattr(kgpu, "describe"):
        return kgpu.describe()
    ok, reason = kgpu.detect()
    return {"available": ok, "reason": reason}


def cudnn() -> dict:
    """cuDNN's version and where it was found (it loads without a GPU), or why it was not."""
    from kernels import cudnn as kcudnn
    return kcudnn.describe()


def collect(cheap: bool = False) -> dict:
    """Everything that identifies where a measurement was taken."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "libraries": libraries(),
        "blas": blas(),
        "gpu": gpu(),
        "cudnn": cudnn(),
        "env_vars": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "NUMBA_NUM_THREADS",
                                                 "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                 "OPENBLAS_CORETYPE", "CUDA_VISIBLE_DEVICES")
                     if k in os.environ},
    }
    if not cheap:
        env["nvtx"] = {"available": nvtx.available(), "level": nvtx.level(), "requested": nvtx.requested(),
                       "cost_per_range_s": nvtx.cost_per_range()}
    env["env_id"] = env_id(env)
    return env


def env_id(env: dict) -> str:
    """A short hash of what makes results comparable: hardware and library versions (not the date)."""
    key = {k: env.get(k) for k in ("cpu", "cores", "python", "libraries")}
    key["gpu"] = {k: env.get("gpu", {}).get(k) for k in ("name", "driver")}
    key["cudnn"] = env.get("cudnn", {}).get("version")
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def argv() -> str:
    return " ".join(sys.argv)
