"""kernels.torch against torch.nn: input checks, dtypes, batch_first, bias=False, weights from and to
torch.nn modules, a second backward, the CuPy-like device path (stand-in arrays), and
kernels.lstm given tensors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not importable")

from kernels import LSTMParams, GRUParams, lstm  # noqa: E402
from kernels import torch as kt  # noqa: E402
from kernels.errors import BadInput  # noqa: E402

T, B, I, H, L = 5, 3, 4, 6, 2


def _pair(cell, **kw):
    """(ours, torch.nn) with the same weights, float64."""
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, L, dtype=torch.float64, **kw)
    ours = (kt.LSTM if cell == "lstm" else kt.GRU).from_torch(ref)
    return ours, ref


def _states(cell, dtype=torch.float64):
    h0 = torch.randn(L, B, H, dtype=dtype)
    return (h0, torch.randn(L, B, H, dtype=dtype)) if cell == "lstm" else h0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kw", [{}, {"batch_first": True}, {"bias": False}])
def test_matches_torch_nn_forward_and_backward(cell, kw):
    ours, ref = _pair(cell, **kw)
    assert ours.batch_first == ref.batch_first and ours.bias == ref.bias
    x = torch.randn(*((B, T) if kw.get("batch_first") else (T, B)), I, dtype=torch.float64)
    hx = _states(cell)
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_()
        y, _ = m(xi, hx)
        y.pow(2).sum().backward()
        outs.append((y.detach(), xi.grad, m.weight_hh_l1.grad))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    with torch.no_grad():                      # the numba inference path too
        assert torch.allclose(ours(x, hx)[0], ref(x, hx)[0], atol=1e-11)
    if not kw.get("bias", True):
        assert not any("bias" in n for n, _ in ours.named_parameters())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_states_of_the_wrong_shape_are_refused(cell):
    """(B, H) states used to broadcast silently; nn.LSTM refuses them, so do we."""
    m = kt.LSTM(I, H, L) if cell == "lstm" else kt.GRU(I, H, L)
    x = torch.randn(T, B, I)
    bad = torch.zeros(B, H)
    hx = (bad, torch.zeros(L, B, H)) if cell == "lstm" else bad
    for grad in (False, True):
        with torch.set_grad_enabled(grad), pytest.raises(BadInput, match=r"h0 has shape \(3, 6\).*\(2, 3, 6\)"):
            m(x.requires_grad_(grad), hx)
    with pytest.raises(BadInput, match="last dimension 5"):
        m(torch.randn(T, B, I + 1))
    with pytest.raises(BadInput, match=r"expected \(T, B, I\) or unbatched \(T, I\)"):
        m(torch.randn(T))


def test_dtype_mismatch_is_refused_and_half_precision_runs():
    m = kt.LSTM(I, H, 1)
    x64 = torch.randn(T, B, I, dtype=torch.float64)
    for grad in (False, True):
        with pytest.raises(BadInput, match="torch.float64.*torch.float32"):
            m(x64.clone().requires_grad_(grad))
    with pytest.raises(BadInput, match="h0 is torch.float64"):
        m(x64.float(), (torch.zeros(1, B, H, dtype=torch.float64), torch.zeros(1, B, H)))
    ref = m.to_torch()
    mb = kt.LSTM(I, H, 1, dtype=torch.bfloat16)
    x = torch.randn(T, B, I, dtype=torch.bfloat16, requires_grad=True)
    y, (h, c) = mb(x)
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and mb.weight_ih_l0.grad.dtype == torch.bfloat16
    # computed in fp32 and rounded once: within bf16 rounding of the fp32 result
    ref32 = kt.LSTM(I, H, 1)
    want = ref32(x.detach().float())[0]
    assert (y.float() - want).abs().max().item() < 2e-2
    assert ref.weight_ih_l0.dtype == torch.float32


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_twice_with_retain_graph(cell):
    m = kt.LSTM(I, H, L) if cell == "lstm" else kt.GRU(I, H, L)
    x = torch.randn(T, B, I, requires_grad=True)
    loss = m(x)[0].sum()
    loss.backward(retain_graph=True)
    g1 = x.grad.clone()
    loss.backward()
    assert torch.allclose(x.grad, 2 * g1)


def test_weights_from_and_to_torch_nn():
    ref = torch.nn.LSTM(I, H, L)
    p = LSTMParams.from_torch(ref)
    assert p.dtype == np.float64 and p.num_layers == L
    assert np.array_equal(p.layers[1].w_hh, ref.weight_hh_l1.detach().double().numpy())
    back = kt.torch_module(p)
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), ref.parameters()))
    g = GRUParams.from_torch(torch.nn.GRU(I, H))
    assert g.cell == "gru"
    with pytest.raises(BadInput, match="GRUParams.from_torch got a LSTM"):
        GRUParams.from_torch(ref)
    with pytest.raises(BadInput, match="proj_size"):
        kt.LSTM.from_torch(torch.nn.LSTM(I, H, proj_size=2))
    ours = kt.GRU.from_torch(torch.nn.GRU(I, H, batch_first=True, bias=False))
    rt = ours.to_torch()
    assert rt.batch_first and not rt.bias


def test_cuda_style_arrays_never_go_through_numpy(monkeypatch):
    """On a GPU the forward path holds CuPy arrays, whose __array__ raises: nothing may call
    np.asarray on them (params.dtype once did).  A stand-in array and array module model that."""

    class DeviceArray:
        def __init__(self, a):
            self.a = a
            self.shape, self.dtype = a.shape, a.dtype

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    class DeviceXp:
        """numpy, except that asarray unwraps the stand-in (as cupy.asarray takes its own arrays)."""

        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def asarray(a, dtype=None):
            return np.asarray(a.a if isinstance(a, DeviceArray) else a, dtype=dtype)

    class Device(kt._Host):
        xp = DeviceXp()

        @staticmethod
        def to_array(t):   # the weights become stand-ins (what params.dtype reads)
            if isinstance(t, torch.nn.Parameter):
                return DeviceArray(t.detach().numpy())
            return None if t is None else t.detach().numpy()

    monkeypatch.setattr(kt, "_ctx_for", lambda t: Device())
    m = kt.LSTM(I, H, L, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    y.sum().backward()
    monkeypatch.undo()
    x2 = x.detach().clone().requires_grad_()
    y2, _ = m(x2)
    y2.sum().backward()
    assert torch.allclose(y, y2) and torch.allclose(x.grad, x2.grad)


def test_kernels_lstm_takes_cpu_tensors_and_says_what_it_takes():
    p = LSTMParams.random(I, H, 1).astype(np.float32)
    x = torch.randn(T, B, I)
    y, _ = lstm(x, p)
    want, _ = lstm(x.numpy(), p)
    assert np.array_equal(y, want)
    with pytest.raises(BadInput, match="x: a torch.Tensor.*detach"):
        lstm(x.requires_grad_(), p)


# -- torch.nn's signature: positions, bidirectional, dropout, unbatched input, repr ----------------
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
OURS = {"lstm": kt.LSTM, "gru": kt.GRU, "rnn": kt.RNN}


def _same_weights(cell, *args, dtype=torch.float64, **kw):
    """(ours, torch.nn) made from the same arguments, torch's weights copied into ours."""
    ref = TORCH[cell](*args, dtype=dtype, **kw)
    return OURS[cell].from_torch(ref), ref


