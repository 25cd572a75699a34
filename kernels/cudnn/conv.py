"""2-D convolution through cuDNN: the forward pass through the legacy API (every algorithm, one
by one) and the ``nvidia-cudnn-frontend`` graph API (``conv_fprop`` with heuristics); the
backward-data and backward-filter (+ bias) phases through the legacy API, per algorithm.

    from kernels.cudnn.conv import CudnnConv, CudnnConvBackwardData, CudnnConvBackwardFilter, algorithm_table
    with CudnnConv(problem, precision="fp16", algo="implicit_precomp_gemm") as conv:
        y = conv(x, w, b)                      # CuPy arrays, problem.layout, w always KCRS
    rows = algorithm_table(problem, "fp32")    # one row per cuDNN algorithm: status, time, workspace
    with CudnnConvBackwardData(problem, algo="algo_1") as bd:
        dx = bd(w, dy)
    with CudnnConvBackwardFilter(problem) as bf:   # auto: cuDNN's heuristic pick
        dw, db = bf(x, dy)                     # dw KCRS; db None without a bias

Layouts: activations NCHW or NHWC as ``problem.layout`` says; the filter is our KCRS, copied once
in ``build`` to KRSC for NHWC (cuDNN's NHWC filter format).  Bias: ``cudnnAddTensor`` after the
convolution (legacy path) or a fused ``add`` node (frontend path).
Math: fp32 = CUDNN_FMA_MATH (no TF32, as PyTorch with TF32 off), tf32 = CUDNN_DEFAULT_MATH
(TF32 permitted on A100 and later), fp16 = CUDNN_TENSOR_OP_MATH; accumulation in fp32 always.
Prototypes and enum values are those of cuDNN 9's cudnn_cnn.h / cudnn_ops.h
(tests/test_cudnn_conv_backward.py checks them against the header text where it is found).
"""
from __future__ import annotations

import ctypes
import importlib.util
from contextlib import ExitStack

import numpy as np

from ..conv.geometry import ConvProblem
from ..dtypes import canonical
from ..errors import BadInput, MissingDependency, Unsupported
from . import errors as cerr
from . import handles
from .handles import (CUDNN_DATA_FLOAT, CUDNN_DATA_HALF, CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH,
                      CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, PI, PSZ, Descriptor,
                      Handle, I, P)

FWD_ALGOS = {  # cudnnConvolutionFwdAlgo_t (cudnn_ops.h)
    "implicit_gemm": 0, "implicit_precomp_gemm": 1, "gemm": 2, "direct": 3, "fft": 4,
    "fft_tiling": 5, "winograd": 6, "winograd_nonfused": 7,
}
ALGO_BY_ID = {v: k for k, v in FWD_ALGOS.items()}
# cudnnConvolutionBwdDataAlgo_t and cudnnConvolutionBwdFilterAlgo_t (cudnn_ops.h); the filter's
# WINOGRAD (4) is left out: the header says "not implemented".
BWD_DATA_ALGOS = {"algo_0": 0, "algo_1": 1, "fft": 2, "fft_tiling": 3, "winograd": 4,
                  "winograd_nonfused": 5}
BWD_FILTER_ALGOS = {"algo_0": 0, "algo_1": 1, "fft": 2, "algo_3": 3, "winograd_nonfused": 5,
                    "fft_tiling": 6}
CUDNN_CROSS_CORRELATION = 1
CUDNN_TENSOR_NCHW, CUDNN_TENSOR_NHWC = 0, 1
# precision -> (numpy storage, data type, math type)
PRECISION = {"fp32": (np.float32, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH),
             "tf32": (np.float32, CUDNN_DATA_FLOAT, CUDNN_DEFAULT_MATH),
             "fp16": (np.float16, CUDNN_DATA_HALF, CUDNN_TENSOR_OP_MATH)}


