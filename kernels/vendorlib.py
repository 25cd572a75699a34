"""What the vendor-library loaders (:mod:`kernels.onednn.lib`, :mod:`kernels.cudnn.lib`) share:
the search for a shared library (an environment variable that, when set, is the only place
looked at; then the loader's own candidates; then the system loader path), the record of every
place searched for the skip reason, the once-per-process load, and ``/proc/self/maps``.

Each loader keeps what is its own: the candidates (wheels, prefixes), how it dlopens, the version
check, and what :func:`available` and :func:`describe` say.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from .errors import MissingDependency

SYSTEM = "system loader path"


@dataclass(frozen=True)
class Candidate:
    """One place searched: where, found from what, and whether the library file is there."""

    path: str            # a directory, or SYSTEM for the loader's own search
    source: str          # "env <VAR>", "wheel <dist>", "sys.path", "sys.prefix", SYSTEM
    present: bool


@dataclass(frozen=True)
class Found:
    """The result of a search: the chosen place (None when nothing has the library; SYSTEM:
    "no directory of ours, let dlopen search") and every place looked at, in order.  Each loader
    subclasses it to set ``main``, the file it looks for."""

    main: ClassVar[str] = ""
    directory: str | None
    source: str
    searched: tuple = field(default_factory=tuple)

    def searched_text(self) -> str:
        return "; ".join(f"{c.path} ({c.source}{'' if c.present else ': no ' + self.main})"
                         for c in self.searched)


def has_file(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))


def find(found: type, env_var: str, env: dict | None, names_main: Callable[[str], bool],
         candidates: Callable[[], list], *, system: bool = True) -> Found:
    """Search in the order every loader documents.

    ``env_var`` set (in ``env``, default ``os.environ``): only its entries (directories or the
    library's path, ``names_main(basename)`` tells which, separated by ``os.pathsep``), and when
    none has the library the result says so instead of falling back to another copy.  Otherwise
    ``candidates()`` in order, then the system loader path (``system=False`` leaves it out).
    """
    value = (os.environ if env is None else env).get(env_var, "")
    if value.strip():
        cands = []
        for part in value.split(os.pathsep):
            part = part.strip()
            if not part:
                continue
            d = os.path.dirname(part) if names_main(os.path.basename(part)) else part
            d = os.path.abspath(os.path.expanduser(d))
            cands.append(Candidate(d, f"env {env_var}", has_file(d, found.main)))
        return _first(found, cands) or found(None, f"env {env_var}", tuple(cands))
    cands = candidates()
    chosen = _first(found, cands)
    if chosen is not None:
        return chosen
    if system:  # only dlopen can tell whether the loader path has it
        return found(SYSTEM, SYSTEM, tuple(cands) + (Candidate(SYSTEM, SYSTEM, True),))
    return found(None, "", tuple(cands))


def _first(found: type, cands: list) -> Found | None:
    for c in cands:
        if c.present:
            return found(c.path, c.source, tuple(cands))
    return None


def mapped_path(soname: str) -> str | None:
    """The path of ``soname`` if it is already mapped into this process (Linux ``/proc/self/maps``):
    where a framework's copy came from, so a second load can pick the same build."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip().endswith("/" + soname):
                    return line.split(None, 5)[-1].strip()
    except OSError:
        pass
    return None


class Loader:
    """Find and load a library once per process; a failure is kept too, so every variant that
    needs the library is skipped with the same reason without searching again.
    :meth:`cache_clear` forgets both (tests that change the environment variable call it)."""

    def __init__(self, load: Callable[[], object]):
        self._load = load
        self._got = None
        self._lock = threading.Lock()

    def __call__(self):
        """The loaded library; raises the :class:`MissingDependency` of the first attempt."""
        got = self._got
        if got is None:
            with self._lock:
                if self._got is None:
                    try:
                        self._got = self._load()
                    except MissingDependency as e:
                        self._got = e
                got = self._got
        if isinstance(got, Exception):
            raise got
        return got

    def cache_clear(self) -> None:
        with self._lock:
            self._got = None

    def available(self, summary: Callable[[object], str]) -> tuple:
        """``(True, summary(lib))`` or ``(False, the reason it is missing)``."""
        try:
            lib = self()
        except MissingDependency as e:
            return False, str(e)
        return True, summary(lib)

    def version(self) -> str | None:
        try:
            return self().version
        except MissingDependency:
            return None

    def describe(self, facts: Callable[[object], dict]) -> dict:
        """``{"available": True, **facts(lib)}`` or ``{"available": False, "reason": ...}``."""
        try:
            lib = self()
        except MissingDependency as e:
            return {"available": False, "reason": str(e)}
        return {"available": True, **facts(lib)}
