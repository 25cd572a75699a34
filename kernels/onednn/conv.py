"""Forward 2-D convolution through oneDNN's convolution primitive, on NumPy memory.

    from kernels.onednn.conv import OnednnConv
    with OnednnConv(problem, precision="fp32", algo="direct") as conv:
        y = conv(x, w, b)                  # x, y in problem.layout; w KCRS

The primitive is created with source, weights and destination of format ``any``, so oneDNN
picks the layouts its fastest implementation wants (blocked ``nChw8c``/``nChw16c`` and
``OIhw8i8o``-style weights on x86).  The weights are reordered into theirs once, at build; the
activations are reordered from the user layout (NCHW or NHWC) into the primitive's and back on
every call, only where the layouts differ: what a framework that hands oneDNN plain tensors pays
(PyTorch's ``mkldnn_convolution`` shows the same pair of activation reorders).

``algo="winograd"`` asks for ``convolution_winograd``; oneDNN 3.x implements it only for some
3x3 shapes on some ISAs (AVX-512), elsewhere creation fails with ``dnnl_unimplemented``, which
skips the case with that reason.
"""
from __future__ import annotations

import numpy as np

from ..conv.geometry import ConvProblem
from ..dtypes import canonical, storage
from ..errors import BadInput
from . import core
from . import lib as L

ALGOS = {"direct": "convolution_direct", "winograd": "convolution_winograd"}


def padding_r(size: int, out: int, pad: int, dil: int, filt: int, stride: int) -> int:
    """Right/bottom padding that makes oneDNN's output size equal ours (floor division)."""
    return (out - 1) * stride + (filt - 1) * dil + 1 - size - pad