class _Perf(ctypes.Structure):
    """cudnnConvolutionFwdAlgoPerf_t; cudnnConvolutionBwdDataAlgoPerf_t and
    cudnnConvolutionBwdFilterAlgoPerf_t have the same fields (cudnn_cnn.h)."""
    _fields_ = [("algo", ctypes.c_int), ("status", ctypes.c_int), ("time", ctypes.c_float),
                ("memory", ctypes.c_size_t), ("determinism", ctypes.c_int),
                ("mathType", ctypes.c_int), ("reserved", ctypes.c_int * 3)]


PROTOTYPES = {
    "cudnnSetTensor4dDescriptor": [P, I, I, I, I, I, I],
    "cudnnSetFilter4dDescriptor": [P, I, I, I, I, I, I],
    "cudnnSetConvolution2dDescriptor": [P, I, I, I, I, I, I, I, I],
    "cudnnSetConvolutionGroupCount": [P, I],
    "cudnnSetConvolutionMathType": [P, I],
    "cudnnGetConvolution2dForwardOutputDim": [P, P, P, PI, PI, PI, PI],
    "cudnnGetConvolutionForwardWorkspaceSize": [P, P, P, P, P, I, PSZ],
    "cudnnFindConvolutionForwardAlgorithm": [P, P, P, P, P, I, PI, ctypes.POINTER(_Perf)],
    "cudnnGetConvolutionForwardAlgorithm_v7": [P, P, P, P, P, I, PI, ctypes.POINTER(_Perf)],
    "cudnnConvolutionForward": [P, P, P, P, P, P, P, I, P, ctypes.c_size_t, P, P, P],
    "cudnnAddTensor": [P, P, P, P, P, P, P],
    "cudnnGetConvolutionBackwardDataWorkspaceSize": [P, P, P, P, P, I, PSZ],
    "cudnnGetConvolutionBackwardDataAlgorithm_v7": [P, P, P, P, P, I, PI, ctypes.POINTER(_Perf)],
    "cudnnConvolutionBackwardData": [P, P, P, P, P, P, P, I, P, ctypes.c_size_t, P, P, P],
    "cudnnGetConvolutionBackwardFilterWorkspaceSize": [P, P, P, P, P, I, PSZ],
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7": [P, P, P, P, P, I, PI, ctypes.POINTER(_Perf)],
    "cudnnConvolutionBackwardFilter": [P, P, P, P, P, P, P, I, P, ctypes.c_size_t, P, P, P],
    "cudnnConvolutionBackwardBias": [P, P, P, P, P, P, P],
}


def check_request(problem: ConvProblem, precision: str, algo: str, algos: dict = FWD_ALGOS) -> str:
    """Validate (``algo`` one of ``algos`` or auto); returns the canonical precision."""
    if not isinstance(problem, ConvProblem):
        raise BadInput(f"problem must be a ConvProblem, got {type(problem).__name__}")
    prec = canonical(precision)
    if prec not in PRECISION:
        raise Unsupported(f"dtype {prec} is not offered by the cudnn conv variant; allowed: "
                          f"{', '.join(PRECISION)}")
    if algo != "auto" and algo not in algos:
        raise BadInput(f"conv algo {algo!r} is unknown; allowed: auto, {', '.join(algos)}")
    return prec


def weights_for_layout(w, layout: str):
    """Our KCRS filter in the memory order cuDNN's filter format for ``layout`` wants."""
    return w if layout == "NCHW" else w.transpose(0, 2, 3, 1)


