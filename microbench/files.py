"""Paths named on the command line: what they are, checked before use, one-line errors.

Outputs: ``--json`` appends to a regular file, or streams to a character device (``/dev/null``,
a terminal) or a pipe/FIFO that has a reader (``/dev/stdout`` piped into ``jq``); reports
(``--html``, ``--md``) are written to a temporary file and renamed, so they go to regular files
only (renaming over ``/dev/null`` would replace the device).  Inputs (results files) are regular
files or pipes; a FIFO is opened without waiting for a writer, so a FIFO nobody writes reads as
empty instead of blocking forever.  Every OSError (a name too long, a path component that is a
file, permissions) becomes a :class:`BadInput` naming the path.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from kernels.errors import BadInput

KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO",
         stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


def shown(path) -> str:
    """The path as an error message shows it: quoted, and shortened when it is very long."""
    text = str(path)
    if len(text) <= 120:
        return repr(text)
    return repr(text[:60] + "..." + text[-40:]) + f" ({len(text)} characters)"


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def kind(path, flag: str) -> str:
    """'missing', or the kind of thing the path names (see KINDS); OSError -> BadInput."""
    if not str(path):
        raise BadInput(f"{flag} '' is empty; give a file path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise BadInput(f"{flag} {shown(path)} cannot be used: {_reason(e)}") from None
    return KINDS.get(stat.S_IFMT(st.st_mode), "special file")


def check_output(path, flag: str, *, streams: bool = False) -> str:
    """The kind of an output path that can be written (``streams``: also a character device or
    a FIFO); anything else is BadInput."""
    k = kind(path, flag)
    if k == "directory":
        raise BadInput(f"{flag} {shown(path)} is a directory; give a file path")
    if k == "missing":
        parent = os.path.dirname(str(path)) or "."
        try:
            ok = stat.S_ISDIR(os.stat(parent).st_mode)
        except FileNotFoundError:
            ok = False
        except OSError as e:
            raise BadInput(f"{flag} {shown(path)} cannot be used: {_reason(e)}") from None
        if not ok:
            raise BadInput(f"{flag} {shown(path)}: folder {shown(parent)} does not exist")
        try:
            name_max = os.pathconf(parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = 255
        if len(os.path.basename(str(path)).encode()) > name_max:
            raise BadInput(f"{flag} {shown(path)}: file name too long (at most {name_max} bytes)")
        return k
    if k == "file" or (streams and k in ("character device", "FIFO")):
        return k
    allowed = "a regular file, a character device or a FIFO with a reader" if streams else "a regular file"
    raise BadInput(f"{flag} {shown(path)} is a {k}, not {allowed}")


def open_append(path, flag: str, k: str):
    """A text file object appending to ``path`` of kind ``k`` (from check_output)."""
    try:
        if k == "FIFO":
            # Non-blocking open fails at once (ENXIO) when no process reads the FIFO, where a
            # plain open would wait for one forever; then writes block as usual.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    raise BadInput(f"{flag} {shown(path)} is a FIFO that no process reads; start "
                                   "the reader first or give a file path") from None
                raise
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            return os.fdopen(fd, "w", encoding="utf-8")
        return open(path, "a", encoding="utf-8")
    except OSError as e:
        raise BadInput(f"{flag} {shown(path)} cannot be written: {_reason(e)}") from None


def open_input(path, what: str):
    """A binary file object reading a results file: a regular file or a pipe/FIFO."""
    k = kind(path, what)
    if k == "missing":
        raise BadInput(f"{what} {shown(path)} does not exist")
    if k == "directory":
        raise BadInput(f"{shown(path)} is a directory, not a {what}")
    if k not in ("file", "FIFO"):
        raise BadInput(f"{what} {shown(path)} is a {k}, not a regular file or a pipe")
    try:
        if k == "FIFO":
            # Opening a FIFO's read end waits for a writer; without O_NONBLOCK a FIFO nobody
            # writes would hang here.  With a writer (a shell's <(...)) reads then block as usual;
            # without one they see end of file at once.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            return os.fdopen(fd, "rb")
        return open(path, "rb")
    except OSError as e:
        raise BadInput(f"{what} {shown(path)} cannot be read: {_reason(e)}") from None
