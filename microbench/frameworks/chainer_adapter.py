"""Chainer 7.8.1 (its last release): ``L.NStepLSTM``/``L.NStepGRU`` and a cell stepped in a loop;
``L.Convolution2D``.  Every RNN path also has a training step (``chainer.grad`` of ``sum(y * dy)``)
when the parent sends ``dy``; the conv its backward-data and backward-weights phases
(:func:`build_conv_backward`).

Chainer 7 needs NumPy 1 (it runs in the interpreter ``scripts/setup-mxnet`` makes, beside MXNet).
On a CPU it has no oneDNN: iDeep, its oneDNN binding, has no build for this Python, and the NStep
functions never call it; their CPU path is Chainer's own loop over steps and layers (two NumPy
GEMMs and the pointwise gates per step).  CPU only: its GPU path needs CuPy 7, which no supported
Python can install, so Chainer's GPU rows skip with the reason (microbench.frameworks.NO_GPU).
Chainer's GRU links (``StatelessGRU``/``StatefulGRU``) apply the reset gate before the recurrent
GEMM, which is not our GRU; the generic GRU is the cell written with ``L.Linear`` and
``chainer.functions``, as a Chainer user would write cuDNN's GRU.  ``L.NStepGRU`` is cuDNN's.
The vanilla RNN (op ``rnn_relu``/``rnn_tanh``): ``L.NStepRNNReLU``/``L.NStepRNNTanh`` (one input
and one recurrent matrix and bias per layer, as ours) and the cell of ``L.Linear`` + ``F.relu`` /
``F.tanh`` stepped in a loop.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import NO_GPU
from .common import Built, Unsupported, dims
from .convert import (from_chainer_lstm, from_chainer_nstep, split_op, to_chainer_lstm, to_chainer_nstep,
                      unpack_layers)

_ch = None
_DTYPES = {"fp32": np.float32, "fp64": np.float64}


def setup(threads, device) -> dict:
    global _ch
    if int(np.__version__.split(".")[0]) >= 2:
        raise ImportError(f"chainer 7 does not run with numpy {np.__version__} (needs numpy<2)")
    if device != "cpu":
        raise Unsupported(f"the chainer adapter runs on the CPU only: {NO_GPU['chainer']}")
    import chainer
    from chainer.backends import intel64
    _ch = chainer
    return {"framework": "chainer", "version": chainer.__version__,
            "ideep": intel64.is_ideep_available(),
            "cpu_kernels": "NumPy (GEMMs in NumPy's BLAS); no oneDNN",
            "precision_switches": "none (the array dtype decides)"}


class _Ctx:
    """How the layer runs on the CPU: dtype and configuration."""

    def __init__(self, path, device, precision):
        chainer = _ch
        if device != "cpu":
            raise Unsupported(f"the chainer adapter runs on the CPU only: {NO_GPU['chainer']}")
        if precision not in _DTYPES:
            raise Unsupported(f"the chainer adapter runs {', '.join(_DTYPES)}; not {precision}")
        self.dtype = _DTYPES[precision]
        # links create their parameters in the configured dtype (one case per worker process)
        chainer.global_config.dtype = np.dtype(self.dtype)
        self.chainer = chainer

    def array(self, a):
        return np.ascontiguousarray(a, dtype=self.dtype)

    def sync(self):
        pass

    def config(self, train, backprop=False):
        chainer, stack = self.chainer, contextlib.ExitStack()
        for key, value in (("train", train), ("enable_backprop", backprop)):
            stack.enter_context(chainer.using_config(key, value))
        return stack

    def host(self, a):
        a = a.array if hasattr(a, "array") else a
        return np.asarray(a, dtype=np.float64)


def _set(param, array):
    if param.shape != array.shape:
        raise ValueError(f"chainer parameter of shape {param.shape} given {array.shape}")
    param.array[...] = array


def build(op, path, device, precision, arrays) -> Built:
    chainer = _ch
    F, L = chainer.functions, chainer.links
    if op not in ("lstm", "gru", "rnn_relu", "rnn_tanh"):
        raise Unsupported(f"the chainer adapter has no {op} path (it runs Chainer's LSTM/GRU/RNN layers)")
    cell_op, act = split_op(op)
    ctx = _Ctx(path, device, precision)
    T, B, I, H, L_ = dims(arrays)
    layers = unpack_layers(arrays)
    lstm = op == "lstm"
    train = "dy" in arrays
    info = {"mode": "training step: chainer.grad of sum(y * dy) w.r.t. x, h0, c0 and every weight"
            if train else "chainer.config.train=False, enable_backprop=False"}

    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell_op]
    if path == "fused":
        NStep = {"lstm": L.NStepLSTM, "gru": L.NStepGRU,
                 "rnn": L.NStepRNNReLU if act == "relu" else L.NStepRNNTanh}[cell_op]
        net = NStep(L_, I, H, 0.0)
        for l, layer in enumerate(layers):
            ws, bs = to_chainer_nstep(layer, cell_op)
            for j, (w, b) in enumerate(zip(ws, bs)):
                _set(getattr(net[l], f"w{j}"), ctx.array(w))
                _set(getattr(net[l], f"b{j}"), ctx.array(b))

        def forward(xs, h0, c0=None):
            # xs: one (T, I) sequence per batch entry, the form NStep links take
            if lstm:
                hy, cy, ys = net(h0, c0, xs)
            else:
                (hy, ys), cy = net(h0, xs), None
            return F.stack(ys, axis=1), hy, cy

        # per layer w0..w{2G-1}, then b0..b{2G-1}
        params = [getattr(net[l], f"{k}{j}") for l in range(L_) for k in "wb" for j in range(2 * G)]

        def layer_grads(g):
            return from_chainer_nstep(g[:2 * G], g[2 * G:], cell_op)
        info["kernel"] = "Chainer's NStep CPU loop: NumPy GEMMs (BLAS) + NumPy pointwise, no oneDNN"
    elif path == "generic":
        cells = []
        for l, layer in enumerate(layers):
            if lstm:
                cell = L.StatelessLSTM(I if l == 0 else H, H)
                d = to_chainer_lstm(layer)
                _set(cell.upward.W, d["upward.W"].astype(ctx.dtype))
                _set(cell.upward.b, d["upward.b"].astype(ctx.dtype))
                _set(cell.lateral.W, d["lateral.W"].astype(ctx.dtype))
            else:
                w_ih, w_hh, b_ih, b_hh = layer
                cell = chainer.Chain()
                with cell.init_scope():
                    cell.x2h = L.Linear(w_ih.shape[1], G * H, initialW=w_ih.astype(ctx.dtype),
                                        initial_bias=b_ih.astype(ctx.dtype))
                    cell.h2h = L.Linear(H, G * H, initialW=w_hh.astype(ctx.dtype),
                                        initial_bias=b_hh.astype(ctx.dtype))
            cells.append(cell)

        def gru_step(cell, x, h):
            xr, xz, xn = F.split_axis(cell.x2h(x), 3, axis=1)
            hr, hz, hn = F.split_axis(cell.h2h(h), 3, axis=1)
            r, z = F.sigmoid(xr + hr), F.sigmoid(xz + hz)
            return (1 - z) * F.tanh(xn + r * hn) + z * h

        def vanilla_step(cell, x, h):
            return (F.relu if act == "relu" else F.tanh)(cell.x2h(x) + cell.h2h(h))

        step = vanilla_step if cell_op == "rnn" else gru_step

        def forward(x, h0, c0=None):
            seq, hs, cs = x, [], []
            for l, cell in enumerate(cells):
                h, c, ys = h0[l], (c0[l] if lstm else None), []
                for t in range(T):
                    if lstm:
                        c, h = cell(c, h, seq[t])
                    else:
                        h = step(cell, seq[t], h)
                    ys.append(h)
                seq = F.stack(ys)
                hs.append(h)
                cs.append(c)
            return seq, F.stack(hs), (F.stack(cs) if lstm else None)

        if lstm:
            params = [p for c in cells for p in (c.upward.W, c.lateral.W, c.upward.b)]

            def layer_grads(g):
                w_ih, w_hh, db, _ = from_chainer_lstm({"upward.W": g[0], "lateral.W": g[1], "upward.b": g[2]})
                return w_ih, w_hh, db, db.copy()    # one summed bias: its gradient is each part's
        else:
            params = [p for c in cells for p in (c.x2h.W, c.h2h.W, c.x2h.b, c.h2h.b)]

            def layer_grads(g):
                return tuple(g)
        info["kernel"] = "per step: cell GEMMs (F.linear on NumPy's BLAS) + pointwise chainer.functions, Python loop"
    else:
        raise Unsupported(f"chainer has no path {path!r} on {device}")

    fused = path == "fused"
    x, h0 = ctx.array(arrays["x"]), ctx.array(arrays["h0"])
    c0 = ctx.array(arrays["c0"]) if lstm else None
    last = {}

    if train:
        dy = chainer.Variable(ctx.array(arrays["dy"]))
        leaves = [chainer.Variable(a) for a in ((x, h0, c0) if lstm else (x, h0))]
        per = len(params) // L_

        def run():
            # train=True only where it matters: cuDNN's RNN keeps its reserve space for the
            # backward in training mode; on the CPU it would only add dropout(0) calls.
            with ctx.config(False, backprop=True):
                xin = F.separate(leaves[0], axis=1) if fused else leaves[0]
                y = forward(xin, *leaves[1:])[0]
                grads = chainer.grad([y], leaves + params, grad_outputs=[dy])
            last["out"] = (y, grads)
            ctx.sync()

        def outputs():
            y, grads = last["out"]
            host = [ctx.host(g) for g in grads]
            gp = host[len(leaves):]
            gw = [a for l in range(L_) for a in layer_grads(gp[l * per:(l + 1) * per])]
            return (ctx.host(y), *host[:len(leaves)], *gw)
        info["kernel"] += ", forward and backward"
        return Built(run, outputs, info)

    xin = [x[:, b] for b in range(B)] if fused else x     # views, made once outside the timed call

    def run():
        with ctx.config(False):
            last["out"] = forward(xin, h0, c0)
        ctx.sync()

    def outputs():
        y, hn, cn = last["out"]
        return tuple(ctx.host(a) for a in ((y, hn, cn) if lstm else (y, hn)))

    return Built(run, outputs, info)


def build_conv(path, device, precision, arrays, geom) -> Built:
    """L.Convolution2D, NCHW with our KCRS filter (an NHWC problem is transposed outside the timed call)."""
    chainer = _ch
    if path != "fused" or device != "cpu":
        raise Unsupported(f"chainer has no conv path {path!r} on {device}")
    ctx = _Ctx(path, device, precision)
    nhwc = geom["layout"] == "NHWC"
    xa = np.asarray(arrays["x"])
    x = ctx.array(xa.transpose(0, 3, 1, 2) if nhwc else xa)
    w = np.asarray(arrays["w"])
    K, Cg, R, S = w.shape
    has_b = "b" in arrays
    conv = chainer.links.Convolution2D(Cg * geom["groups"], K, ksize=(R, S), stride=tuple(geom["stride"]),
                                       pad=tuple(geom["pad"]), nobias=not has_b, dilate=tuple(geom["dilation"]),
                                       groups=geom["groups"], initialW=w.astype(ctx.dtype),
                                       initial_bias=np.asarray(arrays["b"]).astype(ctx.dtype) if has_b else None)
    last = {}

    def run():
        with ctx.config(False):
            last["y"] = conv(x)
        ctx.sync()

    def outputs():
        y = ctx.host(last["y"])
        return (np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if nhwc else y,)

    return Built(run, outputs, {"kernel": "im2col in NumPy + BLAS GEMM (tensordot), no oneDNN",
                                "layout": "NCHW"})


def build_conv_backward(path, device, precision, arrays, geom, phase) -> Built:
    """One backward phase of ``sum(y * dy)`` for the conv of :func:`build_conv`: the backward of
    ``F.convolution_2d``'s node (``Convolution2DFunction.backward``, what ``Variable.backward``
    calls) asked for one phase's inputs only, as the torch adapter's output mask does:
    ``bwd_data`` (index 0: ``F.deconvolution_2d`` of dy, dx) or ``bwd_weights`` (index 1:
    ``Convolution2DGradW``, dw; and index 2, dy summed over N, H, W, db, with a bias).  The forward
    runs once at build time, outside the timed call, to record the node and the inputs it keeps;
    the timed call runs without backprop, as Chainer's own backward pass does by default.  NCHW
    with our KCRS filter; an NHWC problem is transposed outside the timed call."""
    chainer = _ch
    from chainer.functions.connection.convolution_2d import Convolution2DFunction
    if phase not in ("bwd_data", "bwd_weights"):
        raise Unsupported(f"conv backward phase {phase!r} is unknown; allowed: bwd_data, bwd_weights")
    if path != "fused" or device != "cpu":
        raise Unsupported(f"chainer has no conv path {path!r} on {device}")
    ctx = _Ctx(path, device, precision)
    nhwc = geom["layout"] == "NHWC"
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2) if nhwc else np.asarray(a)  # noqa: E731
    has_b = "b" in arrays
    x = chainer.Variable(ctx.array(nchw(arrays["x"])))
    w = chainer.Variable(ctx.array(arrays["w"]))
    b = chainer.Variable(ctx.array(arrays["b"])) if has_b else None
    gy = chainer.Variable(ctx.array(nchw(arrays["dy"])))
    node = Convolution2DFunction(stride=tuple(geom["stride"]), pad=tuple(geom["pad"]), cover_all=False,
                                 dilate=tuple(geom["dilation"]), groups=geom["groups"])
    with ctx.config(False, backprop=True):
        y, = node.apply((x, w, b) if has_b else (x, w))
    if y.shape != gy.shape:
        raise ValueError(f"chainer conv output has shape {y.shape}, dy {gy.shape}")
    data = phase == "bwd_data"
    indexes = (0,) if data else ((1, 2) if has_b else (1,))
    last = {}

    def run():
        with ctx.config(False):
            last["out"] = node.backward(indexes, (gy,))
        ctx.sync()

    def outputs():
        out = [ctx.host(a) for a in last["out"]]
        if data and nhwc:
            out[0] = np.ascontiguousarray(out[0].transpose(0, 2, 3, 1))
        return tuple(out)

    ops = ("F.deconvolution_2d" if data else
           "Convolution2DGradW" + (" + F.sum of dy over (N, H, W)" if has_b else ""))
    kernel = "im2col/col2im in NumPy + BLAS GEMM (tensordot), no oneDNN"
    return Built(run, outputs, {
        "kernel": f"{ops}: {kernel}", "layout": "NCHW",
        "backward": f"Convolution2DFunction.backward, target indexes {list(indexes)}: {ops} ({phase})"})
