"""JAX wrapper (CPU): our forward and backward as a ``jax.custom_vjp`` through ``jax.pure_callback``.

Only where jax is importable.  Not a fused XLA kernel: each call leaves XLA for NumPy (the tape of
:mod:`kernels.backward` is recomputed in the backward callback, since a callback cannot return
Python objects).  Time-major ``(T, B, I)`` input, zero initial states; returns ``y``.
UNVERIFIED here when jax is absent (tests skip); the GPU path (DLPack / FFI) is not written.
"""
from __future__ import annotations

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover
    from .errors import MissingDependency
    raise MissingDependency("jax", "kernels.jax", "pip install jax") from e

from . import backward as bw
from .params import Layer, require_unidirectional

_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")


def flat_weights(params) -> list:
    """Per layer ``w_ih, w_hh, b_ih, b_hh`` (+ extras in declaration order) as jax arrays."""
    out = []
    for l, layer in enumerate(params.layers):
        out += [jnp.asarray(a) for a in layer.arrays()]
        if hasattr(params, "extra_arrays"):
            out += [jnp.asarray(a) for a in params.extra_arrays(l)]
    return out


def rnn_fn(params):
    """``f(x, *flat_weights) -> y`` for the structure (cell, sizes) of ``params``, differentiable."""
    require_unidirectional(params, "kernels.jax")
    n_extra = len(params.expr.params) if hasattr(params, "expr") else 0
    per = 4 + n_extra
    cls, I, H = type(params), params.input_size, params.hidden_size
    extra_names = [p for p, _ in params.expr.params] if n_extra else []

    def rebuild(ws):
        ws = [np.asarray(w) for w in ws]
        layers = [Layer(*ws[l * per:l * per + 4]) for l in range(len(ws) // per)]
        if n_extra:
            extras = [dict(zip(extra_names, ws[l * per + 4:(l + 1) * per])) for l in range(len(layers))]
            return cls(I, H, tuple(layers), tuple(extras))
        return cls(I, H, tuple(layers))

    def fwd_host(x, *ws):
        y, _, _ = bw.forward_train(np.asarray(x), rebuild(ws))
        return np.asarray(y, dtype=np.asarray(x).dtype)

    def bwd_host(x, dy, *ws):
        p = rebuild(ws)
        _, _, tape = bw.forward_train(np.asarray(x), p)
        g = bw.backward(tape, np.asarray(dy))
        names = _NAMES + tuple(extra_names)
        flat = [np.asarray(gl[k]).reshape(np.shape(ws[l * per + j])).astype(np.asarray(ws[l * per + j]).dtype)
                for l, gl in enumerate(g.layers) for j, k in enumerate(names)]
        return (np.asarray(g.x, dtype=np.asarray(x).dtype), *flat)

    @jax.custom_vjp
    def f(x, *ws):
        T, B, _ = x.shape
        return jax.pure_callback(fwd_host, jax.ShapeDtypeStruct((T, B, H), x.dtype), x, *ws)

    def f_fwd(x, *ws):
        return f(x, *ws), (x, ws)

    def f_bwd(res, dy):
        x, ws = res
        shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), *(jax.ShapeDtypeStruct(w.shape, w.dtype) for w in ws))
        return tuple(jax.pure_callback(bwd_host, shapes, x, dy, *ws))

    f.defvjp(f_fwd, f_bwd)
    return f
