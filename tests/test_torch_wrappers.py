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
    with pytest.raises(BadInput, match="expected"):
        m(torch.randn(T, I))


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
    with pytest.raises(BadInput, match="bidirectional"):
        kt.LSTM.from_torch(torch.nn.LSTM(I, H, bidirectional=True))
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
