"""CPU thread control: BLAS and OpenMP pools through threadpoolctl and numba's pool, as one context manager."""
from __future__ import annotations

import contextlib
import os
import sys

from kernels.errors import BadInput


def parse_threads(text: str | None) -> list:
    """'1,2,4' -> [1, 2, 4]; None -> [None] (library defaults)."""
    if text is None:
        return [None]
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            raise BadInput(f"--threads {part!r} is not an integer; expected a list such as 1,2,4") from None
        if not 1 <= n <= 1024:
            raise BadInput(f"--threads {n} is out of range; allowed: 1..1024")
        if n not in out:   # 1,1 is one count: each case runs once
            out.append(n)
    if not out:
        raise BadInput("--threads names no thread count; expected a list such as 1,2,4")
    return out


def usable_cpus() -> tuple:
    """(CPUs this process may run on, why): the affinity mask, lowered by a cgroup CPU quota
    (containers, CI runners) where one is set."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    why = f"{n} CPU(s) in its affinity mask"
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            q = max(1, int(int(quota) // int(period)))
            if q < n:
                n, why = q, f"a cgroup quota of {int(quota) / int(period):g} CPU(s)"
    except (OSError, ValueError):
        pass
    return n, why


def oversubscription_warning(counts) -> str | None:
    """A warning when a sweep asks for more threads than the process may use: such cases time
    threads waiting for each other (60x slower at 4 threads on 2 cores), not scaling."""
    n, why = usable_cpus()
    over = sorted({c for c in counts if c and c > n})
    if not over:
        return None
    return (f"--threads {','.join(map(str, over))}: more threads than the {n} CPU(s) this process "
            f"may use ({why}); those cases oversubscribe the CPUs and measure contention, not scaling")


def prepare_numba_pool(counts: list) -> None:
    """numba sizes its pool once, at first use: make it large enough for the largest count asked."""
    wanted = max((n for n in counts if n), default=None)
    if wanted and "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(max(wanted, os.cpu_count() or 1))


def load_openmp_users() -> None:
    """Load oneDNN (and with it libgomp) if it is installed.  threadpoolctl limits only the
    libraries loaded when it is entered, and a case builds its oneDNN primitives inside the
    limit, each fixing its thread count when created: loaded later, oneDNN would run on every
    core whatever --threads says."""
    from kernels.onednn import lib as dnnl
    dnnl.available()     # a missing oneDNN is reported by the cases that need it, not here


@contextlib.contextmanager
def limit(n: int | None):
    """Run the body with ``n`` BLAS, OpenMP (oneDNN's) and numba threads (None: leave the
    defaults). Yields what was set."""
    from threadpoolctl import threadpool_limits
    if n is None:
        yield current()
        return
    load_openmp_users()
    import numba
    if n > numba.config.NUMBA_NUM_THREADS:
        raise BadInput(f"--threads {n} exceeds numba's pool of {numba.config.NUMBA_NUM_THREADS} "
                       "(set NUMBA_NUM_THREADS before starting)")
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield current()
    finally:
        numba.set_num_threads(old)


def current() -> dict:
    """Threads each pool will use now."""
    from threadpoolctl import threadpool_info
    info = {"cores": os.cpu_count()}
    for pool in threadpool_info():
        info[pool["internal_api"]] = pool["num_threads"]
    if "numba" in sys.modules:
        import numba
        info["numba"] = numba.get_num_threads()
    return info