class _LegacyConv:
    """What every legacy-API phase of one problem shares: handle, x/w/y/bias and convolution
    descriptors (the output size cross-checked with cuDNN's), the algorithm choice (``auto``:
    cuDNN's heuristic first choice among those that run), its workspace, the filter in cuDNN's
    format.  A phase names its algorithm table, its two query functions and the four descriptors
    they take, in the header's order (``OPERANDS``), and allocates its outputs (``_allocate``)."""

    ALGOS, ALGO_COUNT = FWD_ALGOS, 8    # ALGO_COUNT: the enum's CUDNN_..._ALGO_COUNT
    WORKSPACE_FN = "cudnnGetConvolutionForwardWorkspaceSize"
    HEURISTIC_FN = "cudnnGetConvolutionForwardAlgorithm_v7"
    ENUM = "CUDNN_CONVOLUTION_FWD_ALGO_"
    VARIANT = "cudnn conv"
    # the descriptors WORKSPACE_FN and HEURISTIC_FN take after the handle, in the header's order
    OPERANDS = ("x_desc", "w_desc", "conv_desc", "y_desc")
    OUTPUTS = ("y",)       # device arrays _allocate makes, dropped at close

    def __init__(self, problem: ConvProblem, *, precision: str = "fp32", algo: str = "auto",
                 lib=None):
        self.precision = check_request(problem, precision, algo, self.ALGOS)
        self.problem = p = problem
        lib, cupy = handles.open_gpu(lib, self.VARIANT)
        self.lib, self._cp = lib, cupy
        handles.bind(lib, prototypes=PROTOTYPES)
        self._stack = st = ExitStack()
        try:
            storage, dt, math = PRECISION[self.precision]
            self.storage = np.dtype(storage)
            fmt = CUDNN_TENSOR_NCHW if p.layout == "NCHW" else CUDNN_TENSOR_NHWC
            self.handle = st.enter_context(Handle(lib, cupy.cuda.get_current_stream().ptr))
            self.x_desc = st.enter_context(Descriptor(lib, "TensorDescriptor"))
            lib.call("cudnnSetTensor4dDescriptor", self.x_desc.ptr, fmt, dt, p.N, p.C, p.H, p.W)
            self.w_desc = st.enter_context(Descriptor(lib, "FilterDescriptor"))
            lib.call("cudnnSetFilter4dDescriptor", self.w_desc.ptr, dt, fmt, p.K, p.Cg, p.R, p.S)
            self.conv_desc = st.enter_context(Descriptor(lib, "ConvolutionDescriptor"))
            lib.call("cudnnSetConvolution2dDescriptor", self.conv_desc.ptr, p.pad[0], p.pad[1],
                     p.stride[0], p.stride[1], p.dilation[0], p.dilation[1],
                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)
            lib.call("cudnnSetConvolutionGroupCount", self.conv_desc.ptr, p.groups)
            lib.call("cudnnSetConvolutionMathType", self.conv_desc.ptr, math)
            self.math_type = math      # an "auto" choice replaces it with its heuristic row's
            dims = [ctypes.c_int() for _ in range(4)]
            lib.call("cudnnGetConvolution2dForwardOutputDim", self.conv_desc.ptr, self.x_desc.ptr,
                     self.w_desc.ptr, *map(ctypes.byref, dims))
            got = tuple(d.value for d in dims)
            if got != (p.N, p.K, p.P, p.Q):
                raise BadInput(f"cuDNN computes output {got}; our geometry says "
                               f"{(p.N, p.K, p.P, p.Q)} for {p.describe()}")
            self.y_desc = st.enter_context(Descriptor(lib, "TensorDescriptor"))
            lib.call("cudnnSetTensor4dDescriptor", self.y_desc.ptr, fmt, dt, p.N, p.K, p.P, p.Q)
            self.b_desc = st.enter_context(Descriptor(lib, "TensorDescriptor"))
            lib.call("cudnnSetTensor4dDescriptor", self.b_desc.ptr, fmt, dt, 1, p.K, 1, 1)
            self._allocate(cupy)
            self.algo = self._choose(algo)
            self.workspace_bytes = self.workspace_size(self.algo)
            self.workspace = cupy.empty(max(self.workspace_bytes, 1), dtype=cupy.uint8)
            self._one, self._zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
            self._w_cache = None
            st.callback(self._release)
        except BaseException:
            st.close()
            raise

    @classmethod
    def enum_name(cls, algo: str) -> str:
        """The header's name of ``algo``: fft -> CUDNN_..._ALGO_FFT, algo_0 -> CUDNN_..._ALGO_0."""
        return cls.ENUM + algo.upper().removeprefix("ALGO_")

    def _allocate(self, cupy) -> None:
        raise NotImplementedError

    def _operands(self) -> tuple:
        return tuple(getattr(self, name) for name in self.OPERANDS)

    def _release(self):
        self.workspace = self._w_cache = None
        for name in self.OUTPUTS:
            setattr(self, name, None)

    def workspace_size(self, algo: str) -> int:
        size = ctypes.c_size_t()
        self.lib.call(self.WORKSPACE_FN, self.handle.ptr, *(d.ptr for d in self._operands()),
                      self.ALGOS[algo], ctypes.byref(size))
        return size.value

    def _perf_rows(self, fn: str) -> list:
        perf = (_Perf * self.ALGO_COUNT)()
        n = ctypes.c_int()
        by_id = {v: k for k, v in self.ALGOS.items()}
        self.lib.call(fn, self.handle.ptr, *(d.ptr for d in self._operands()), self.ALGO_COUNT,
                      ctypes.byref(n), perf)
        return [{"algo": by_id.get(r.algo, str(r.algo)), "status": cerr.status_name(r.status),
                 "time_ms": float(r.time) if r.status == 0 else None, "workspace": int(r.memory),
                 "math_type": int(r.mathType), "deterministic": bool(r.determinism)}
                for r in perf[: n.value]]

    def heuristics(self) -> list:
        """cuDNN's ranking (the phase's ..._Algorithm_v7), without running anything."""
        return self._perf_rows(self.HEURISTIC_FN)

    def _choose(self, algo: str) -> str:
        if algo != "auto":
            try:
                self.workspace_size(algo)
            except cerr.CudnnError as e:
                raise Unsupported(f"cuDNN algorithm {self.enum_name(algo)} does not serve "
                                  f"{self.problem.describe()} {self.precision}: {e}") from e
            return algo
        # only algorithms of our table: a heuristic row of one left out (the filter's
        # unimplemented WINOGRAD) has no name to run under
        row = pick_heuristic_row([r for r in self.heuristics() if r["algo"] in self.ALGOS],
                                 self.precision)
        if row is None:
            raise Unsupported(f"cuDNN's heuristics offer no algorithm for {self.problem.describe()} "
                              f"{self.precision}")
        # The row's math type is part of the choice (an algorithm ranked with Tensor Core math
        # may not serve FMA math): set it on the descriptor, as PyTorch does per perf row.
        self.lib.call("cudnnSetConvolutionMathType", self.conv_desc.ptr, row["math_type"])
        self.math_type = row["math_type"]
        return row["algo"]

    def _check_arrays(self, **arrays) -> None:
        """Each array (name=(array, expected shape)) of that shape and the storage type."""
        for name, (a, shape) in arrays.items():
            if tuple(a.shape) != tuple(shape):
                raise BadInput(f"{name} has shape {tuple(a.shape)}; expected {tuple(shape)}"
                               + (" (KCRS)" if name == "w" else ""))
            if a.dtype != self.storage:
                raise BadInput(f"{name} must be {self.storage} for {self.precision}, not {a.dtype}")
        self.handle.set_stream(self._cp.cuda.get_current_stream().ptr)

    def _filter(self, w):
        """Our KCRS filter as cuDNN's filter format wants it (KRSC for NHWC: one copy per
        distinct filter array)."""
        if self.problem.layout == "NHWC":
            if self._w_cache is None or self._w_cache[0] is not w:
                self._w_cache = (w, self._cp.ascontiguousarray(weights_for_layout(w, "NHWC")))
            return self._w_cache[1]
        return self._cp.ascontiguousarray(w)

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CudnnConv(_LegacyConv):
    """Legacy-API forward convolution for one problem; ``algo="auto"`` takes cuDNN's heuristic
    first choice (cudnnGetConvolutionForwardAlgorithm_v7) among those that run."""

    def _allocate(self, cupy) -> None:
        self.y = cupy.empty(self.problem.y_shape, dtype=self.storage)

    def find(self) -> list:
        """cudnnFindConvolutionForwardAlgorithm: cuDNN runs every algorithm and times it."""
        return self._perf_rows("cudnnFindConvolutionForwardAlgorithm")

    def __call__(self, x, w, b=None):
        p = self.problem
        self._check_arrays(x=(x, p.x_shape), w=(w, p.w_shape))
        if p.bias and (b is None or tuple(b.shape) != p.b_shape):
            raise BadInput(f"b must have shape {p.b_shape}")
        wd = self._filter(w)
        lib, one, zero = self.lib, ctypes.byref(self._one), ctypes.byref(self._zero)
        lib.call("cudnnConvolutionForward", self.handle.ptr, one, self.x_desc.ptr, x.data.ptr,
                 self.w_desc.ptr, wd.data.ptr, self.conv_desc.ptr, FWD_ALGOS[self.algo],
                 self.workspace.data.ptr, self.workspace_bytes, zero, self.y_desc.ptr,
                 self.y.data.ptr)
        if p.bias:
            lib.call("cudnnAddTensor", self.handle.ptr, one, self.b_desc.ptr, b.data.ptr, one,
                     self.y_desc.ptr, self.y.data.ptr)
        return self.y


