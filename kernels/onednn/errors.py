"""oneDNN status codes as Python exceptions.

``dnnl_status_t`` (``dnnl_common_types.h``, oneDNN 3.x) is a small enum; the table below is that
enum.  A failed call raises :class:`OnednnError` naming the call, the status name and number.
``dnnl_unimplemented`` (no implementation serves this shape, type, algorithm or ISA) raises
:class:`OnednnUnimplemented`, which is also a :class:`kernels.errors.Unsupported`: the runner
records that case as skipped with oneDNN's reason instead of failed (Winograd on a CPU without
AVX-512, bf16 RNNs on AVX2).
"""
from __future__ import annotations

from ..errors import MicrobenchError, Unsupported

SUCCESS = 0
UNIMPLEMENTED = 3

STATUS_NAMES = {
    0: "dnnl_success",
    1: "dnnl_out_of_memory",
    2: "dnnl_invalid_arguments",
    3: "dnnl_unimplemented",
    4: "dnnl_last_impl_reached",
    5: "dnnl_runtime_error",
    6: "dnnl_not_required",
    7: "dnnl_invalid_graph",
    8: "dnnl_invalid_graph_op",
    9: "dnnl_invalid_shape",
    10: "dnnl_invalid_data_type",
}

MEANING = {
    1: "out of memory",
    2: "incorrect function arguments",
    3: "no implementation for this problem on this CPU",
    4: "the last implementation was reached",
    5: "the primitive failed on execution",
    6: "the queried element is not required",
}


def status_name(status: int) -> str:
    status = int(status)
    return STATUS_NAMES.get(status, f"dnnl_status_unknown_{status}")


class OnednnError(MicrobenchError):
    """A oneDNN call returned something other than dnnl_success."""

    def __init__(self, status: int, call: str, detail: str = ""):
        self.status = int(status)
        self.name = status_name(status)
        self.call = call
        self.detail = detail or ""
        msg = f"{call} failed: {self.name} ({self.status})"
        if self.status in MEANING:
            msg += f": {MEANING[self.status]}"
        if self.detail:
            msg += f" [{self.detail}]"
        super().__init__(msg)


class OnednnUnimplemented(OnednnError, Unsupported):
    """dnnl_unimplemented: oneDNN has no implementation for this request here."""


def error_for(status: int, call: str, detail: str = "") -> OnednnError:
    cls = OnednnUnimplemented if int(status) == UNIMPLEMENTED else OnednnError
    return cls(status, call, detail)


def check(call_name: str, status: int, detail: str = "") -> None:
    """Raise the exception for ``status`` unless it is dnnl_success."""
    status = int(status)
    if status != SUCCESS:
        raise error_for(status, call_name, detail)
