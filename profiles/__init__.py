"""Profiling support: capture ranges, kernel traces, oneDNN traces, Nsight command lines and
reports, and the explain analysis (the NVTX range names our code pushes are :mod:`kernels.nvtx`)."""