class OnednnConv:
    def __init__(self, problem: ConvProblem, *, precision: str = "fp32", algo: str = "direct",
                 lib=None):
        if not isinstance(problem, ConvProblem):
            raise BadInput(f"problem must be a ConvProblem, got {type(problem).__name__}")
        if algo not in ALGOS:
            raise BadInput(f"algo {algo!r} is unknown; allowed: {', '.join(ALGOS)}")
        self.problem, self.algo = problem, algo
        self.precision = canonical(precision)
        self.lib = lib or L.load()
        self.scope = core.Scope(self.lib)
        self.dtype = storage(self.precision)
        try:
            self.ctx = core.Context(self.scope)
            self._build(core.data_type(self.precision))
        except BaseException:
            self.close()
            raise

    def _build(self, dt: int) -> None:
        p, s, ctx = self.problem, self.scope, self.ctx
        G = p.groups
        user_tag = "nchw" if p.layout == "NCHW" else "nhwc"
        src_dims, dst_dims = (p.N, p.C, p.H, p.W), (p.N, p.K, p.P, p.Q)
        if G == 1:
            w_dims, w_tag = (p.K, p.C, p.R, p.S), "abcd"
        else:
            w_dims, w_tag = (G, p.Kg, p.Cg, p.R, p.S), "abcde"
        any_src, any_w = s.md(src_dims, dt, "any"), s.md(w_dims, dt, "any")
        any_dst = s.md(dst_dims, dt, "any")
        bias_md = s.md((p.K,), L.DT["f32"], "a") if p.bias else None
        pads_r = (padding_r(p.H, p.P, p.pad[0], p.dilation[0], p.R, p.stride[0]),
                  padding_r(p.W, p.Q, p.pad[1], p.dilation[1], p.S, p.stride[1]))
        attr = s.attr_user_scratchpad()
        try:
            pd = s.pd("dnnl_convolution_forward_primitive_desc_create", ctx.engine,
                      L.PROP["forward_inference"], L.ALG[ALGOS[self.algo]], any_src, any_w,
                      bias_md, any_dst, core.dims(p.stride),
                      core.dims((p.dilation[0] - 1, p.dilation[1] - 1)), core.dims(p.pad),
                      core.dims(pads_r), attr)
        except Exception as e:
            from .errors import OnednnUnimplemented
            if isinstance(e, OnednnUnimplemented):
                raise OnednnUnimplemented(e.status, e.call, f"{ALGOS[self.algo]} for {p.describe()} "
                                          f"{self.precision} on ISA {self.lib.isa}") from None
            raise
        self.impl = s.impl_info(pd)
        self.x = np.zeros(p.x_shape, self.dtype)
        self.y = np.empty(p.y_shape, self.dtype)
        self._b = np.zeros(p.K, np.float32)
        user_src, user_dst = s.md(src_dims, dt, user_tag), s.md(dst_dims, dt, user_tag)
        user_w = s.md(w_dims, dt, w_tag)
        want = {a: s.arg_md(pd, a) for a in ("src", "weights", "dst")}
        self.steps, self.reorders = [], []
        mem = {"scratchpad": s.memory(s.arg_md(pd, "scratchpad"), ctx.engine)}
        if p.bias:
            mem["bias"] = s.memory(bias_md, ctx.engine, self._b)
        x_mem = s.memory(user_src, ctx.engine, self.x)
        if s.md_equal(user_src, want["src"]):
            mem["src"] = x_mem
        else:
            mem["src"] = s.memory(want["src"], ctx.engine)
            _, r = core.reorder(s, ctx, user_src, want["src"])
            self.steps.append(core.Step(self.lib, "reorder src", r, ctx.stream,
                                        {"from": x_mem, "to": mem["src"]}))
            self.reorders.append("src")
        self._w_user = np.zeros(w_dims, self.dtype)
        w_mem = s.memory(user_w, ctx.engine, self._w_user)
        mem["weights"] = s.memory(want["weights"], ctx.engine)
        _, r = core.reorder(s, ctx, user_w, want["weights"])
        self._w_reorder = core.Step(self.lib, "reorder weights", r, ctx.stream,
                                    {"from": w_mem, "to": mem["weights"]})
        y_mem = s.memory(user_dst, ctx.engine, self.y)
        same_dst = s.md_equal(user_dst, want["dst"])
        mem["dst"] = y_mem if same_dst else s.memory(want["dst"], ctx.engine)
        self.steps.append(core.Step(self.lib, "convolution", s.primitive(pd), ctx.stream, mem))
        if not same_dst:
            _, r = core.reorder(s, ctx, want["dst"], user_dst)
            self.steps.append(core.Step(self.lib, "reorder dst", r, ctx.stream,
                                        {"from": mem["dst"], "to": y_mem}))
            self.reorders.append("dst")
        self._weights_id = None
        self._wait = self.lib.fn("dnnl_stream_wait")

    def set_weights(self, w: np.ndarray, b: np.ndarray | None) -> None:
        """Reorder ``w`` (KCRS) into the primitive's layout and keep ``b``: once, untimed."""
        p = self.problem
        if np.shape(w) != p.w_shape:
            raise BadInput(f"w has shape {np.shape(w)}; expected {p.w_shape}")
        self._w_user.reshape(p.w_shape)[...] = w
        if p.bias:
            if b is None or np.shape(b) != (p.K,):
                raise BadInput(f"b must have shape {(p.K,)}")
            self._b[...] = np.asarray(b, dtype=np.float32)
        self._w_reorder()
        core.wait(self.ctx)

    def run(self) -> np.ndarray:
        for step in self.steps:
            step()
        st = self._wait(self.ctx.stream)
        if st:
            core.wait(self.ctx)
        return self.y

    def __call__(self, x, w=None, b=None) -> np.ndarray:
        if w is not None and w is not self._weights_id:
            self.set_weights(w, b)
            self._weights_id = w
        if np.shape(x) != self.problem.x_shape:
            raise BadInput(f"x has shape {np.shape(x)}; expected {self.problem.x_shape}")
        self.x[...] = x
        return self.run()

    def info(self) -> dict:
        return {"algo": ALGOS[self.algo], "impl": self.impl, "layout": self.problem.layout,
                "activation_reorders_per_call": self.reorders, "onednn": self.lib.version,
                "isa": self.lib.isa}

    def close(self) -> None:
        self.scope.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
