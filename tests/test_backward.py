"""kernels.backward: LSTM, GRU and layer-norm LSTM gradients.

Tiny shapes: every gradient against central finite differences of the float64 references
(kernels.reference, kernels.custom), relative error < 1e-6.  Larger shapes: against PyTorch
autograd (nn.LSTM / nn.GRU with our weights; for the layer-norm LSTM the op-by-op torch code in
kernels.torch), when torch is importable.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernels import backward as bw
from kernels.custom import LayerNormLSTMParams, layernorm_lstm_reference
from kernels.params import GRUParams, LSTMParams
from kernels.reference import gru_reference, lstm_reference

CELLS = ("lstm", "gru", "layernorm")


def _make(cell, I, H, L, seed=0):
    if cell == "lstm":
        return LSTMParams.random(I, H, L, seed=seed)
    if cell == "gru":
        return GRUParams.random(I, H, L, seed=seed)
    return LayerNormLSTMParams.random(I, H, L, seed=seed)


def _reference(cell, x, p, h0, c0):
    if cell == "gru":
        y, h = gru_reference(x, p, h0)
        return y, (h,)
    ref = lstm_reference if cell == "lstm" else layernorm_lstm_reference
    y, (h, c) = ref(x, p, h0, c0)
    return y, (h, c)


def _leaves(cell, p, x, h0, c0):
    """name -> the (mutable) array finite differences perturb in place."""
    out = {"x": x, "h0": h0}
    if cell != "gru":
        out["c0"] = c0
    for l, layer in enumerate(p.layers):
        for name, a in zip(("w_ih", "w_hh", "b_ih", "b_hh"), layer.arrays()):
            out[f"{l}.{name}"] = a
        for name, a in (p.extras[l].items() if cell == "layernorm" else ()):
            out[f"{l}.{name}"] = a
    return out


def _grad(g: bw.Grads, name):
    if name in ("x", "h0", "c0"):
        return getattr(g, name)
    l, k = name.split(".")
    return g.layers[int(l)][k]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(3, 2, 3, 2, 1), (2, 1, 2, 3, 2), (1, 1, 1, 1, 1)],
                         ids=["T3B2I3H2", "T2B1I2H3L2", "T1B1H1"])
def test_finite_differences(cell, shape):
    T, B, I, H, L = shape
    rng = np.random.default_rng(1)
    p = _make(cell, I, H, L)
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((L, B, H))
    c0 = 0.5 * rng.standard_normal((L, B, H)) if cell != "gru" else None
    wy = rng.standard_normal((T, B, H))
    ws = [rng.standard_normal((L, B, H)) for _ in range(2 if cell != "gru" else 1)]

    def loss():
        y, states = _reference(cell, x, p, h0, c0)
        return float((y * wy).sum() + sum((s * w).sum() for s, w in zip(states, ws)))

    y, states, tape = bw.forward_train(x, p, h0, c0)
    y_ref, states_ref = _reference(cell, x, p, h0, c0)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-13)
    g = bw.backward(tape, wy, tuple(ws))
    eps = 1e-6
    for name, a in _leaves(cell, p, x, h0, c0).items():
        num = np.empty(a.shape)
        flat, nflat = a.reshape(-1), num.reshape(-1)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + eps
            up = loss()
            flat[k] = keep - eps
            down = loss()
            flat[k] = keep
            nflat[k] = (up - down) / (2 * eps)
        got = np.asarray(_grad(g, name)).reshape(num.shape)
        err = np.max(np.abs(got - num)) / max(np.max(np.abs(num)), 1e-12)
        # H=1 layer norm over c: the normalised c is 0, its gain has zero gradient
        if np.max(np.abs(num)) < 1e-9:
            assert np.max(np.abs(got)) < 1e-8, name
            continue
        assert err < 1e-6, f"{cell} {name}: relative error {err:.2e}"


# -- PyTorch autograd ----------------------------------------------------------------------------
def _torch():
    return pytest.importorskip("torch", reason="torch is not importable")


@pytest.mark.parametrize("cell", CELLS)
def test_against_torch_autograd(cell):
    torch = _torch()
    from kernels import torch as kt
    T, B, I, H, L = 7, 5, 6, 17, 2
    rng = np.random.default_rng(2)
    p = _make(cell, I, H, L, seed=3)
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((L, B, H))
    c0 = 0.5 * rng.standard_normal((L, B, H)) if cell != "gru" else None
    wy = rng.standard_normal((T, B, H))
    ws = [rng.standard_normal((L, B, H)) for _ in range(2 if cell != "gru" else 1)]

    y, states, tape = bw.forward_train(x, p, h0, c0)
    g = bw.backward(tape, wy, tuple(ws))

    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    tc0 = torch.tensor(c0, requires_grad=True) if c0 is not None else None
    if cell == "layernorm":
        weights = kt.params_to_tensors(p, requires_grad=True)
        ty, tstates = kt.layernorm_lstm_eager(tx, weights, th0, tc0)
        named = {f"{l}.{k}": v for l, w in enumerate(weights) for k, v in w.items()}
    else:
        mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, L).double()
        kt.load_canonical(mod, p)
        ty, tstates = mod(tx, (th0, tc0) if cell == "lstm" else th0)
        tstates = tstates if cell == "lstm" else (tstates,)
        named = {f"{l}.{k}": getattr(mod, f"{tk}_l{l}") for l in range(L)
                 for k, tk in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=1e-12)
    loss = (ty * torch.tensor(wy)).sum() + sum((s * torch.tensor(w)).sum() for s, w in zip(tstates, ws))
    loss.backward()
    named.update(x=tx, h0=th0)
    if tc0 is not None:
        named["c0"] = tc0
    for name, t in named.items():
        want = t.grad.numpy()
        got = np.asarray(_grad(g, name)).reshape(want.shape)
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12)
        assert err < 1e-10, f"{cell} {name}: relative error {err:.2e} against torch autograd"


def test_torch_modules_inference_matches_training_path():
    torch = _torch()
    from kernels import torch as kt
    m = kt.LayerNormLSTM(5, 8, 2, dtype=torch.float64)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    y, (h, c) = m(x)                       # autograd path: our forward_train + backward
    (y.sum() + h.sum() + c.sum()).backward()
    assert x.grad is not None and m.lnx_g_l0.grad.shape == (4, 8)
    with torch.no_grad():
        y2, _ = m(x)                       # inference path: generated numba kernel
    assert (y - y2).abs().max().item() < 1e-12
    for cls in (kt.LSTM, kt.GRU):
        m = cls(5, 8, 1)
        x = torch.randn(4, 3, 5)
        with torch.no_grad():
            a = m(x)[0]
        assert (a - m(x)[0]).abs().max().item() < 1e-6


def test_jax_wrapper():
    pytest.importorskip("jax", reason="jax is not importable")
    import jax
    import jax.numpy as jnp
    from kernels import jax as kj
    p = LSTMParams.random(3, 4, 1, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    f = kj.rnn_fn(p)
    y = f(jnp.asarray(x), *kj.flat_weights(p))
    np.testing.assert_allclose(np.asarray(y), lstm_reference(x, p)[0], atol=1e-6)
    g = jax.grad(lambda xx: f(xx, *kj.flat_weights(p)).sum())(jnp.asarray(x))
    assert g.shape == x.shape


def test_a_gemm_provider_that_is_not_callable_is_refused():
    from kernels.errors import BadInput
    p = LSTMParams.random(3, 4, seed=0)
    x = np.zeros((2, 1, 3))
    with pytest.raises(BadInput, match=r"^gemm='packed' must be a callable \(key, a, w\) -> a @ w, or None$"):
        bw.forward_train(x, p, gemm="packed")
    calls = []
    y, _, tape = bw.forward_train(x, p, gemm=lambda key, a, w: calls.append(key) or a @ w)
    assert ("w_hh.T", 0) in calls and tape.gemm is not None
