"""Profiling support: NVTX naming (:mod:`profiles.nvtx`); kernel traces and analysis follow."""
