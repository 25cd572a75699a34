"""The float64 references against an independent, element-by-element formulation.

The independent version follows PyTorch's documented equations literally, unit by unit with
Python floats and math.exp, so it shares no array code with kernels.reference.
"""
import math

import numpy as np
import pytest

from kernels import BadInput, GRUParams, LSTMParams, gru_reference, lstm_reference


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def _dot(w_row, vec):
    return sum(float(a) * float(b) for a, b in zip(w_row, vec))


def lstm_scalar(x, p, h0, c0):
    T, B, _ = x.shape
    H = p.hidden_size
    seq = [[list(map(float, x[t, b])) for b in range(B)] for t in range(T)]
    hn, cn = [], []
    for l, layer in enumerate(p.layers):
        h = [list(map(float, h0[l, b])) for b in range(B)]
        c = [list(map(float, c0[l, b])) for b in range(B)]
        out = []
        for t in range(T):
            step = []
            for b in range(B):
                def gate(k, j):
                    r = k * H + j
                    return (_dot(layer.w_ih[r], seq[t][b]) + layer.b_ih[r]
                            + _dot(layer.w_hh[r], h[b]) + layer.b_hh[r])
                new_h, new_c = [], []
                for j in range(H):
                    i_, f_ = _sig(gate(0, j)), _sig(gate(1, j))
                    g_, o_ = math.tanh(gate(2, j)), _sig(gate(3, j))
                    cj = f_ * c[b][j] + i_ * g_
                    new_c.append(cj)
                    new_h.append(o_ * math.tanh(cj))
                step.append(new_h)
                c[b] = new_c
            h = step
            out.append(step)
        hn.append(h)
        cn.append(c)
        seq = out
    return np.array(seq), np.array(hn), np.array(cn)


def gru_scalar(x, p, h0):
    T, B, _ = x.shape
    H = p.hidden_size
    seq = [[list(map(float, x[t, b])) for b in range(B)] for t in range(T)]
    hn = []
    for l, layer in enumerate(p.layers):
        h = [list(map(float, h0[l, b])) for b in range(B)]
        out = []
        for t in range(T):
            step = []
            for b in range(B):
                def wx(k, j):
                    return _dot(layer.w_ih[k * H + j], seq[t][b]) + layer.b_ih[k * H + j]

                def wh(k, j):
                    return _dot(layer.w_hh[k * H + j], h[b]) + layer.b_hh[k * H + j]
                row = []
                for j in range(H):
                    r = _sig(wx(0, j) + wh(0, j))
                    z = _sig(wx(1, j) + wh(1, j))
                    n = math.tanh(wx(2, j) + r * wh(2, j))
                    row.append((1 - z) * n + z * h[b][j])
                step.append(row)
            h = step
            out.append(step)
        hn.append(h)
        seq = out
    return np.array(seq), np.array(hn)


@pytest.mark.parametrize("T,B,I,H,L", [(1, 1, 1, 1, 1), (3, 2, 5, 4, 2), (4, 3, 2, 7, 3)])
def test_lstm_reference_matches_scalar_equations(T, B, I, H, L):
    rng = np.random.default_rng(T * 100 + H)
    p = LSTMParams.random(I, H, L, seed=7)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, L, B, H))
    y, (hn, cn) = lstm_reference(x, p, h0, c0)
    ys, hs, cs = lstm_scalar(x, p, h0, c0)
    np.testing.assert_allclose(y, ys, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hn, hs, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(cn, cs, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("T,B,I,H,L", [(1, 1, 1, 1, 1), (3, 2, 5, 4, 2), (4, 3, 2, 7, 3)])
def test_gru_reference_matches_scalar_equations(T, B, I, H, L):
    rng = np.random.default_rng(T * 100 + H + 1)
    p = GRUParams.random(I, H, L, seed=9)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L, B, H))
    y, hn = gru_reference(x, p, h0)
    ys, hs = gru_scalar(x, p, h0)
    np.testing.assert_allclose(y, ys, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hn, hs, rtol=1e-12, atol=1e-13)


def test_gru_reset_gate_is_applied_after_the_recurrent_gemm():
    # With b_hn != 0 the two GRU conventions differ: r * (W_hn h + b_hn) vs W_hn (r * h) + b_hn.
    p = GRUParams.random(3, 4, 1, seed=1)
    rng = np.random.default_rng(0)
    x, h0 = rng.standard_normal((1, 2, 3)), rng.standard_normal((1, 2, 4))
    y, _ = gru_reference(x, p, h0)
    L0 = p.layers[0]
    H = 4
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r = sig(x[0] @ L0.w_ih[:H].T + L0.b_ih[:H] + h0[0] @ L0.w_hh[:H].T + L0.b_hh[:H])
    z = sig(x[0] @ L0.w_ih[H:2 * H].T + L0.b_ih[H:2 * H] + h0[0] @ L0.w_hh[H:2 * H].T + L0.b_hh[H:2 * H])
    n_before = np.tanh(x[0] @ L0.w_ih[2 * H:].T + L0.b_ih[2 * H:] + (r * h0[0]) @ L0.w_hh[2 * H:].T + L0.b_hh[2 * H:])
    other = (1 - z) * n_before + z * h0[0]
    assert not np.allclose(y[0], other)


def test_zero_initial_states_by_default_and_batch_first():
    p = LSTMParams.random(3, 5, 2, seed=2)
    x = np.random.default_rng(1).standard_normal((4, 2, 3))
    y0, (h0n, c0n) = lstm_reference(x, p)
    z = np.zeros((2, 2, 5))
    y1, (h1n, c1n) = lstm_reference(x, p, z, z)
    np.testing.assert_array_equal(y0, y1)
    yb, (hb, cb) = lstm_reference(x.transpose(1, 0, 2), p, batch_first=True)
    np.testing.assert_array_equal(yb, y0.transpose(1, 0, 2))
    np.testing.assert_array_equal(hb, h0n)
    np.testing.assert_array_equal(y0[-1], h0n[-1])  # the last layer's last output is its final h


@pytest.mark.parametrize("call,match", [
    (lambda p: lstm_reference(np.zeros((2, 3)), p), "3 dimensions"),
    (lambda p: lstm_reference(np.zeros((2, 3, 9)), p), "input width 9"),
    (lambda p: lstm_reference(np.zeros((2, 3, 4)), p, np.zeros((1, 3, 5))), r"h0 has shape \(1, 3, 5\)"),
    (lambda p: lstm_reference(np.zeros((0, 3, 4)), p), "at least 1"),
    (lambda p: gru_reference(np.zeros((2, 3, 4)), p), "needs GRUParams"),
])
def test_reference_rejects_bad_shapes(call, match):
    p = LSTMParams.random(4, 6, 2, seed=0)
    with pytest.raises(BadInput, match=match):
        call(p)
