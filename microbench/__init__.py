"""microbench: timing harness, registry, CLI and reports around the kernels in :mod:`kernels`."""
__version__ = "0.1.0"
