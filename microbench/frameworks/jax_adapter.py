"""JAX: Flax ``nn.RNN`` over a cell (``lax.scan``) under ``jax.jit``; ``jax.experimental.rnn`` on GPU;
the layer-norm LSTM in ``jax.numpy`` (``lax.scan``); the vanilla RNN through Flax's ``SimpleCell``
(``activation_fn`` ``nn.relu`` or ``nn.tanh``); conv2d (``lax.conv_general_dilated``) and its
backward-data and backward-weights phases (``jax.vjp`` with respect to x, or to w and b:
:func:`build_conv_backward`).  The scan paths also have a training step
(``jax.vjp`` under the same jit) when the parent sends an upstream gradient ``dy``.

XLA:CPU has no fused RNN kernel and ``jax.experimental.rnn.lstm`` lowers to cuDNN only (on a CPU
it fails for want of the GPU plugin), so on a CPU the scan is the only path JAX has.  XLA:CPU
sizes its thread pool from the CPUs it may run on and offers no intra-op thread setting for
that pool, so ``--threads N`` pins this worker to N CPUs (recorded as ``affinity``); with N=1
``--xla_cpu_multi_thread_eigen=false`` is also set.
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import precision_reason
from .common import Built, Unsupported, dims
from .convert import (LAYERNORM_EXTRAS, grads_from_flax, split_op, to_cudnn_packed, to_flax,
                      unpack_extras, unpack_layers)

_jax = None
_affinity = None


def setup(threads, device) -> dict:
    global _jax, _affinity
    if threads:
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])
        _affinity = sorted(os.sched_getaffinity(0))
        if threads == 1:
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if device == "cuda" else "cpu")
    import jax
    _jax = jax
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        devs = jax.devices("gpu" if device == "cuda" else "cpu")
    except RuntimeError as e:
        raise Unsupported(f"jax {jax.__version__} has no {device} backend here ({str(e).splitlines()[0]})") from None
    import flax
    return {"framework": "jax", "version": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
            "flax": flax.__version__, "devices": [str(d) for d in devs],
            "default_matmul_precision": jax.config.jax_default_matmul_precision,
            "affinity": _affinity, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def build(op, path, device, precision, arrays) -> Built:
    """``op``: lstm, gru, rnn_relu, rnn_tanh or layernorm (the layer-norm LSTM, path scan).  With ``dy`` among the
    arrays the row is a training step: ``jax.vjp`` of the forward with cotangent ``dy`` for y,
    both under one jit."""
    jax = _jax
    import jax.numpy as jnp
    T, B, I, H, L = dims(arrays)
    cell_op, act = split_op(op)
    table = {"fp32": jnp.float32, "fp64": jnp.float64}
    if device == "cuda":
        table.update({"fp16": jnp.float16, "bf16": jnp.bfloat16})
    if precision not in table:
        raise Unsupported(f"jax on {device} runs {', '.join(table)}; not {precision}")
    narrower = precision_reason("jax", device, path, op, precision)
    if narrower:
        raise Unsupported(narrower)
    if precision == "fp64":
        jax.config.update("jax_enable_x64", True)
    dt = table[precision]
    dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
    put = lambda a: jax.device_put(jnp.asarray(np.asarray(a), dtype=dt), dev)  # noqa: E731
    layers = unpack_layers(arrays)
    x, h0 = put(arrays["x"]), put(arrays["h0"])
    c0 = put(arrays["c0"]) if "c0" in arrays else None       # the LSTMs only
    train = "dy" in arrays
    info = {"precision_switches": {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision},
            "mode": "jax.jit, compiled ahead (lower().compile()), " + (
                "jax.vjp of y with cotangent dy (forward + backward in one program)" if train
                else "no grad transform"),
            "affinity": _affinity}
    to_canonical = None      # weight gradients -> our layout (training rows)

    if op == "layernorm":
        if path != "scan":
            raise Unsupported(f"jax has no layer-norm LSTM path {path!r}; path: scan")
        extras = unpack_extras(arrays)
        params = [{k: put(v) for k, v in zip(("w_ih", "w_hh", "b_ih", "b_hh"), layer)} |
                  {k: put(v) for k, v in extras[l].items()} for l, layer in enumerate(layers)]
        fwd = _layernorm_fn(L, float(arrays["ln_eps"]))
        args = (params, x, h0, c0)
        time_major = True
        info["kernel"] = ("lax.scan over steps: recurrent GEMM + XLA-fused layer norms and pointwise "
                          "per step; input GEMM and its layer norm once for all steps")
        names = ("w_ih", "w_hh", "b_ih", "b_hh") + LAYERNORM_EXTRAS
        to_canonical = lambda g: [d[k] for d in g for k in names]  # noqa: E731
    elif path in ("generic", "nocudnn"):
        import flax.linen as nn
        cell = (nn.OptimizedLSTMCell(H, dtype=dt, param_dtype=dt) if op == "lstm" else
                nn.SimpleCell(H, activation_fn={"relu": nn.relu, "tanh": nn.tanh}[act], dtype=dt,
                              param_dtype=dt) if cell_op == "rnn"
                else nn.GRUCell(H, dtype=dt, param_dtype=dt))
        rnn = nn.RNN(cell, time_major=True, return_carry=True)
        params = [jax.tree_util.tree_map(put, {"params": {"cell": to_flax(layer, cell_op)}}) for layer in layers]

        def fwd(params, x, h0, c0):
            seq, hs, cs = x, [], []
            for l in range(L):
                carry0 = (c0[l], h0[l]) if op == "lstm" else h0[l]     # Flax LSTM carries (c, h)
                carry, seq = rnn.apply(params[l], seq, initial_carry=carry0)
                if op == "lstm":
                    cs.append(carry[0])
                    hs.append(carry[1])
                else:
                    hs.append(carry)
            return (seq, jnp.stack(hs), jnp.stack(cs)) if op == "lstm" else (seq, jnp.stack(hs))
        args = (params, x, h0, c0)
        time_major = True
        info["kernel"] = f"lax.scan over flax {type(cell).__name__}: GEMMs + fused elementwise per step" + (
            f" ({act})" if act else "")
        to_canonical = lambda g: [a for d in g for a in grads_from_flax(d["params"]["cell"], cell_op)]  # noqa: E731
    elif path == "cudnn" and device == "cuda":
        if train:
            raise Unsupported("the jax cudnn row times the forward pass only (jax.experimental.rnn)")
        if op != "lstm":
            raise Unsupported("jax.experimental.rnn offers LSTM only")
        from jax.experimental import rnn as jrnn
        weights = put(to_cudnn_packed(layers))
        xb = put(np.ascontiguousarray(np.asarray(arrays["x"]).transpose(1, 0, 2)))
        lengths = jax.device_put(jnp.full((B,), T, dtype=jnp.int32), dev)

        def fwd(weights, x, h0, c0):
            return jrnn.lstm(x, h0, c0, weights, lengths, I, H, L, 0.0, False,
                             precision=jax.lax.Precision.HIGHEST)
        args = (weights, xb, h0, c0)
        time_major = False
        info["kernel"] = "cuDNN RNN through jax.experimental.rnn"
    elif path == "fused" and device == "cpu":
        raise Unsupported("XLA:CPU has no fused RNN kernel; jax.experimental.rnn lowers to cuDNN only")
    else:
        raise Unsupported(f"jax has no path {path!r} on {device}")

    if train:
        return _training(fwd, args, put(arrays["dy"]), to_canonical, op, info)
    t0 = time.perf_counter()
    compiled = jax.jit(fwd).lower(*args).compile()
    info["compile_s"] = time.perf_counter() - t0
    last = {}

    def run():
        last["out"] = jax.block_until_ready(compiled(*args))

    def outputs():
        out = [np.asarray(o, dtype=np.float64) for o in last["out"]]
        if not time_major:
            out[0] = out[0].transpose(1, 0, 2)
        return tuple(out)

    return Built(run, outputs, info)


def _training(fwd, args, dy, to_canonical, op, info) -> Built:
    """One jitted program: y and the gradients of sum(y * dy) with respect to the weights,
    x, h0 (and c0); outputs in convert.grad_names order."""
    jax = _jax
    params, x, h0, c0 = args
    lstm = c0 is not None         # the LSTMs carry c; the GRU and the vanilla cell do not

    def step(params, x, h0, c0, dy):
        primals = (params, x, h0, c0) if lstm else (params, x, h0)
        y, vjp = jax.vjp(lambda *p: fwd(*p, *((None,) if not lstm else ()))[0], *primals)
        return (y, *vjp(dy))

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, x, h0, c0, dy).compile()
    info["compile_s"] = time.perf_counter() - t0
    last = {}

    def run():
        last["out"] = jax.block_until_ready(compiled(params, x, h0, c0, dy))

    def outputs():
        y, g_params, *g_states = last["out"]
        return tuple(np.asarray(a, dtype=np.float64) for a in (y, *g_states, *to_canonical(g_params)))

    return Built(run, outputs, info)


def _layernorm_fn(L: int, eps: float):
    """fwd(params, x, h0, c0) -> (y, h_n, c_n) of the layer-norm LSTM in jax.numpy."""
    import jax.numpy as jnp
    lax = _jax.lax

    def ln(a, g, b):
        mu = a.mean(axis=-1, keepdims=True)
        d = a - mu
        return d * lax.rsqrt((d * d).mean(axis=-1, keepdims=True) + eps) * g + b

    def fwd(params, x, h0, c0):
        T, B, _ = x.shape
        seq, hs, cs = x, [], []
        for l in range(L):
            w = params[l]
            ax = ln(seq.reshape(T * B, -1) @ w["w_ih"].T, w["lnx_g"].reshape(-1), w["lnx_b"].reshape(-1))
            ax = (ax + w["b_ih"] + w["b_hh"]).reshape(T, B, -1)     # biases after the norm

            def step(carry, ax_t, w=w):
                h, c = carry
                ah = ln(h @ w["w_hh"].T, w["lnh_g"].reshape(-1), w["lnh_b"].reshape(-1))
                i, f, g, o = jnp.split(ax_t + ah, 4, axis=-1)
                c = _jax.nn.sigmoid(f) * c + _jax.nn.sigmoid(i) * jnp.tanh(g)
                h = _jax.nn.sigmoid(o) * jnp.tanh(ln(c, w["lnc_g"], w["lnc_b"]))
                return (h, c), h
            (h, c), seq = lax.scan(step, (h0[l], c0[l]), ax)
            hs.append(h)
            cs.append(c)
        return seq, jnp.stack(hs), jnp.stack(cs)
    return fwd


def _conv_fn(path, device, precision, geom):
    """(put, fwd(x, w, b)) of a conv row: lax.conv_general_dilated in the problem's layout with the
    OIHW (= our KCRS) filter, the bias added when b is not None."""
    jax = _jax
    import jax.numpy as jnp
    if path not in (("fused",) if device == "cpu" else ("cudnn",)):
        raise Unsupported(f"jax has no conv path {path!r} on {device}")
    dt = {"fp32": jnp.float32, "fp64": jnp.float64}.get(precision)
    if dt is None:
        raise Unsupported(f"the jax conv adapter runs fp32, fp64; not {precision}")
    if precision == "fp64":
        jax.config.update("jax_enable_x64", True)
    dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
    put = lambda a: jax.device_put(jnp.asarray(np.asarray(a), dtype=dt), dev)  # noqa: E731
    lay = geom["layout"]
    (ph, pw) = geom["pad"]

    def fwd(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, tuple(geom["stride"]), [(ph, ph), (pw, pw)],
                                         rhs_dilation=tuple(geom["dilation"]),
                                         dimension_numbers=(lay, "OIHW", lay),
                                         feature_group_count=geom["groups"],
                                         precision=jax.lax.Precision.HIGHEST)
        if b is not None:
            y = y + (b[None, :, None, None] if lay == "NCHW" else b)
        return y
    return put, fwd


def build_conv(path, device, precision, arrays, geom) -> Built:
    """lax.conv_general_dilated in the problem's layout with the OIHW (= our KCRS) filter."""
    jax = _jax
    put, fwd = _conv_fn(path, device, precision, geom)
    x, w = put(arrays["x"]), put(arrays["w"])
    b = put(arrays["b"]) if "b" in arrays else None
    lay = geom["layout"]
    t0 = time.perf_counter()
    compiled = jax.jit(fwd).lower(x, w, b).compile()
    info = {"kernel": "XLA convolution", "layout": lay, "compile_s": time.perf_counter() - t0,
            "precision_switches": {"precision": "HIGHEST"}, "affinity": _affinity}
    last = {}

    def run():
        last["y"] = jax.block_until_ready(compiled(x, w, b))

    return Built(run, lambda: (np.asarray(last["y"], dtype=np.float64),), info)


