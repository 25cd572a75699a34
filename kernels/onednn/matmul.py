"""``y = x @ W (+ b) (+ y)`` as one oneDNN ``matmul`` primitive with W packed once.

    from kernels.onednn.matmul import PackedMatmul
    mm = PackedMatmul(w, m=64)               # w: (K, N); packed into oneDNN's layout here
    mm(x, out)                               # out[...] = x @ w, in place, no allocation
    acc = PackedMatmul(w, m=64, accumulate=True)
    acc(x, out)                              # out += x @ w  (oneDNN's ``sum`` post-op)

The weights are described with format ``any``, so the primitive picks its preferred (blocked,
packed) layout, and one reorder at construction puts ``w`` there: the CPU form of Appleyard's
"pre-transpose the weights", which OpenBLAS cannot offer (it has no pre-packed-weights API).
``x`` and ``out`` are plain row-major arrays owned by the caller; a call only points the
primitive's source and destination memories at them (``dnnl_memory_set_data_handle``) and
executes, so a step loop can hand it the buffers it already has.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..dtypes import canonical, storage
from ..errors import BadInput
from . import core
from . import lib as L


class PackedMatmul:
    def __init__(self, w: np.ndarray, *, m: int, bias: np.ndarray | None = None,
                 accumulate: bool = False, precision: str = "fp32", lib=None):
        w = np.asarray(w)
        if w.ndim != 2:
            raise BadInput(f"w must be a (K, N) matrix, got shape {w.shape}")
        self.m, (self.k, self.n) = int(m), w.shape
        if self.m <= 0:
            raise BadInput(f"m={m} must be a positive integer")
        self.precision = canonical(precision)
        self.dtype = storage(self.precision)
        self.lib = lib or L.load()
        self.scope = core.Scope(self.lib)
        try:
            self._build(w, bias, accumulate)
        except BaseException:
            self.close()
            raise

    def _build(self, w, bias, accumulate) -> None:
        s, lib = self.scope, self.lib
        self.ctx = ctx = core.Context(s)
        dt = core.data_type(self.precision)
        src_md = s.md((self.m, self.k), dt, "ab")
        dst_md = s.md((self.m, self.n), dt, "ab")
        w_user = s.md((self.k, self.n), dt, "ab")
        w_any = s.md((self.k, self.n), dt, "any")
        b_md = s.md((1, self.n), L.DT["f32"], "ab") if bias is not None else None
        attr = s.attr_user_scratchpad()
        if accumulate:
            po = s._create("dnnl_post_ops_create", "dnnl_post_ops_destroy")
            lib.call("dnnl_post_ops_append_sum", po, 1.0, 0, L.DT["undef"])
            lib.call("dnnl_primitive_attr_set_post_ops", attr, po)
        pd = s.pd("dnnl_matmul_primitive_desc_create", ctx.engine, src_md, w_any, b_md, dst_md, attr)
        self.impl = s.impl_info(pd)
        want = s.arg_md(pd, "weights")
        self.packed = not s.md_equal(want, w_user)
        w_mem = s.memory(w_user, ctx.engine, np.ascontiguousarray(w, dtype=self.dtype))
        mem = {"weights": s.memory(want, ctx.engine),
               "scratchpad": s.memory(s.arg_md(pd, "scratchpad"), ctx.engine)}
        _, r = core.reorder(s, ctx, w_user, want)
        core.Step(lib, "reorder weights", r, ctx.stream, {"from": w_mem, "to": mem["weights"]})()
        core.wait(ctx)
        if bias is not None:
            mem["bias"] = s.memory(b_md, ctx.engine, np.ascontiguousarray(bias, np.float32).reshape(1, -1))
        # source and destination start on placeholder buffers; each call points them at its own
        mem["src"] = self._src = s.memory(src_md, ctx.engine, np.zeros((self.m, self.k), self.dtype))
        mem["dst"] = self._dst = s.memory(dst_md, ctx.engine, np.zeros((self.m, self.n), self.dtype))
        self._step = core.Step(lib, "matmul", s.primitive(pd), ctx.stream, mem)
        self._set = lib.fn("dnnl_memory_set_data_handle")
        self._wait = lib.fn("dnnl_stream_wait")

    def _check(self, name, a, shape) -> None:
        if a.shape != shape or a.dtype != self.dtype or not a.flags.c_contiguous:
            raise BadInput(f"{name} must be a C-contiguous {self.dtype} array of shape {shape}; got "
                           f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}")

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        self._check("x", x, (self.m, self.k))
        self._check("out", out, (self.m, self.n))
        self._set(self._src, ctypes.c_void_p(x.ctypes.data))
        self._set(self._dst, ctypes.c_void_p(out.ctypes.data))
        self._step()
        st = self._wait(self.ctx.stream)
        if st:
            core.wait(self.ctx)
        return out

    def info(self) -> dict:
        return {"impl": self.impl, "weights_packed": self.packed, "m": self.m, "k": self.k, "n": self.n}

    def close(self) -> None:
        self.scope.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