class CudnnConvBackwardData(_LegacyConv):
    """Backward-data ``dx = conv_transpose(dy, w)`` (cudnnConvolutionBackwardData) with one
    algorithm; ``auto``: cudnnGetConvolutionBackwardDataAlgorithm_v7's first choice."""

    ALGOS, ALGO_COUNT = BWD_DATA_ALGOS, 6
    WORKSPACE_FN = "cudnnGetConvolutionBackwardDataWorkspaceSize"
    HEURISTIC_FN = "cudnnGetConvolutionBackwardDataAlgorithm_v7"
    ENUM = "CUDNN_CONVOLUTION_BWD_DATA_ALGO_"
    VARIANT = "cudnn conv backward-data"
    OPERANDS, OUTPUTS = ("w_desc", "y_desc", "conv_desc", "x_desc"), ("dx",)   # w, dy, conv, dx

    def _allocate(self, cupy) -> None:
        self.dx = cupy.empty(self.problem.x_shape, dtype=self.storage)

    def __call__(self, w, dy):
        p = self.problem
        self._check_arrays(w=(w, p.w_shape), dy=(dy, p.y_shape))
        wd = self._filter(w)
        self.lib.call("cudnnConvolutionBackwardData", self.handle.ptr, ctypes.byref(self._one),
                      self.w_desc.ptr, wd.data.ptr, self.y_desc.ptr, dy.data.ptr,
                      self.conv_desc.ptr, BWD_DATA_ALGOS[self.algo], self.workspace.data.ptr,
                      self.workspace_bytes, ctypes.byref(self._zero), self.x_desc.ptr,
                      self.dx.data.ptr)
        return self.dx


