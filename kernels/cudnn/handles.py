"""What every cuDNN binding of the project shares (:mod:`kernels.cudnn.rnn`,
:mod:`kernels.cudnn.conv`): the data and math type enums, the ctypes shorthands, the prototypes of
the handle and N-d tensor descriptor calls, a :class:`Handle` bound to a CUDA stream and any
``cudnnCreateX``/``cudnnDestroyX`` pair as a :class:`Descriptor` (each a context manager, so an
``ExitStack`` releases them on every path, also when a constructor fails half-way), and
:func:`open_gpu`, which the RNN and legacy-API conv classes call first for their library and CuPy.
"""
from __future__ import annotations

import ctypes
from contextlib import ExitStack

from ..errors import Unsupported
from . import errors as cerr

# cudnnDataType_t, cudnnMathType_t (cudnn_graph.h, cuDNN 9)
CUDNN_DATA_FLOAT, CUDNN_DATA_HALF, CUDNN_DATA_BFLOAT16 = 0, 2, 9
CUDNN_DATA_INT32 = 4
CUDNN_DEFAULT_MATH, CUDNN_TENSOR_OP_MATH = 0, 1
CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, CUDNN_FMA_MATH = 2, 3
MATH_NAMES = {0: "CUDNN_DEFAULT_MATH", 1: "CUDNN_TENSOR_OP_MATH",
              2: "CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION", 3: "CUDNN_FMA_MATH"}

# ctypes shorthands of the prototypes: pointer, int, uint32, size_t and pointers to them
P, I, U32, SZ = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
PP, PI, PSZ = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t)

PROTOTYPES = {
    "cudnnCreate": [PP],
    "cudnnDestroy": [P],
    "cudnnSetStream": [P, P],
    "cudnnCreateTensorDescriptor": [PP],
    "cudnnDestroyTensorDescriptor": [P],
    "cudnnSetTensorNdDescriptor": [P, I, I, PI, PI],
    "cudnnGetTensorNdDescriptor": [P, I, PI, PI, PI, PI],
}


def open_gpu(lib, variant: str):
    """``(lib, cupy)`` for a variant about to run: Unsupported naming ``variant`` when there is no
    GPU (checked first: cuDNN loads without one, but cudnnCreate fails), then the process's cuDNN
    unless ``lib`` is given."""
    from kernels import gpu
    ok, reason = gpu.detect()
    if not ok:
        raise Unsupported(f"the {variant} variant needs a GPU: {reason}")
    if lib is None:
        from .lib import load
        lib = load()
    import cupy
    return lib, cupy


def bind(lib, names=None, prototypes=PROTOTYPES) -> None:
    """Set the prototypes of ``names`` (default: all of ``prototypes``) on ``lib``."""
    for name in names or prototypes:
        lib.fn(name, prototypes[name])


class Handle:
    """A cuDNN handle bound to a CUDA stream (``cudnnSetStream``); a context manager."""

    def __init__(self, lib, stream_ptr: int = 0):
        bind(lib, ("cudnnCreate", "cudnnDestroy", "cudnnSetStream"))
        self.lib, self.ptr = lib, ctypes.c_void_p()
        lib.call("cudnnCreate", ctypes.byref(self.ptr))
        self.stream = None
        try:
            self.set_stream(stream_ptr)
        except BaseException:
            self.close()
            raise

    def set_stream(self, stream_ptr: int) -> None:
        if stream_ptr != self.stream:
            self.lib.call("cudnnSetStream", self.ptr, ctypes.c_void_p(stream_ptr or None))
            self.stream = stream_ptr

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, ctypes.c_void_p()
            cerr.check("cudnnDestroy", self.lib.fn("cudnnDestroy", [P])(ptr), self.lib)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Descriptor:
    """Any ``cudnnCreateX``/``cudnnDestroyX`` pair as a context manager."""

    def __init__(self, lib, kind: str):
        self.lib, self.kind = lib, kind
        self._create, self._destroy = f"cudnnCreate{kind}", f"cudnnDestroy{kind}"
        lib.fn(self._create, [PP])
        lib.fn(self._destroy, [P])
        self.ptr = ctypes.c_void_p()
        lib.call(self._create, ctypes.byref(self.ptr))

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, ctypes.c_void_p()
            self.lib.call(self._destroy, ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ints(values):
    """A C ``int[]`` of ``values``."""
    return (ctypes.c_int * len(values))(*values)


def tensor_nd(lib, stack: ExitStack, data_type: int, dims) -> Descriptor:
    """A fully packed N-d tensor descriptor (``cudnnSetTensorNdDescriptor``)."""
    d = stack.enter_context(Descriptor(lib, "TensorDescriptor"))
    strides, acc = [], 1
    for n in reversed(dims):
        strides.insert(0, acc)
        acc *= n
    bind(lib, ("cudnnSetTensorNdDescriptor",))
    lib.call("cudnnSetTensorNdDescriptor", d.ptr, data_type, len(dims), ints(dims), ints(strides))
    return d


def tensor_dims(lib, desc: Descriptor) -> tuple:
    bind(lib, ("cudnnGetTensorNdDescriptor",))
    dt, nb = ctypes.c_int(), ctypes.c_int()
    dims, strides = (ctypes.c_int * 8)(), (ctypes.c_int * 8)()
    lib.call("cudnnGetTensorNdDescriptor", desc.ptr, 8, ctypes.byref(dt), ctypes.byref(nb),
             dims, strides)
    return tuple(dims[: nb.value])