def _hx(cell, shape, dtype=torch.float64):
    h0 = torch.randn(*shape, dtype=dtype)
    return (h0, torch.randn(*shape, dtype=dtype)) if cell == "lstm" else h0


def _run(m, x, hx, seed=None, grad=True):
    """Every output and, with grad, the gradients of a weighted sum of them (weights from a fixed
    generator) with respect to x, the states and every parameter.  ``seed``: torch's global seed
    just before the call (the dropout masks)."""
    xi = x.clone().requires_grad_(grad)
    hs = () if hx is None else tuple(h.clone().requires_grad_(grad) for h in (hx if isinstance(hx, tuple) else (hx,)))
    if seed is not None:
        torch.manual_seed(seed)
    with torch.set_grad_enabled(grad):
        y, st = m(xi, None if hx is None else hs if isinstance(hx, tuple) else hs[0])
    outs = [y, *(st if isinstance(st, tuple) else (st,))]
    if not grad:
        return outs
    gen = torch.Generator().manual_seed(0)
    m.zero_grad()
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    return [o.detach() for o in outs] + [xi.grad] + [h.grad for h in hs] + [p.grad for _, p in m.named_parameters()]


def _compare(ours, ref, x, hx, seed=None, tol=(1e-9, 1e-11)):
    """Forward and gradients on the autograd path, and the outputs of the no-grad (numba) path."""
    for grad in (True, False):
        got, want = _run(ours, x, hx, seed, grad), _run(ref, x, hx, seed, grad)
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=tol[0], atol=tol[1]), (grad, i)
    return got


