"""Measured ceilings, so tables can show a fraction of what this machine actually reaches.

The compute ceiling (the *roof*) is the fastest large square GEMM this process can run: oneDNN's
matmul (the package loads oneDNN anyway; it dispatches to the best ISA the CPU has) beside NumPy's
BLAS, each timed a few times, the faster one named with its kernel and ISA (:func:`cpu_roof`).
NumPy's BLAS alone is not a roof: an ``OPENBLAS_CORETYPE`` that forces older kernels (kept on some
machines because old OpenBLAS builds crashed without it) halves it on an AVX-512 CPU, and 68 of
132 points once sat above such a "roof" unmarked.  Each repeat is taken with the run-queue wait of
this process's threads (:mod:`microbench.contention`): the roof is measured quiet, or, when every
repeat waited for a core, marked ``lower_bound``.  A record with GFLOP/s carries the roof of its
device, precision and thread count and ``above_roof`` (:func:`attach`); tables and figures flag
a point above it (Winograd's and FFT's rates are "effective": the direct convolution's FLOPs over
the time, which can legitimately exceed a GEMM roof).

The memory ceiling is a streaming add (``a = b + c``, STREAM's "add" kernel) over arrays well beyond
the last-level cache, counted as 3 arrays of traffic.  On a GPU both come from CuPy (a cuBLAS GEMM
and the same add on the device; written for CuPy, run only where a GPU is).  :func:`roofs`
returns both with what was run and when, for the roofline.  :func:`forced_kernels` says which
environment variables force a weaker kernel than the CPU has (``env`` prints them and what they
cost NumPy's GEMM, measured live).
"""
from __future__ import annotations

import functools
import os
import time

import numpy as np

GEMM_N = 1024           # the roof's square GEMM: large enough for every kernel to reach its peak
SMOKE_GEMM_N = 256      # under MICROBENCH_SMOKE: the roof's code runs, its number is no measurement


def _gemm_n(n: int | None) -> int:
    from . import smoke
    return n if n is not None else SMOKE_GEMM_N if smoke.active() else GEMM_N


def _rate(n: int, seconds: float) -> float:
    return 2 * n ** 3 / seconds / 1e9


def _timed_repeats(call, n: int, repeats: int, budget_s: float = 1.0) -> tuple:
    """(best GFLOP/s over all repeats, best over the quiet ones or None): a repeat is quiet when
    this process's threads did not wait for a core during it (microbench.contention)."""
    from .contention import WAIT_SHARE, thread_sched
    call()                                  # warm-up: threads started, pages touched, packing done
    best = best_quiet = 0.0
    start = time.perf_counter()
    for i in range(repeats):
        before = thread_sched()
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        after = thread_sched()
        rate = _rate(n, dt)
        best = max(best, rate)
        if before is not None and after is not None:
            run = sum(after[t][0] - before.get(t, (0, 0))[0] for t in after)
            wait = sum(after[t][1] - before.get(t, (0, 0))[1] for t in after)
            if run + wait > 0 and wait / (run + wait) < WAIT_SHARE:
                best_quiet = max(best_quiet, rate)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return best, best_quiet or None


def numpy_gemm(dtype: str = "float32", n: int | None = None, repeats: int = 4) -> dict:
    """NumPy's BLAS on an n^3 GEMM: {"gflops", "quiet", "source"}."""
    n = _gemm_n(n)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    best, quiet = _timed_repeats(lambda: np.matmul(a, b, out=out), n, repeats)
    return {"gflops": quiet or best, "quiet": quiet is not None, "source": f"NumPy BLAS {dtype} {n}^3 GEMM"
            + (f" ({_blas_kernels()})" if _blas_kernels() else "")}