class CudnnConvBackwardFilter(_LegacyConv):
    """Backward-weights: ``dw`` (cudnnConvolutionBackwardFilter, one algorithm; ``auto``:
    cudnnGetConvolutionBackwardFilterAlgorithm_v7's first choice) and, with a bias, ``db``
    (cudnnConvolutionBackwardBias).  Returns ``(dw, db)``: dw KCRS (a view of cuDNN's KRSC for
    NHWC), db None without a bias."""

    ALGOS, ALGO_COUNT = BWD_FILTER_ALGOS, 7
    WORKSPACE_FN = "cudnnGetConvolutionBackwardFilterWorkspaceSize"
    HEURISTIC_FN = "cudnnGetConvolutionBackwardFilterAlgorithm_v7"
    ENUM = "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_"
    VARIANT = "cudnn conv backward-filter"
    OPERANDS, OUTPUTS = ("x_desc", "y_desc", "conv_desc", "w_desc"), ("dw", "db")   # x, dy, conv, dw

    def _allocate(self, cupy) -> None:
        p = self.problem
        shape = p.w_shape if p.layout == "NCHW" else (p.K, p.R, p.S, p.Cg)   # cuDNN's format
        self.dw = cupy.empty(shape, dtype=self.storage)
        self.db = cupy.empty((p.K,), dtype=self.storage) if p.bias else None

    def __call__(self, x, dy):
        p = self.problem
        self._check_arrays(x=(x, p.x_shape), dy=(dy, p.y_shape))
        one, zero = ctypes.byref(self._one), ctypes.byref(self._zero)
        self.lib.call("cudnnConvolutionBackwardFilter", self.handle.ptr, one, self.x_desc.ptr,
                      x.data.ptr, self.y_desc.ptr, dy.data.ptr, self.conv_desc.ptr,
                      BWD_FILTER_ALGOS[self.algo], self.workspace.data.ptr, self.workspace_bytes,
                      zero, self.w_desc.ptr, self.dw.data.ptr)
        if p.bias:
            self.lib.call("cudnnConvolutionBackwardBias", self.handle.ptr, one, self.y_desc.ptr,
                          dy.data.ptr, zero, self.b_desc.ptr, self.db.data.ptr)
        dw = self.dw if p.layout == "NCHW" else self.dw.transpose(0, 3, 1, 2)
        return dw, self.db


