"""microbench: timing harness, registry, CLI and reports around the kernels in :mod:`kernels`."""
__version__ = "0.1.0"

from .names import check as _check_names  # noqa: E402

_check_names()      # a foreign `kernels`/`fusion`/`profiles` first on sys.path: say so now
