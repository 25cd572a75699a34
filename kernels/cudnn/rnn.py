"""LSTM and GRU forward through cuDNN 9's v8 RNN API, called with ctypes on CuPy memory.

    from kernels.cudnn.rnn import CudnnRNN
    with CudnnRNN(params, batch=64, seq_len=100, algo="standard", precision="fp32") as rnn:
        y, h_n, c_n = rnn(x, h0, c0)          # CuPy arrays, time-major (T, B, I)

What a call costs: one ``cudnnRNNForward`` on CuPy's current stream; everything else (handle,
descriptors, weight space filled from our canonical weights, workspace, reserve space,
``cudnnBuildRNNDynamic`` for PERSIST_DYNAMIC) happens in the constructor and is released by
:meth:`CudnnRNN.close` (or leaving the ``with`` block), also when the constructor fails half-way.

Weight layout.  cuDNN keeps all weights in one opaque "weight space"; ``cudnnGetRNNWeightParams``
says where each matrix and bias of a (pseudo-)layer lives, by ``linLayerID``:

- LSTM: 0..3 are the matrices applied to the layer's input, 4..7 those applied to the recurrent
  state, each in gate order input, forget, new memory (cell candidate), output = our ``i, f, g, o``.
- GRU: 0..2 input, 3..5 recurrent, gate order reset, update, new memory (h~) = our ``r, z, n``;
  cuDNN's GRU adds the recurrent bias of the new gate *inside* the reset product
  (``h~ = tanh(W_h x + b_Wh + r * (R_h h + b_Rh))``), the "reset after" form our reference uses.
- With ``CUDNN_RNN_DOUBLE_BIAS`` the bias returned for linLayerID k < G is our ``b_ih`` block, for
  k >= G our ``b_hh`` block.  Each matrix is ``(H, width)`` row-major, exactly our rows.

:func:`weight_plan` writes that mapping down as data and :func:`load_weights` applies it through
two callables (query a block's address and shape, write an array there), so the mapping is tested
without a GPU by a fake that records what went where.
"""
from __future__ import annotations

import ctypes
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from ..dtypes import canonical
from ..errors import BadInput, MicrobenchError, Unsupported
from ..params import GATES, RNNParams, check_dim, require_unidirectional
from . import errors as cerr
from . import handles
from .handles import (CUDNN_DATA_FLOAT, CUDNN_DATA_HALF, CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH,
                      CUDNN_TENSOR_OP_MATH, MATH_NAMES, PI, PP, PSZ, SZ, U32, Descriptor, Handle, I, P,
                      ints, tensor_dims, tensor_nd)

# -- enums (cudnn_adv.h / cudnn_graph.h, cuDNN 9) --------------------------------------------
CUDNN_RNN_ALGO = {"standard": 0, "persist_static": 1, "persist_dynamic": 2,
                  "persist_static_small_h": 3}
ALGO_NAMES = {0: "CUDNN_RNN_ALGO_STANDARD", 1: "CUDNN_RNN_ALGO_PERSIST_STATIC",
              2: "CUDNN_RNN_ALGO_PERSIST_DYNAMIC", 3: "CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H"}
# cellMode by RNNParams.cell_mode: CUDNN_RNN_RELU, CUDNN_RNN_TANH, CUDNN_LSTM, CUDNN_GRU
CUDNN_CELL = {"rnn_relu": 0, "rnn_tanh": 1, "lstm": 2, "gru": 3}
CUDNN_RNN_DOUBLE_BIAS = 2
CUDNN_UNIDIRECTIONAL = 0
CUDNN_LINEAR_INPUT = 0
CUDNN_FWD_MODE = {"inference": 0, "training": 1}
CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED = 1
CUDNN_RNN_PADDED_IO_DISABLED = 0

# precision -> (numpy storage, cudnn dataType, mathPrec, mathType).
# fp32 uses FMA math: no Tensor Cores and no TF32 (CUDNN_DEFAULT_MATH permits TF32 on A100 and
# later, which would miss fp32's 1e-5 tolerance); this is what PyTorch asks for with TF32 off.
# tf32: fp32 data with CUDNN_DEFAULT_MATH, which lets cuDNN run fp32 GEMMs as TF32 on Tensor Cores
# (what PyTorch asks for with TF32 allowed).  Not CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: that lets
# cuDNN down-convert fp32 operands to fp16, a different precision with fp16's range.
# fp16: half data, fp32 accumulation.
PRECISION = {
    "fp32": (np.float32, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH),
    "tf32": (np.float32, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_DEFAULT_MATH),
    "fp16": (np.float16, CUDNN_DATA_HALF, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH),
}
INT32_MAX = 2**31 - 1