@pytest.mark.parametrize("cell,args", [
    ("lstm", (I, H, 1, True)),                              # kt.LSTM(8, 16, 1, True) used to fail
    ("lstm", (I, H, 2, False, True, 0.25, True, 0)),
    ("gru", (I, H, 3, False, True, 0.5, True)),
    ("rnn", (I, H, 2, "relu", False, True, 0.5, True)),
])
def test_positional_arguments_and_repr_are_torch_nn_s(cell, args):
    ours, ref = OURS[cell](*args), TORCH[cell](*args)
    for a in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
        assert getattr(ours, a) == getattr(ref, a), a
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(p.shape == q.shape for p, q in zip(ours.parameters(), ref.parameters()))
    if cell == "rnn":       # torch's repr leaves the nonlinearity out; ours says it
        assert ours.nonlinearity == ref.nonlinearity == "relu"
        assert repr(ours) == repr(ref).replace("num_layers=2,", "num_layers=2, nonlinearity='relu',")
    else:
        assert repr(ours) == repr(ref)


@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("gru", {"batch_first": True}), ("rnn", {"nonlinearity": "relu"}),
                                     ("rnn", {"bias": False}), ("lstm", {"bias": False, "batch_first": True})],
                         ids=["lstm", "gru-batch_first", "rnn-relu", "rnn-nobias", "lstm-nobias-batch_first"])
def test_bidirectional_matches_torch_nn(cell, kw):
    ours, ref = _same_weights(cell, I, H, L, bidirectional=True, **kw)
    x = torch.randn(*((B, T) if kw.get("batch_first") else (T, B)), I, dtype=torch.float64)
    got = _compare(ours, ref, x, _hx(cell, (2 * L, B, H)))
    assert got[0].shape[-1] == 2 * H and got[1].shape == (2 * L, B, H)


