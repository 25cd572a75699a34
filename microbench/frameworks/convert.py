"""Our canonical RNN weights in each framework's layout, and back (pure NumPy).

Canonical (``kernels.params``): per layer ``w_ih (G*H, I)``, ``w_hh (G*H, H)``, ``b_ih``, ``b_hh``
``(G*H,)``; gate blocks stacked along the rows, LSTM ``i f g o``, GRU ``r z n`` with the reset gate
applied after the recurrent GEMM, the vanilla RNN (op ``rnn``) one block ``h``.  Gate orders below are written in our letters.

This module imports NumPy only: it runs inside every worker, including the MXNet interpreter
with NumPy 1.x, and in the always-run round-trip tests.  It deliberately does not import
``kernels`` (whose package pulls in nothing heavy, but the worker must not depend on it).

Each ``to_X`` returns plain NumPy arrays keyed the way the adapter assigns them; each ``from_X``
inverts it exactly (the biases a framework sums are split back only where the framework keeps
them apart; see :func:`from_keras`).
"""
from __future__ import annotations

import numpy as np

GATES = {"lstm": "ifgo", "gru": "rzn", "rnn": "h"}

# Gate order of each layout, in our letters.
ORDER = {
    ("torch", "lstm"): "ifgo", ("torch", "gru"): "rzn",
    ("mxnet", "lstm"): "ifgo", ("mxnet", "gru"): "rzn",
    ("keras", "lstm"): "ifgo",     # Keras i, f, c, o
    ("keras", "gru"): "zrn",       # Keras z, r, h (reset_after=True keeps the recurrent bias apart)
    ("cudnn", "lstm"): "ifgo",     # jax.experimental.rnn packs cuDNN's order
    ("tfblock", "lstm"): "ifgo",   # tf.raw_ops.BlockLSTMV2: i, f, ci, o (found by test)
    # Chainer's NStep links: w0..w3 (input) and w4..w7 (recurrent) are i, f, a (our g), o, as
    # n_step_lstm's _lstm and its cuDNN weight concat use them (its docstring lists o before a:
    # the code, and the test against the reference, say otherwise); GRU w0..w2 / w3..w5 r, z, n.
    ("chainer_nstep", "lstm"): "ifgo", ("chainer_nstep", "gru"): "rzn",
    # chainer.functions.lstm (and L.StatelessLSTM): gates a, i, f, o interleaved unit by unit.
    ("chainer_lstm", "lstm"): "gifo",
    # the vanilla RNN has one block: every layout keeps it (Keras and Flax transpose it)
    ("torch", "rnn"): "h", ("mxnet", "rnn"): "h", ("keras", "rnn"): "h", ("chainer_nstep", "rnn"): "h",
}


def split_op(op: str) -> tuple:
    """A worker's op and the vanilla cell's activation: ``rnn_relu`` -> (``rnn``, ``relu``),
    ``lstm`` -> (``lstm``, None)."""
    if op.startswith("rnn_"):
        act = op[len("rnn_"):]
        if act not in ("relu", "tanh"):
            raise ValueError(f"vanilla RNN activation {act!r} is unknown; allowed: relu, tanh")
        return "rnn", act
    return op, None


def reorder(a: np.ndarray, src: str, dst: str, axis: int = 0) -> np.ndarray:
    """Permute equal gate blocks along ``axis`` from order ``src`` to ``dst`` (same letters)."""
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ValueError(f"gate orders {src!r} and {dst!r} must be permutations of the same letters")
    if a.shape[axis] % len(src):
        raise ValueError(f"axis {axis} of length {a.shape[axis]} does not split into {len(src)} gates")
    blocks = np.split(np.asarray(a), len(src), axis=axis)
    return np.concatenate([blocks[src.index(g)] for g in dst], axis=axis)


# -- canonical arrays <-> the flat dict sent to workers -------------------------------------------

def pack_layers(layers) -> dict:
    """``[(w_ih, w_hh, b_ih, b_hh), ...]`` -> ``{"w_ih0": ..., ...}`` (the .npz the worker reads)."""
    out = {}
    for l, arrays in enumerate(layers):
        for name, a in zip(("w_ih", "w_hh", "b_ih", "b_hh"), arrays):
            out[f"{name}{l}"] = np.ascontiguousarray(a)
    return out


