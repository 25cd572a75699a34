"""Framework adapters: weight conversions (pure NumPy, always run), the worker protocol, and each
framework's output against the float64 reference (skipped with the reason where not installed)."""
from __future__ import annotations

import importlib.util
import itertools
import re
import sys

import numpy as np
import pytest

from kernels.errors import BadInput, Unsupported
from kernels.params import GRUParams, LSTMParams, VanillaRNNParams, reorder_gates
from kernels.reference import REFERENCES
from microbench.cases import frameworks as fcases
from microbench.frameworks import FRAMEWORKS, NOT_INSTALLABLE, NUMPY1, PATHS, convert, looptime, skip_reason
from microbench.harness import Settings
from microbench.problems import RNNProblem

PARAMS = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams}


def _layer(op, I=5, H=4, seed=0):
    return PARAMS[op].random(I, H, 1, seed=seed).layers[0].arrays()


# -- conversions: round trips ---------------------------------------------------------------------

def test_reorder_matches_kernels_reorder_gates_and_inverts():
    a = np.arange(24.0).reshape(12, 2)
    for src, dst in itertools.permutations(["ifgo", "fgoi", "oigf"], 2):
        b = convert.reorder(a, src, dst)
        np.testing.assert_array_equal(b, reorder_gates(a, src, dst))
        np.testing.assert_array_equal(convert.reorder(b, dst, src), a)
    with pytest.raises(ValueError):
        convert.reorder(a, "ifgo", "ifgx")


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_torch_mxnet_layouts_are_ours(op):
    layer = _layer(op)
    for to, back in ((convert.to_torch, convert.from_torch), (convert.to_mxnet, convert.from_mxnet)):
        for got, want in zip(back(to(layer, op), op), layer):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_keras_round_trip(op):
    w_ih, w_hh, b_ih, b_hh = layer = _layer(op)
    kernel, recurrent, bias = convert.to_keras(layer, op)
    assert kernel.shape == (5, w_ih.shape[0]) and recurrent.shape == (4, w_hh.shape[0])
    back = convert.from_keras([kernel, recurrent, bias], op)
    np.testing.assert_array_equal(back[0], w_ih)
    np.testing.assert_array_equal(back[1], w_hh)
    if op == "gru":     # reset_after keeps the two biases apart: exact
        np.testing.assert_array_equal(back[2], b_ih)
        np.testing.assert_array_equal(back[3], b_hh)
    else:               # one summed bias
        np.testing.assert_allclose(back[2] + back[3], b_ih + b_hh)


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_flax_round_trip(op):
    w_ih, w_hh, b_ih, b_hh = layer = _layer(op)
    back = convert.from_flax(convert.to_flax(layer, op), op)
    np.testing.assert_array_equal(back[0], w_ih)
    np.testing.assert_array_equal(back[1], w_hh)
    H = 4
    if op == "gru":     # b_hn stays apart (inside r * (.)); r and z biases are summed
        np.testing.assert_array_equal(back[3][2 * H:], b_hh[2 * H:])
    np.testing.assert_allclose(back[2] + back[3], b_ih + b_hh)


def test_cudnn_packed_round_trip_two_layers():
    p = LSTMParams.random(5, 4, 2, seed=3)
    layers = [layer.arrays() for layer in p.layers]
    flat = convert.to_cudnn_packed(layers)
    assert flat.size == p.num_weights()
    for got, want in zip(convert.from_cudnn_packed(flat, 5, 4, 2), layers):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        convert.from_cudnn_packed(flat[:-1], 5, 4, 2)


def test_tfblock_round_trip():
    w_ih, w_hh, b_ih, b_hh = layer = _layer("lstm")
    w, b = convert.to_tfblock(layer)
    assert w.shape == (5 + 4, 16)
    back = convert.from_tfblock(w, b, 5)
    np.testing.assert_array_equal(back[0], w_ih)
    np.testing.assert_array_equal(back[1], w_hh)
    np.testing.assert_allclose(back[2], b_ih + b_hh)


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_chainer_nstep_round_trip(op):
    layer = _layer(op)
    ws, bs = convert.to_chainer_nstep(layer, op)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[op]
    assert len(ws) == len(bs) == 2 * G and ws[0].shape == (4, 5) and ws[G].shape == (4, 4)
    if op != "rnn":
        np.testing.assert_array_equal(ws[2], layer[0][8:12])     # w2: our g / n gate
    else:       # NStepRNN: w0 the input matrix, w1 the recurrent one, biases apart
        np.testing.assert_array_equal(ws[1], layer[1])
        np.testing.assert_array_equal(bs[1], layer[3])
    for got, want in zip(convert.from_chainer_nstep(ws, bs, op), layer):
        np.testing.assert_array_equal(got, want)


