"""The Python API is safe to use from research code (issue 27, items 15-21): no public name is
shadowed by a submodule, every (variant, backend) pair runs or says why not, a built RNN may be
called from several threads, follows in-place weight updates, refuses to run OpenMP in a child
forked after OpenMP, and refuses complex, text and double-backward input in one line."""
from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import kernels
from kernels import BACKENDS, VARIANTS, BadInput, Unsupported
from kernels.params import PARAMS
from kernels.reference import REFERENCES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(op, seed=0, I=3, H=4, L=2):
    extra = {"nonlinearity": "tanh"} if op == "rnn" else {}
    p = PARAMS[op].random(I, H, L, seed=seed, **extra).astype(np.float32)
    x = np.random.default_rng(seed + 1).standard_normal((5, 2, I)).astype(np.float32)
    return p, x


def _flat(op, out):
    y, st = out
    return [y, *st] if op == "lstm" else [y, st]


def _reference(op, p, x):
    return _flat(op, REFERENCES[op](x, p))


def _close(got, want, tol=2e-5):
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        assert g.shape == w.shape
        assert np.max(np.abs(g - w)) <= tol * max(1.0, np.max(np.abs(w)))


# -- 15: no public name is shadowed by a submodule ------------------------------------------------
def test_no_public_name_of_kernels_is_also_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(kernels.__path__)}
    assert "recurrent" in submodules and not submodules & set(kernels.__all__)


def test_kernels_rnn_stays_the_function_whatever_is_imported():
    code = textwrap.dedent("""
        import pkgutil, importlib, numpy as np, kernels
        for m in pkgutil.iter_modules(kernels.__path__):
            if m.name not in ("torch", "jax", "gpu", "cudasrc"):
                importlib.import_module("kernels." + m.name)
        import kernels.recurrent
        from kernels import rnn
        p = kernels.VanillaRNNParams.random(3, 4, 1, seed=0)
        x = np.zeros((2, 1, 3))
        y, h = kernels.rnn(x, p)
        assert callable(rnn) and callable(kernels.rnn) and y.shape == (2, 1, 4)
        assert callable(kernels.RNN) and callable(kernels.lstm) and callable(kernels.gru)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]


# -- 16: kernels.rnn takes torch tensors as lstm and gru do ----------------------------------------
def test_rnn_takes_torch_tensors():
    torch = pytest.importorskip("torch")
    p, x = _small("rnn")
    y, h = kernels.rnn(torch.from_numpy(x), p, h0=torch.zeros(2, 2, 4))
    _close([y, h], _reference("rnn", p, x))


# -- 17: every (variant, backend) pair runs and matches, or raises Unsupported --------------------
@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_every_variant_backend_pair_runs_or_says_why_not(op):
    p, x = _small(op)
    want = _reference(op, p, x)
    fn = getattr(kernels, op)
    ran = []
    for variant in VARIANTS:
        for backend in BACKENDS:
            try:
                out = fn(x, p, variant=variant, backend=backend)
            except Unsupported as e:
                assert str(e).strip() and "\n" not in str(e), (variant, backend)
                continue
            tol = 1e-4 if backend == "onednn" else 2e-5     # oneDNN's primitive: its own summation order
            _close(_flat(op, out), want, tol)
            ran.append((variant, backend))
    assert ("naive", "numpy") in ran and ("fused", "numpy") in ran


def test_backend_onednn_runs_onednns_own_rnn():
    from kernels.onednn import lib as dnnl
    if not dnnl.available()[0]:
        pytest.skip("oneDNN is not installed")
    p, x = _small("lstm")
    run = kernels.RNN(p, variant="fused", backend="onednn")
    assert run._vendor is not None                          # the oneDNN primitive, not our loop
    y, (h, c) = run(x)
    _close([y, h, c], _reference("lstm", p, x), 1e-4)
    y2, _ = run(x[:, :1])                                    # another batch: another primitive
    _close([y2], [_reference("lstm", p, x[:, :1])[0]], 1e-4)
    with pytest.raises(Unsupported, match="no naive form"):
        kernels.lstm(x, p, variant="naive", backend="onednn")


# -- 18: one built RNN called from several threads ------------------------------------------------
def test_calls_of_one_rnn_from_two_threads_take_turns():
    p, x = _small("lstm")
    run = kernels.RNN(p, variant="fused", backend="numpy", dtype="fp32")
    inside, overlap = [0], [False]
    forward = run._forward

    def slow_forward(*a, **kw):    # widen the window in which two calls would share buffers
        inside[0] += 1
        overlap[0] |= inside[0] > 1
        time.sleep(0.01)
        try:
            return forward(*a, **kw)
        finally:
            inside[0] -= 1
    run._forward = slow_forward
    threads = [threading.Thread(target=lambda: [run(x) for _ in range(5)]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap[0]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_two_threads_calling_one_rnn_get_their_own_right_outputs(backend):
    pytest.importorskip(backend)
    p, _ = _small("lstm", I=16, H=32)
    xs = [np.random.default_rng(s).standard_normal((8, 4, 16)).astype(np.float32) for s in (1, 2)]
    want = [_reference("lstm", p, x) for x in xs]
    run = kernels.RNN(p, variant="fused", backend=backend, dtype="fp32")
    wrong = []

    def worker(i):
        for _ in range(40):
            out = _flat("lstm", run(xs[i]))
            if max(np.max(np.abs(np.asarray(o, np.float64) - w)) for o, w in zip(out, want[i])) > 1e-4:
                wrong.append(i)
    ts = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert wrong == []


# -- 19: in-place updates of the parameters reach a built RNN -------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "numba", "onednn"])
def test_a_built_rnn_follows_in_place_weight_updates(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    p, x = _small("lstm")
    try:
        run = kernels.RNN(p, variant="fused", backend=backend, dtype="fp32")
        run(x)
    except Unsupported as e:
        pytest.skip(str(e))
    tol = 1e-4 if backend == "onednn" else 2e-5
    p.layers[0].w_hh[...] *= -0.5             # a training step, in place
    p.layers[1].b_ih[...] += 0.25
    _close(_flat("lstm", run(x)), _reference("lstm", p, x), tol)


def test_without_tracking_refresh_applies_the_update():
    p, x = _small("gru")
    run = kernels.RNN(p, variant="fused", backend="numpy", dtype="fp32", track_params=False)
    before = _flat("gru", run(x))
    p.layers[0].w_ih[...] *= 2.0
    _close(_flat("gru", run(x)), [np.asarray(b, np.float64) for b in before])   # stale, as documented
    run.refresh()
    _close(_flat("gru", run(x)), _reference("gru", p, x))


# -- 20: fork after OpenMP -------------------------------------------------------------------------
FORK_CHILD = textwrap.dedent("""
    import os, signal, sys, numpy as np
    import kernels
    p = kernels.LSTMParams.random(8, 16, 1, seed=0).astype(np.float32)
    x = np.ones((4, 2, 8), np.float32)
    run = kernels.RNN(p, variant="fused", backend=sys.argv[1], dtype="fp32")
    run(x)                                   # OpenMP (numba's layer or oneDNN's GEMMs) in the parent
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)                     # a hang ends the child instead of the test
        try:
            kernels.RNN(p, variant="fused", backend=sys.argv[1], dtype="fp32")(x)
        except Exception as e:               # kernels.ForkedAfterOpenMP
            msg = str(e)
            os._exit(3 if type(e).__name__ == "ForkedAfterOpenMP" and "spawn" in msg and "\\n" not in msg else 4)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
