"""kernels.train: the training step on the numba backend (compiled forward-with-tape and backward
step loops, fusion.trainloop; fused kernels, fusion.backward_numba).

Every path against the float64 kernels.backward (itself checked by finite differences and torch
autograd in tests/test_backward.py), and the fp64 path against finite differences directly:
every cell, skip-input, two layers, given states and state gradients, one thread and a team of
two, twice in a row on the same buffers.  Tiny shapes throughout."""
from __future__ import annotations

import numpy as np
import pytest

from fusion import cpuloop, trainloop
from kernels import backward as bw
from kernels import train
from kernels.custom import LayerNormLSTMParams
from kernels.errors import BadInput
from kernels.params import GRUParams, LSTMParams, VanillaRNNParams

CELLS = [("lstm", {}), ("gru", {}), ("rnn", {"nonlinearity": "relu"}), ("rnn", {"nonlinearity": "tanh"}),
         ("layernorm", {})]
IDS = ["lstm", "gru", "rnn_relu", "rnn_tanh", "layernorm"]
PLAIN, PLAIN_IDS = CELLS[:4], IDS[:4]         # the cells with skip-input and the team


def _params(op, extra, I, H, L, seed=3):
    cls = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams, "layernorm": LayerNormLSTMParams}[op]
    return cls.random(I, H, num_layers=L, seed=seed, **extra)


def _problem(op, extra, T=4, B=3, I=5, H=16, L=2, skip=False, seed=0):
    """params, forward args (x, h0, c0) and backward args (dy, dstates), float64."""
    rng = np.random.default_rng(seed)
    p = _params(op, extra, I, H, L)
    x = rng.standard_normal((T, B, p.num_gates * H if skip else I))
    h0 = 0.5 * rng.standard_normal((L, B, H))
    lstm = op in ("lstm", "layernorm")
    c0 = 0.5 * rng.standard_normal((L, B, H)) if lstm else None
    dy = rng.standard_normal((T, B, H))
    ds = tuple(rng.standard_normal((L, B, H)) for _ in range(2 if lstm else 1))
    return p, (x, h0, c0), (dy, ds)


def _flat(y, states, g: bw.Grads) -> dict:
    out = {"y": y, "h_n": states[0], "dx": g.x, "dh0": g.h0}
    if g.c0 is not None:
        out.update(c_n=states[1], dc0=g.c0)
    for l, layer in enumerate(g.layers):
        out.update({f"{k}{l}": v for k, v in layer.items()})
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def _reference(p, fwd, bwd, skip=False) -> dict:
    x, h0, c0 = fwd
    y, states, tape = bw.forward_train(x, p, h0, c0, dtype=np.float64, skip_input=skip)
    return _flat(y, states, bw.backward(tape, *bwd))


def _ours(trainer, fwd, bwd) -> dict:
    y, states, tape = trainer.forward(*fwd)
    return _flat(y, states, trainer.backward(tape, *bwd))


