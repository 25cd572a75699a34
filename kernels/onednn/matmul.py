"""``y = x @ W (+ b) (+ y)`` as one oneDNN primitive with W packed once: ``matmul`` or ``inner_product``.

    from kernels.onednn.matmul import PackedInnerProduct, PackedMatmul
    mm = PackedMatmul(w, m=64)               # w: (K, N); packed into oneDNN's layout here
    mm(x, out)                               # out[...] = x @ w, in place, no allocation
    acc = PackedMatmul(w, m=64, accumulate=True)
    acc(x, out)                              # out += x @ w  (oneDNN's ``sum`` post-op)
    ip = PackedInnerProduct(w, m=64)         # same contract, oneDNN's inner_product primitive

The weights are described with format ``any``, so the primitive picks its preferred (blocked,
packed) layout, and one reorder at construction puts ``w`` there: the CPU form of Appleyard's
"pre-transpose the weights", which OpenBLAS cannot offer (it has no pre-packed-weights API).
``x`` and ``out`` are plain row-major arrays owned by the caller; a call only points the
primitive's source and destination memories at them (``dnnl_memory_set_data_handle``) and
executes, so a step loop can hand it the buffers it already has.

Which primitive packs depends on the ISA: on AVX2, oneDNN 3.2's matmul picks ``gemm:jit:f32``
and keeps the plain layout (``packed`` is False), while its inner product picks
``brgemm:avx2`` with weights blocked as ``AB8b16a``; :mod:`fusion.gemm` uses the inner product.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..dtypes import canonical, storage
from ..errors import BadInput
from . import core
from . import errors as derr
from . import lib as L


# The inner-product constructor is not among lib.PROTOTYPES (lib.py is the loader's; its table
# is extended here, for this module's one extra call, rather than edited there).
IP_CREATE = "dnnl_inner_product_forward_primitive_desc_create"
L.PROTOTYPES.setdefault(IP_CREATE, (L.I32, [L.PP, L.P, L.I32, L.P, L.P, L.P, L.P, L.P]))


class _Packed:
    """The shared contract: weights packed at construction, ``__call__(x, out)`` in place.
    A subclass says how the weights are described and how the primitive is created."""
    kind = ""

    def __init__(self, w: np.ndarray, *, m: int, bias: np.ndarray | None = None,
                 accumulate: bool = False, precision: str = "fp32", lib=None):
        w = np.asarray(w)
        if w.ndim != 2:
            raise BadInput(f"w must be a (K, N) matrix, got shape {w.shape}")
        self.m, (self.k, self.n) = int(m), w.shape
        if self.m <= 0:
            raise BadInput(f"m={m} must be a positive integer")
        if bias is not None and np.shape(bias) not in ((self.n,), (1, self.n)):
            # the primitive reads n floats from it, whatever its length: refuse, never overrun
            raise BadInput(f"bias has shape {np.shape(bias)}; expected ({self.n},) or (1, {self.n})")
        self._ptrs = [None, None]    # the (src, dst) addresses the memories point at now
        self.precision = canonical(precision)
        self.dtype = storage(self.precision)
        self.lib = lib or L.load()
        self.scope = core.Scope(self.lib)
        try:
            self._build(w, bias, accumulate)
        except BaseException:
            self.close()
            raise

    def _bias_md(self, s):
        raise NotImplementedError

    def _primitive_desc(self, w, src_md, dst_md, bias_md, attr, dt):
        """(primitive descriptor, user weights md, the user weights as an array)."""
        raise NotImplementedError

    def _build(self, w, bias, accumulate) -> None:
        s, lib = self.scope, self.lib
        self.ctx = ctx = core.Context(s)
        dt = core.data_type(self.precision)
        src_md = s.md((self.m, self.k), dt, "ab")
        dst_md = s.md((self.m, self.n), dt, "ab")
        b_md = self._bias_md(s) if bias is not None else None
        attr = s.attr_user_scratchpad()
        if accumulate:
            po = s._create("dnnl_post_ops_create", "dnnl_post_ops_destroy")
            lib.call("dnnl_post_ops_append_sum", po, 1.0, 0, L.DT["undef"])
            lib.call("dnnl_primitive_attr_set_post_ops", attr, po)
        pd, w_user, w_arr = self._primitive_desc(w, src_md, dst_md, b_md, attr, dt)
        self.impl = s.impl_info(pd)
        want = s.arg_md(pd, "weights")
        self.packed = not s.md_equal(want, w_user)
        w_mem = s.memory(w_user, ctx.engine, w_arr)
        mem = {"weights": s.memory(want, ctx.engine),
               "scratchpad": s.memory(s.arg_md(pd, "scratchpad"), ctx.engine)}
        _, r = core.reorder(s, ctx, w_user, want)
        core.Step(lib, "reorder weights", r, ctx.stream, {"from": w_mem, "to": mem["weights"]})()
        core.wait(ctx)
        if bias is not None:
            mem["bias"] = s.memory(b_md, ctx.engine, np.ascontiguousarray(bias, np.float32).reshape(-1))
        # source and destination start on placeholder buffers; each call points them at its own
        mem["src"] = self._src = s.memory(src_md, ctx.engine, np.zeros((self.m, self.k), self.dtype))
        mem["dst"] = self._dst = s.memory(dst_md, ctx.engine, np.zeros((self.m, self.n), self.dtype))
        self._step = core.Step(lib, self.kind, s.primitive(pd), ctx.stream, mem)
        self._set = lib.fn("dnnl_memory_set_data_handle")
        self._wait = lib.fn("dnnl_stream_wait")

    def _check(self, name, a, shape) -> None:
        if a.shape != shape or a.dtype != self.dtype or not a.flags.c_contiguous:
            raise BadInput(f"{name} must be a C-contiguous {self.dtype} array of shape {shape}; got "
                           f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}")

    def _point(self, which: int, memory, address: int) -> None:
        """Point a memory at ``address`` unless it already does (a step loop passes the same
        output buffer every step: the call is skipped, not repeated)."""
        if self._ptrs[which] != address:
            derr.check("dnnl_memory_set_data_handle", self._set(memory, ctypes.c_void_p(address)))
            self._ptrs[which] = address

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.scope.closed:   # its primitive and memories are released: executing them would crash
            raise BadInput(f"this oneDNN {self.kind} was closed; build a new one")
        self._check("x", x, (self.m, self.k))
        self._check("out", out, (self.m, self.n))
        self._point(0, self._src, x.ctypes.data)
        self._point(1, self._dst, out.ctypes.data)
        self._step()
        st = self._wait(self.ctx.stream)
        if st:
            derr.check("dnnl_stream_wait", st)
        return out

    found: dict | None = None    # us per call of each kind tried, when chosen by a find step

    def info(self) -> dict:
        out = {"primitive": self.kind, "impl": self.impl, "weights_packed": self.packed,
               "m": self.m, "k": self.k, "n": self.n}
        if self.found:
            out["find_us"] = dict(self.found)
        return out

    def close(self) -> None:
        self.scope.close()

    def __del__(self):
        # a step loop's projections hold these without a with-block: release the oneDNN handles
        # (primitives, memories, engine) when the owner goes
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PackedMatmul(_Packed):
    """oneDNN ``matmul``: weights ``(K, N)`` as they are given (``ab``), bias ``(1, N)``."""
    kind = "matmul"

    def _bias_md(self, s):
        return s.md((1, self.n), L.DT["f32"], "ab")

    def _primitive_desc(self, w, src_md, dst_md, bias_md, attr, dt):
        s = self.scope
        w_user = s.md((self.k, self.n), dt, "ab")
        w_any = s.md((self.k, self.n), dt, "any")
        pd = s.pd("dnnl_matmul_primitive_desc_create", self.ctx.engine, src_md, w_any, bias_md,
                  dst_md, attr)
        return pd, w_user, np.ascontiguousarray(w, dtype=self.dtype)


class PackedInnerProduct(_Packed):
    """oneDNN ``inner_product`` (forward inference): its weights are ``(N, K)`` ("oi"), so the
    given ``(K, N)`` matrix is passed transposed; bias ``(N,)``."""
    kind = "inner_product"

    def _bias_md(self, s):
        return s.md((self.n,), L.DT["f32"], "a")

    def _primitive_desc(self, w, src_md, dst_md, bias_md, attr, dt):
        s = self.scope
        w_user = s.md((self.n, self.k), dt, "ab")
        w_any = s.md((self.n, self.k), dt, "any")
        pd = s.pd(IP_CREATE, self.ctx.engine, L.PROP["forward_inference"], src_md, w_any, bias_md,
                  dst_md, attr)
        return pd, w_user, np.ascontiguousarray(np.asarray(w).T, dtype=self.dtype)