@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("lstm", True), ("gru", True), ("rnn", False)])
def test_dropout_draws_torch_nn_s_masks(cell, bidirectional):
    """Training mode: with the same seed our modules draw the masks torch.nn's draw (CPU), so
    outputs and gradients match; eval mode drops nothing; the masks really change the result."""
    ours, ref = _same_weights(cell, I, H, 3, dropout=0.4, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x, hx = torch.randn(T, B, I, dtype=torch.float64), _hx(cell, (3 * D, B, H))
    assert ours.training and ref.training
    train = _compare(ours, ref, x, hx, seed=5)
    assert not torch.allclose(train[0], _run(ours, x, hx, seed=6, grad=False)[0])   # another seed, other masks
    ours.eval(), ref.eval()
    evald = _compare(ours, ref, x, hx, seed=5)
    assert (train[0] - evald[0]).abs().max() > 1e-3


def test_dropout_of_one_and_in_float32():
    """p = 1 zeroes every layer output but the last (torch draws nothing then); fp32 modules (torch
    runs its oneDNN LSTM there) draw the same masks too."""
    ours, ref = _same_weights("gru", I, H, 2, dropout=1.0, bidirectional=True)
    _compare(ours, ref, torch.randn(T, B, I, dtype=torch.float64), None, seed=1)
    ours, ref = _same_weights("lstm", I, H, 3, dropout=0.5, dtype=torch.float32)
    _compare(ours, ref, torch.randn(T, B, I), None, seed=2, tol=(1e-4, 1e-5))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_as_torch_nn(cell, batch_first):
    ours, ref = _same_weights(cell, I, H, L, batch_first=batch_first, bidirectional=True)
    x = torch.randn(T, I, dtype=torch.float64)
    got = _compare(ours, ref, x, _hx(cell, (2 * L, H)))
    assert got[0].shape == (T, 2 * H) and got[1].shape == (2 * L, H)
    _compare(ours, ref, x, None)
    bad = _hx(cell, (2 * L, 1, H))
    with pytest.raises(BadInput, match=r"^unbatched 2-D input \(T, I\) takes 2-D states: h0 has shape \(4, 1, 6\); "
                                       r"expected \(num_layers \* directions, hidden\) = \(4, 6\)$"):
        ours(x, bad)


def test_arguments_torch_refuses_or_we_do_not_compute_are_one_line():
    with pytest.raises(BadInput, match=r"^proj_size=3 is not supported \(LSTM projections are not implemented\); allowed: 0$"):
        kt.LSTM(I, H, 1, True, False, 0.0, False, 3)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(BadInput, match=r"^dropout=.* must be a number in \[0, 1\]"):
            kt.GRU(I, H, 2, dropout=bad)
    with pytest.raises(BadInput, match="^nonlinearity 'sigmoid' is unknown; allowed: relu, tanh$"):
        kt.RNN(I, H, 1, "sigmoid")
    for name in ("bias", "batch_first", "bidirectional"):
        with pytest.raises(BadInput, match=f"^{name}='yes' must be True or False$"):
            kt.LSTM(I, H, **{name: "yes"})
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        kt.LSTM(I, H, 1, dropout=0.5)
    m = kt.LSTM(I, H, L, bidirectional=True)
    with pytest.raises(BadInput, match=r"h0 has shape \(2, 3, 6\); expected \(num_layers \* 2, batch, hidden\) = \(4, 3, 6\)"):
        m(torch.randn(T, B, I), (torch.zeros(L, B, H), torch.zeros(2 * L, B, H)))


@pytest.mark.parametrize("cls", [kt.LSTM, kt.GRU, kt.RNN, kt.LayerNormLSTM])
def test_bias_false_without_given_weights_builds_as_torch_nn(cls):
    """nn.LSTM(I, H, bias=False) is an everyday module; ours refused it (the random weights it
    drew had biases)."""
    m = cls(I, H, L, bias=False)
    assert not m.bias and not any("bias" in n for n, _ in m.named_parameters())
    assert torch.all(m.bias_ih_l1 == 0) and torch.all(m.bias_hh_l0 == 0)
    assert m(torch.randn(T, B, I))[0].shape == (T, B, H)


def test_settings_go_to_torch_and_back():
    ref = torch.nn.RNN(I, H, 2, "relu", True, True, 0.3, True).eval()
    ours = kt.RNN.from_torch(ref)
    assert not ours.training and ours.dropout == 0.3 and ours.bidirectional and ours.nonlinearity == "relu"
    back = ours.to_torch()
    assert repr(back) == repr(ref) and back.nonlinearity == "relu" and not back.training
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), ref.parameters()))
    p = kt.params_from_torch(ref)
    assert p.bidirectional and p.nonlinearity == "relu" and len(p.layers) == 4 and p.layers[2].w_ih.shape == (H, 2 * H)
    m = kt.torch_module(p, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    assert torch.allclose(m(x.transpose(0, 1))[0], ref.double()(x)[0].transpose(0, 1), atol=1e-12)
    lstm_ref = torch.nn.LSTM(I, H, 2, bidirectional=True)
    assert LSTMParams.from_torch(lstm_ref).bidirectional
    kt.load_canonical(lstm_ref, LSTMParams.random(I, H, 2, bidirectional=True, seed=4))
    with pytest.raises(BadInput, match="the module has bidirectional=True, the parameters bidirectional=False"):
        kt.load_canonical(lstm_ref, LSTMParams.random(I, H, 2))


def test_layernorm_lstm_takes_directions_and_dropout():
    """No torch.nn counterpart: against the float64 reference (both directions), the generated
    numba kernel of the no-grad path, and gradients by finite differences with the masks fixed."""
    from kernels.custom import layernorm_lstm_reference
    m = kt.LayerNormLSTM(3, 2, 2, bidirectional=True, dtype=torch.float64).eval()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    y, (h, c) = m(x)
    want = layernorm_lstm_reference(x.numpy(), m.to_params())
    for a, b in zip((y, h, c), (want[0], *want[1])):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(m(x)[0], y, atol=1e-12)
    m.train()
    m.dropout = 0.5
    names = [n for n, _ in m.named_parameters()]

    def f(xx, *ws):
        torch.manual_seed(0)                  # the same masks at every evaluation
        y, (h, c) = torch.func.functional_call(m, dict(zip(names, ws)), (xx,))
        return y, h, c

    inputs = (x.clone().requires_grad_(), *(p.detach().clone().requires_grad_() for p in m.parameters()))
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    torch.manual_seed(0)
    assert not torch.allclose(f(x, *m.parameters())[0], y)       # dropout applied


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_empty_batch_and_empty_sequence_as_torch_nn(cell):
    """B = 0: empty outputs and zero weight gradients, as torch.nn's (our backward once raised a
    reshape ValueError here); T = 0: torch refuses it, so do we, in one line."""
    ours, ref = _same_weights(cell, I, H, L, bidirectional=True)
    got = _compare(ours, ref, torch.randn(T, 0, I, dtype=torch.float64), None)
    assert got[0].shape == (T, 0, 2 * H) and all(torch.all(g == 0) for g in got[-8:])
    with pytest.raises(RuntimeError):
        ref(torch.randn(0, B, I, dtype=torch.float64))
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(BadInput, match=r"^input has shape \(0, 3, 4\): a "
                                                                       r"sequence of length 0 .*refuses it too"):
            ours(torch.randn(0, B, I, dtype=torch.float64))
