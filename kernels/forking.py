"""Fork after OpenMP: refuse, in the child, to run code that would hang or be killed.

GNU OpenMP (libgomp, which the oneDNN wheel and numba's ``omp`` threading layer use) keeps its
thread pool across ``fork()``, but the child gets only the forking thread: the child's first
parallel region waits for threads that do not exist (a hang), and numba's ``omp`` layer kills a
child that launches a parallel kernel ("Terminating: fork() called from a process already using
GNU OpenMP").  ``multiprocessing`` forks by default on Linux, so research code meets this by
creating a Pool after a first call.

So: :func:`started` is called where OpenMP work is set up (every oneDNN primitive is made through
:meth:`kernels.onednn.core.Scope.primitive`); numba's own layer is read at fork time.  In a child
forked after either, :func:`check` (called on entry to the code that runs OpenMP: a
:class:`kernels.RNN` on the numba backend or with oneDNN GEMMs, every oneDNN primitive execution)
raises :class:`ForkedAfterOpenMP`, one line that says to use the spawn start method.  A child
that never calls such code (plain NumPy work) is not affected; a child forked before any OpenMP
use is fine too.
"""
from __future__ import annotations

import os
import sys

from .errors import ForkedAfterOpenMP

_started: str | None = None      # what first set up OpenMP work in this process
_inherited: str | None = None    # in a forked child: what had set it up in an ancestor


def started(what: str) -> None:
    """Note that ``what`` (e.g. "oneDNN primitives") set up OpenMP work in this process."""
    global _started
    if _started is None:
        _started = what


def _numba_omp() -> str | None:
    """numba's parallel layer, when it is launched on OpenMP (its workqueue layer restarts after a
    fork; its tbb layer is not installed with the package)."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is None or not getattr(par, "_is_initialized", False):
        return None
    layer = getattr(par, "_threading_layer", None)
    return None if layer == "workqueue" else f"numba's {layer or 'parallel'} threading layer"


def _after_fork_in_child() -> None:
    global _inherited
    what = _inherited or _started or _numba_omp()
    if what is not None:
        _inherited = what


def inherited() -> str | None:
    """In a child forked after OpenMP use: what had used it (else None)."""
    return _inherited


def check(where: str) -> None:
    """Raise :class:`ForkedAfterOpenMP` in a child forked after OpenMP use; ``where``: the code
    about to run OpenMP work."""
    if _inherited is not None:
        raise ForkedAfterOpenMP(
            f"{where} cannot run in this process: it was forked (multiprocessing's default start "
            f"method on Linux) after {_inherited} started OpenMP threads in the parent, and OpenMP "
            "hangs or is killed in a forked child; start worker processes with the spawn start "
            "method (multiprocessing.get_context('spawn'), or set_start_method('spawn') first)")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