def _blas_kernels() -> str:
    """'OpenBLAS 0.3.30, SkylakeX kernels': what NumPy's BLAS runs (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
        for p in threadpool_info():
            if p.get("user_api") == "blas":
                arch = f", {p['architecture']} kernels" if p.get("architecture") else ""
                return f"{p.get('internal_api')} {p.get('version')}{arch}"
    except Exception:     # threadpoolctl cannot inspect this platform: the name stays short
        pass
    return ""


def onednn_gemm(n: int | None = None, repeats: int = 6) -> dict | None:
    """oneDNN's fp32 matmul (weights packed once, kernels.onednn.matmul) on an n^3 GEMM, or None
    where oneDNN is not installed."""
    n = _gemm_n(n)
    from kernels.onednn import lib as dnnl
    if not dnnl.available()[0]:
        return None
    from kernels.onednn.matmul import PackedMatmul
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    with PackedMatmul(rng.standard_normal((n, n)).astype(np.float32), m=n) as mm:
        best, quiet = _timed_repeats(lambda: mm(a, out), n, repeats)
        impl = mm.impl
    lib = dnnl.load()
    return {"gflops": quiet or best, "quiet": quiet is not None,
            "source": f"oneDNN {lib.version} matmul fp32 {n}^3 ({impl}; ISA {lib.isa})"}


_ROOFS: dict = {}      # (device, precision, threads) -> roof dict, or None with no roof there


def cpu_roof(precision: str = "fp32", threads: int | None = None) -> dict | None:
    """The CPU roof of a precision at a thread count (None: the libraries' defaults): the faster
    of oneDNN's matmul (fp32) and NumPy's BLAS (fp32, fp64), measured once per process.  None for
    a precision neither computes (bf16, fp16: no roof, no % peak)."""
    key = ("cpu", precision, threads)
    if key in _ROOFS:
        return _ROOFS[key]
    from . import threads as mthreads
    dtype = {"fp32": "float32", "fp64": "float64"}.get(precision)
    found = []
    if dtype is not None:
        with mthreads.limit(threads):
            found.append(numpy_gemm(dtype))
            if precision == "fp32":
                try:
                    od = onednn_gemm()
                except Exception as e:   # a broken oneDNN leaves NumPy's roof, and says why
                    od = {"gflops": 0.0, "quiet": False, "source": f"oneDNN matmul failed: {e}"}
                if od is not None:
                    found.append(od)
    if not found:
        _ROOFS[key] = None
        return None
    best = max(found, key=lambda f: f["gflops"])
    thr = f"{threads} thread{'s' * (threads != 1)}" if threads else "default threads"
    from . import smoke
    roof = {"gflops": round(best["gflops"], 2),
            "source": f"{smoke.TITLE_MARK if smoke.active() else ''}{best['source']}, {thr}",
            "lower_bound": not best["quiet"] or smoke.active(), "threads": threads,
            "measured": [{"source": f["source"], "gflops": round(f["gflops"], 2), "quiet": f["quiet"]}
                         for f in found]}
    if roof["lower_bound"]:
        roof["why"] = ("a smoke run's small GEMM, not a measurement" if smoke.active() else
                       "every repeat of the GEMM waited for a core (other processes held the CPUs): "
                       "the roof is a lower bound of this machine's")
    _ROOFS[key] = roof
    return roof


def gpu_roof(precision: str = "fp32") -> dict | None:  # pragma: no cover - GPU
    """cuBLAS's fp32 GEMM as the roof of fp32 GPU rows (tensor-core precisions have none here)."""
    key = ("cuda", precision, None)
    if key not in _ROOFS:
        _ROOFS[key] = None
        if precision == "fp32":
            n = 8192
            _ROOFS[key] = {"gflops": round(gpu_gemm_gflops(n), 2), "source": f"cuBLAS fp32 {n}^3 GEMM (CuPy)",
                           "lower_bound": False, "threads": None}
    return _ROOFS[key]


def gpu_gemm_gflops(n: int = 8192, repeats: int = 10) -> float:  # pragma: no cover - GPU
    """cuBLAS's fp32 n^3 GEMM alone (CUDA events), its buffers handed back to the device before
    the cases run (CuPy's pool would otherwise keep them from the cases)."""
    import cupy as cp
    a = cp.ones((n, n), cp.float32)
    out = cp.empty_like(a)
    try:
        seconds = _best_gpu(lambda: cp.matmul(a, a, out=out), repeats)
    finally:
        a = out = None          # the pool frees only blocks nothing holds
        cp.get_default_memory_pool().free_all_blocks()
    return 2 * n ** 3 / seconds / 1e9


def _best_gpu(fn, repeats: int) -> float:  # pragma: no cover - GPU
    """The fastest of ``repeats`` calls of ``fn`` on the current stream, by CUDA events."""
    import cupy as cp
    fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    out = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        out = min(out, cp.cuda.get_elapsed_time(start, end) / 1e3)
    return out


def measure_for(cases) -> list:
    """Measure the roof of every (device, precision, threads) the cases run at, before they run
    (the records then carry it); returns a note for each roof that could not be measured."""
    notes = []
    for device, precision, threads in dict.fromkeys((c.device, c.precision, c.threads) for c in cases):
        try:
            if device == "cpu":
                cpu_roof(precision, threads)
            elif device == "cuda":
                gpu_roof(precision)
        except Exception as e:   # a missing GPU library: those records have no roof, and say so
            _ROOFS[(device, precision, threads if device == "cpu" else None)] = None
            notes.append(f"no {device} {precision} roof measured ({type(e).__name__}: {e})")
    return notes


def known(device: str, precision: str, threads: int | None) -> dict | None:
    """The roof already measured for these, or None (nothing is measured here)."""
    return _ROOFS.get((device, precision, threads if device == "cpu" else None))


EFFECTIVE_FLOPS = "effective"


def attach(rec: dict, device: str, precision: str, threads: int | None) -> None:
    """Give a record with GFLOP/s its roof and ``above_roof`` (the contract of docs/results.md)."""
    gf = (rec.get("derived") or {}).get("gflops")
    roof = known(device, precision, threads)
    if not gf or roof is None:
        return
    rec["roof"] = {k: roof[k] for k in ("gflops", "source", "lower_bound")}
    rec["above_roof"] = bool(gf > roof["gflops"])


def flops_kind(rec: dict) -> str | None:
    """"effective" for a convolution whose algorithm multiplies less than the direct one (Winograd,
    FFT: by variant, cuDNN algorithm or oneDNN implementation), whose GFLOP/s count the direct
    convolution's FLOPs; None otherwise."""
    if rec.get("op") != "conv":
        return None
    info = rec.get("info") if isinstance(rec.get("info"), dict) else {}
    text = " ".join(str(v) for v in (rec.get("variant"), info.get("algo"), info.get("impl"))).lower()
    return EFFECTIVE_FLOPS if ("wino" in text or "fft" in text) else None


def above_roof(rec: dict) -> bool:
    return bool(rec.get("above_roof"))


def effective(rec: dict) -> bool:
    """GFLOP/s counted with the direct convolution's FLOPs (Winograd, FFT): may exceed the roof."""
    return ((rec.get("info") or {}).get("flops_kind") == EFFECTIVE_FLOPS) if isinstance(rec.get("info"), dict) else False


def cpu_gemm_gflops(dtype: str = "float32", n: int | None = None, repeats: int = 5) -> float:
    """NumPy's BLAS alone (what ``env`` compares with and without a forcing variable)."""
    return numpy_gemm(dtype, n, repeats)["gflops"]


@functools.lru_cache(maxsize=None)
def cpu_stream_gbps(mib: int = 96, repeats: int = 5) -> float:
    """GB/s of ``np.add(b, c, out=a)`` over float32 arrays of ``mib`` MiB each (3 arrays moved)."""
    n = mib * 2**20 // 4
    b, c = np.ones(n, np.float32), np.ones(n, np.float32)
    a = np.empty(n, np.float32)
    np.add(b, c, out=a)               # pages touched
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.add(b, c, out=a)
        best = min(best, time.perf_counter() - t0)
    return 3 * n * 4 / best / 1e9


def gpu_roofs(n: int = 8192, mib: int = 1024, repeats: int = 10) -> dict:  # pragma: no cover - GPU
    """cuBLAS fp32 GEMM GFLOP/s and device streaming-add GB/s, timed with CUDA events."""
    import cupy as cp
    a = cp.ones((n, n), cp.float32)
    x = cp.ones(mib * 2**20 // 4, cp.float32)
    y, z = cp.ones_like(x), cp.empty_like(x)
    gemm = _best_gpu(lambda: a @ a, repeats)
    add = _best_gpu(lambda: cp.add(x, y, out=z), repeats)
    return {"gflops": 2 * n ** 3 / gemm / 1e9, "gbps": 3 * x.nbytes / add / 1e9,
            "gemm": f"cuBLAS fp32 {n}^3 GEMM", "stream": f"streaming add, 3 x {mib} MiB"}


def roofs(device: str = "cpu", dtype: str = "float32") -> dict:
    """The machine's measured ceilings for the roofline, with what was run and when."""
    import datetime
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if device == "cuda":
        out = gpu_roofs()
        out.update(where="this GPU", date=date)
        return out
    precision = {"float32": "fp32", "float64": "fp64"}.get(dtype, dtype)
    roof = cpu_roof(precision) or {}
    gemm = roof.get("source", "no GEMM roof") + (" (a lower bound: measured busy)" if roof.get("lower_bound") else "")
    return {"gflops": roof.get("gflops"), "gbps": cpu_stream_gbps(), "date": date,
            "where": "this machine's CPU", "gemm": gemm, "lower_bound": bool(roof.get("lower_bound")),
            "stream": "NumPy streaming add, 3 x 96 MiB"}


# -- variables that force a weaker kernel than the CPU has ------------------------------------------

ISA_LEVELS = ("sse", "avx", "avx2", "avx512", "amx")
ISA_NAMES = {"sse": "SSE", "avx": "AVX", "avx2": "AVX2", "avx512": "AVX-512", "amx": "AMX"}

# OpenBLAS core types (OPENBLAS_CORETYPE, threadpoolctl's "architecture") by the widest ISA their
# kernels use; a name not listed counts as SSE-era.
_OPENBLAS_CORES = {"avx512": ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5"),
                   "avx2": ("haswell", "zen", "excavator", "skylake", "alderlake"),
                   "avx": ("sandybridge", "bulldozer", "piledriver", "steamroller")}


def _openblas_level(core: str) -> str:
    c = core.strip().lower()
    return next((lvl for lvl, names in _OPENBLAS_CORES.items() if c in names), "sse")


def _mkl_level(value: str) -> str | None:
    """MKL_ENABLE_INSTRUCTIONS or MKL_CBWR ('AVX2', 'AVX512_E1', 'COMPATIBLE', 'AVX2,STRICT') ->
    level; None for AUTO (no limit)."""
    v = value.split(",")[0].strip().upper()
    if not v or v == "AUTO":
        return None
    if v.startswith("AVX512") or v.startswith("AVX10"):
        return "avx512"
    if v.startswith("AVX2"):
        return "avx2"
    if v.startswith("AVX"):
        return "avx"
    return "sse"        # COMPATIBLE, SSE2, SSSE3, SSE4_1, SSE4_2


def _onednn_level(value: str) -> str | None:
    """ONEDNN_MAX_CPU_ISA ('AVX2', 'AVX512_CORE_BF16', 'ALL') -> level; None: no limit."""
    v = value.strip().upper()
    if not v or v in ("ALL", "DEFAULT"):
        return None
    if "AMX" in v:
        return "amx"
    if v.startswith("AVX512") or v.startswith("AVX10"):
        return "avx512"
    if v.startswith("AVX2"):
        return "avx2"
    if v.startswith("AVX"):
        return "avx"
    return "sse"


def cpu_level(flags: set | None = None) -> str:
    """The widest of ISA_LEVELS this CPU has (/proc/cpuinfo flags; 'sse' where unknown)."""
    if flags is None:
        flags = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith(("flags", "Features")):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    for level, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")):
        if flag in flags:
            return level
    return "sse"


FORCING_VARIABLES = ("OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA",
                     "DNNL_MAX_CPU_ISA")
_AFFECTS = {"OPENBLAS_CORETYPE": "NumPy's BLAS (OpenBLAS): the numpy backend, naive variants and BLAS "
                                 "GEMMs",
            "MKL_ENABLE_INSTRUCTIONS": "MKL (PyTorch's CPU BLAS; NumPy's where it is MKL-built)",
            "MKL_CBWR": "MKL (PyTorch's CPU BLAS; NumPy's where it is MKL-built)",
            "ONEDNN_MAX_CPU_ISA": "oneDNN: our onednn rows and the frameworks' oneDNN paths",
            "DNNL_MAX_CPU_ISA": "oneDNN: our onednn rows and the frameworks' oneDNN paths"}


def forced_kernels(environ=None, level: str | None = None, blas_arch: str | None = None) -> list:
    """Each variable (or OpenBLAS build) that makes a library run a weaker kernel than the CPU has:
    {"variable", "value", "forces", "cpu_has", "affects", "numpy"} ("numpy": whether NumPy's GEMM
    pays it).  ``blas_arch``: the core type OpenBLAS reports (threadpoolctl), '' when not OpenBLAS."""
    environ = os.environ if environ is None else environ
    level = level or cpu_level()
    if blas_arch is None:
        kernels = _blas_kernels()
        blas_arch = kernels.split(", ")[-1].replace(" kernels", "") if "kernels" in kernels else ""
    rank = ISA_LEVELS.index
    out = []
    for var in FORCING_VARIABLES:
        value = environ.get(var)
        if not value:
            continue
        got = {"OPENBLAS_CORETYPE": _openblas_level, "MKL_ENABLE_INSTRUCTIONS": _mkl_level,
               "MKL_CBWR": _mkl_level}.get(var, _onednn_level)(value)
        if got is not None and rank(got) < rank(level):
            out.append({"variable": var, "value": value, "forces": got, "cpu_has": level,
                        "affects": _AFFECTS[var], "numpy": var == "OPENBLAS_CORETYPE"})
    if blas_arch and "OPENBLAS_CORETYPE" not in environ:
        got = _openblas_level(blas_arch)
        if rank(got) < rank(level):   # an OpenBLAS too old to know this CPU picks older kernels itself
            out.append({"variable": None, "value": blas_arch, "forces": got, "cpu_has": level,
                        "affects": _AFFECTS["OPENBLAS_CORETYPE"], "numpy": True})
    return out


def describe_forced(f: dict) -> str:
    what = f"{f['variable']}={f['value']}" if f["variable"] else f"this OpenBLAS picks its {f['value']} kernels itself"
    return (f"{what}: {ISA_NAMES[f['forces']]} kernels on a CPU with {ISA_NAMES[f['cpu_has']]}; affects "
            f"{f['affects']}")


_GEMM_SCRIPT = """
import sys, time
import numpy as np
n, dtype = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
out = np.empty((n, n), dtype)
np.matmul(a, b, out=out)
best = float("inf")
for _ in range(4):
    t0 = time.perf_counter()
    np.matmul(a, b, out=out)
    best = min(best, time.perf_counter() - t0)
print(2 * n ** 3 / best / 1e9)
"""


def forced_cost(variables, dtype: str = "float32", n: int | None = None) -> dict:
    """What forcing costs NumPy's GEMM, measured now: GFLOP/s in this process (with the variables)
    and in a fresh interpreter without them.  {"with", "without", "ratio"} or {"error"}."""
    import subprocess
    import sys
    n = _gemm_n(n)
    env = {k: v for k, v in os.environ.items() if k not in set(variables)}
    try:
        r = subprocess.run([sys.executable, "-c", _GEMM_SCRIPT, str(n), dtype], env=env,
                           capture_output=True, text=True, timeout=120)
        without = float(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"error": f"the comparison run failed ({type(e).__name__})"}
    here = cpu_gemm_gflops(dtype, n, 4)
    return {"with": round(here, 1), "without": round(without, 1), "ratio": round(without / here, 2), "n": n}
