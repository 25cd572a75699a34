"""The per-user cache directory: generated kernel sources and numba's compiled code.

What lives here is executed: generated Python modules are imported, and numba's index files are
pickles it loads.  A directory another local user can write to is therefore a way to run code as
whoever uses it next, so the cache is private: under ``$MICROBENCH_CACHE`` if set, else
``$XDG_CACHE_HOME/microbench`` (``~/.cache/microbench``), created mode 0700, and every directory
of it that already exists must be owned by this user and not writable by group or others; one
that is not is refused with one line naming its path, owner and mode, never used.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BadInput

ENV = "MICROBENCH_CACHE"


def root() -> Path:
    """The cache root this process uses (not created here)."""
    given = os.environ.get(ENV)
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "microbench"


def _owner(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def check_private(path: Path) -> None:
    """Refuse ``path`` (an existing directory) unless this user owns it and no one else can
    write to it; a symbolic link is refused too (it could point anywhere)."""
    st = os.lstat(path)
    where = f"{'$' + ENV if os.environ.get(ENV) else 'the cache directory'} {path}"
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(f"{where} is a symbolic link; the kernel cache must be a private directory "
                       f"(remove it, or set {ENV} to a directory of your own)")
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{where} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid() or mode & 0o022:
        raise BadInput(f"{where} is owned by {_owner(st.st_uid)} with mode {mode:04o}; the kernel "
                       f"cache holds code that is run, so it must be owned by {_owner(os.getuid())} "
                       f"and writable by no one else (chmod 700 it, or set {ENV} to another directory)")


def private_dir(*parts: str) -> Path:
    """``root()/parts...``, created 0700 where missing, each level checked by
    :func:`check_private` (the root's parents are the user's business: the root itself and
    everything under it are checked)."""
    d = root()
    for i, part in enumerate(("",) + parts):
        if part:
            if part in (".", "..") or "/" in part or os.sep in part:
                raise ValueError(f"cache path part {part!r} must be one plain name")
            d = d / part
        try:
            os.mkdir(d, 0o700) if i else os.makedirs(d, 0o700)
        except FileExistsError:
            pass
        check_private(d)
    return d