def _assert_close(got: dict, want: dict, tol: float):
    assert set(got) == set(want)
    for k in want:
        assert np.all(np.isfinite(got[k])), k
        err = np.max(np.abs(got[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-30)
        assert err < tol, f"{k}: relative error {err:.1e} > {tol:.0e}"


@pytest.fixture(scope="module")
def onednn(onednn_lib):
    return onednn_lib


@pytest.fixture
def one_thread():
    import numba
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(n)


@pytest.fixture
def two_threads():
    """numba on 2 threads (the team needs them; a 1-core runner still runs 2 threads, slowly)."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread (NUMBA_NUM_THREADS=1)")
    if cpuloop.team_reason(64, 2) is not None:
        pytest.skip(f"no step-loop team here: {cpuloop.team_reason(64, 2)}")
    n = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(n)


@pytest.mark.parametrize("op,extra,skip", [(*c, False) for c in CELLS] + [(*c, True) for c in PLAIN],
                         ids=IDS + [f"{i}-skip_input" for i in PLAIN_IDS])
def test_fp32_one_thread_matches_the_float64_reference(onednn, one_thread, op, extra, skip):
    """The compiled loops issued from one thread, fp32, two layers, given states and state
    gradients; a second call on the same buffers gives the same numbers."""
    p, fwd, bwd = _problem(op, extra, skip=skip)
    t = train.Trainer(p, dtype="fp32", skip_input=skip)
    first = _ours(t, fwd, bwd)
    assert set(t.loop_kinds.values()) == {"compiled, issued from one thread"}
    _assert_close(first, _reference(p, fwd, bwd, skip), 1e-5)
    again = _ours(t, fwd, bwd)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k], err_msg=k)


@pytest.mark.parametrize("op,extra", PLAIN, ids=PLAIN_IDS)
def test_team_matches_the_float64_reference(onednn, two_threads, op, extra):
    """A team of two threads over all steps, forward and backward; H=37 splits 18/19 units."""
    p, fwd, bwd = _problem(op, extra, H=37, L=2)
    t = train.Trainer(p, dtype="fp32")
    got = _ours(t, fwd, bwd)
    assert set(t.loop_kinds.values()) == {"compiled, team of 2 threads"}
    loop = t.layers[0].loops[(3, 2)]
    assert loop.runs == 2 and loop.info()["units"] == [18, 19]
    _assert_close(got, _reference(p, fwd, bwd), 1e-5)


def test_layernorm_is_issued_from_one_thread_at_two(onednn, two_threads):
    """The layer-norm LSTM normalises whole rows each step: no team; its row kernels of all T at
    once (the input part's layer norm, forward and backward) run on numba's two threads."""
    p, fwd, bwd = _problem("layernorm", {}, H=32)
    t = train.Trainer(p, dtype="fp32")
    got = _ours(t, fwd, bwd)
    assert set(t.loop_kinds.values()) == {"compiled, issued from one thread"}
    _assert_close(got, _reference(p, fwd, bwd), 1e-5)


@pytest.mark.parametrize("op,extra", CELLS, ids=IDS)
def test_fp64_matches_the_reference_to_rounding(op, extra):
    """fp64: the steps issued from Python, BLAS GEMMs, the same kernels."""
    p, fwd, bwd = _problem(op, extra, skip=False)
    t = train.Trainer(p, dtype="fp64")
    got = _ours(t, fwd, bwd)
    assert set(t.loop_kinds.values()) == {"Python loop, BLAS GEMMs"}
    _assert_close(got, _reference(p, fwd, bwd), 1e-12)


@pytest.mark.parametrize("op,extra", CELLS, ids=IDS)
def test_fp64_gradients_against_finite_differences(op, extra):
    """T=3, B=2, I=3, H=2, one layer: every gradient against central differences of the float64
    forward definition, relative error < 1e-6."""
    from kernels.custom import layernorm_lstm_reference
    from kernels.reference import REFERENCES
    p, (x, h0, c0), (dy, ds) = _problem(op, extra, T=3, B=2, I=3, H=2, L=1, seed=4)
    t = train.Trainer(p, dtype="fp64")
    got = _ours(t, (x, h0, c0), (dy, ds))
    ref = layernorm_lstm_reference if op == "layernorm" else REFERENCES[op]

    def loss():
        y, states = ref(x, p, h0, c0) if c0 is not None else ref(x, p, h0)
        states = states if isinstance(states, tuple) else (states,)
        return float((y * dy).sum() + sum((s * d).sum() for s, d in zip(states, ds)))

    leaves = {"dx": x, "dh0": h0, **({"dc0": c0} if c0 is not None else {})}
    leaves.update({f"{k}0": a for k, a in zip(("w_ih", "w_hh", "b_ih", "b_hh"), p.layers[0].arrays())})
    leaves.update({f"{k}0": a for k, a in (p.extras[0].items() if op == "layernorm" else ())})
    eps = 1e-6
    for name, a in leaves.items():
        flat, num = a.reshape(-1), np.empty(a.size)
        for i in range(a.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = loss()
            flat[i] = keep - eps
            num[i] = (up - loss()) / (2 * eps)
            flat[i] = keep
        if np.max(np.abs(num)) < 1e-9:      # H=2 layer norm over c: the gain of LN(c) has none
            assert np.max(np.abs(got[name])) < 1e-8, name
            continue
        err = np.max(np.abs(got[name].reshape(-1) - num)) / max(np.max(np.abs(num)), 1e-12)
        assert err < 1e-6, f"{op} {name}: relative error {err:.1e}"


def test_team_hands_back_to_the_one_thread_loop(onednn, two_threads):
    """A team that cannot form (a parallel chunk size set) runs nothing; the trainer issues the
    steps from one thread instead, with the same numbers up to GEMM rounding."""
    import numba
    p, fwd, bwd = _problem("gru", {}, H=32, L=1)
    t = train.Trainer(p, dtype="fp32")
    want = _ours(t, fwd, bwd)
    old = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(2)
    try:
        got = _ours(t, fwd, bwd)
    finally:
        numba.set_parallel_chunksize(old)
    assert t.loop_kinds[0] == "compiled, issued from one thread"
    _assert_close(got, want, 1e-5)


def test_a_onednn_error_inside_the_backward_loop_names_the_step(onednn, one_thread):
    from kernels.onednn.errors import OnednnError
    p, fwd, bwd = _problem("lstm", {}, L=1)
    t = train.Trainer(p, dtype="fp32")
    y, _, tape = t.forward(*fwd)
    loop = t.layers[0].loops[(3, 1)]
    loop._bh = (*loop._bh[:4], 0)                # a NULL source memory: set_data_handle refuses it
    with pytest.raises(OnednnError, match=r"backward at step 3 \(dnnl_memory_set_data_handle\)"):
        t.backward(tape, *bwd)


def test_a_nan_gradient_stays_nan(one_thread):
    """A NaN in dy reaches the gradients (ReLU's zero derivative multiplies, it does not replace)."""
    p, fwd, (dy, ds) = _problem("rnn", {"nonlinearity": "relu"}, L=1)
    dy = dy.copy()
    dy[-1, 0, :] = np.nan
    t = train.Trainer(p, dtype="fp32")
    y, _, tape = t.forward(*fwd)
    g = t.backward(tape, dy, ds)
    assert np.isnan(g.layers[0]["w_hh"]).any() and np.isnan(g.x).any()


def test_bad_input_is_refused_in_one_line():
    p, fwd, bwd = _problem("lstm", {}, L=1)
    t = train.Trainer(p, dtype="fp64")
    y, _, tape = t.forward(*fwd)
    t.backward(tape, *bwd)
    with pytest.raises(BadInput, match="consumed by a backward pass already"):
        t.backward(tape, *bwd)
    _, _, old = t.forward(*fwd)
    t.forward(*fwd)
    with pytest.raises(BadInput, match="takes the tape this trainer's forward returned"):
        train.Trainer(p, dtype="fp64").backward(old, *bwd)
    with pytest.raises(BadInput, match=r"dy has shape \(4, 3\); expected \(4, 3, 16\)"):
        t.backward(t.forward(*fwd)[2], np.zeros((4, 3)))
    with pytest.raises(BadInput, match=r"x has shape \(4, 3, 4\); expected \(T, B, 5\)"):
        t.forward(np.zeros((4, 3, 4)))
    with pytest.raises(BadInput, match="takes unidirectional parameters"):
        train.Trainer(LSTMParams.random(3, 4, seed=0, bidirectional=True))
    with pytest.raises(BadInput, match="computes fp32, fp64, not bf16"):
        train.Trainer(p, dtype="bf16")
    from kernels.custom import PeepholeLSTMParams
    with pytest.raises(BadInput, match="takes LSTMParams, GRUParams, VanillaRNNParams or LayerNormLSTMParams, "
                                       "got PeepholeLSTMParams"):
        train.Trainer(PeepholeLSTMParams.random(3, 4, 1, seed=0))
    with pytest.raises(BadInput, match="skip_input applies to the plain cells"):
        train.Trainer(LayerNormLSTMParams.random(3, 4, 1, seed=0), skip_input=True)


def test_the_loops_refuse_arrays_they_would_overrun(onednn):
    """numba does not check bounds: a wrong shape, dtype or a missing state is refused."""
    loop = trainloop.BLASLoop(np.zeros((64, 16), np.float32), 2, "lstm", np.float32)
    f32 = np.float32
    hs, gx, cs = np.zeros((4, 2, 16), f32), np.zeros((6, 64), f32), np.zeros((4, 2, 16), f32)
    with pytest.raises(BadInput, match="needs its cell states cs"):
        loop.forward(hs, gx, None, None, None, None)
    with pytest.raises(BadInput, match=r"gx must be a C-contiguous float32 array of shape \(6, 64\)"):
        loop.forward(hs, np.zeros((6, 63), f32), None, None, cs, None)
    with pytest.raises(BadInput, match=r"db must be a C-contiguous float32 array of shape \(4, 16\)"):
        loop.backward(np.zeros((3, 2, 16), f32), np.zeros((2, 16), f32), hs, gx, cs, None,
                      np.zeros((2, 16), f32), None, np.zeros((1, 16), f32))
    from fusion.trainloop_numba import CELL
    assert trainloop.CELL == CELL           # the numbers the compiled loops branch on
    with pytest.raises(BadInput, match="runs cells lstm, gru, rnn_relu, rnn_tanh, not 'peephole'"):
        trainloop.BLASLoop(np.zeros((64, 16), np.float32), 2, "peephole", np.float32)


def test_new_lengths_do_not_grow_the_packed_gemms_without_bound(onednn, one_thread, monkeypatch):
    """Each sequence length packs its M = T*B input and dX GEMMs; beyond MAX_PACKED the oldest
    are closed (and packed again if that length comes back), with the same results."""
    from fusion import gemm as fgemm
    monkeypatch.setattr(fgemm, "MAX_PACKED", 2)
    p, fwd, bwd = _problem("lstm", {}, T=5, L=1)
    t = train.Trainer(p, dtype="fp32")
    first = _ours(t, fwd, bwd)
    for T in (2, 3, 4):
        _ours(t, (fwd[0][:T], *fwd[1:]), (bwd[0][:T], bwd[1]))
        assert len(t.layers[0].packed) <= 2
    _assert_close(_ours(t, fwd, bwd), first, 1e-6)