# -- the weight layout, pure Python ----------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """Where one canonical block goes: cuDNN's (pseudoLayer, linLayerID) -> our arrays' rows."""

    layer: int
    lin_id: int
    gate: str
    matrix: str         # "w_ih" or "w_hh"
    bias: str           # "b_ih" or "b_hh"
    rows: slice         # gate block rows k*H .. (k+1)*H of matrix and bias


def weight_plan(cell: str, num_layers: int, hidden_size: int) -> tuple:
    """Every (layer, linLayerID) of a unidirectional ``cell`` network and the canonical block
    that fills it, in cuDNN's documented order (see the module docstring)."""
    if cell not in GATES:
        raise BadInput(f"cell {cell!r} is unknown; allowed: {', '.join(GATES)}")
    L, H = check_dim("num_layers", num_layers), check_dim("hidden_size", hidden_size)
    gates = GATES[cell]   # canonical order == cuDNN's linLayerID order within a half
    G = len(gates)
    plan = []
    for layer in range(L):
        for lin_id in range(2 * G):
            k = lin_id % G
            recurrent = lin_id >= G
            plan.append(Slot(layer, lin_id, gates[k], "w_hh" if recurrent else "w_ih",
                             "b_hh" if recurrent else "b_ih", slice(k * H, (k + 1) * H)))
    return tuple(plan)


@dataclass(frozen=True)
class Block:
    """A matrix or bias in the weight space as cuDNN reports it: address and dimensions."""

    addr: int
    dims: tuple


class LayoutMismatch(MicrobenchError):
    """cuDNN reported a block whose shape does not match our canonical block."""


def _check_block(what: str, block: Block, want: tuple) -> None:
    if not block.addr:
        raise LayoutMismatch(f"cudnnGetRNNWeightParams returned a NULL address for {what}")
    dims = tuple(int(d) for d in block.dims)
    if int(np.prod(dims)) != int(np.prod(want)) or \
            (len(want) == 2 and len(dims) >= 2 and dims[-2:] != want):
        raise LayoutMismatch(f"cuDNN's {what} has dims {dims}; our block is {want} row-major")


def load_weights(params: RNNParams, query, write) -> list:
    """Copy every canonical block of ``params`` to where cuDNN wants it.

    ``query(layer, lin_id) -> (Block, Block)`` is cudnnGetRNNWeightParams (matrix, bias);
    ``write(addr, array)`` copies a C-contiguous host array to a device address.
    Returns the (layer, lin_id, what, addr) records written, in order.
    """
    H = params.hidden_size
    done = []
    for s in weight_plan(params.cell, params.num_layers, H):
        layer = params.layers[s.layer]
        mat = np.ascontiguousarray(getattr(layer, s.matrix)[s.rows])
        bias = np.ascontiguousarray(getattr(layer, s.bias)[s.rows])
        m_block, b_block = query(s.layer, s.lin_id)
        tag = f"layer {s.layer} linLayerID {s.lin_id} ({s.gate}, {s.matrix})"
        _check_block(f"matrix of {tag}", m_block, mat.shape)
        _check_block(f"bias of {tag}", b_block, bias.shape)
        write(m_block.addr, mat)
        write(b_block.addr, bias)
        done.append((s.layer, s.lin_id, f"{s.matrix}[{s.gate}]", m_block.addr))
        done.append((s.layer, s.lin_id, f"{s.bias}[{s.gate}]", b_block.addr))
    return done


# -- argument validation, pure Python --------------------------------------------------------
@dataclass(frozen=True)
class RNNConfig:
    """Everything cudnnSetRNNDescriptor_v8 and the data descriptors get, validated."""

    cell: str
    algo: str
    precision: str
    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    batch: int
    seq_len: int

    @property
    def storage(self):
        return np.dtype(PRECISION[self.precision][0])

    @property
    def data_type(self) -> int:
        return PRECISION[self.precision][1]

    @property
    def math_prec(self) -> int:
        return PRECISION[self.precision][2]

    @property
    def math_type(self) -> int:
        return PRECISION[self.precision][3]

    @property
    def algo_id(self) -> int:
        return CUDNN_RNN_ALGO[self.algo]

    def describe(self) -> dict:
        return {"algo": ALGO_NAMES[self.algo_id], "math_type": MATH_NAMES[self.math_type],
                "data_type": self.precision, "fwd_mode": self.mode,
                "math_prec": "float" if self.math_prec == CUDNN_DATA_FLOAT else "half"}