""")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_child_forked_after_openmp_raises_one_line_instead_of_hanging(backend):
    pytest.importorskip("numba")
    from kernels.onednn import lib as dnnl
    if backend == "numpy" and not dnnl.available()[0]:
        pytest.skip("the numpy backend's OpenMP is oneDNN's GEMM: not installed")
    r = subprocess.run([sys.executable, "-c", FORK_CHILD, backend], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "child 3" in r.stdout, (r.stdout, r.stderr[-2000:])


def test_a_child_forked_before_any_openmp_runs_normally():
    from kernels import forking
    saved = forking._inherited, forking._started
    try:
        forking._inherited = None
        forking.check("anything")          # not forked after OpenMP: nothing raised
        forking._inherited = "oneDNN primitives"
        with pytest.raises(kernels.ForkedAfterOpenMP, match="spawn"):
            forking.check("oneDNN reorder")
    finally:
        forking._inherited, forking._started = saved


# -- 21: complex, text and double backward --------------------------------------------------------
def test_complex_x_into_onednn_rnn_is_refused():
    from kernels.onednn import lib as dnnl
    if not dnnl.available()[0]:
        pytest.skip("oneDNN is not installed")
    from kernels.onednn.rnn import OnednnRNN
    p, x = _small("lstm")
    h0 = np.zeros((2, 2, 4), np.float32)
    with OnednnRNN(p, batch=2, seq_len=5) as r:
        with pytest.raises(BadInput, match="complex"):
            r(x + 1j, h0, h0)


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_text_x_is_one_line(op):
    p, _ = _small(op)
    with pytest.raises(BadInput) as e:
        getattr(kernels, op)("not an array", p)
    assert "\n" not in str(e.value) and "x has dtype" in str(e.value)


def test_double_backward_through_kernels_torch_says_it_is_not_supported():
    torch = pytest.importorskip("torch")
    from kernels.torch import LSTM
    m = LSTM(3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float32, requires_grad=True)
    y, _ = m(x)
    with pytest.raises(BadInput, match="double backward"):
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        torch.autograd.grad(gx.sum(), x)
    (gx,) = torch.autograd.grad(m(x)[0].sum(), x)      # first order still works
    assert gx.shape == x.shape