BACKWARD = {"bwd_data": CudnnConvBackwardData, "bwd_weights": CudnnConvBackwardFilter}


def pick_heuristic_row(rows: list, precision: str):
    """The first successful heuristic row whose math type the precision allows: fp32 never takes
    a Tensor Core row (TF32 or a down-conversion would miss fp32's tolerance)."""
    banned = {CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION} if precision == "fp32" else set()
    for row in rows:
        if row["status"] == "CUDNN_STATUS_SUCCESS" and row["math_type"] not in banned:
            return row
    return None


def algorithm_table(problem: ConvProblem, precision: str = "fp32", lib=None) -> list:
    """One row per cuDNN forward algorithm for ``problem``: workspace or the status that rules
    it out, plus cuDNN's own timing from cudnnFindConvolutionForwardAlgorithm."""
    with CudnnConv(problem, precision=precision, lib=lib) as conv:
        found = {r["algo"]: r for r in conv.find()}
        rows = []
        for name in FWD_ALGOS:
            try:
                ws = conv.workspace_size(name)
                status = "CUDNN_STATUS_SUCCESS"
            except cerr.CudnnError as e:
                ws, status = None, e.name
            f = found.get(name, {})
            rows.append({"algo": name, "status": status if ws is None else f.get("status", status),
                         "workspace": ws, "find_time_ms": f.get("time_ms")})
        return rows


# -- nvidia-cudnn-frontend ---------------------------------------------------------------------
def frontend_available() -> tuple:
    if importlib.util.find_spec("cudnn") is None:
        return False, str(MissingDependency("nvidia-cudnn-frontend", "the cudnn conv graph path",
                                            "pip install nvidia-cudnn-frontend"))
    return True, ""


def _packed_strides(problem: ConvProblem, dims_nchw, layout: str) -> list:
    n, c, h, w = dims_nchw
    if layout == "NCHW":
        return [c * h * w, h * w, w, 1]
    return [h * w * c, 1, w * c, c]


