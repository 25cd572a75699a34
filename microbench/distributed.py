"""torch.distributed for ``allreduce`` and ``scale``: the process group, its device and its failures.

The launcher is torchrun (``torchrun --nproc-per-node N -m microbench ...``, or its rendezvous
across hosts); this module reads what torchrun exports (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
...) and never starts processes itself.  Without torchrun the command runs as one rank (a
one-process group on a HashStore) and says how to start more.

Backend: NCCL on GPUs, gloo on CPUs.  ``auto`` takes NCCL when the ranks run on GPUs and the torch
build has it, else gloo; a missing NCCL or GPU falls back to gloo/CPU with the reason shown, never
a crash.  ``--device cuda`` gives each rank ``cuda:LOCAL_RANK``.

Failures: every collective runs under the process group's timeout (``--timeout``).  A rank that
dies closes its connections (the others fail at once); a rank that hangs makes the others' next
collective time out.  Either way each surviving rank ends with one line naming itself, what failed
and the timeout (:class:`RankFailure`), and torchrun then stops the group: never a hang.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import sys
from dataclasses import dataclass, field

from kernels.errors import BadInput, MicrobenchError

DEFAULT_TIMEOUT_S = 300.0
BACKENDS = ("auto", "gloo", "nccl")


class RankFailure(MicrobenchError):
    """A collective failed or timed out: another rank died or hangs."""


@dataclass
class Group:
    rank: int
    world: int
    local_rank: int
    backend: str                 # gloo | nccl
    device: str                  # cpu | cuda
    device_index: int | None     # the CUDA ordinal of this rank
    timeout_s: float
    torchrun: bool               # started by torchrun (else: one process, no rendezvous)
    notes: list = field(default_factory=list)   # fallbacks, with their reasons
    subgroups: dict = field(default_factory=dict)   # n -> process group of ranks 0..n-1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def torch_device(self):
        import torch
        return torch.device("cpu" if self.device == "cpu" else f"cuda:{self.device_index}")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise BadInput(f"{name}={os.environ[name]!r} is not an integer (torchrun sets it)") from None


def _import_dist():
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise BadInput(f"this command runs on torch.distributed, and torch cannot be imported ({e}); "
                       "pip install 'microbench[frameworks]' or pip install torch") from None
    if not dist.is_available():
        raise BadInput("this torch build has no torch.distributed")
    return torch, dist


def choose(device_arg: str, backend_arg: str) -> tuple:
    """(device, device_index or None, backend, notes) for this rank, before the group exists."""
    from kernels import devices
    torch, dist = _import_dist()
    if backend_arg not in BACKENDS:
        raise BadInput(f"--dist-backend {backend_arg!r} is unknown; allowed: {', '.join(BACKENDS)}")
    kind, index = devices.parse(device_arg)
    local_rank, local_world = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)
    notes = []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cuda":
        if gpus == 0:
            raise BadInput(f"--device {device_arg}: no CUDA GPU that torch can use; allowed here: cpu, auto")
        if index is not None and local_world > 1:
            raise BadInput(f"--device {device_arg}: with {local_world} ranks on this host each rank takes "
                           "cuda:LOCAL_RANK; use --device cuda")
        k = index if index is not None else local_rank
        if k >= gpus:
            raise BadInput(f"--device {device_arg}: rank {local_rank} on this host needs cuda:{k}, and torch "
                           f"sees {gpus} GPU(s); allowed: cuda:0..cuda:{gpus - 1} (one rank per GPU)")
        device, dev_index = "cuda", k
    elif kind == "auto" and gpus > local_rank:
        device, dev_index = "cuda", local_rank
    else:
        if kind == "auto":
            notes.append("CPU: " + ("torch sees no CUDA GPU" if gpus == 0 else
                                    f"{local_world} ranks on this host and {gpus} GPU(s)"))
        device, dev_index = "cpu", None
    backend = backend_arg
    if backend in ("auto", "nccl"):
        why = None
        if device != "cuda":
            why = "the ranks run on the CPU"
        elif not dist.is_nccl_available():
            why = "this torch build has no NCCL"
        if why is None:
            backend = "nccl"
        else:
            if backend == "nccl":
                notes.append(f"gloo instead of NCCL: {why}")
            backend = "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise BadInput("this torch build has no gloo backend; on GPUs use --dist-backend nccl")
    return device, dev_index, backend, notes


def init(device_arg: str = "auto", backend_arg: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Group:
    """Join (or make) the process group torchrun describes; one process when not under torchrun."""
    torch, dist = _import_dist()
    if not timeout_s > 0:
        raise BadInput(f"--timeout {timeout_s} must be a positive number of seconds")
    device, dev_index, backend, notes = choose(device_arg, backend_arg)
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (_env_int("RANK", 0), _env_int("WORLD_SIZE", 1)) if torchrun else (0, 1)
    if device == "cuda":
        from kernels import devices
        torch.cuda.set_device(dev_index)
        with contextlib.suppress(BadInput):      # CuPy too, where it is installed (ours on the GPU)
            devices.select(dev_index, what="--device")
    timeout = datetime.timedelta(seconds=timeout_s)
    kw = {"device_id": torch.device(f"cuda:{dev_index}")} if backend == "nccl" else {}
    try:
        if dist.is_initialized():
            pass
        elif torchrun:
            dist.init_process_group(backend, timeout=timeout, **kw)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout, **kw)
    except (RuntimeError, ValueError) as e:
        raise RankFailure(f"rank {rank}: the process group did not form within {timeout_s:g} s "
                          f"({_first_line(e)}); check MASTER_ADDR/MASTER_PORT and that every rank started") from None
    global _JOINED
    _JOINED = Group(rank, world, _env_int("LOCAL_RANK", 0), backend, device, dev_index, timeout_s, torchrun, notes)
    return _JOINED


_JOINED: Group | None = None     # the group this process joined (rank_command ends its process)


def rank_command(fn):
    """A command run by every rank: once it returns (its output written, the group left), a rank
    started by torchrun ends its process at once with the command's exit status.  torch's C++
    teardown at interpreter exit can abort a rank that finished ("terminate called without an
    active exception": a thread of the distributed runtime destroyed while still joinable; seen
    under load on a 2-core machine), and torchrun then reports a failed run whose output and
    records are complete.  Outside torchrun the command returns as any other."""
    @functools.wraps(fn)
    def run(args):
        global _JOINED
        _JOINED = None
        rc = fn(args)
        if _JOINED is not None and _JOINED.torchrun:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        return rc
    return run


def subgroups(g: Group, sizes: list) -> dict:
    """A process group of ranks 0..n-1 for every n (every rank must make every group, in order)."""
    _, dist = _import_dist()
    for n in sizes:
        if n not in g.subgroups:
            g.subgroups[n] = dist.group.WORLD if n == g.world else \
                dist.new_group(list(range(n)), timeout=datetime.timedelta(seconds=g.timeout_s))
    return g.subgroups


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


@contextlib.contextmanager
def failures(g: Group, what: str):
    """Turn a failed or timed-out collective into one line naming the rank (RankFailure)."""
    try:
        yield
    except RankFailure:
        raise
    except Exception as e:   # torch raises RuntimeError, DistBackendError, DistNetworkError, ...
        name, text = type(e).__name__, _first_line(e)
        # only what the process group reports (a timeout, a closed connection); a bug stays a bug
        words = ("timed out", "timeout", "connection", "closed", "peer", "gloo", "nccl", "broken pipe")
        if "Dist" not in name and not any(w in text.lower() for w in words):
            raise
        timed_out = "timed out" in text.lower() or "timeout" in text.lower()
        cause = (f"no answer within the process-group timeout of {g.timeout_s:g} s: a rank hangs or is slower "
                 "than --timeout allows") if timed_out else "a rank died or closed its connection"
        raise RankFailure(f"rank {g.rank} of {g.world}: {what} failed: {cause} ({text})") from None


def finish(g: Group | None, clean: bool = False) -> None:
    """Leave the group.  ``clean`` (every rank got to the end): a last barrier first, so no rank
    tears down its gloo/NCCL threads while another still works in the group (a rank that left
    early once aborted in C++ teardown); after a failure, without waiting on the others."""
    try:
        _, dist = _import_dist()
        if dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
    except Exception:
        pass


def check_fault(g: Group, where: str) -> None:
    """``MICROBENCH_FAULT=RANK:die|hang@WHERE`` makes one rank fail at a named point, so the tests
    can show that the others end with a clear message instead of hanging."""
    spec = os.environ.get("MICROBENCH_FAULT", "")
    if not spec:
        return
    who, _, rest = spec.partition(":")
    kind, _, at = rest.partition("@")
    if str(g.rank) != who or (at and at != where):
        return
    if kind == "die":
        os._exit(17)
    if kind == "hang":
        import time
        while True:
            time.sleep(60)


def say(g: Group, out, text: str) -> None:
    """Print on rank 0 only (every rank runs the command)."""
    if g.is_root:
        out.print(text, highlight=False)


def note_launch(g: Group, err, command: str) -> None:
    """Rank 0: where the ranks run, the fallbacks taken and (one process) how to start more."""
    if not g.is_root:
        return
    for n in g.notes:
        err.print(f"note: {n}", highlight=False)
    if not g.torchrun:
        err.print(f"note: one rank (not started by torchrun); for N ranks: torchrun --nproc-per-node N "
                  f"-m microbench {command}", highlight=False)
