"""The vanilla RNN op (``rnn``: ReLU and tanh) and skip-input mode (DeepBench's recurrent-only
timing): float64 references against PyTorch and against each other, every CPU variant and fusion
rung against the references, NaN propagation, gradients (vanilla cell and skip-input) against
central finite differences and torch autograd, the generated GPU kernel source, the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from fusion import cellexpr as ce
from fusion.steps import Plan, ladder
from kernels import backward as bw
from kernels.errors import BadInput
from kernels.params import PARAMS, VanillaRNNParams
from kernels.reference import REFERENCES, rnn_reference
from kernels.recurrent import RNN, rnn

ACTS = ("relu", "tanh")


def _params(cell, I, H, L, seed=0, act="relu"):
    return PARAMS[cell].random(I, H, L, seed=seed, **({"nonlinearity": act} if cell == "rnn" else {}))


def _states(cell, L, B, H, rng):
    h0 = 0.5 * rng.standard_normal((L, B, H))
    return (h0, 0.5 * rng.standard_normal((L, B, H))) if cell == "lstm" else (h0,)


@pytest.mark.parametrize("act", ACTS)
def test_reference_matches_torch_nn_rnn(act):
    torch = pytest.importorskip("torch")
    p = VanillaRNNParams.random(5, 7, 2, seed=1, nonlinearity=act)
    rng = np.random.default_rng(0)
    x, h0 = rng.standard_normal((6, 3, 5)), rng.standard_normal((2, 3, 7))
    y, h = rnn_reference(x, p, h0)
    mod = torch.nn.RNN(5, 7, num_layers=2, nonlinearity=act).double()
    with torch.no_grad():
        for l, layer in enumerate(p.layers):
            for name, a in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), layer.arrays()):
                getattr(mod, f"{name}_l{l}").copy_(torch.from_numpy(a))
        ty, th = mod(torch.from_numpy(x), torch.from_numpy(h0))
    assert np.abs(y - ty.numpy()).max() < 1e-12 and np.abs(h - th.numpy()).max() < 1e-12
    if act == "relu":
        assert (y >= 0).all() and (y == 0).any()      # the ReLU is really there


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("backend", ("numpy", "numba"))
@pytest.mark.parametrize("precision,tol", [("fp64", 1e-12), ("fp32", 1e-5)])
def test_variants_and_every_rung_match_the_reference(act, backend, precision, tol):
    p = VanillaRNNParams.random(12, 24, 2, seed=2, nonlinearity=act)
    rng = np.random.default_rng(1)
    x, h0 = rng.standard_normal((9, 5, 12)), 0.5 * rng.standard_normal((2, 5, 24))
    st = np.float64 if precision == "fp64" else np.float32
    yr, hr = rnn_reference(x.astype(st), p.astype(st), h0.astype(st))
    plans = [("naive", None)] + [(label, plan) for label, plan in ladder("cpu") if label != "naive"]
    for label, plan in plans:
        impl = RNN(p.astype(st), variant="naive" if plan is None else "fused", backend=backend,
                   dtype=precision, opts=plan)
        for _ in range(2):                        # a result wrong after the first call must fail
            y, h = impl(x.astype(st), h0.astype(st))
            err = max(np.abs(y - yr).max() / np.abs(yr).max(), np.abs(h - hr).max() / np.abs(hr).max())
            assert err < tol, (label, err)


@pytest.mark.parametrize("variant,backend", [("naive", "numpy"), ("fused", "numpy"), ("fused", "numba")])
def test_relu_propagates_nan(variant, backend):
    p = VanillaRNNParams.random(4, 8, 1, seed=0, nonlinearity="relu").astype(np.float32)
    x = np.ones((3, 2, 4), np.float32)
    x[1, 0, 0] = np.nan
    y, _ = rnn(x, p, variant=variant, backend=backend)
    assert np.isnan(y[1:, 0]).any()


def test_bad_nonlinearity_and_states():
    with pytest.raises(BadInput, match="nonlinearity 'sigmoid'"):
        VanillaRNNParams.random(4, 4, nonlinearity="sigmoid")
    p = VanillaRNNParams.random(4, 4)
    assert p.nonlinearity == "tanh" and p.astype(np.float32).nonlinearity == "tanh"
    with pytest.raises(BadInput, match="no cell state"):
        RNN(p)(np.zeros((2, 1, 4)), None, np.zeros((1, 1, 4)))


# -- skip-input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,act", [("lstm", ""), ("gru", ""), ("rnn", "relu"), ("rnn", "tanh")])
def test_skip_input_reference_is_the_layer_given_its_projection(cell, act):
    p = _params(cell, 6, 8, 2, act=act or "relu")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 6))
    states = _states(cell, 2, 3, 8, rng)
    proj = x @ np.asarray(p.layers[0].w_ih).T          # what skip-input takes as given
    full = REFERENCES[cell](x, p, *states)
    skip = REFERENCES[cell](proj, p, *states, skip_input=True)
    assert np.abs(full[0] - skip[0]).max() < 1e-12
    with pytest.raises(BadInput, match="G\\*H"):
        REFERENCES[cell](x, p, *states, skip_input=True)


@pytest.mark.parametrize("cell,act", [("lstm", ""), ("gru", ""), ("rnn", "relu")])
@pytest.mark.parametrize("backend", ("numpy", "numba"))
def test_skip_input_variants_every_rung(cell, act, backend):
    p = _params(cell, 8, 8, 2, seed=4, act=act or "relu")
    rng = np.random.default_rng(5)
    gx = 0.6 * rng.standard_normal((6, 4, p.num_gates * 8))
    states = _states(cell, 2, 4, 8, rng)
    want = REFERENCES[cell](gx, p, *states, skip_input=True)[0]
    plans = [("naive", None)] + [(label, plan) for label, plan in ladder("cpu") if label != "naive"]
    if backend == "numpy":                        # GPU orchestration (streams, wavefront), serially
        plans.append(("gpu-steps", Plan.full("cuda")))
    for label, plan in plans:
        impl = RNN(p, variant="naive" if plan is None else "fused", backend=backend, dtype="fp64",
                   opts=plan, skip_input=True)
        before = gx.copy()
        for _ in range(2):
            y = impl(gx, *states)[0]
            assert np.abs(y - want).max() < 1e-12, label
        assert np.array_equal(gx, before), label     # the given projection is read, never written


def test_skip_input_flops_and_bytes_count_the_recurrent_part():
    from microbench.problems import RNNProblem
    full = RNNProblem("lstm", 25, 16, 512, 512)
    skip = RNNProblem("lstm", 25, 16, 512, 512, skip_input=True)
    assert full.flops() == 2 * skip.flops() == 2 * (2 * 25 * 16 * 4 * 512 * 512)
    assert skip.options() == {"skip_input": True} and full.options() == {}
    assert "skip-input" in skip.label
    van = RNNProblem("rnn", 50, 16, 1760, 1760, nonlinearity="relu", skip_input=True)
    assert van.flops() == 2 * 50 * 16 * 1760 * 1760 and van.cell_mode == "rnn_relu"
    with pytest.raises(BadInput, match="nonlinearity"):
        RNNProblem("gru", 2, 2, 2, 2, nonlinearity="relu")


# -- gradients -----------------------------------------------------------------------------------
def _loss(cell, x, p, states, dy, skip):
    return float((REFERENCES[cell](x, p, *states, skip_input=skip)[0] * dy).sum())


@pytest.mark.parametrize("cell,act,skip", [("rnn", "relu", False), ("rnn", "tanh", False),
                                           ("rnn", "tanh", True), ("lstm", "", True), ("gru", "", True)])
def test_gradients_against_finite_differences(cell, act, skip):
    p = _params(cell, 3, 4, 2, seed=6, act=act or "tanh")
    rng = np.random.default_rng(7)
    width = p.num_gates * 4 if skip else 3
    x = rng.standard_normal((3, 2, width))
    states = _states(cell, 2, 2, 4, rng)
    dy = rng.standard_normal((3, 2, 4))
    y, _, tape = bw.forward_train(x, p, *states, dtype=np.float64, skip_input=skip)
    g = bw.backward(tape, dy)
    assert ("w_ih" in g.layers[0]) == (not skip) and "w_ih" in g.layers[1]
    leaves = {"x": (x, g.x), "h0": (states[0], g.h0)}
    for l, layer in enumerate(p.layers):
        for name, a in zip(("w_ih", "w_hh", "b_ih", "b_hh"), layer.arrays()):
            if name in g.layers[l]:
                leaves[f"{l}.{name}"] = (a, g.layers[l][name])
    eps = 1e-6
    for name, (a, got) in leaves.items():
        num = np.empty_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            up = _loss(cell, x, p, states, dy, skip)
            a[i] = old - eps
            down = _loss(cell, x, p, states, dy, skip)
            a[i] = old
            num[i] = (up - down) / (2 * eps)
        assert np.abs(got - num).max() <= 1e-6 * max(1.0, np.abs(num).max()), name


@pytest.mark.parametrize("act", ACTS)
def test_vanilla_gradients_against_torch_autograd(act):
    torch = pytest.importorskip("torch")
    p = VanillaRNNParams.random(10, 16, 2, seed=8, nonlinearity=act)
    rng = np.random.default_rng(9)
    x, h0, dy = rng.standard_normal((7, 4, 10)), rng.standard_normal((2, 4, 16)), rng.standard_normal((7, 4, 16))
    _, _, tape = bw.forward_train(x, p, h0, dtype=np.float64)
    g = bw.backward(tape, dy)
    mod = torch.nn.RNN(10, 16, num_layers=2, nonlinearity=act).double()
    with torch.no_grad():
        for l, layer in enumerate(p.layers):
            for name, a in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), layer.arrays()):
                getattr(mod, f"{name}_l{l}").copy_(torch.from_numpy(a))
    tx, th = torch.from_numpy(x).requires_grad_(), torch.from_numpy(h0).requires_grad_()
    (mod(tx, th)[0] * torch.from_numpy(dy)).sum().backward()
    assert np.abs(g.x - tx.grad.numpy()).max() < 1e-10
    assert np.abs(g.h0 - th.grad.numpy()).max() < 1e-10
    for l in range(2):
        for ours, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_hh", "bias_hh")):
            assert np.abs(g.layers[l][ours] - getattr(mod, f"{theirs}_l{l}").grad.numpy()).max() < 1e-10


# -- generated kernels (GPU sources, CPU kernels) ------------------------------------------------
@pytest.mark.parametrize("act", ACTS)
def test_generated_cells_match_the_hand_written_stage(act):
    cell = ce.get(f"rnn_{act}")
    rng = np.random.default_rng(10)
    gx, gh = rng.standard_normal((5, 1, 33)), rng.standard_normal((5, 1, 33))
    bx, bh = rng.standard_normal((1, 33)), rng.standard_normal((1, 33))
    h_prev = rng.standard_normal((5, 33))
    from kernels.cells import NAIVE
    (want,) = NAIVE[f"rnn_{act}"](np, gx, gh, bx, bh, h_prev)
    (got,) = ce.numpy_step(cell)(np, gx, gh, bx, bh, h_prev)
    assert np.abs(got - want).max() < 1e-15
    out = np.empty((5, 33))
    ce.NumbaCell(cell)(np, gx, gh, bx, bh, h_prev, (), (), out, ())
    assert np.abs(out - want).max() < 1e-12
    src = ce.cuda_source(cell, prelude=False) + ce._CUDA_PRELUDE
    assert ("mbc::relu" in src) == (act == "relu")
    if act == "relu":
        assert "fmaxf(" not in src                 # fmaxf(NaN, 0) = 0 would hide a NaN


# -- CLI, frameworks ------------------------------------------------------------------------------
TINY = ["-H", "8", "-B", "3", "-T", "4", "--warmup", "0", "--min-time", "0", "--min-samples", "2", "--quiet"]


def test_rnn_command_with_torch_rows_and_skip_input(run_cli, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "r.jsonl"
    r = run_cli("rnn", "--all", "--nonlinearity", "relu", "--skip-input", "--backend", "numpy",
                "--frameworks", "torch,tensorflow", *TINY, "--json", str(out), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = {f"{x['variant']}/{x['backend']}": x for x in map(__import__("json").loads, out.read_text().splitlines())}
    for ours in ("naive/numpy", "fused/numpy"):
        assert recs[ours]["status"] == "ok"
        assert recs[ours]["options"] == {**recs[ours]["options"], "nonlinearity": "relu", "skip_input": True}
        assert recs[ours]["flops"] == 2 * 4 * 3 * 8 * 8          # recurrent GEMMs only
    for path in ("torch/fused", "torch/generic"):
        rec = recs[path]
        assert rec["status"] == "ok" and rec["check"]["passed"], rec["error"]
        assert "skip_input" not in rec["options"] and rec["label"].startswith("torch+input-gemm/")
        assert rec["flops"] == 2 * 2 * 4 * 3 * 8 * 8              # the whole layer
    assert recs["tensorflow/fused"]["status"] == "skipped"
    assert "no fused vanilla RNN op" in recs["tensorflow/fused"]["error"]
    if "tensorflow/generic" in recs and recs["tensorflow/generic"]["status"] != "skipped":
        rec = recs["tensorflow/generic"]        # Keras SimpleRNNCell(activation="relu")
        assert rec["status"] == "ok" and rec["check"]["passed"], rec["error"]
        assert rec["label"].startswith("tensorflow+input-gemm/")


# One row per framework with the tanh cell (test_frameworks.py runs every CPU path with ReLU), and
# the training steps of the frameworks that have one: each in a worker, against float64.
TANH_ROWS = [("tensorflow", "generic"), ("jax", "generic"), ("mxnet", "fused"), ("chainer", "generic")]


def _framework_python(fw):
    import importlib.util

    from microbench.cases import frameworks as fcases
    from microbench.frameworks import NUMPY1
    if fw in NUMPY1:
        py = fcases.default_python(fw)
        if not py:
            pytest.skip(f"no .venv-mxnet: run scripts/setup-mxnet to test {fw}")
        return py
    if importlib.util.find_spec(fw) is None:
        pytest.skip(f"{fw} is not importable here (pip install -e '.[frameworks]')")
    return None


def _framework_check(fw, path, act, backward=False):
    from microbench.cases import frameworks as fcases
    from microbench.problems import RNNProblem
    python = _framework_python(fw)
    problem = RNNProblem("rnn", T=5, B=3, I=7, H=6, L=2, nonlinearity=act)
    prepared = fcases.build_framework(problem, 1, framework=fw, path=path, device="cpu", precision="fp32",
                                      threads=1, python=python, backward=backward)
    try:
        check = prepared.check()
        assert check.passed, check.detail
        prepared.run()          # a second call must work too
        after = prepared.check()
        assert after.passed, after.detail
        return prepared.info
    finally:
        prepared.close()


@pytest.mark.parametrize("fw,path", TANH_ROWS, ids=[f"{f}-{p}" for f, p in TANH_ROWS])
def test_framework_tanh_rows_match_the_reference(fw, path):
    # (the ReLU rows of test_frameworks.py fail if an adapter ignores the activation it is sent)
    _framework_check(fw, path, "tanh")


@pytest.mark.parametrize("act", ACTS)
def test_jax_vanilla_training_step_matches_the_reference(act):
    pytest.importorskip("flax", reason="flax is not importable here")
    info = _framework_check("jax", "generic", act, backward=True)
    assert info["pass"] == "forward+backward" and "SimpleCell" in info["kernel"]


# Keras SimpleRNNCell under a GradientTape, and MXNet's fused RNN op in both modes (its ReLU rows
# and the unrolled cells are in test_frameworks.py)
VANILLA_TRAIN = [("tensorflow", "generic", "relu"), ("tensorflow", "generic", "tanh"), ("mxnet", "fused", "tanh"),
                 ("mxnet", "generic", "tanh")]


@pytest.mark.parametrize("fw,path,act", VANILLA_TRAIN, ids=[f"{f}-{p}-{a}" for f, p, a in VANILLA_TRAIN])
def test_framework_vanilla_training_step_matches_the_reference(fw, path, act):
    info = _framework_check(fw, path, act, backward=True)
    assert info["pass"] == "forward+backward" and "forward and backward" in info["kernel"]


@pytest.mark.parametrize("argv,msg", [
    (["rnn", "--nonlinearity", "sigmoid"], "invalid choice"),
    (["lstm", "--skip-input", "--cell", "layernorm"], "--skip-input applies to the plain cells"),
    (["gru", "--nonlinearity", "relu"], "unrecognized arguments"),
])
def test_rnn_bad_input(argv, msg, capsys):
    from microbench import cli
    assert cli.main(argv + TINY) == 2
    assert msg in capsys.readouterr().err


def test_cudnn_cell_modes_and_weight_slots():
    # values from cudnn_adv.h (cuDNN 9): CUDNN_RNN_RELU = 0, CUDNN_RNN_TANH = 1
    from kernels.cudnn import rnn as cr
    assert (cr.CUDNN_CELL["rnn_relu"], cr.CUDNN_CELL["rnn_tanh"]) == (0, 1)
    for act in ACTS:
        p = VanillaRNNParams.random(8, 8, 2, nonlinearity=act).astype(np.float32)
        cfg = cr.rnn_config(p, batch=2, seq_len=3)
        assert cfg.cell == f"rnn_{act}"
    slots = [(s.layer, s.lin_id, s.matrix, s.rows) for s in cr.weight_plan("rnn", 2, 8)]
    assert slots == [(0, 0, "w_ih", slice(0, 8)), (0, 1, "w_hh", slice(0, 8)),
                     (1, 0, "w_ih", slice(0, 8)), (1, 1, "w_hh", slice(0, 8))]


def test_gpu_variants_refuse_skip_input_with_the_reason():
    from kernels.errors import Unsupported
    from microbench.cases.cudnn import build_cudnn_rnn
    from microbench.cases.persistent import build_persistent
    from microbench.problems import RNNProblem
    prob = RNNProblem("lstm", 3, 2, 8, 8, skip_input=True)
    with pytest.raises(Unsupported, match="skip-input"):
        build_cudnn_rnn(prob, 0, algo="standard", precision="fp32")
    with pytest.raises(Unsupported, match="skip-input"):
        build_persistent(prob, 0, precision="fp32")


_SIM_SCRIPT = r"""
import json, sys
import numpy as np
from fusion import pointwise as fp
from kernels import cells
out = []
for act in ("relu", "tanh"):
    for B, H in ((1, 1), (3, 129)):
        rng = np.random.default_rng(B * H)
        gx = rng.standard_normal((B, 1, H)).astype(np.float32)
        gh = rng.standard_normal((B, 1, H)).astype(np.float32)
        b = rng.standard_normal((1, H)).astype(np.float32)
        h_prev = rng.standard_normal((B, H)).astype(np.float32)
        (want,) = cells.NAIVE["rnn_" + act](np, gx.astype(np.float64), gh.astype(np.float64), b, None, h_prev)
        h = np.full((B, H), np.nan, np.float32)
        fp.get("rnn_" + act, "numba-cuda")(np, gx, gh, b, None, h_prev, h)
        out.append(float(np.abs(h - want).max()))
print(json.dumps(out))
"""


def test_generated_gpu_provider_in_the_cuda_simulator():
    """The numba-cuda provider of the vanilla cell (fusion.pointwise.GeneratedRNN) on awkward
    sizes, in numba's CUDA simulator (a subprocess: the simulator replaces the real target)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("numba.cuda")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _SIM_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errs) == 4 and max(errs) < 1e-6, errs
