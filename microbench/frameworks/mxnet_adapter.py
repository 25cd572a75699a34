"""MXNet 1.9 Gluon: the fused ``rnn.LSTM``/``rnn.GRU`` layer and the cells unrolled, hybridized.

MXNet 1.9.1 needs NumPy < 2 (it uses ``np.PZERO``; with NumPy 1.24-1.26 it also needs ``np.bool``
back), so this adapter usually runs in its own interpreter (``scripts/setup-mxnet``).  CPU only:
MXNet's GPU rows skip with the reason (microbench.frameworks.PATHS; no supported install reaches
a GPU build).  Its GRU is
cuDNN's (reset gate after the recurrent GEMM): the same function as ours.  The vanilla RNN (op
``rnn_relu``/``rnn_tanh``) is ``rnn.RNN(activation=...)``, the same fused RNN op in mode
``rnn_relu``/``rnn_tanh``, and ``rnn.RNNCell`` unrolled.  conv2d: ``nd.Convolution`` and its
backward-data and backward-weights phases (:func:`build_conv_backward`).

With ``dy`` among the arrays every path is a training step instead: the forward under
``autograd.record()`` and ``y.backward(dy)``, gradients written into x, the initial states and
every parameter (``attach_grad``, grad_req ``write``: nothing accumulates between calls).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from . import NO_GPU
from .common import Built, Unsupported, dims
from .convert import from_mxnet, split_op, to_mxnet, unpack_layers

_mx = None


def setup(threads, device) -> dict:
    global _mx
    if int(np.__version__.split(".")[0]) >= 2:
        raise ImportError(f"mxnet 1.9 does not run with numpy {np.__version__} (needs numpy<2)")
    if not hasattr(np, "bool"):
        np.bool = bool     # removed in NumPy 1.24, still used by MXNet 1.9.1
    if device != "cpu":
        raise Unsupported(f"the mxnet adapter runs on the CPU only: {NO_GPU['mxnet']}")
    import mxnet as mx
    _mx = mx
    feats = mx.runtime.Features()
    return {"framework": "mxnet", "version": mx.__version__,
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "engine": os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice (default)"),
            "mkldnn": feats.is_enabled("MKLDNN"), "cudnn": feats.is_enabled("CUDNN"),
            "precision_switches": "none in MXNet 1.9 (fp32 math)"}


def build(op, path, device, precision, arrays) -> Built:
    """``op``: lstm, gru, rnn_relu or rnn_tanh."""
    mx = _mx
    from mxnet import gluon
    from mxnet.gluon import rnn
    T, B, I, H, L = dims(arrays)
    cell_op, act = split_op(op)
    if precision != "fp32":
        raise Unsupported(f"the mxnet adapter runs fp32 only; not {precision}")
    ctx = mx.cpu()
    nd = lambda a: mx.nd.array(np.asarray(a, dtype=np.float32), ctx=ctx)  # noqa: E731
    layers = unpack_layers(arrays)
    x, h0 = nd(arrays["x"]), nd(arrays["h0"])
    c0 = nd(arrays["c0"]) if op == "lstm" else None
    train = "dy" in arrays
    info = {"mode": "hybridize(static_alloc, static_shape), " + (
                "autograd.record(train_mode=True), y.backward(dy): gradients of sum(y * dy) w.r.t. "
                "x, h0, c0 and every parameter" if train else "autograd not recording"),
            "mkldnn": mx.runtime.Features().is_enabled("MKLDNN")}

    if path == "fused":
        if cell_op == "rnn":
            net = rnn.RNN(H, num_layers=L, activation=act, layout="TNC", input_size=I)
        else:
            net = (rnn.LSTM if op == "lstm" else rnn.GRU)(H, num_layers=L, layout="TNC", input_size=I)
        net.initialize(ctx=ctx)
        params = net.collect_params()
        weights = {}       # (layer, MXNet name) -> Parameter
        for l, layer in enumerate(layers):
            for name, a in to_mxnet(layer, op).items():
                [key] = [k for k in params.keys() if k.endswith(f"l{l}_{name}")]
                params[key].set_data(nd(a))
                weights[l, name] = params[key]
        states = [h0, c0] if op == "lstm" else [h0]
        info["kernel"] = "fused RNN op (" + ("oneDNN" if info["mkldnn"] else "native CPU") + ")"
    elif path == "generic":
        Cell = rnn.LSTMCell if op == "lstm" else rnn.GRUCell
        if cell_op == "rnn":
            Cell = functools.partial(rnn.RNNCell, activation=act)

        class Unrolled(gluon.HybridBlock):
            def __init__(self):
                super().__init__()
                with self.name_scope():
                    self.cells = [Cell(H, input_size=I if l == 0 else H) for l in range(L)]
                    for l, cell in enumerate(self.cells):
                        self.register_child(cell, f"cell{l}")

            def hybrid_forward(self, F, x, *states):
                per = 2 if op == "lstm" else 1
                seq, out_states = x, []
                for l, cell in enumerate(self.cells):
                    seq, st = cell.unroll(T, seq, begin_state=list(states[per * l:per * (l + 1)]),
                                          layout="TNC", merge_outputs=True)
                    out_states.extend(st)
                return [seq] + out_states

        net = Unrolled()
        net.initialize(ctx=ctx)
        weights = {}
        for l, (cell, layer) in enumerate(zip(net.cells, layers)):
            params = cell.collect_params()
            for name, a in to_mxnet(layer, op).items():
                [key] = [k for k in params.keys() if k.endswith(name)]
                params[key].set_data(nd(a))
                weights[l, name] = params[key]
        # one array per layer and state (copies, not views of h0/c0: each gets its own gradient)
        states = ([s.copy() for l in range(L) for s in (h0[l], c0[l])] if op == "lstm"
                  else [h0[l].copy() for l in range(L)])
        info["kernel"] = "cell ops per step, unrolled into one graph"
    else:
        raise Unsupported(f"mxnet has no path {path!r} on {device}")
    net.hybridize(static_alloc=True, static_shape=True)
    if train:
        info["kernel"] += ", forward and backward"
        return _training(net, path == "fused", x, states, weights, nd(arrays["dy"]), op, L, info)
    last = {}

    def run():
        if path == "fused":
            last["out"] = net(x, states)
        else:
            last["out"] = net(x, *states)
        mx.nd.waitall()

    def outputs():
        out = last["out"]
        if path == "fused":
            y, st = out
            return (y.asnumpy().astype(np.float64),) + tuple(s.asnumpy().astype(np.float64) for s in st)
        y, flat = out[0], out[1:]
        per = 2 if op == "lstm" else 1
        hs = np.stack([flat[per * l].asnumpy() for l in range(L)]).astype(np.float64)
        if op != "lstm":
            return y.asnumpy().astype(np.float64), hs
        cs = np.stack([flat[per * l + 1].asnumpy() for l in range(L)]).astype(np.float64)
        return y.asnumpy().astype(np.float64), hs, cs

    return Built(run, outputs, info)


def _training(net, fused, x, states, weights, dy, op, L, info) -> Built:
    """A training step of ``net``: outputs y, dx, dh0[, dc0], then per layer the gradients of
    w_ih, w_hh, b_ih, b_hh (MXNet keeps our layout: :func:`.convert.from_mxnet`)."""
    mx = _mx
    for a in (x, *states):
        a.attach_grad()
    last = {}

    def run():
        with mx.autograd.record(train_mode=True):
            out = net(x, states) if fused else net(x, *states)
            y = out[0]
        y.backward(dy)
        mx.nd.waitall()
        last["y"] = y

    def outputs():
        host = lambda a: a.asnumpy().astype(np.float64)  # noqa: E731
        if fused:       # the whole (L, B, H) states
            gs = [host(s.grad) for s in states]
        else:           # one array per layer and state, interleaved h, c as the net takes them
            per = len(states) // L
            gs = [np.stack([host(states[per * l + k].grad) for l in range(L)]) for k in range(per)]
        gw = [host(g) for l in range(L) for g in from_mxnet({n: weights[l, n].grad() for n in _NAMES}, op)]
        return (host(last["y"]), host(x.grad), *gs, *gw)

    return Built(run, outputs, info)


_NAMES = ("i2h_weight", "i2h_bias", "h2h_weight", "h2h_bias")


def _conv_setup(path, device, precision, arrays, geom) -> tuple:
    """(to_ctx, x, w, b, kw) of a conv row: NCHW arrays (an NHWC problem's activations transposed
    here, outside the timed call), our KCRS filter, nd.Convolution's keyword arguments."""
    mx = _mx
    if precision != "fp32":
        raise Unsupported(f"the mxnet adapter runs fp32 only; not {precision}")
    if path != "fused" or device != "cpu":
        raise Unsupported(f"mxnet has no conv path {path!r} on {device}")
    ctx = mx.cpu()
    nhwc = geom["layout"] == "NHWC"

    def to_ctx(a, activation=True):
        a = np.asarray(a, dtype=np.float32)
        return mx.nd.array(np.ascontiguousarray(a.transpose(0, 3, 1, 2) if nhwc and activation else a), ctx=ctx)
    x = to_ctx(arrays["x"])
    w = to_ctx(arrays["w"], activation=False)
    b = to_ctx(arrays["b"], activation=False) if "b" in arrays else None
    K, _, R, S = w.shape
    kw = dict(kernel=(R, S), stride=tuple(geom["stride"]), dilate=tuple(geom["dilation"]),
              pad=tuple(geom["pad"]), num_filter=K, num_group=geom["groups"], no_bias=b is None)
    return to_ctx, x, w, b, kw