def unpack_layers(d) -> list:
    """Inverse of :func:`pack_layers`."""
    layers, l = [], 0
    while f"w_ih{l}" in d:
        layers.append(tuple(np.asarray(d[f"{n}{l}"]) for n in ("w_ih", "w_hh", "b_ih", "b_hh")))
        l += 1
    return layers


# -- the layer-norm LSTM's extra parameters, and what a training step returns ---------------------

# Per layer, as kernels.custom.LayerNormLSTMParams declares them (tested equal): gains and biases
# of the layer norms over x W_ih^T (4, H), over h W_hh^T (4, H) and over c (H,).  Spelled out here
# because workers do not import ``kernels``.
LAYERNORM_EXTRAS = ("lnx_g", "lnx_b", "lnh_g", "lnh_b", "lnc_g", "lnc_b")


def pack_extras(extras) -> dict:
    """``[{"lnx_g": ..., ...}, ...]`` (one dict per layer) -> ``{"lnx_g0": ..., ...}``."""
    return {f"{name}{l}": np.ascontiguousarray(e[name]) for l, e in enumerate(extras) for name in LAYERNORM_EXTRAS}


def unpack_extras(d) -> list:
    """Inverse of :func:`pack_extras` (as many layers as :func:`unpack_layers` finds)."""
    out, l = [], 0
    while f"lnx_g{l}" in d:
        out.append({name: np.asarray(d[f"{name}{l}"]) for name in LAYERNORM_EXTRAS})
        l += 1
    return out


def grad_names(op: str, num_layers: int, skip_input: bool = False) -> list:
    """Order of the arrays a training step returns (worker -> parent): the forward output ``y``,
    then the gradients of ``sum(y * dy)`` with respect to ``x``, ``h0``, ``c0`` (LSTMs only) and,
    per layer, ``w_ih, w_hh, b_ih, b_hh`` (and the layer-norm extras for op ``layernorm``).
    ``skip_input``: ``dx`` is the gradient of the given input projection and layer 0 has no
    ``w_ih``.  ``op``: lstm, gru, layernorm, or rnn / rnn_relu / rnn_tanh."""
    names = ["y", "dx", "dh0"] + (["dc0"] if op in ("lstm", "layernorm") else [])
    per = ("w_ih", "w_hh", "b_ih", "b_hh") + (LAYERNORM_EXTRAS if op == "layernorm" else ())
    return names + [f"d{n}{l}" for l in range(num_layers) for n in per
                    if not (skip_input and l == 0 and n == "w_ih")]


# -- PyTorch and MXNet: our layout, gate order included ------------------------------------------

def to_torch(layer, cell: str) -> dict:
    w_ih, w_hh, b_ih, b_hh = layer
    return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}


def from_torch(d: dict, cell: str) -> tuple:
    return d["weight_ih"], d["weight_hh"], d["bias_ih"], d["bias_hh"]


def to_mxnet(layer, cell: str) -> dict:
    w_ih, w_hh, b_ih, b_hh = layer
    return {"i2h_weight": w_ih, "i2h_bias": b_ih, "h2h_weight": w_hh, "h2h_bias": b_hh}


def from_mxnet(d: dict, cell: str) -> tuple:
    return d["i2h_weight"], d["h2h_weight"], d["i2h_bias"], d["h2h_bias"]


# -- Keras 3: (in, G*H) kernels, gates i,f,c,o / z,r,h -------------------------------------------

def to_keras(layer, cell: str) -> list:
    """``layer.set_weights`` order: kernel (I, G*H), recurrent_kernel (H, G*H), bias.

    LSTM and the vanilla RNN (``SimpleRNNCell``): one bias, ``b_ih + b_hh`` (Keras adds a single
    bias).  GRU with ``reset_after=True``: bias (2, 3H) = [input bias; recurrent bias], kept apart
    as our GRU needs.
    """
    w_ih, w_hh, b_ih, b_hh = layer
    src, dst = GATES[cell], ORDER[("keras", cell)]
    kernel = np.ascontiguousarray(reorder(w_ih, src, dst).T)
    recurrent = np.ascontiguousarray(reorder(w_hh, src, dst).T)
    if cell in ("lstm", "rnn"):
        bias = reorder(b_ih, src, dst) + reorder(b_hh, src, dst)
    else:
        bias = np.stack([reorder(b_ih, src, dst), reorder(b_hh, src, dst)])
    return [kernel, recurrent, bias]