def rnn_config(params: RNNParams, *, batch: int, seq_len: int, algo: str = "standard",
               precision: str = "fp32", mode: str = "inference") -> RNNConfig:
    """Validate a request; BadInput names the bad value, Unsupported a precision cuDNN's RNN
    path here does not take."""
    if not isinstance(params, RNNParams) or params.cell_mode not in CUDNN_CELL:
        raise BadInput(f"params must be LSTMParams or GRUParams or VanillaRNNParams, got {type(params).__name__}")
    require_unidirectional(params, "the cudnn RNN variant")
    if algo not in CUDNN_RNN_ALGO:
        raise BadInput(f"algo {algo!r} is unknown; allowed: {', '.join(CUDNN_RNN_ALGO)}")
    if mode not in CUDNN_FWD_MODE:
        raise BadInput(f"mode {mode!r} is unknown; allowed: {', '.join(CUDNN_FWD_MODE)}")
    prec = canonical(precision)
    if prec not in PRECISION:
        raise Unsupported(f"dtype {prec} is not offered by the cudnn RNN variant; allowed: "
                          f"{', '.join(PRECISION)}")
    B, T = check_dim("batch", batch), check_dim("seq_len", seq_len)
    I, H, L = params.input_size, params.hidden_size, params.num_layers
    for name, v in (("batch", B), ("seq_len", T), ("input_size", I), ("hidden_size", H)):
        if v > INT32_MAX:
            raise BadInput(f"{name}={v} does not fit cuDNN's int32 argument")
    if params.dtype != np.dtype(PRECISION[prec][0]):
        raise BadInput(f"params are {params.dtype}; precision {prec} stores "
                       f"{np.dtype(PRECISION[prec][0])} (use params.astype)")
    return RNNConfig(params.cell_mode, algo, prec, mode, I, H, L, B, T)


def check_arrays(cfg: RNNConfig, x, h0, c0) -> None:
    """Shapes, dtypes and contiguity of the call's arrays (NumPy or CuPy)."""
    T, B, I, H, L = cfg.seq_len, cfg.batch, cfg.input_size, cfg.hidden_size, cfg.num_layers
    want = {"x": (x, (T, B, I)), "h0": (h0, (L, B, H))}
    if cfg.cell == "lstm":
        want["c0"] = (c0, (L, B, H))
    elif c0 is not None:
        raise BadInput("c0 was given to a GRU; a GRU has no cell state")
    for name, (a, shape) in want.items():
        if a is None:
            raise BadInput(f"{name} is required, shape {shape}")
        if tuple(a.shape) != shape:
            raise BadInput(f"{name} has shape {tuple(a.shape)}; expected {shape}")
        if a.dtype != cfg.storage:
            raise BadInput(f"{name} is {a.dtype}; expected {cfg.storage} for {cfg.precision}")
        if not a.flags.c_contiguous:
            raise BadInput(f"{name} must be C-contiguous")


# -- ctypes binding (handles and tensor descriptors: kernels.cudnn.handles) -------------------
PROTOTYPES = {
    **handles.PROTOTYPES,
    "cudnnCreateDropoutDescriptor": [PP],
    "cudnnDestroyDropoutDescriptor": [P],
    "cudnnDropoutGetStatesSize": [P, PSZ],
    "cudnnSetDropoutDescriptor": [P, P, ctypes.c_float, P, SZ, ctypes.c_ulonglong],
    "cudnnCreateRNNDescriptor": [PP],
    "cudnnDestroyRNNDescriptor": [P],
    "cudnnSetRNNDescriptor_v8": [P, I, I, I, I, I, I, I, I, ctypes.c_int32,
                                 ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, P, U32],
    "cudnnCreateRNNDataDescriptor": [PP],
    "cudnnDestroyRNNDataDescriptor": [P],
    "cudnnSetRNNDataDescriptor": [P, I, I, I, I, I, PI, P],
    "cudnnBuildRNNDynamic": [P, P, I],
    "cudnnGetRNNWeightSpaceSize": [P, P, PSZ],
    "cudnnGetRNNWeightParams": [P, P, ctypes.c_int32, SZ, P, ctypes.c_int32, P, PP, P, PP],
    "cudnnGetRNNTempSpaceSizes": [P, P, I, P, PSZ, PSZ],
    "cudnnRNNForward": [P, P, I, P, P, P, P, P, P, P, P, P, P, P, SZ, P, SZ, P, SZ, P],
}


