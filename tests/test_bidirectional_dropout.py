"""Bidirectional parameters and dropout between layers in the kernels: the float64 reference
against torch.nn, the forward runner (kernels.rnn.RNN, every stream order) and the training
forward/backward against the reference, the masks torch draws, empty batches in the backward,
and the runners that take one direction only refusing two."""
import numpy as np
import pytest

from fusion.steps import Plan
from fusion.streams import DeferredStreams
from kernels import RNN, BadInput, GRUParams, LSTMParams, VanillaRNNParams, gru, lstm
from kernels import backward as bw
from kernels.reference import REFERENCES, check_masks, draw_dropout_masks

T, B, I, H, L = 4, 2, 3, 5, 2


def _params(cell, L=L, bidirectional=True, seed=1):
    if cell == "rnn_relu":
        return VanillaRNNParams.random(I, H, L, seed=seed, bidirectional=bidirectional, nonlinearity="relu")
    return {"lstm": LSTMParams, "gru": GRUParams}[cell].random(I, H, L, seed=seed, bidirectional=bidirectional)


def _inputs(p, seed=0, batch_first=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    D = p.num_directions
    h0 = 0.5 * rng.standard_normal((p.num_layers * D, B, H))
    c0 = 0.5 * rng.standard_normal((p.num_layers * D, B, H)) if p.cell == "lstm" else None
    return x, h0, c0


def _reference(p, x, h0, c0, **kw):
    if p.cell == "lstm":
        y, (h, c) = REFERENCES["lstm"](x, p, h0, c0, **kw)
        return y, h, c
    y, h = REFERENCES[p.cell](x, p, h0, **kw)
    return y, h


def _call(run, p, x, h0, c0, **kw):
    if p.cell == "lstm":
        y, (h, c) = run(x, h0, c0, **kw)
        return y, h, c
    y, h = run(x, h0, **kw)
    return y, h


def test_bidirectional_parameters_have_torch_layout():
    p = LSTMParams.random(I, H, 3, bidirectional=True)
    assert p.num_layers == 3 and p.num_directions == 2 and len(p.layers) == 6
    assert p.layers[1].w_ih.shape == (4 * H, I) and p.layers[2].w_ih.shape == (4 * H, 2 * H)
    sub = p.layer_params(1, 1)
    assert not sub.bidirectional and sub.input_size == 2 * H and sub.layers[0] is p.layers[3]
    assert np.array_equal(p.gate(1, "f", "w_hh", direction=1), p.layers[3].w_hh[H:2 * H])
    # unidirectional draws are unchanged by the new argument (seeds stay reproducible)
    assert all(np.array_equal(a, b) for a, b in zip(LSTMParams.random(I, H, 2, seed=3).layers[1].arrays(),
                                                    LSTMParams.random(I, H, 2, seed=3, bidirectional=False).layers[1].arrays()))
    with pytest.raises(BadInput, match="two entries per layer"):
        LSTMParams(I, H, p.layers[:3], bidirectional=True)
    with pytest.raises(BadInput, match=r"^layer 1: w_ih has shape \(20, 3\); expected \(20, 5\)"):
        LSTMParams(I, H, p.layers[:4])                       # a bidirectional stack read as one direction
    swapped = (p.layers[0], p.layers[2]) + p.layers[2:]
    with pytest.raises(BadInput, match=r"^layers\[1\] \(layer 0, reverse\): w_ih has shape \(20, 10\); expected \(20, 3\)"):
        LSTMParams(I, H, swapped, bidirectional=True)
    with pytest.raises(BadInput, match="bidirectional='yes' must be True or False"):
        LSTMParams(I, H, p.layers, bidirectional="yes")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_reference_matches_torch_nn_bidirectional(cell):
    """The float64 spec of a bidirectional stack is torch's (weights through kernels.torch.torch_module)."""
    torch = pytest.importorskip("torch", reason="torch is not importable")
    from kernels import torch as kt
    p = _params(cell)
    x, h0, c0 = _inputs(p)
    m = kt.torch_module(p, dtype=torch.float64)
    assert m.bidirectional
    hx = torch.tensor(h0) if c0 is None else (torch.tensor(h0), torch.tensor(c0))
    y, states = m(torch.tensor(x), hx)
    states = (states,) if c0 is None else states
    for got, want in zip(_reference(p, x, h0, c0), (y, *states)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("variant,backend", [("naive", "numpy"), ("fused", "numpy"), ("fused", "numba")])
def test_runner_runs_bidirectional_parameters(cell, variant, backend):
    p = _params(cell)
    x, h0, c0 = _inputs(p, batch_first=True)
    run = RNN(p, variant=variant, backend=backend, dtype="fp64")
    assert len(run.layers) == 2 * L and run.prepare(T, B) is run
    got = _call(run, p, x, h0, c0, batch_first=True)
    assert got[0].shape == (B, T, 2 * H) and got[1].shape == (2 * L, B, H)
    for a, b in zip(got, _reference(p, x, h0, c0, batch_first=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # the functions of the research API take them as they are (kernels.rnn, the function, is
    # shadowed by the module of that name here)
    if p.cell in ("lstm", "gru"):
        fn = lstm if p.cell == "lstm" else gru
        args = (x, p, h0, c0) if p.cell == "lstm" else (x, p, h0)
        y = fn(*args, variant=variant, backend=backend, batch_first=True)[0]
        np.testing.assert_allclose(y, got[0], rtol=0, atol=1e-12)


def test_skip_input_takes_one_direction():
    p = _params("lstm")
    with pytest.raises(BadInput, match="^skip_input takes unidirectional parameters"):
        RNN(p, skip_input=True)
    with pytest.raises(BadInput, match="^skip-input takes unidirectional parameters"):
        REFERENCES["lstm"](np.zeros((T, B, 4 * H)), p, skip_input=True)
    with pytest.raises(BadInput, match="^skip_input takes unidirectional parameters"):
        bw.forward_train(np.zeros((T, B, 4 * H)), p, skip_input=True)


@pytest.mark.parametrize("steps", [frozenset(), frozenset({"hoist_input", "fuse_pointwise"}),
                                   frozenset({"group_gemm", "streams", "wavefront", "fuse_pointwise"}),
                                   frozenset({"wavefront"}), frozenset({"hoist_input", "streams"})],
                         ids=lambda s: ",".join(sorted(s)) or "none")
@pytest.mark.parametrize("seed", [0, 1])
def test_runner_applies_dropout_masks_in_every_stream_order(steps, seed):
    """Layer l reads its masked copy of layer l-1's output, made per chunk on its input stream:
    under a scheduler that runs work in random event-consistent order the result is the reference's."""
    p = _params("lstm", L=3, bidirectional=False)
    x, h0, c0 = _inputs(p)
    T8 = x.shape[0]
    masks = draw_dropout_masks(0.4, p, T8, B, rng=seed)
    run = RNN(p, variant="fused", backend="numpy", dtype="fp64", opts=Plan(steps), scheduler=DeferredStreams(seed))
    got = _call(run, p, x, h0, c0, dropout_masks=masks)
    want = _reference(p, x, h0, c0, dropout_masks=masks)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    plain = _reference(p, x, h0, c0)
    assert np.abs(plain[0] - want[0]).max() > 1e-3        # the masks changed the result


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_runner_dropout_with_bidirectional_layers(backend):
    p = _params("gru", L=3)
    x, h0, _ = _inputs(p)
    masks = draw_dropout_masks(0.5, p, T, B, rng=7)
    got = RNN(p, backend=backend, dtype="fp64")(x, h0, dropout_masks=masks)
    want = _reference(p, x, h0, None, dropout_masks=masks)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_training_forward_matches_reference_with_directions_and_masks(cell):
    p = _params(cell, L=3)
    x, h0, c0 = _inputs(p)
    masks = draw_dropout_masks(0.3, p, T, B, rng=2)
    y, states, tape = bw.forward_train(x, p, h0, c0, dropout_masks=masks)
    for a, b in zip((y, *states), _reference(p, x, h0, c0, dropout_masks=masks)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert len(tape.layers) == 6 and len(tape.masks) == 2


def test_drawn_masks_are_torch_dropout():
    """Zero with probability p, else 1/(1-p) (so the expectation is 1); p = 0 keeps everything,
    p = 1 drops everything; a bad p or mask list is one line."""
    p = _params("lstm", L=3)
    big = draw_dropout_masks(0.3, p, 200, 50, rng=0)
    assert len(big) == 2 and big[0].shape == (200, 50, 2 * H)
    for m in big:
        zero = m == 0
        # 20000 draws: the zero fraction is within 5 standard deviations (0.016) of p
        assert abs(zero.mean() - 0.3) < 0.016
        assert np.allclose(m[~zero], 1 / 0.7)
    assert not np.array_equal(big[0], big[1])            # independent masks per layer
    assert all(np.all(m == 1) for m in draw_dropout_masks(0, p, T, B))
    assert all(np.all(m == 0) for m in draw_dropout_masks(1, p, T, B))
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(BadInput, match=r"^dropout=.* must be a number in \[0, 1\]"):
            draw_dropout_masks(bad, p, T, B)
    with pytest.raises(BadInput, match="num_layers - 1 = 2 arrays"):
        check_masks(big[:1], p, 200, 50)
    with pytest.raises(BadInput, match=r"dropout mask 1 has shape \(4, 2, 10\); expected"):
        check_masks([big[0], np.ones((4, 2, 10))], p, 200, 50)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("shape", [(T, 0), (0, B)], ids=["B=0", "T=0"])
def test_training_pass_of_an_empty_batch_or_sequence(cell, shape):
    """The backward once failed with a reshape ValueError on T*B = 0; now: empty outputs, the
    initial states carried through, zero weight gradients."""
    p = _params(cell)
    T0, B0 = shape
    x = np.zeros((T0, B0, I))
    h0 = np.ones((2 * L, B0, H))
    c0 = np.ones((2 * L, B0, H)) if cell == "lstm" else None
    y, states, tape = bw.forward_train(x, p, h0, c0)
    assert y.shape == (T0, B0, 2 * H) and np.array_equal(states[0], h0)
    dstates = tuple(np.full_like(h0, 2.0) for _ in states)
    g = bw.backward(tape, np.zeros_like(y), dstates)
    assert g.x.shape == x.shape and np.array_equal(g.h0, dstates[0])
    assert all(np.all(a == 0) for gl in g.layers for a in gl.values())


def test_runners_of_one_direction_refuse_two():
    p = _params("lstm")
    from kernels.cudnn.rnn import rnn_config
    with pytest.raises(BadInput, match="^the cudnn RNN variant takes unidirectional parameters"):
        rnn_config(p.astype(np.float32), batch=B, seq_len=T)
    from kernels.onednn.rnn import OnednnRNN
    with pytest.raises(BadInput, match="^the onednn RNN variant takes unidirectional parameters"):
        OnednnRNN(p, batch=B, seq_len=T)
    pytest.importorskip("jax", reason="jax is not importable")
    from kernels import jax as kj
    with pytest.raises(BadInput, match="^kernels.jax takes unidirectional parameters"):
        kj.rnn_fn(p)