def from_keras(weights, cell: str) -> tuple:
    """Inverse of :func:`to_keras`; a summed bias (LSTM, vanilla RNN) comes back whole as ``b_ih``
    (b_hh = 0)."""
    kernel, recurrent, bias = weights
    src, dst = ORDER[("keras", cell)], GATES[cell]
    w_ih = reorder(np.asarray(kernel).T, src, dst)
    w_hh = reorder(np.asarray(recurrent).T, src, dst)
    if cell in ("lstm", "rnn"):
        b_ih, b_hh = reorder(bias, src, dst), np.zeros_like(bias)
    else:
        b_ih, b_hh = reorder(bias[0], src, dst), reorder(bias[1], src, dst)
    return w_ih, w_hh, b_ih, b_hh


def grads_from_keras(grads, cell: str) -> tuple:
    """Gradients with respect to the weights of :func:`to_keras` (kernel, recurrent_kernel,
    bias), back in our layout.  The transposes and gate permutations are orthogonal, so their
    adjoint is their inverse (:func:`from_keras`); a bias summed from ``b_ih`` and ``b_hh`` (LSTM,
    vanilla RNN) has one gradient, which is the gradient of each of the two."""
    w_ih, w_hh, b_ih, b_hh = from_keras(grads, cell)
    if cell in ("lstm", "rnn"):
        b_hh = b_ih.copy()
    return w_ih, w_hh, b_ih, b_hh


# -- Flax linen cells: one Dense per gate ---------------------------------------------------------

def to_flax(layer, cell: str) -> dict:
    """Params of ``OptimizedLSTMCell``/``LSTMCell`` (``i?`` kernels without bias, ``h?`` with) or
    ``GRUCell`` (``ir, iz, in`` with bias, ``hr, hz`` without, ``hn`` with), or ``SimpleCell``
    (the vanilla RNN: ``i`` with bias, ``h`` without).  Biases the cell adds together are summed
    here: the LSTM's four, the GRU's r and z, the vanilla cell's two; ``b_hn`` stays inside
    ``r * (.)``."""
    w_ih, w_hh, b_ih, b_hh = layer
    H = w_hh.shape[1]
    blk = lambda a, k: a[k * H:(k + 1) * H]  # noqa: E731
    p = {}
    if cell == "rnn":
        return {"i": {"kernel": np.ascontiguousarray(w_ih.T), "bias": b_ih + b_hh},
                "h": {"kernel": np.ascontiguousarray(w_hh.T)}}
    if cell == "lstm":
        for k, g in enumerate("ifgo"):
            p[f"i{g}"] = {"kernel": np.ascontiguousarray(blk(w_ih, k).T)}
            p[f"h{g}"] = {"kernel": np.ascontiguousarray(blk(w_hh, k).T), "bias": blk(b_ih, k) + blk(b_hh, k)}
    else:
        for k, g in enumerate("rzn"):
            p[f"i{g}"] = {"kernel": np.ascontiguousarray(blk(w_ih, k).T),
                          "bias": blk(b_ih, k) + (blk(b_hh, k) if g != "n" else 0)}
            p[f"h{g}"] = {"kernel": np.ascontiguousarray(blk(w_hh, k).T)}
        p["hn"]["bias"] = blk(b_hh, 2)
    return p


def from_flax(p: dict, cell: str) -> tuple:
    """Inverse of :func:`to_flax`; summed biases come back in ``b_ih`` (their ``b_hh`` part 0)."""
    if cell == "rnn":
        b_ih = np.asarray(p["i"]["bias"])
        return np.asarray(p["i"]["kernel"]).T, np.asarray(p["h"]["kernel"]).T, b_ih, np.zeros_like(b_ih)
    gates = GATES[cell]
    w_ih = np.concatenate([np.asarray(p[f"i{g}"]["kernel"]).T for g in gates])
    w_hh = np.concatenate([np.asarray(p[f"h{g}"]["kernel"]).T for g in gates])
    H = w_hh.shape[1]
    zero = np.zeros(H, dtype=w_ih.dtype)
    if cell == "lstm":
        b_ih = np.concatenate([np.asarray(p[f"h{g}"]["bias"]) for g in gates])
        b_hh = np.zeros_like(b_ih)
    else:
        b_ih = np.concatenate([np.asarray(p[f"i{g}"]["bias"]) for g in gates])
        b_hh = np.concatenate([zero, zero, np.asarray(p["hn"]["bias"])])
    return w_ih, w_hh, b_ih, b_hh