def test_chainer_lstm_cell_interleaves_a_i_f_o():
    """F.lstm reads row 4j + k as gate k (a, i, f, o) of unit j."""
    w_ih, w_hh, b_ih, b_hh = layer = _layer("lstm")
    d = convert.to_chainer_lstm(layer)
    H = 4
    for k, g in enumerate("gifo"):
        blk = "ifgo".index(g)
        np.testing.assert_array_equal(d["upward.W"][k::4], w_ih[blk * H:(blk + 1) * H])
        np.testing.assert_array_equal(d["lateral.W"][k::4], w_hh[blk * H:(blk + 1) * H])
    back = convert.from_chainer_lstm(d)
    np.testing.assert_array_equal(back[0], w_ih)
    np.testing.assert_array_equal(back[1], w_hh)
    np.testing.assert_allclose(back[2] + back[3], b_ih + b_hh)


def test_split_op_names_the_vanilla_activation():
    assert convert.split_op("rnn_relu") == ("rnn", "relu")
    assert convert.split_op("rnn_tanh") == ("rnn", "tanh")
    assert convert.split_op("gru") == ("gru", None)
    with pytest.raises(ValueError, match="'sigmoid' is unknown; allowed: relu, tanh"):
        convert.split_op("rnn_sigmoid")


def test_every_framework_path_says_what_it_runs_for_every_op():
    for fw, devices in PATHS.items():
        for device, paths in devices.items():
            for path, ops in paths.items():
                assert set(ops) == {"lstm", "gru", "rnn", "conv"}, (fw, device, path)
    # the vanilla cell has a row in every framework on the CPU (the fused one where it exists)
    for fw in FRAMEWORKS:
        assert any(not skip_reason(fw, "cpu", path, "rnn") for path in PATHS[fw]["cpu"]), fw


def test_pack_unpack_layers():
    p = GRUParams.random(3, 2, 3, seed=1)
    layers = [layer.arrays() for layer in p.layers]
    back = convert.unpack_layers(convert.pack_layers(layers))
    assert len(back) == 3
    for got, want in zip(back, layers):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def _sig(v):
    return 1 / (1 + np.exp(-v))


def test_keras_and_flax_gru_conventions_compute_our_gru_step():
    """One step of the Keras (z, r, h; reset_after) and Flax GRU formulas on converted weights
    equals our reference: the conversions carry the semantics, not only the numbers."""
    p = GRUParams.random(5, 4, 1, seed=2)
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((1, 3, 5)), rng.standard_normal((1, 3, 4))
    want, _ = REFERENCES["gru"](x, p, h)
    x, h = x[0], h[0]
    kernel, recurrent, bias = convert.to_keras(p.layers[0].arrays(), "gru")
    xz, xr, xh = np.split(x @ kernel + bias[0], 3, axis=1)
    hz, hr, hh = np.split(h @ recurrent + bias[1], 3, axis=1)
    z, r = _sig(xz + hz), _sig(xr + hr)
    keras_h = z * h + (1 - z) * np.tanh(xh + r * hh)
    np.testing.assert_allclose(keras_h, want[0], rtol=0, atol=1e-12)
    f = convert.to_flax(p.layers[0].arrays(), "gru")
    d = lambda name, v: v @ f[name]["kernel"] + f[name].get("bias", 0)  # noqa: E731
    r, z = _sig(d("ir", x) + d("hr", h)), _sig(d("iz", x) + d("hz", h))
    flax_h = (1 - z) * np.tanh(d("in", x) + r * d("hn", h)) + z * h
    np.testing.assert_allclose(flax_h, want[0], rtol=0, atol=1e-12)


# -- timing loop of foreign workers ----------------------------------------------------------------

def test_looptime_noise_matches_stats():
    from microbench.stats import relative_noise
    s = list(np.random.default_rng(0).uniform(1, 2, size=17))
    assert looptime.relative_noise(s) == pytest.approx(relative_noise(s), rel=1e-12)


