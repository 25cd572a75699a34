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
        digits = part[1:] if part[:1] in "+-" else part
        if not (digits.isascii() and digits.isdigit()):    # int() takes '٤', '１６' and '1_6'
            raise BadInput(f"--threads {part!r} is not an integer; expected a list such as 1,2,4")
        n = int(part)
        if not 1 <= n <= 1024:
            raise BadInput(f"--threads {n} is out of range; allowed: 1..1024")
        check_startable(n)
        if n not in out:   # 1,1 is one count: each case runs once
            out.append(n)
    if not out:
        raise BadInput("--threads names no thread count; expected a list such as 1,2,4")
    return out


# New threads a count of N may start: numba's pool and an OpenMP team (oneDNN's) of N each, the
# calling thread being one of both (they share one libgomp pool when numba runs on OpenMP).
def threads_started(n: int) -> int:
    return 2 * (n - 1)


def check_startable(n: int) -> None:
    """BadInput when --threads N needs more threads than this process can start (libgomp ends the
    process on a failed thread creation, with no record): the count allowed is in the message."""
    cap, why = thread_capacity()
    if cap is None or threads_started(n) <= cap:
        return
    allowed = max(1, cap // 2 + 1)
    raise BadInput(f"--threads {n}: this process can start about {max(cap, 0)} more threads ({why}), and "
                   f"{n} threads start up to {threads_started(n)} (numba's pool and an OpenMP team); "
                   f"allowed here: 1..{allowed}")


def _stack_bytes() -> int:
    """Address space a new thread reserves for its stack: OMP_STACKSIZE (GOMP_STACKSIZE) when set,
    else glibc's default, RLIMIT_STACK's soft limit (2 MiB when that is unlimited)."""
    import re
    import resource
    for var in ("GOMP_STACKSIZE", "OMP_STACKSIZE"):
        m = re.fullmatch(r"\s*([0-9]+)\s*([bkmgBKMG]?)\s*", os.environ.get(var, ""))
        if m:      # a plain number is KiB (the OpenMP rule)
            return int(m.group(1)) << {"b": 0, "k": 10, "m": 20, "g": 30}[(m.group(2) or "k").lower()]
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return 2 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def _proc_status(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _user_threads(uid: int) -> int:
    """Threads of every process of this real user (what RLIMIT_NPROC counts)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, ValueError, KeyError, IndexError):     # gone meanwhile, or unreadable
            continue
    return total


def _cgroup_pids() -> tuple | None:
    """(pids.max, pids.current) of this process's cgroup (v2, or v1's pids controller), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for _, controllers, path in (ln for ln in lines if len(ln) == 3):
        if controllers == "pids" or controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            base = "/sys/fs/cgroup/pids" if controllers == "pids" else "/sys/fs/cgroup"
            d = os.path.join(base, path.lstrip("/"))
            try:
                with open(os.path.join(d, "pids.max")) as f:
                    most = f.read().strip()
                with open(os.path.join(d, "pids.current")) as f:
                    now = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if most != "max":
                return int(most), now
    return None


def thread_capacity() -> tuple:
    """(about how many more threads this process can start, what limits it), or (None, "") when no
    limit applies: the address-space limit (``ulimit -v``) over the stack each thread reserves, the
    user's process limit (``ulimit -u``, not applied to root) and the cgroup's pids.max."""
    import resource
    found = []
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        used = (_proc_status("/proc/self/status", "VmSize") or 0) << 10
        # numba, llvmlite and oneDNN map several hundred MiB when they load (after this check)
        later = 0 if "numba" in sys.modules else 768 << 20
        stack = _stack_bytes() + (64 << 10)      # and its guard page, rounded up
        found.append(((int(soft) - used - later) // stack,
                      f"ulimit -v {int(soft) >> 20} MiB, {used >> 20} MiB mapped, {stack >> 20} MiB stack per thread"))
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft != resource.RLIM_INFINITY and os.geteuid() != 0:
        running = _user_threads(os.getuid())
        found.append((int(soft) - running, f"ulimit -u {int(soft)} with {running} threads of this user running"))
    pids = _cgroup_pids()
    if pids is not None:
        found.append((pids[0] - pids[1], f"the cgroup's pids.max {pids[0]} with {pids[1]} in use"))
    return min(found) if found else (None, "")


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
