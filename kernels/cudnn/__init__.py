"""Direct cuDNN 9 calls through ctypes, from CuPy memory, no framework in between.

- :mod:`.lib`: find and load ``libcudnn.so.9`` (``MICROBENCH_CUDNN_PATH``, the
  ``nvidia-cudnn-cu13``/``-cu12`` wheels, the system loader path); :func:`version`,
  :func:`describe` for ``microbench env``.
- :mod:`.errors`: every ``cudnnStatus_t`` as a named exception (:class:`CudnnError`;
  NOT_SUPPORTED statuses are also :class:`kernels.errors.Unsupported`, so a case skips).
- :mod:`.handles`: the handle, descriptors and type enums that :mod:`.rnn` and :mod:`.conv`
  share, and the one helper that opens GPU, library and CuPy for a variant.
- :mod:`.rnn`: LSTM/GRU/vanilla RNN forward by ``cudnnRNNForward`` (v8 RNN API), every RNN
  algorithm.
- :mod:`.conv`: forward convolution, legacy API per algorithm and cudnn-frontend graph; the
  backward-data and backward-filter phases, legacy API per algorithm.

Importing this package loads nothing: cuDNN is opened on first use.
"""
from .errors import CudnnError, CudnnNotSupported, check, status_name
from .lib import ENV_VAR, available, describe, find, load, version

__all__ = ["CudnnError", "CudnnNotSupported", "ENV_VAR", "available", "check", "describe", "find",
           "load", "status_name", "version"]