def test_looptime_stopping_rule_on_a_scripted_clock():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def run():
        now[0] += 0.1       # every call takes 0.1 s on the scripted clock
    settings = {"warmup": 0.25, "min_time": 1.0, "max_time": 20.0, "min_samples": 5, "max_noise": 0.05}
    samples = looptime.measure(run, settings, clock=clock)
    assert len(samples) == 10 and all(s == pytest.approx(0.1) for s in samples)
    settings.update(max_time=0.5, min_time=0.4)      # budget ends first: at least 3 samples
    assert len(looptime.measure(run, settings, clock=clock)) == 3


# -- names and bad input ----------------------------------------------------------------------------

def test_parse_frameworks():
    assert fcases.parse_frameworks("all") == list(FRAMEWORKS) and "chainer" in FRAMEWORKS
    assert fcases.parse_frameworks("jax,torch") == ["torch", "jax"]
    with pytest.raises(BadInput, match="allowed: torch, tensorflow, jax, mxnet, chainer, all"):
        fcases.parse_frameworks("torch,theano")
    for name in ("cntk", "caffe"):
        with pytest.raises(BadInput, match=f"--frameworks {name}: not supported: .*(wheel|package)"):
            fcases.parse_frameworks(f"torch,{name}")
    with pytest.raises(BadInput):
        fcases.parse_frameworks(",")


def test_parse_python_rejects_bad_items(tmp_path):
    from microbench.frameworks.client import parse_python
    assert parse_python([f"mxnet={sys.executable}"]) == {"mxnet": sys.executable}
    with pytest.raises(BadInput, match="unknown framework"):
        parse_python([f"theano={sys.executable}"])
    with pytest.raises(BadInput, match="not supported"):
        parse_python([f"caffe={sys.executable}"])
    with pytest.raises(BadInput, match="not an executable"):
        parse_python([f"mxnet={tmp_path / 'nope'}"])
    with pytest.raises(BadInput, match="FRAMEWORK=/path"):
        parse_python(["mxnet"])


@pytest.mark.parametrize("name,says", [("theano", "torch, tensorflow, jax, mxnet, chainer"),
                                       ("cntk", "no wheel for any Python"), ("caffe", "no wheel on PyPI")])