def grads_from_flax(g: dict, cell: str) -> tuple:
    """Gradients with respect to the params of :func:`to_flax`, back in our layout.

    A bias :func:`to_flax` summed from ``b_ih`` and ``b_hh`` has one gradient, which is the
    gradient of each of the two (d(a + b)/da = d(a + b)/db); ``b_hn`` kept apart has its own."""
    if cell == "rnn":
        db = np.asarray(g["i"]["bias"])
        return np.asarray(g["i"]["kernel"]).T, np.asarray(g["h"]["kernel"]).T, db, db.copy()
    gates = GATES[cell]
    w_ih = np.concatenate([np.asarray(g[f"i{k}"]["kernel"]).T for k in gates])
    w_hh = np.concatenate([np.asarray(g[f"h{k}"]["kernel"]).T for k in gates])
    if cell == "lstm":
        db = np.concatenate([np.asarray(g[f"h{k}"]["bias"]) for k in gates])
        return w_ih, w_hh, db, db.copy()
    b_ih = np.concatenate([np.asarray(g[f"i{k}"]["bias"]) for k in gates])
    b_hh = np.concatenate([np.asarray(g["ir"]["bias"]), np.asarray(g["iz"]["bias"]), np.asarray(g["hn"]["bias"])])
    return w_ih, w_hh, b_ih, b_hh


# -- cuDNN's packed LSTM weights (jax.experimental.rnn) ------------------------------------------

def to_cudnn_packed(layers) -> np.ndarray:
    """One flat vector: every layer's ``W_ih, W_hh`` (row-major), then every layer's ``b_ih, b_hh``:
    the layout ``jax.experimental.rnn.unpack_lstm_weights`` reads (unidirectional)."""
    ws = [a.ravel() for w_ih, w_hh, _, _ in layers for a in (w_ih, w_hh)]
    bs = [b for _, _, b_ih, b_hh in layers for b in (b_ih, b_hh)]
    return np.concatenate(ws + bs)


def from_cudnn_packed(flat: np.ndarray, input_size: int, hidden_size: int, num_layers: int,
                      gates: int = 4) -> list:
    flat = np.asarray(flat)
    GH, H, off = gates * hidden_size, hidden_size, 0
    ws = []
    for l in range(num_layers):
        width = input_size if l == 0 else H
        w_ih = flat[off:off + GH * width].reshape(GH, width)
        off += GH * width
        w_hh = flat[off:off + GH * H].reshape(GH, H)
        off += GH * H
        ws.append((w_ih, w_hh))
    layers = []
    for l in range(num_layers):
        b_ih, b_hh = flat[off:off + GH], flat[off + GH:off + 2 * GH]
        off += 2 * GH
        layers.append((*ws[l], b_ih, b_hh))
    if off != flat.size:
        raise ValueError(f"packed weights have {flat.size} values; the sizes give {off}")
    return layers


# -- tf.raw_ops.BlockLSTMV2: one (I+H, 4H) matrix, gates i, f, ci, o (V1 used i, ci, f, o) -----------------------------

def to_tfblock(layer, cell: str = "lstm") -> tuple:
    """``w`` = [W_ih^T; W_hh^T] (I+H, 4H) and ``b`` = b_ih + b_hh, both in BlockLSTM's gate order."""
    w_ih, w_hh, b_ih, b_hh = layer
    src, dst = GATES["lstm"], ORDER[("tfblock", "lstm")]
    w = np.concatenate([reorder(w_ih, src, dst).T, reorder(w_hh, src, dst).T])
    return np.ascontiguousarray(w), reorder(b_ih, src, dst) + reorder(b_hh, src, dst)


