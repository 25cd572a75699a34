"""``dst = src @ weights (+ bias)`` on strided, batched NumPy views, as one oneDNN ``matmul``.

    from kernels.onednn.strided import StridedMatmul
    mm = StridedMatmul(src, w, dst)          # src (..., M, K), w (..., K, N), dst (..., M, N)
    mm(src2, dst2)                           # views of the same shapes and strides, any addresses

:class:`kernels.onednn.matmul.PackedMatmul` multiplies row-major matrices; the convolutions need
more of oneDNN's matmul: batch dimensions (Winograd's alpha^2 GEMMs in one call), a batch
dimension of size 1 broadcast over the other operand's (one filter for every image of a 1x1
NCHW convolution), and operands that are strided views into larger buffers (an image inside a
batch, a transposed layout), described by their strides rather than copied.  Every operand is
given as a NumPy array (or view) whose shape and strides are those of the operand, so its memory
descriptor is read off the array, and numpy's own bounds are the bounds: a call checks that the
views it gets have the shapes and strides the primitive was built for, then points oneDNN at
their first elements.

``weights`` is packed by default: described with format ``any``, so the primitive picks its
blocked layout, and reordered into it once here, from the array given (its values are read now
and never again).  ``packed=False`` makes the weights an operand like the others (a view whose
shape and strides the primitive is built for, passed on every call): for a GEMM whose right
operand is the activation (``W @ x``, NCHW), which oneDNN then copies into its blocks per call,
as any GEMM does.

``bias`` is broadcast over ``dst``: its shape is ``dst``'s with ones where it is broadcast.  A
bias over the last axis only (per column) is the primitive's own bias argument; any other (per
row, as an NCHW output's per-channel bias) is a ``binary_add`` post-op.  Either way it is added
while the tile is in registers, not in a second pass over ``dst``.

Which implementation serves a shape is oneDNN's choice; ``info()["impl"]`` names it (``brg:...``
is the blocked-GEMM kernel; ``ref:any`` the slow reference, which :class:`StridedMatmul` refuses
unless ``allow_ref``: a convolution built on it would be a loop in C, not a GEMM).
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..errors import BadInput, Unsupported
from . import core
from . import errors as derr
from . import lib as L

# Calls lib.PROTOTYPES lacks (lib.py is the loader's; extended here, as matmul.py does).
L.PROTOTYPES.setdefault("dnnl_memory_desc_create_with_strides", (L.I32, [L.PP, L.I32, L.Dims, L.I32, L.Dims]))
L.PROTOTYPES.setdefault("dnnl_post_ops_append_binary", (L.I32, [L.P, L.I32, L.P]))
BINARY_ADD = 0x1fff0                         # dnnl_binary_add (checked against the library's name)
ARG_POST_OP_SRC1 = 32768 * 1 | 2             # DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1 (oneDNN 3.x)


def layout_of(a: np.ndarray) -> tuple:
    """``(shape, strides in elements)`` of a float32 view; a size-1 axis gets a stride that
    keeps oneDNN's descriptor valid (NumPy may give it 0 or anything)."""
    if a.dtype != np.float32:
        raise BadInput(f"oneDNN's matmul here takes float32 operands, got {a.dtype}")
    shape = tuple(int(d) for d in a.shape)
    strides = []
    for d, s in zip(shape, a.strides):
        if s % a.itemsize:
            raise BadInput(f"a stride of {s} bytes is not a whole number of {a.dtype} elements")
        if s < 0:
            raise BadInput(f"negative strides {a.strides} are not described to oneDNN")
        strides.append(s // a.itemsize)
    extent = 1 + sum((d - 1) * s for d, s in zip(shape, strides))
    strides = [s if d > 1 else extent for d, s in zip(shape, strides)]
    return shape, tuple(strides)


class StridedMatmul:
    """One oneDNN matmul over the layouts of ``src``, ``weights`` and ``dst`` (module docstring)."""

    kind = "matmul"

    def __init__(self, src: np.ndarray, weights: np.ndarray, dst: np.ndarray, *, packed: bool = True,
                 bias: np.ndarray | None = None, allow_ref: bool = False, lib=None):
        self._layouts = [layout_of(src), layout_of(np.asarray(weights)), layout_of(dst)]
        nd = len(self._layouts[2][0])
        if any(len(lay[0]) != nd for lay in self._layouts) or nd < 2:
            raise BadInput(f"src, weights and dst must have the same number (>= 2) of axes; got shapes "
                           f"{src.shape}, {np.shape(weights)}, {dst.shape}")
        (ss, _), (ws, _), (ds, _) = self._layouts
        if ss[-1] != ws[-2] or ds[-2:] != (ss[-2], ws[-1]):
            raise BadInput(f"shapes {ss} @ {ws} -> {ds} do not multiply")
        for i in range(nd - 2):
            if ds[i] != max(ss[i], ws[i]) or {ss[i], ws[i]} - {1, ds[i]}:
                raise BadInput(f"batch axis {i}: src {ss[i]}, weights {ws[i]}, dst {ds[i]} do not broadcast")
        if bias is not None:
            bias = np.ascontiguousarray(bias, np.float32)
            if bias.ndim != nd or any(b not in (1, d) for b, d in zip(bias.shape, ds)):
                raise BadInput(f"bias has shape {bias.shape}; expected dst's {ds} with ones where broadcast")
        self.packed = bool(packed)
        self.lib = lib or L.load()
        self.scope = core.Scope(self.lib)
        self._ptrs = [None, None, None]
        try:
            self._build(np.asarray(weights), bias, allow_ref)
        except BaseException:
            self.close()
            raise

    def _md(self, layout) -> ctypes.c_void_p:
        shape, strides = layout
        return self.scope._create("dnnl_memory_desc_create_with_strides", "dnnl_memory_desc_destroy",
                                  len(shape), core.dims(shape), L.DT["f32"], core.dims(strides))

    def _build(self, weights, bias, allow_ref) -> None:
        s, lib = self.scope, self.lib
        self.ctx = ctx = core.Context(s)
        src_md, w_user, dst_md = (self._md(lay) for lay in self._layouts)
        w_md = s.md(self._layouts[1][0], L.DT["f32"], "any") if self.packed else w_user
        attr = s.attr_user_scratchpad()
        bias_md, self.bias_kind = None, None
        if bias is not None:
            b_md = self._md(layout_of(bias))
            if all(d == 1 for d in bias.shape[:-1]):
                bias_md, self.bias_kind = b_md, "bias"
            else:
                if lib.name_of("dnnl_alg_kind2str", BINARY_ADD) not in (None, "binary_add"):
                    raise Unsupported(f"oneDNN {lib.version} names algorithm {BINARY_ADD:#x} otherwise than binary_add")
                po = s._create("dnnl_post_ops_create", "dnnl_post_ops_destroy")
                lib.call("dnnl_post_ops_append_binary", po, BINARY_ADD, b_md)
                lib.call("dnnl_primitive_attr_set_post_ops", attr, po)
                self.bias_kind = "binary_add post-op"
        pd = s.pd("dnnl_matmul_primitive_desc_create", ctx.engine, src_md, w_md, bias_md, dst_md, attr)
        self.impl = s.impl_info(pd)
        if self.impl.startswith("ref") and not allow_ref:
            raise Unsupported(f"oneDNN {lib.version} serves this matmul ({self.describe()}) only with its "
                              f"reference implementation ({self.impl})")
        mem = {"scratchpad": s.memory(s.arg_md(pd, "scratchpad"), ctx.engine)}
        if self.packed:
            want = s.arg_md(pd, "weights")
            self.weights_reordered = not s.md_equal(want, w_user)
            mem["weights"] = s.memory(want, ctx.engine)
            src_w = s.memory(w_user, ctx.engine, weights)      # the given array, read by the reorder
            _, r = core.reorder(s, ctx, w_user, want)
            core.Step(lib, "reorder weights", r, ctx.stream, {"from": src_w, "to": mem["weights"]})()
            core.wait(ctx)
        else:
            self.weights_reordered = False
            mem["weights"] = self._w = s.memory(w_user, ctx.engine, np.zeros(1, np.float32))
        if bias is not None:
            key = "bias" if self.bias_kind == "bias" else ARG_POST_OP_SRC1
            mem[key] = s.memory(b_md, ctx.engine, bias)
        placeholder = np.zeros(1, np.float32)       # each call points src and dst at its own views
        mem["src"] = self._src = s.memory(src_md, ctx.engine, placeholder)
        mem["dst"] = self._dst = s.memory(dst_md, ctx.engine, placeholder)
        self._step = core.Step(lib, self.kind, s.primitive(pd), ctx.stream, mem)
        self._set = lib.fn("dnnl_memory_set_data_handle")
        self._wait = lib.fn("dnnl_stream_wait")

    def describe(self) -> str:
        names = ("src", "weights", "dst")
        return ", ".join(f"{n} {sh} strides {st}" for n, (sh, st) in zip(names, self._layouts))

    def _point(self, which: int, memory, a: np.ndarray, name: str) -> None:
        lay = layout_of(a)
        if lay != self._layouts[which]:
            raise BadInput(f"{name} has shape {lay[0]} and strides {lay[1]} (elements); this matmul was "
                           f"built for shape {self._layouts[which][0]}, strides {self._layouts[which][1]}")
        addr = a.ctypes.data
        if self._ptrs[which] != addr:
            derr.check("dnnl_memory_set_data_handle", self._set(memory, ctypes.c_void_p(addr)))
            self._ptrs[which] = addr

    def __call__(self, src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``dst <- src @ weights (+ bias)``; ``weights`` only when built with ``packed=False``."""
        if self.scope.closed:
            raise BadInput("this oneDNN matmul was closed; build a new one")
        if (weights is None) != self.packed:
            raise BadInput("weights are passed on each call exactly when the matmul was built with packed=False")
        if not dst.flags.writeable:
            raise BadInput("dst must be writeable")
        self._point(0, self._src, src, "src")
        self._point(2, self._dst, dst, "dst")
        if weights is not None:
            self._point(1, self._w, weights, "weights")
        self._step()
        st = self._wait(self.ctx.stream)
        if st:
            derr.check("dnnl_stream_wait", st)
        return dst

    def info(self) -> dict:
        out = {"provider": "onednn", "primitive": self.kind, "impl": self.impl,
               "weights": "packed once (format any, reordered at build)" if self.packed
               else "an operand of each call (plain strided layout)",
               "weights_reordered": self.weights_reordered, "version": self.lib.version,
               "operands": self.describe()}
        if self.bias_kind:
            out["bias"] = self.bias_kind
        return out

    def close(self) -> None:
        self.scope.close()

    def __del__(self):
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.close()