def build_conv_backward(path, device, precision, arrays, geom, phase) -> Built:
    """One backward phase of ``sum(y * dy)`` for the conv of :func:`build_conv`, jitted:
    ``bwd_data`` is ``jax.vjp`` of the conv with respect to x alone (dx), ``bwd_weights`` with
    respect to w, and b when the problem has one (dw[, db]).  The other operands are constants of
    the vjp, so XLA keeps only that phase's transposed convolution (the forward's result is unused
    and dropped); ``info["convolutions"]`` counts the convolution instructions left in the
    compiled program."""
    jax = _jax
    if phase not in ("bwd_data", "bwd_weights"):
        raise Unsupported(f"conv backward phase {phase!r} is unknown; allowed: bwd_data, bwd_weights")
    put, fwd = _conv_fn(path, device, precision, geom)
    x, w, dy = put(arrays["x"]), put(arrays["w"]), put(arrays["dy"])
    b = put(arrays["b"]) if "b" in arrays else None
    data = phase == "bwd_data"

    if data:
        def bwd(x, w, b, dy):
            return jax.vjp(lambda x: fwd(x, w, b), x)[1](dy)           # (dx,)
    elif b is not None:
        def bwd(x, w, b, dy):
            return jax.vjp(lambda w, b: fwd(x, w, b), w, b)[1](dy)     # (dw, db)
    else:
        def bwd(x, w, b, dy):
            return jax.vjp(lambda w: fwd(x, w, None), w)[1](dy)        # (dw,)
    t0 = time.perf_counter()
    compiled = jax.jit(bwd).lower(x, w, b, dy).compile()
    compile_s = time.perf_counter() - t0
    try:
        hlo = compiled.as_text()
        convs = sum(" convolution(" in line for line in hlo.splitlines())
    except Exception:  # noqa: BLE001  (an introspection aid only; the row does not depend on it)
        convs = None
    wrt = "x" if data else ("w, b" if b is not None else "w")
    info = {"kernel": "XLA convolution (transposed, from jax.vjp), backward", "layout": geom["layout"],
            "compile_s": compile_s, "convolutions": convs,
            "backward": f"jax.vjp of lax.conv_general_dilated with respect to {wrt} under jax.jit ({phase})",
            "precision_switches": {"precision": "HIGHEST"}, "affinity": _affinity}
    last = {}

    def run():
        last["out"] = jax.block_until_ready(compiled(x, w, b, dy))

    return Built(run, lambda: tuple(np.asarray(a, dtype=np.float64) for a in last["out"]), info)
