"""Exceptions shared by every layer of the package.

Each message is meant to be printed as one line: it names the bad value and what is allowed.
"""


class MicrobenchError(Exception):
    """Base class: anything the CLI turns into a one-line message instead of a traceback."""


class BadInput(MicrobenchError, ValueError):
    """A shape, size, name or value that can never work (fix the call)."""


class Unsupported(MicrobenchError):
    """A valid request this variant/backend/dtype combination cannot serve: the case is skipped."""


class MissingDependency(Unsupported):
    """An optional package or library is absent: the case is skipped with this reason."""

    def __init__(self, package: str, needed_for: str, hint: str = ""):
        self.package = package
        msg = f"{package} is not installed (needed for {needed_for})"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class KernelCompileError(MicrobenchError):
    """A GPU kernel did not compile; the message carries the compiler's log."""


class ForkedAfterOpenMP(MicrobenchError, RuntimeError):
    """This process was forked after OpenMP threads ran in its parent: OpenMP code would hang or be
    killed here (:mod:`kernels.forking`)."""