def test_cli_unknown_or_uninstallable_framework_is_one_line_error(capsys, name, says):
    from microbench.cli import main
    assert main(["lstm", "--frameworks", name, "-H", "8", "-B", "2", "-T", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and name in err and says in err


def test_registry_rows_are_framework_slash_path():
    from microbench.registry import REGISTRY
    recs = [r for r in REGISTRY.values() if r.framework]
    assert {r.framework for r in recs} == set(FRAMEWORKS)
    for r in recs:
        assert r.variant == r.framework and r.backend in PATHS[r.framework][r.device]


@pytest.mark.parametrize("fw", NUMPY1)
def test_missing_framework_is_a_skipped_row(fw):
    """MXNet 1.9 and Chainer 7 refuse NumPy 2: under this interpreter their workers report them missing."""
    from microbench.runner import run_case
    p = RNNProblem("lstm", 3, 2, 4, 4)
    [case] = [c for c in fcases.framework_cases("lstm", p, fw, "cpu", ["fp32"], 0, None,
                                                {fw: sys.executable}) if c.backend == "fused"]
    if importlib.util.find_spec(fw) is not None and np.__version__ < "2":
        pytest.skip(f"{fw} imports in this interpreter")
    out = run_case(case, Settings(0, 0.01, 1, 1, 1), {}, 0.0)
    assert out.status == "skipped" and fw in out.error and "setup-mxnet" in out.error


# -- each framework against the reference -----------------------------------------------------------

def _available(fw):
    if fw in NUMPY1:
        py = fcases.default_python(fw)
        return (py, None) if py else (None, f"no .venv-mxnet: run scripts/setup-mxnet to test {fw}")
    if importlib.util.find_spec(fw) is None:
        return None, f"{fw} is not importable here (pip install -e '.[frameworks]')"
    return None, None


def _python_or_skip(fw):
    """The interpreter to run ``fw`` with (None: this one), or skip the test with the reason."""
    python, why = _available(fw)
    if why:
        pytest.skip(why)
    return python


CASES = [(fw, op, path) for fw in FRAMEWORKS for op in ("lstm", "gru", "rnn") for path in PATHS[fw]["cpu"]]


@pytest.mark.parametrize("fw,op,path", CASES, ids=[f"{f}-{o}-{p}" for f, o, p in CASES])
def test_framework_matches_reference(fw, op, path):
    python = _python_or_skip(fw)
    # the vanilla cell as DeepBench's (ReLU); tanh in test_vanilla_rnn.py
    problem = RNNProblem(op, T=5, B=3, I=7, H=6, L=2, nonlinearity="relu" if op == "rnn" else "")
    build = lambda: fcases.build_framework(problem, 1, framework=fw, path=path, device="cpu",  # noqa: E731
                                           precision="fp32", threads=1, python=python)
    reason = skip_reason(fw, "cpu", path, op)
    if reason:      # marked, never compared: the row says why
        with pytest.raises(Unsupported, match=re.escape(reason[:30])):
            build()
        return
    prepared = build()
    try:
        check = prepared.check()
        assert check.passed, check.detail
        assert prepared.info["worker"]["threads_requested"] == 1
        # time every path too: a run callable that works once but not twice must fail here
        m = prepared.measure(Settings(0.0, 0.0, 2.0, 3, 1.0))
        assert m.n >= 3 and m.median > 0
        after = prepared.check()      # the worker's last timed call, as the runner checks it
        assert after.passed, after.detail
        assert prepared.info["calls_sampled"] >= 3     # random timed calls the worker read, compared
    finally:
        prepared.close()


# One layout per framework path (a worker start costs seconds), both where the adapter has two code paths.
CONV_CASES = [("torch", "fused", "NCHW"), ("torch", "fused", "NHWC"), ("torch", "generic", "NCHW"),
              ("tensorflow", "fused", "NCHW"), ("tensorflow", "generic", "NCHW"),
              ("jax", "fused", "NHWC"), ("jax", "generic", "NCHW"),
              ("mxnet", "fused", "NHWC"), ("mxnet", "generic", "NCHW"),
              ("chainer", "fused", "NHWC"), ("chainer", "generic", "NCHW")]


@pytest.mark.parametrize("fw,path,layout", CONV_CASES, ids=[f"{f}-conv-{p}-{l}" for f, p, l in CONV_CASES])
def test_framework_conv_matches_reference(fw, path, layout):
    from kernels.conv import ConvProblem
    python = _python_or_skip(fw)
    problem = ConvProblem(N=2, C=3, H=9, W=8, K=5, R=3, S=3, stride=(2, 1), pad=(1, 2), layout=layout)
    build = lambda: fcases.build_framework(problem, 2, framework=fw, path=path, device="cpu",  # noqa: E731
                                           precision="fp32", threads=1, python=python)
    reason = skip_reason(fw, "cpu", path, "conv")
    if reason:
        with pytest.raises(Unsupported, match=re.escape(reason[:30])):
            build()
        return
    prepared = build()
    try:
        check = prepared.check()
        assert check.passed, check.detail
        m = prepared.measure(Settings(0.0, 0.0, 2.0, 3, 1.0))
        assert m.n >= 3 and m.median > 0
        after = prepared.check()      # the worker's last timed call, as the runner checks it
        assert after.passed, after.detail
        assert prepared.info["calls_sampled"] >= 3     # random timed calls the worker read, compared
    finally:
        prepared.close()


def test_tensorflow_grouped_conv_forward_runs_without_a_bias_and_with_one_where_tensorflow_does():
    """With a bias TensorFlow fuses Conv2D + BiasAdd into one kernel, which refuses groups on some
    CPUs and builds and not on others: the row is skipped with TensorFlow's message exactly where
    TensorFlow itself refuses it (tests/tf_probe.py), and checked elsewhere."""
    from kernels.conv import ConvProblem
    from tf_probe import tensorflow_runs
    pytest.importorskip("tensorflow")
    kw = dict(N=2, C=4, H=9, W=8, K=6, R=3, S=3, stride=2, pad=1, groups=2)
    if tensorflow_runs()[("fwd", "groups+bias")]:
        with_bias = fcases.build_framework(ConvProblem(**kw), 2, framework="tensorflow", path="fused",
                                           device="cpu", precision="fp32", threads=1)
        try:
            assert with_bias.check().passed
        finally:
            with_bias.close()
    else:
        with pytest.raises(Unsupported, match=r"refuses Conv2D \+ BiasAdd \(fused by grappler\) for groups=2 with a bias"):
            fcases.build_framework(ConvProblem(**kw), 2, framework="tensorflow", path="fused", device="cpu",
                                   precision="fp32", threads=1)
    prepared = fcases.build_framework(ConvProblem(**kw, bias=False), 2, framework="tensorflow", path="fused",
                                      device="cpu", precision="fp32", threads=1)
    try:
        check = prepared.check()
        assert check.passed, check.detail
        prepared.run()
        after = prepared.check()
        assert after.passed, after.detail
    finally:
        prepared.close()


# Training steps of the frameworks whose worker runs in the NumPy-1 interpreter (torch's, JAX's
# and TensorFlow's are in test_backward_cli.py): y and every gradient against kernels.backward in
# float64.  MXNet's with one layer too (a worker starts in seconds).
NUMPY1_TRAIN = [(fw, op, path, L) for fw, layers in (("chainer", (2,)), ("mxnet", (1, 2)))
                for op in ("lstm", "gru", "rnn") for path in ("fused", "generic") for L in layers]


@pytest.mark.parametrize("fw,op,path,L", NUMPY1_TRAIN,
                         ids=[f"{f}-{o}-{p}-L{n}-bwd" for f, o, p, n in NUMPY1_TRAIN])
def test_numpy1_framework_training_step_matches_the_reference(fw, op, path, L):
    python = _python_or_skip(fw)
    problem = RNNProblem(op, T=4, B=3, I=5, H=6, L=L, nonlinearity="relu" if op == "rnn" else "")
    prepared = fcases.build_framework(problem, 1, framework=fw, path=path, device="cpu", precision="fp32",
                                      threads=1, python=python, backward=True)
    try:
        check = prepared.check()
        assert check.passed, check.detail
        assert prepared.info["pass"] == "forward+backward"
        prepared.run()      # a second call must work too
    finally:
        prepared.close()


def test_chainer_cuda_without_cupy_is_a_skip_saying_why():
    """Chainer 7.8.1 needs CuPy 7, which has no build for this Python: its GPU rows say so."""
    python = _python_or_skip("chainer")
    from microbench.frameworks.client import Worker
    with pytest.raises(Unsupported, match=r"cupy>=7\.7,<8"):
        Worker("chainer", python=python, device="cuda").close()


@pytest.mark.parametrize("fw", ["mxnet", "chainer"])
@pytest.mark.parametrize("op", ["lstm", "gru", "rnn", "conv"])
def test_cpu_only_frameworks_skip_every_gpu_row_before_a_worker_starts(fw, op):
    """MXNet's and Chainer's GPU builds are out of reach of every supported install, so their
    adapters have no GPU code and every GPU row says why, without starting a worker."""
    from microbench.frameworks import NO_GPU, PATHS
    for path in ("cudnn", "nocudnn"):
        assert fcases.path_reason(fw, "cuda", path, op) == NO_GPU[fw]
    assert set(PATHS[fw]["cuda"]) == {"cudnn", "nocudnn"}


def test_env_names_every_framework_found_or_why_not(monkeypatch, tmp_path):
    import microbench.frameworks as mframeworks
    from microbench import env as menv
    monkeypatch.setattr(mframeworks, "MXNET_VENV_PYTHON", tmp_path / "none" / "bin" / "python")
    got = menv.frameworks()
    assert list(got) == list(FRAMEWORKS) + list(NOT_INSTALLABLE)
    for fw in NUMPY1:
        assert got[fw]["status"] == "missing" and "scripts/setup-mxnet" in got[fw]["reason"]
    for fw in NOT_INSTALLABLE:
        assert got[fw]["status"] == "not supported" and got[fw]["reason"] == NOT_INSTALLABLE[fw]
    for fw, f in got.items():
        assert (f["status"] == "found") == bool(f.get("version")) and (f["status"] == "found" or f["reason"])


def test_explain_on_a_cpu_says_what_each_framework_path_runs():
    from microbench.commands.explain import _cpu_paths
    lines = []
    _cpu_paths("lstm", type("Out", (), {"print": lambda self, s: lines.append(s)})())
    text = "\n".join(lines)
    for fw in FRAMEWORKS:
        assert f"{fw}/fused: " in text and f"{fw}/generic: " in text
    assert "chainer/fused: L.NStepLSTM: Chainer's own CPU loop (no oneDNN)" in text
    assert "jax/fused: no such row (XLA:CPU has no fused RNN kernel" in text
