"""Direct oneDNN 3 calls through ctypes, on NumPy memory, no framework in between: the CPU's
counterpart of :mod:`kernels.cudnn`.

- :mod:`.lib`: find and load ``libdnnl.so.3`` (``MICROBENCH_ONEDNN_PATH``, the
  ``onednn-cpu-gomp`` wheel, the system loader path), the C prototypes and enum values of
  oneDNN 3.2 (checked against the library's own names at load); :func:`describe` for
  ``microbench env`` (version, effective ISA, threading runtime).
- :mod:`.errors`: every ``dnnl_status_t`` as a named exception (``dnnl_unimplemented`` is also
  :class:`kernels.errors.Unsupported`, so a case skips with oneDNN's reason).
- :mod:`.core`: engine, stream, memories and primitives owned by a :class:`~.core.Scope` that
  releases them on every path.
- :mod:`.rnn`: LSTM, linear-before-reset GRU and vanilla RNN inference (``dnnl_lstm_forward``,
  ``dnnl_lbr_gru_forward``, ``dnnl_vanilla_rnn_forward`` with ReLU or tanh).  :mod:`.conv`: forward convolution, direct and Winograd.
- :mod:`.matmul`: ``x @ W`` as a oneDNN matmul or inner product with W in the primitive's own
  layout (packed once), on the caller's buffers: the inner product is the fused plan's CPU GEMM
  under ``pretranspose`` (:mod:`fusion.gemm`).

The verbose-log capture and parser live in :mod:`profiles.onednn_trace`.

Importing this package loads nothing: oneDNN is opened on first use.
"""
from .errors import OnednnError, OnednnUnimplemented, check, status_name
from .lib import ENV_VAR, available, describe, find, load, version

__all__ = ["ENV_VAR", "OnednnError", "OnednnUnimplemented", "available", "check", "describe",
           "find", "load", "status_name", "version"]