def bind(lib, names=None) -> None:
    """Set the prototypes of the RNN API (and the handle and tensor calls) on ``lib``."""
    handles.bind(lib, names, PROTOTYPES)


def _as_unsupported(cfg: RNNConfig, e: cerr.CudnnError) -> Unsupported:
    return Unsupported(f"cuDNN does not run {ALGO_NAMES[cfg.algo_id]} for {cfg.cell} "
                       f"H{cfg.hidden_size} B{cfg.batch} L{cfg.num_layers} {cfg.precision}: {e}")


class CudnnRNN:
    """One configured cuDNN RNN forward pass (see the module docstring)."""

    def __init__(self, params: RNNParams, *, batch: int, seq_len: int, algo: str = "standard",
                 precision: str = "fp32", mode: str = "inference", lib=None):
        self.cfg = cfg = rnn_config(params, batch=batch, seq_len=seq_len, algo=algo,
                                    precision=precision, mode=mode)
        self.lib, self._cp = handles.open_gpu(lib, "cudnn")
        bind(self.lib)
        self._stack = ExitStack()
        try:
            self._build(params)
        except cerr.CudnnError as e:
            self._stack.close()
            # Only the persistent algorithms have shape/type limits; a refusal of one of them
            # (cuDNN says NOT_SUPPORTED or, for some limits, BAD_PARAM) is a skip, not a bug.
            if isinstance(e, Unsupported) or (cfg.algo != "standard" and e.category == 2000):
                raise _as_unsupported(cfg, e) from e
            raise
        except BaseException:
            self._stack.close()
            raise

    # -- construction -----------------------------------------------------------------------
    def _build(self, params: RNNParams) -> None:
        cfg, lib, cp, st = self.cfg, self.lib, self._cp, self._stack
        T, B, I, H, L = cfg.seq_len, cfg.batch, cfg.input_size, cfg.hidden_size, cfg.num_layers
        stream = cp.cuda.get_current_stream()
        self.handle = st.enter_context(Handle(lib, stream.ptr))
        h = self.handle.ptr

        self.dropout = st.enter_context(Descriptor(lib, "DropoutDescriptor"))
        self._dropout_states = None
        try:  # dropout 0 between layers: no RNG states needed
            lib.call("cudnnSetDropoutDescriptor", self.dropout.ptr, h, 0.0, None, 0, 0)
        except cerr.CudnnError:
            size = ctypes.c_size_t()
            lib.call("cudnnDropoutGetStatesSize", h, ctypes.byref(size))
            self._dropout_states = cp.empty(max(size.value, 1), dtype=cp.uint8)
            lib.call("cudnnSetDropoutDescriptor", self.dropout.ptr, h, 0.0,
                     self._dropout_states.data.ptr, size.value, 0)

        self.rnn = st.enter_context(Descriptor(lib, "RNNDescriptor"))
        lib.call("cudnnSetRNNDescriptor_v8", self.rnn.ptr, cfg.algo_id, CUDNN_CELL[cfg.cell],
                 CUDNN_RNN_DOUBLE_BIAS, CUDNN_UNIDIRECTIONAL, CUDNN_LINEAR_INPUT, cfg.data_type,
                 cfg.math_prec, cfg.math_type, I, H, H, L, self.dropout.ptr,
                 CUDNN_RNN_PADDED_IO_DISABLED)
        if cfg.algo == "persist_dynamic":  # NVRTC-compiles the persistent kernel for this batch
            lib.call("cudnnBuildRNNDynamic", h, self.rnn.ptr, B)

        seq = ints([T] * B)
        self.x_desc = st.enter_context(Descriptor(lib, "RNNDataDescriptor"))
        lib.call("cudnnSetRNNDataDescriptor", self.x_desc.ptr, cfg.data_type,
                 CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, T, B, I, seq, None)
        self.y_desc = st.enter_context(Descriptor(lib, "RNNDataDescriptor"))
        lib.call("cudnnSetRNNDataDescriptor", self.y_desc.ptr, cfg.data_type,
                 CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, T, B, H, seq, None)
        self.h_desc = tensor_nd(lib, st, cfg.data_type, (L, B, H))
        self.c_desc = tensor_nd(lib, st, cfg.data_type, (L, B, H))
        self.dev_seq = cp.full((B,), T, dtype=cp.int32)

        size = ctypes.c_size_t()
        lib.call("cudnnGetRNNWeightSpaceSize", h, self.rnn.ptr, ctypes.byref(size))
        self.weight_space = cp.zeros(size.value, dtype=cp.uint8)
        self.weight_bytes = size.value
        self._load_weights(params)

        ws, rs = ctypes.c_size_t(), ctypes.c_size_t()
        lib.call("cudnnGetRNNTempSpaceSizes", h, self.rnn.ptr, CUDNN_FWD_MODE[cfg.mode],
                 self.x_desc.ptr, ctypes.byref(ws), ctypes.byref(rs))
        self.workspace = cp.empty(max(ws.value, 1), dtype=cp.uint8)
        self.reserve = cp.empty(max(rs.value, 1), dtype=cp.uint8) if rs.value else None
        self.workspace_bytes, self.reserve_bytes = ws.value, rs.value

        dt = cfg.storage
        self.y = cp.empty((T, B, H), dtype=dt)
        self.hy = cp.empty((L, B, H), dtype=dt)
        self.cy = cp.empty((L, B, H), dtype=dt) if cfg.cell == "lstm" else None
        st.callback(self._release_buffers)

    def _load_weights(self, params: RNNParams) -> None:
        lib, cp = self.lib, self._cp
        base, total = self.weight_space.data.ptr, self.weight_bytes
        m_desc = self._stack.enter_context(Descriptor(lib, "TensorDescriptor"))
        b_desc = self._stack.enter_context(Descriptor(lib, "TensorDescriptor"))

        def query(layer, lin_id):
            m_addr, b_addr = ctypes.c_void_p(), ctypes.c_void_p()
            lib.call("cudnnGetRNNWeightParams", self.handle.ptr, self.rnn.ptr, layer, total,
                     base, lin_id, m_desc.ptr, ctypes.byref(m_addr), b_desc.ptr,
                     ctypes.byref(b_addr))
            return (Block(m_addr.value or 0, tensor_dims(lib, m_desc)),
                    Block(b_addr.value or 0, tensor_dims(lib, b_desc)))

        def write(addr, host):
            off = addr - base
            if off < 0 or off + host.nbytes > total or off % host.itemsize:
                raise LayoutMismatch(f"cuDNN placed a block at offset {off} ({host.nbytes} bytes) "
                                     f"outside or misaligned in a weight space of {total} bytes")
            view = self.weight_space[off:off + host.nbytes].view(host.dtype)
            view[...] = cp.asarray(host.ravel())

        self.placed = load_weights(params, query, write)

    def _release_buffers(self) -> None:
        for name in ("weight_space", "workspace", "reserve", "dev_seq", "y", "hy", "cy",
                     "_dropout_states"):
            setattr(self, name, None)

    # -- the timed call ---------------------------------------------------------------------
    def __call__(self, x, h0, c0=None):
        """Forward pass on CuPy's current stream; returns ``(y, h_n, c_n)`` (``c_n`` None for a
        GRU).  The outputs are this object's buffers, overwritten by the next call."""
        cfg, lib = self.cfg, self.lib
        if self.weight_space is None:
            raise BadInput("this CudnnRNN was closed")
        check_arrays(cfg, x, h0, c0)
        self.handle.set_stream(self._cp.cuda.get_current_stream().ptr)
        lstm = cfg.cell == "lstm"
        try:
            lib.call("cudnnRNNForward", self.handle.ptr, self.rnn.ptr, CUDNN_FWD_MODE[cfg.mode],
                     self.dev_seq.data.ptr, self.x_desc.ptr, x.data.ptr, self.y_desc.ptr,
                     self.y.data.ptr, self.h_desc.ptr, h0.data.ptr, self.hy.data.ptr,
                     self.c_desc.ptr if lstm else None, c0.data.ptr if lstm else None,
                     self.cy.data.ptr if lstm else None, self.weight_bytes,
                     self.weight_space.data.ptr, self.workspace_bytes, self.workspace.data.ptr,
                     self.reserve_bytes, self.reserve.data.ptr if self.reserve is not None else None)
        except cerr.CudnnError as e:
            if isinstance(e, Unsupported) or (cfg.algo != "standard" and e.category == 2000):
                raise _as_unsupported(cfg, e) from e
            raise
        return self.y, self.hy, self.cy

    def info(self) -> dict:
        d = self.cfg.describe()
        d.update(weight_space_bytes=self.weight_bytes, workspace_bytes=self.workspace_bytes,
                 reserve_bytes=self.reserve_bytes, cudnn=self.lib.version)
        return d

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