def build_conv(path, device, precision, arrays, geom) -> Built:
    """nd.Convolution, NCHW with our KCRS filter (an NHWC problem is transposed outside the timed call)."""
    mx = _mx
    _, x, w, b, kw = _conv_setup(path, device, precision, arrays, geom)
    nhwc = geom["layout"] == "NHWC"
    last = {}

    def run():
        last["y"] = (mx.nd.Convolution(x, w, b, **kw) if b is not None else mx.nd.Convolution(x, w, **kw))
        mx.nd.waitall()

    def outputs():
        y = last["y"].asnumpy().astype(np.float64)
        return (np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if nhwc else y,)

    return Built(run, outputs, {"kernel": "Convolution op (oneDNN)", "layout": "NCHW"})


def build_conv_backward(path, device, precision, arrays, geom, phase) -> Built:
    """One backward phase of ``sum(y * dy)`` for the conv of :func:`build_conv`: the forward is
    recorded once under ``autograd.record`` at build time, outside the timed call; each timed call
    is ``y.backward(dy, retain_graph=True)``, which runs the Convolution op's backward
    (``_backward_Convolution``).  Only the phase's inputs have a gradient buffer (``attach_grad``):
    x for ``bwd_data``, w (and b) for ``bwd_weights``; the others get grad_req null, and the
    backward computes only the requested part (on a CPU oneDNN's backward-data primitive, or its
    backward-weights primitive, which also gives the bias gradient)."""
    mx = _mx
    if phase not in ("bwd_data", "bwd_weights"):
        raise Unsupported(f"conv backward phase {phase!r} is unknown; allowed: bwd_data, bwd_weights")
    to_ctx, x, w, b, kw = _conv_setup(path, device, precision, arrays, geom)
    nhwc = geom["layout"] == "NHWC"
    dy = to_ctx(arrays["dy"])
    data = phase == "bwd_data"
    wrt = [x] if data else [w] + ([b] if b is not None else [])
    for a in wrt:
        a.attach_grad(grad_req="write")
    with mx.autograd.record(train_mode=False):
        y = mx.nd.Convolution(x, w, b, **kw) if b is not None else mx.nd.Convolution(x, w, **kw)
    if y.shape != dy.shape:
        raise ValueError(f"mxnet conv output has shape {y.shape}, dy {dy.shape}")
    mx.nd.waitall()

    def run():
        y.backward(out_grad=dy, retain_graph=True, train_mode=False)
        mx.nd.waitall()

    def outputs():
        out = [a.grad.asnumpy().astype(np.float64) for a in wrt]
        if data and nhwc:
            out[0] = np.ascontiguousarray(out[0].transpose(0, 2, 3, 1))
        return tuple(out)

    grads = "x" if data else ("w, b" if b is not None else "w")
    return Built(run, outputs, {
        "kernel": "Convolution op backward (oneDNN)", "layout": "NCHW",
        "backward": f"_backward_Convolution through y.backward(dy), gradients for {grads} only ({phase})"})