def build_graph(g, cudnn, precision: str):
    """validate -> operation graph -> execution plans -> filter -> support -> build.

    The steps one by one rather than ``g.build()``, so plans are deselected by their numerical
    notes before the support check, as PyTorch's cuDNN v8 convolution filters its engine
    configs (aten/src/ATen/native/cudnn/Conv_v8.cpp): ``DOWN_CONVERT_INPUTS`` always (an engine
    that converts the inputs to a narrower type, e.g. fp32 to fp16, is another precision than
    the row's, tf32 included), and for fp32 also ``TENSOR_CORE``, so cuDNN cannot run an fp32
    convolution as TF32 (PyTorch with TF32 off).  tf32 and fp16 keep the Tensor Core plans.
    """
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    notes = [cudnn.numerical_note.DOWN_CONVERT_INPUTS]
    if precision == "fp32":
        notes.append(cudnn.numerical_note.TENSOR_CORE)
    g.deselect_numeric_notes(notes)
    g.check_support()
    g.build_plans()


class FrontendConv:
    """``conv_fprop`` (+ bias ``add``) as a cudnn-frontend graph built once, executed per call."""

    def __init__(self, problem: ConvProblem, *, precision: str = "fp32"):
        self.precision = check_request(problem, precision, "auto")
        ok, reason = frontend_available()
        if not ok:
            raise Unsupported(reason)
        from kernels import gpu
        ok, reason = gpu.detect()
        if not ok:
            raise Unsupported(f"the cudnn frontend conv needs a GPU: {reason}")
        import cudnn
        import cupy
        self._cp, self._cudnn, self.problem = cupy, cudnn, problem
        p = problem
        io = cudnn.data_type.HALF if self.precision == "fp16" else cudnn.data_type.FLOAT
        self.storage = np.dtype(PRECISION[self.precision][0])
        not_supported = getattr(cudnn, "cudnnGraphNotSupportedError", ())
        self.handle = cudnn.create_handle()
        try:
            cudnn.set_stream(handle=self.handle, stream=cupy.cuda.get_current_stream().ptr)
            g = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT, handle=self.handle)
            xd, wd, yd = (p.N, p.C, p.H, p.W), (p.K, p.Cg, p.R, p.S), (p.N, p.K, p.P, p.Q)
            self.X = g.tensor(name="X", dim=list(xd), stride=_packed_strides(p, xd, p.layout),
                              data_type=io)
            self.W = g.tensor(name="W", dim=list(wd), stride=_packed_strides(p, wd, p.layout),
                              data_type=io)
            y = g.conv_fprop(image=self.X, weight=self.W, padding=list(p.pad),
                             stride=list(p.stride), dilation=list(p.dilation),
                             compute_data_type=cudnn.data_type.FLOAT, name="conv")
            self.B = None
            if p.bias:
                self.B = g.tensor(name="B", dim=[1, p.K, 1, 1], stride=[p.K, 1, 1, 1],
                                  data_type=io)
                y = g.add(a=y, b=self.B, name="bias")
            y.set_output(True).set_data_type(io)
            y.set_dim(list(yd)).set_stride(_packed_strides(p, yd, p.layout))
            self.Y, self.graph = y, g
            build_graph(g, cudnn, self.precision)
            self.workspace = cupy.empty(max(g.get_workspace_size(), 1), dtype=cupy.uint8)
            self.y = cupy.empty(p.y_shape, dtype=self.storage)
            self._w_cache = None
        except not_supported as e:
            self.close()
            raise Unsupported(f"cudnn-frontend does not support {p.describe()}: {e}") from e
        except BaseException:
            self.close()
            raise

    def __call__(self, x, w, b=None):
        p = self.problem
        if p.layout == "NHWC":
            if self._w_cache is None or self._w_cache[0] is not w:
                self._w_cache = (w, self._cp.ascontiguousarray(weights_for_layout(w, "NHWC")))
            w = self._w_cache[1]
        pack = {self.X: x, self.W: w, self.Y: self.y}
        if self.B is not None:
            pack[self.B] = b
        self._cudnn.set_stream(handle=self.handle, stream=self._cp.cuda.get_current_stream().ptr)
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return self.y

    def close(self):
        h, self.handle = getattr(self, "handle", None), None
        if h is not None:
            self._cudnn.destroy_handle(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
