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

from kernels import nvtx

from .peaks import FORCING_VARIABLES

# distribution name -> label; base dependencies first, then optional ones
LIBRARIES = (
    ("numpy", "numpy"), ("numba", "numba"), ("rich", "rich"), ("nvtx", "nvtx"),
    ("threadpoolctl", "threadpoolctl"),
    ("cupy-cuda13x", "cupy"), ("cupy-cuda12x", "cupy"), ("pycuda", "pycuda"),
    ("numba-cuda", "numba-cuda"), ("cupti-python", "cupti-python"),
    ("nvidia-cudnn-cu13", "cudnn (wheel)"), ("nvidia-cudnn-cu12", "cudnn (wheel)"),
    ("nvidia-cudnn-frontend", "cudnn-frontend"), ("nvidia-ml-py", "nvidia-ml-py"),
    ("onednn-cpu-gomp", "onednn (wheel)"), ("onednn", "onednn (wheel)"),
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


# framework -> the distributions that provide it (the first one installed names its version)
FRAMEWORK_DISTS = {"torch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
                   "mxnet": ("mxnet",), "chainer": ("chainer",)}


def frameworks() -> dict:
    """Each framework of the comparison: where its worker would run and its version, or why it is
    not there (not installed, or not installable on a supported Python at all).  MXNet and Chainer
    are looked up in their NumPy-1 interpreter, and TensorFlow in .venv-tf where a GPU machine has
    it, by package metadata (nothing is imported)."""
    from microbench.frameworks import default_python
    from microbench.frameworks import FRAMEWORKS, NOT_INSTALLABLE, NUMPY1
    out = {}
    py1 = default_python(NUMPY1[0])
    found1 = _versions_in(py1, ["numpy", *(d for fw in NUMPY1 for d in FRAMEWORK_DISTS[fw])]) if py1 else {}
    for fw in FRAMEWORKS:
        if fw in NUMPY1:
            if not py1:
                out[fw] = {"status": "missing", "reason": "no NumPy-1 interpreter (.venv-mxnet or "
                           "$MICROBENCH_MXNET_VENV): run scripts/setup-mxnet"}
                continue
            v = next((found1[d] for d in FRAMEWORK_DISTS[fw] if found1.get(d)), None)
            out[fw] = ({"status": "found", "version": v, "python": py1, "numpy": found1.get("numpy")} if v else
                       {"status": "missing", "reason": f"not installed in {py1}: run scripts/setup-mxnet"})
            continue
        own = default_python(fw)           # TensorFlow's CUDA build lives in .venv-tf (GPU machines)
        if own:
            found = _versions_in(own, FRAMEWORK_DISTS[fw])
            v = next((found[d] for d in FRAMEWORK_DISTS[fw] if found.get(d)), None)
            out[fw] = ({"status": "found", "version": v, "python": own} if v else
                       {"status": "missing", "reason": f"not installed in {own}: run scripts/setup-tensorflow"})
            continue
        v = next((_version(d) for d in FRAMEWORK_DISTS[fw] if _version(d)), None)
        out[fw] = ({"status": "found", "version": v, "python": sys.executable} if v else
                   {"status": "missing", "reason": "not installed here: pip install -e '.[frameworks]'"})
    for fw, why in NOT_INSTALLABLE.items():
        out[fw] = {"status": "not supported", "reason": why}
    return out


def _versions_in(python: str, dists) -> dict:
    """{distribution: version or None} as another interpreter's package metadata says ({} when it
    cannot be asked)."""
    import subprocess
    script = ("import importlib.metadata as m, json, sys\n"
              "def v(d):\n    try: return m.version(d)\n    except m.PackageNotFoundError: return None\n"
              "print(json.dumps({d: v(d) for d in sys.argv[1:]}))")
    try:
        r = subprocess.run([python, "-c", script, *dists], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


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
    """GPU facts through the driver API (no CUDA toolkit or Python GPU package needed): name,
    memory, compute capability, driver and CUDA versions (kernels.gpu.describe)."""
    from kernels import gpu as kgpu
    return kgpu.describe()


def cudnn() -> dict:
    """cuDNN's version and where it was found (it loads without a GPU), or why it was not."""
    from kernels import cudnn as kcudnn
    return kcudnn.describe()


def onednn() -> dict:
    """oneDNN's version, effective ISA and threading runtime (kernels.onednn), or why not found."""
    from kernels import onednn as konednn
    return konednn.describe()


def load_avg() -> list | None:
    """The 1, 5 and 15-minute load averages as the run starts (other processes' share of the CPUs)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy_warning(cores: int | None) -> str:
    """A sentence when the machine is busier than its cores (read now, at the end of a run)."""
    now = load_avg()
    if not now or not cores or now[0] <= cores + 0.5:
        return ""
    return (f"load average {now[0]:.1f} on {cores} core(s) during this run: other processes "
            "competed for the CPUs, so times are inflated, and thread pools that spin-wait "
            "(the OpenMP pools of PyTorch and TensorFlow by default) can be slowed many-fold; each "
            "row whose threads waited for a core is marked contended (!); compare rows of a quiet run")


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
        "memory_gib": memory_gib(),
        "load_avg": load_avg(),
        "cpu_clock": cpu_clock(),
        "microbench": source(),
        "command": argv(),
        "libraries": libraries(),
        "blas": blas(),
        "gpu": gpu(),
        "cudnn": cudnn(),
        "onednn": onednn(),
        "env_vars": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "NUMBA_NUM_THREADS",
                                                 "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                 "CUDA_VISIBLE_DEVICES", "MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY")
                                              + FORCING_VARIABLES
                     if k in os.environ},
    }
    if not cheap:
        env["mxnet_worker"] = mxnet_worker()
        env["nvtx"] = {"available": nvtx.available(), "level": nvtx.level(), "requested": nvtx.requested(),
                       "cost_per_range_s": nvtx.cost_per_range()}
        env["frameworks"] = frameworks()
    env["env_id"] = env_id(env)
    return env


def env_id(env: dict) -> str:
    """A short hash of what makes results comparable: hardware and library versions (not the date)."""
    key = {k: env.get(k) for k in ("cpu", "cores", "python", "libraries")}
    key["gpu"] = {k: (env.get("gpu") or {}).get(k) for k in ("name", "memory_gib", "driver", "cuda")}
    key["cudnn"] = env.get("cudnn", {}).get("version")
    od = env.get("onednn") or {}
    if od.get("available"):    # the ISA oneDNN dispatches to decides its implementations
        key["onednn"] = [od.get("version"), od.get("isa")]
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def argv() -> str:
    """The command line of this run, as a shell would take it back."""
    import shlex
    from . import args as margs
    if margs.COMMAND_LINE is not None:
        return shlex.join(["python", "-m", "microbench", *margs.COMMAND_LINE])
    return shlex.join(sys.argv)


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source() -> dict:
    """The package version, and the git commit of the checkout it runs from (with whether the
    tracked files differ from it), so a result can be traced to the code that produced it."""
    import subprocess
    from . import __version__
    out = {"version": __version__, "commit": None, "dirty": None, "path": REPO_ROOT}
    if not os.path.exists(os.path.join(REPO_ROOT, ".git")):
        return out            # an installed copy: the version is all there is
    try:
        git = lambda *a: subprocess.run(["git", "-C", REPO_ROOT, *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=10)
        head = git("rev-parse", "HEAD")
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            status = git("status", "--porcelain", "--untracked-files=no")
            out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def cpu_clock() -> dict:
    """Current and maximum CPU clock in MHz, where the kernel says (cpufreq may be absent in VMs)."""
    out = {"current_mhz": None, "max_mhz": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    out["current_mhz"] = round(float(line.split(":", 1)[1]))
                    break
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            out["max_mhz"] = round(int(f.read()) / 1000)
    except (OSError, ValueError):
        pass
    return out


def mxnet_worker() -> dict:
    """The interpreter MXNet rows run under (its own venv: MXNet needs NumPy 1) and its MXNet."""
    import subprocess
    from .frameworks import default_python
    py = default_python("mxnet")
    if py is None:
        return {"python": None, "mxnet": _version("mxnet"), "note": "no .venv-mxnet (scripts/setup-mxnet)"}
    try:
        r = subprocess.run([py, "-c", "import importlib.metadata as m, platform; "
                                      "print(platform.python_version(), m.version('mxnet'), m.version('numpy'))"],
                           capture_output=True, text=True, timeout=30)
        pyv, mx, npv = r.stdout.split() if r.returncode == 0 else (None, None, None)
    except (OSError, subprocess.SubprocessError, ValueError):
        pyv = mx = npv = None
    return {"python": py, "python_version": pyv, "mxnet": mx, "numpy": npv}
