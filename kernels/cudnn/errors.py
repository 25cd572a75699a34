"""cuDNN status codes as Python exceptions.

cuDNN 9 numbers its statuses by category (``CUDNN_STATUS_CATEGORY(code) = code // 1000 * 1000``):
1000 library not initialised or mismatched, 2000 bad parameter, 3000 not supported, 4000 internal
error, 5000 execution failed; the rest of the number says which one.  The table below is
``cudnnStatus_t`` of ``cudnn_graph.h`` (cuDNN 9.28), deprecated aliases included where they have
a number of their own (``CUDNN_STATUS_INVALID_VALUE`` = 2001).

A failed call raises :class:`CudnnError` naming the call, the status name and number, cuDNN's
``cudnnGetErrorString`` text and, where the library has one, ``cudnnGetLastErrorString``'s
detail.  Statuses of the NOT_SUPPORTED category raise :class:`CudnnNotSupported`, which is also a
:class:`kernels.errors.Unsupported`: the runner records that case as skipped with cuDNN's reason
instead of failed (a persistent RNN algorithm that does not serve a shape is not a bug).
"""
from __future__ import annotations

from ..errors import MicrobenchError, Unsupported

SUCCESS = 0

STATUS_NAMES = {
    0: "CUDNN_STATUS_SUCCESS",
    1001: "CUDNN_STATUS_NOT_INITIALIZED",
    1002: "CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH",
    1003: "CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH",
    1004: "CUDNN_STATUS_DEPRECATED",
    1005: "CUDNN_STATUS_LICENSE_ERROR",
    1006: "CUDNN_STATUS_RUNTIME_IN_PROGRESS",
    1007: "CUDNN_STATUS_RUNTIME_FP_OVERFLOW",
    1008: "CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED",
    2000: "CUDNN_STATUS_BAD_PARAM",
    2001: "CUDNN_STATUS_INVALID_VALUE",
    2002: "CUDNN_STATUS_BAD_PARAM_NULL_POINTER",
    2003: "CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER",
    2004: "CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED",
    2005: "CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND",
    2006: "CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT",
    2007: "CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH",
    2008: "CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH",
    2009: "CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES",
    2010: "CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE",
    2011: "CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH",
    2012: "CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE",
    3000: "CUDNN_STATUS_NOT_SUPPORTED",
    3001: "CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN",
    3002: "CUDNN_STATUS_NOT_SUPPORTED_SHAPE",
    3003: "CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE",
    3004: "CUDNN_STATUS_NOT_SUPPORTED_LAYOUT",
    3005: "CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER",
    3006: "CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART",
    3007: "CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH",
    3008: "CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING",
    3009: "CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE",
    3010: "CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT",
    3011: "CUDNN_STATUS_NOT_SUPPORTED_PADDING",
    3012: "CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM",
    3013: "CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API",
    3014: "CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE",
    4000: "CUDNN_STATUS_INTERNAL_ERROR",
    4001: "CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED",
    4002: "CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE",
    4003: "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED",
    4004: "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
    4005: "CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM",
    4006: "CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED",
    5000: "CUDNN_STATUS_EXECUTION_FAILED",
    5001: "CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER",
    5002: "CUDNN_STATUS_EXECUTION_FAILED_CUBLAS",
    5003: "CUDNN_STATUS_EXECUTION_FAILED_CUDART",
    5004: "CUDNN_STATUS_EXECUTION_FAILED_CURAND",
}

CATEGORIES = {
    0: "success",
    1000: "library not initialized or mismatched",
    2000: "bad parameter",
    3000: "not supported",
    4000: "internal error",
    5000: "execution failed",
}

STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}


def category(status: int) -> int:
    """``CUDNN_STATUS_CATEGORY``: the status rounded down to its thousand."""
    return int(status) // 1000 * 1000


def status_name(status: int) -> str:
    """The ``cudnnStatus_t`` name; a number this table does not know gets its category's name."""
    status = int(status)
    if status in STATUS_NAMES:
        return STATUS_NAMES[status]
    base = STATUS_NAMES.get(category(status))
    if base and status >= 1000:
        return f"{base}_{status % 1000} (unknown to microbench)"
    return f"CUDNN_STATUS_UNKNOWN_{status}"


class CudnnError(MicrobenchError):
    """A cuDNN call returned something other than CUDNN_STATUS_SUCCESS."""

    def __init__(self, status: int, call: str, text: str = "", detail: str = ""):
        self.status = int(status)
        self.name = status_name(status)
        self.text = text or ""
        self.call = call
        self.detail = detail or ""
        msg = f"{call} failed: {self.name} ({self.status})"
        if self.text and self.text != self.name:
            msg += f": {self.text}"
        if self.detail:
            msg += f" [{self.detail}]"
        super().__init__(msg)

    @property
    def category(self) -> int:
        return category(self.status)


class CudnnNotSupported(CudnnError, Unsupported):
    """A NOT_SUPPORTED status: cuDNN does not serve this shape, type, algorithm or GPU."""


def error_for(status: int, call: str, text: str = "", detail: str = "") -> CudnnError:
    """The exception for a failed call: :class:`CudnnNotSupported` for the 3000 category."""
    cls = CudnnNotSupported if category(status) == 3000 else CudnnError
    return cls(status, call, text, detail)


def check(call_name: str, status: int, lib=None) -> None:
    """Raise the exception for ``status`` unless it is success.

    ``lib`` (a :class:`kernels.cudnn.lib.Library` or anything with ``error_string(status)`` and
    ``last_error()``) supplies cuDNN's own text; without it the message has the name alone.
    """
    status = int(status)
    if status == SUCCESS:
        return
    text = detail = ""
    if lib is not None:
        try:
            text = lib.error_string(status)
            detail = lib.last_error()
        except Exception:  # the error text is a courtesy; never mask the status itself
            pass
    raise error_for(status, call_name, text, detail)