def from_tfblock(w: np.ndarray, b: np.ndarray, input_size: int) -> tuple:
    src, dst = ORDER[("tfblock", "lstm")], GATES["lstm"]
    w_ih = reorder(np.asarray(w)[:input_size].T, src, dst)
    w_hh = reorder(np.asarray(w)[input_size:].T, src, dst)
    return w_ih, w_hh, reorder(b, src, dst), np.zeros_like(b)


def grads_from_tfblock(w_grad: np.ndarray, b_grad: np.ndarray, input_size: int) -> tuple:
    """Gradients with respect to :func:`to_tfblock`'s ``w`` and ``b``, in our layout (the summed
    bias's gradient is each part's, as in :func:`grads_from_keras`)."""
    w_ih, w_hh, db, _ = from_tfblock(w_grad, b_grad, input_size)
    return w_ih, w_hh, db, db.copy()


# -- Chainer 7: NStep links keep one (H, in) matrix and one bias per gate; F.lstm interleaves -------

def to_chainer_nstep(layer, cell: str) -> tuple:
    """``(ws, bs)`` of one ``L.NStepLSTM``/``L.NStepGRU`` layer: ``w0..w{G-1}`` the input
    matrices, ``w{G}..w{2G-1}`` the recurrent ones, one gate each (``b`` alike, kept apart)."""
    w_ih, w_hh, b_ih, b_hh = layer
    src, dst = GATES[cell], ORDER[("chainer_nstep", cell)]
    G = len(src)
    ws = np.split(reorder(w_ih, src, dst), G) + np.split(reorder(w_hh, src, dst), G)
    bs = np.split(reorder(b_ih, src, dst), G) + np.split(reorder(b_hh, src, dst), G)
    return [np.ascontiguousarray(w) for w in ws], [np.ascontiguousarray(b) for b in bs]


def from_chainer_nstep(ws, bs, cell: str) -> tuple:
    """Inverse of :func:`to_chainer_nstep` (also maps the links' gradients to ours)."""
    src, dst = ORDER[("chainer_nstep", cell)], GATES[cell]
    G = len(src)
    cat = lambda parts: reorder(np.concatenate([np.asarray(p) for p in parts]), src, dst)  # noqa: E731
    return cat(ws[:G]), cat(ws[G:]), cat(bs[:G]), cat(bs[G:])


def _interleave(a: np.ndarray) -> np.ndarray:
    """Gate blocks ``(4H, ...)`` -> ``(H, 4, ...)`` flattened: row ``4j + k`` is gate k of unit j."""
    blocks = np.stack(np.split(np.asarray(a), 4))
    return np.ascontiguousarray(np.swapaxes(blocks, 0, 1).reshape(a.shape))


def _deinterleave(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    H = a.shape[0] // 4
    return np.ascontiguousarray(np.swapaxes(a.reshape((H, 4) + a.shape[1:]), 0, 1).reshape(a.shape))


def to_chainer_lstm(layer, cell: str = "lstm") -> dict:
    """``L.StatelessLSTM``: ``upward`` (x -> 4H, with the one bias, ``b_ih + b_hh``) and
    ``lateral`` (h -> 4H, no bias), rows interleaved in F.lstm's a, i, f, o."""
    w_ih, w_hh, b_ih, b_hh = layer
    src, dst = GATES["lstm"], ORDER[("chainer_lstm", "lstm")]
    return {"upward.W": _interleave(reorder(w_ih, src, dst)),
            "upward.b": _interleave(reorder(b_ih, src, dst) + reorder(b_hh, src, dst)),
            "lateral.W": _interleave(reorder(w_hh, src, dst))}


def from_chainer_lstm(d: dict, cell: str = "lstm") -> tuple:
    """Inverse of :func:`to_chainer_lstm`; the summed bias comes back whole as ``b_ih`` (b_hh 0)."""
    src, dst = ORDER[("chainer_lstm", "lstm")], GATES["lstm"]
    b = reorder(_deinterleave(d["upward.b"]), src, dst)
    return (reorder(_deinterleave(d["upward.W"]), src, dst), reorder(_deinterleave(d["lateral.W"]), src, dst),
            b, np.zeros_like(b))
