"""The pointwise half of each cell, op by op: what the ``naive`` variant runs every step.

Every line below is one array operation: on NumPy one pass over memory, on CuPy one kernel
launch.  That is the cost ``fuse_pointwise`` removes (see :mod:`fusion.pointwise`).

Common signature, whatever the backend (``xp`` is its array module):

- ``gx``, ``gh``: ``(B, G, H)`` views of the input and recurrent GEMM results;
- ``bx``, ``bh``: ``(G, H)`` biases still to be added, or None when already folded in;
- LSTM: ``lstm_pointwise(xp, gx, gh, bx, bh, c_prev, h_out, c_out) -> (h, c)``;
- GRU:  ``gru_pointwise(xp, gx, gh, bx, bh, h_prev, h_out) -> (h,)`` (``bh`` is never None:
  ``b_hn`` sits inside the reset product);
- vanilla RNN (``rnn_relu``, ``rnn_tanh``): the GRU's signature, G = 1.

The op-by-op versions allocate their results and ignore the ``*_out`` buffers; the fused
versions write into them.
"""
from __future__ import annotations


def sigmoid(xp, a):
    # 0.5 * (1 + tanh(a / 2)) never overflows, unlike 1 / (1 + exp(-a)); 3 ops
    return 0.5 * xp.tanh(0.5 * a) + 0.5


def _preactivation(gx, gh, bx, bh, k):
    a = gx[:, k] + gh[:, k]
    if bx is not None:
        a = a + bx[k]
    if bh is not None:
        a = a + bh[k]
    return a


def lstm_pointwise(xp, gx, gh, bx, bh, c_prev, h_out=None, c_out=None):
    i = sigmoid(xp, _preactivation(gx, gh, bx, bh, 0))
    f = sigmoid(xp, _preactivation(gx, gh, bx, bh, 1))
    g = xp.tanh(_preactivation(gx, gh, bx, bh, 2))
    o = sigmoid(xp, _preactivation(gx, gh, bx, bh, 3))
    fc = f * c_prev
    ig = i * g
    c = fc + ig
    tc = xp.tanh(c)
    h = o * tc
    return h, c


def gru_pointwise(xp, gx, gh, bx, bh, h_prev, h_out=None):
    r = sigmoid(xp, _preactivation(gx, gh, bx, bh, 0))
    z = sigmoid(xp, _preactivation(gx, gh, bx, bh, 1))
    hn = gh[:, 2] + bh[2]
    rhn = r * hn
    xn = gx[:, 2] + bx[2] if bx is not None else gx[:, 2]
    n = xp.tanh(xn + rhn)
    one_minus_z = 1.0 - z
    h = one_minus_z * n + z * h_prev
    return (h,)


def rnn_relu_pointwise(xp, gx, gh, bx, bh, h_prev, h_out=None):
    # maximum, not a comparison and a select: NaN must reach the output and fail the check
    return (xp.maximum(_preactivation(gx, gh, bx, bh, 0), 0.0),)


def rnn_tanh_pointwise(xp, gx, gh, bx, bh, h_prev, h_out=None):
    return (xp.tanh(_preactivation(gx, gh, bx, bh, 0)),)


# Keyed by RNNParams.cell_mode: the vanilla cell's nonlinearity picks its function.
NAIVE = {"lstm": lstm_pointwise, "gru": gru_pointwise, "rnn_relu": rnn_relu_pointwise,
         "rnn_tanh": rnn_tanh_pointwise}
