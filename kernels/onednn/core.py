"""Engines, streams, memory descriptors, memories and primitives, released on every path.

:class:`Scope` owns every oneDNN object a variant creates and destroys them in reverse order of
creation in :meth:`Scope.close` (idempotent), so a constructor that fails half-way releases what
it had made: the variants create everything inside ``try: ... except: scope.close(); raise``.

:class:`Context` is one CPU engine and one in-order stream.  :func:`aligned_empty` gives the
64-byte-aligned host buffers the blocked layouts are written into (oneDNN's own allocator
aligns to 64 bytes as well).
"""
from __future__ import annotations

import ctypes

import numpy as np

from kernels import nvtx

from .. import forking
from ..dtypes import canonical
from ..errors import BadInput, Unsupported
from . import lib as L
from .errors import check

# precision -> oneDNN data type of the stored tensors
DATA_TYPE = {"fp32": "f32", "bf16": "bf16"}


def data_type(precision: str) -> int:
    p = canonical(precision)
    if p not in DATA_TYPE:
        raise Unsupported(f"dtype {p} is not offered by the onednn variants; allowed: "
                          f"{', '.join(DATA_TYPE)}")
    return L.DT[DATA_TYPE[p]]


def aligned_empty(nbytes: int, align: int = 64) -> np.ndarray:
    """A uint8 buffer of ``nbytes`` whose data pointer is a multiple of ``align``."""
    raw = np.empty(int(nbytes) + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + int(nbytes)]


def dims(values) -> "L.Dims":
    values = [int(v) for v in values]
    if len(values) > L.MAX_NDIMS:
        raise BadInput(f"{len(values)} dimensions; oneDNN takes at most {L.MAX_NDIMS}")
    return L.Dims(*values)


class Scope:
    """Owns oneDNN handles: ``own(destroy_function, handle)``; :meth:`close` destroys them all."""

    def __init__(self, lib: "L.Library"):
        self.lib = lib
        self._owned: list = []
        self.buffers: list = []          # host buffers that memories point into: kept alive
        self.closed = False              # after close(): what used these handles must not run

    def own(self, destroy: str, handle: ctypes.c_void_p) -> ctypes.c_void_p:
        self._owned.append((destroy, handle))
        return handle

    def close(self) -> None:
        self.closed = True
        while self._owned:
            destroy, handle = self._owned.pop()
            if handle:
                try:
                    self.lib.fn(destroy)(handle)
                except Exception:  # noqa: BLE001  (keep releasing the rest)
                    pass
        self.buffers.clear()

    # -- creation helpers --------------------------------------------------------------------
    def _create(self, create: str, destroy: str, *args) -> ctypes.c_void_p:
        h = ctypes.c_void_p()
        self.lib.call(create, ctypes.byref(h), *args)
        return self.own(destroy, h)

    def md(self, shape, dt: int, tag: str) -> ctypes.c_void_p:
        tag_id = L.TAG[L.TAG_ALIAS.get(tag, tag)]
        return self._create("dnnl_memory_desc_create_with_tag", "dnnl_memory_desc_destroy",
                            len(shape), dims(shape), dt, tag_id)

    def attr_user_scratchpad(self) -> ctypes.c_void_p:
        a = self._create("dnnl_primitive_attr_create", "dnnl_primitive_attr_destroy")
        self.lib.call("dnnl_primitive_attr_set_scratchpad_mode", a, L.SCRATCHPAD_USER)
        return a

    def pd(self, create: str, *args) -> ctypes.c_void_p:
        return self._create(create, "dnnl_primitive_desc_destroy", *args)

    def primitive(self, pd) -> ctypes.c_void_p:
        forking.started("oneDNN primitives")     # executed soon after: OpenMP from then on
        return self._create("dnnl_primitive_create", "dnnl_primitive_destroy", pd)

    def memory(self, md, engine, array: np.ndarray | None = None) -> ctypes.c_void_p:
        """A memory over ``array`` (kept alive by the scope), or over a new aligned buffer of the
        descriptor's size when ``array`` is None."""
        if array is None:
            array = aligned_empty(max(self.md_size(md), 1))
        self.buffers.append(array)
        return self._create("dnnl_memory_create", "dnnl_memory_destroy", md, engine,
                            ctypes.c_void_p(array.ctypes.data))

    # -- queries -----------------------------------------------------------------------------
    def md_size(self, md) -> int:
        return int(self.lib.fn("dnnl_memory_desc_get_size")(md))

    def md_equal(self, a, b) -> bool:
        return bool(self.lib.fn("dnnl_memory_desc_equal")(a, b))

    def arg_md(self, pd, arg: str) -> ctypes.c_void_p:
        """The memory descriptor the primitive wants for an execute argument (owned by ``pd``)."""
        h = self.lib.fn("dnnl_primitive_desc_query_md")(pd, L.QUERY["exec_arg_md"], L.ARG[arg])
        return ctypes.c_void_p(h)

    def impl_info(self, pd) -> str:
        s = ctypes.c_char_p()
        self.lib.call("dnnl_primitive_desc_query", pd, L.QUERY["impl_info_str"], 0, ctypes.byref(s))
        return (s.value or b"").decode(errors="replace")


class Context:
    """One CPU engine (index 0) and one in-order stream, owned by ``scope``."""

    def __init__(self, scope: Scope):
        self.scope, self.lib = scope, scope.lib
        self.engine = scope._create("dnnl_engine_create", "dnnl_engine_destroy", L.CPU_ENGINE, 0)
        self.stream = scope._create("dnnl_stream_create", "dnnl_stream_destroy", self.engine,
                                    L.STREAM_DEFAULT)


class Step:
    """One primitive with its arguments fixed: ``step()`` executes it on the stream.

    The argument array is built once, so a timed call costs one ``dnnl_primitive_execute``.
    ``kind`` is oneDNN's primitive kind (``rnn``, ``reorder``, ``convolution``): the NVTX phase
    range around the call has that name, the one the verbose log gives the primitive.
    """

    def __init__(self, lib: "L.Library", name: str, primitive, stream, args: dict, kind: str = ""):
        self.name = name
        self.kind = kind or name.split()[0]
        self._exec = lib.fn("dnnl_primitive_execute")
        self._prim, self._stream = primitive, stream
        items = [(L.ARG[k] if isinstance(k, str) else int(k), m) for k, m in args.items()]
        self._args = (L.ExecArg * len(items))(*[L.ExecArg(a, m.value) for a, m in items])
        self._n = len(items)

    def __call__(self) -> None:
        if forking.inherited():     # a child forked after OpenMP ran: libgomp would hang here
            forking.check(f"oneDNN {self.name}")
        with nvtx.phase(self.kind):
            st = self._exec(self._prim, self._stream, self._n, self._args)
        if st:
            check(f"dnnl_primitive_execute({self.name})", st)


def reorder(scope: Scope, ctx: Context, src_md, dst_md):
    """A reorder primitive from ``src_md`` to ``dst_md`` (same engine)."""
    pd = scope.pd("dnnl_reorder_primitive_desc_create", src_md, ctx.engine, dst_md, ctx.engine, None)
    return pd, scope.primitive(pd)


def wait(ctx: Context) -> None:
    st = ctx.lib.fn("dnnl_stream_wait")(ctx.stream)
    if st:
        check("dnnl_stream_wait", st)
