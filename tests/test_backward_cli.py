"""``--backward`` and the framework layer-norm rows: our training-step cases, the gradient check
(it must fail on a wrong gradient), the frameworks' layer-norm LSTMs and training steps against
the float64 references, and the CLI (rows, JSON records, bad input)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kernels.custom import LayerNormLSTMParams
from kernels.errors import BadInput, Unsupported
from kernels.params import GRUParams, LSTMParams, VanillaRNNParams
from microbench import cli
from microbench.cases import backward as bwc
from microbench.cases import frameworks as fcases
from microbench.frameworks import convert
from microbench.harness import Settings
from microbench.problems import RNNProblem

TINY = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2",
        "--max-time", "0.2"]
CELLS = [("lstm", "plain"), ("gru", "plain"), ("lstm", "layernorm")]
IDS = ["lstm", "gru", "layernorm"]


def _problem(op, T=4, B=3, I=5, H=6, L=2):
    return RNNProblem(op, T, B, I, H, L)


# -- our training-step cases -----------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("op,cell", CELLS, ids=IDS)
def test_backward_case_passes_its_check(op, cell, precision):
    problem = _problem(op)
    prepared = bwc.build_backward(problem, 0, cell=cell, backend="numpy", precision=precision)
    check = prepared.check()
    assert check.passed, check.detail
    assert prepared.flops == 3 * problem.flops()
    assert prepared.info["pass"] == "forward+backward"
    y, g = prepared.run()
    names = convert.grad_names(bwc.grad_op(problem, cell), problem.L)
    assert len(bwc.flatten_grads(bwc.grad_op(problem, cell), y, g)) == len(names)


NUMBA_ROWS = [("lstm", "plain", False), ("gru", "plain", False), ("rnn", "plain", False), ("lstm", "plain", True),
              ("gru", "plain", True), ("lstm", "layernorm", False)]


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("op,cell,skip", NUMBA_ROWS, ids=["lstm", "gru", "rnn", "lstm-skip", "gru-skip", "layernorm"])
def test_numba_backward_case_passes_its_check(op, cell, skip, precision):
    """The compiled training step (kernels.train) through the case builder the CLI times: two
    layers, checked twice (the buffers are reused), on a timed call's outputs too."""
    problem = RNNProblem(op, 4, 3, 5, 6, 2, skip_input=skip)
    prepared = bwc.build_backward(problem, 0, cell=cell, backend="numba", precision=precision)
    for _ in range(2):
        check = prepared.check()
        assert check.passed, check.detail
    assert prepared.check(prepared.run()).passed
    assert ("compiled" in prepared.info["step_loop"]) == (precision == "fp32")
    prepared.close()
    with pytest.raises(BadInput, match="--backward runs on backend numpy, numba, not 'onednn'"):
        bwc.build_backward(problem, 0, cell=cell, backend="onednn", precision=precision)


@pytest.mark.parametrize("op,cell", CELLS, ids=IDS)
def test_a_wrong_gradient_fails_the_check(op, cell):
    problem = _problem(op)
    prepared = bwc.build_backward(problem, 0, cell=cell, backend="numpy", precision="fp32")
    gop = bwc.grad_op(problem, cell)
    good = bwc.flatten_grads(gop, *prepared.run())
    names = convert.grad_names(gop, problem.L)
    assert bwc.check_grads(good, problem, 0, "fp32", cell).passed
    for name in ("dx", "dh0", "dw_hh1", "db_ih0") + (("dlnh_g0", "dlnc_b1") if cell == "layernorm" else ()):
        k = names.index(name)
        bad = list(good)
        bad[k] = bad[k] * 1.001                 # 0.1 % off: far beyond fp32 rounding
        check = bwc.check_grads(bad, problem, 0, "fp32", cell)
        assert not check.passed and check.detail.startswith(name), (name, check)
    # a transposed gate block (the bug a constant dY would hide)
    k = names.index("dw_ih0")
    H = problem.H
    swapped = good[k].copy()
    swapped[:H], swapped[H:2 * H] = good[k][H:2 * H], good[k][:H]
    assert not bwc.check_grads([*good[:k], swapped, *good[k + 1:]], problem, 0, "fp32", cell).passed
    nan = list(good)
    nan[1] = good[1].copy()
    nan[1].flat[0] = np.nan
    assert "NaN" in bwc.check_grads(nan, problem, 0, "fp32", cell).detail
    assert not bwc.check_grads(good[:-1], problem, 0, "fp32", cell).passed


def test_upstream_gradient_is_fresh_random_and_seeded():
    p = _problem("lstm")
    dy = bwc.upstream_grad(p, 0, "fp32")
    assert dy.shape == (p.T, p.B, p.H) and dy.dtype == np.float32
    assert np.std(dy) > 0.5 and not np.allclose(dy, dy.flat[0])
    np.testing.assert_array_equal(dy, bwc.upstream_grad(p, 0, "fp32"))
    assert not np.array_equal(dy, bwc.upstream_grad(p, 1, "fp32"))


def test_tolerance_is_the_precision_one_where_well_conditioned():
    names, ref, tols = bwc.reference_grads(RNNProblem("lstm", 10, 8, 64, 64, 1), 0, "fp32", "plain")
    assert names[:4] == ("y", "dx", "dh0", "dc0") and len(ref) == len(tols) == len(names)
    assert all(t == 1e-5 for t in tols)
    _, _, tols = bwc.reference_grads(_problem("lstm"), 0, "fp32", "layernorm")
    assert all(t >= 1e-5 for t in tols)


def test_chaotic_layernorm_sizes_pass_with_measured_tolerance_and_wrong_results_still_fail():
    """At T=100 the seeded layer-norm LSTM amplifies one fp32 rounding ~1e3-fold: correct fp32
    rows are off by more than 1e-5 and must pass; a result 1 % off must still fail."""
    from microbench.cases import custom as ccases
    problem = RNNProblem("lstm", 100, 4, 64, 64, 1)
    fwd = ccases.build_custom(problem, 0, cell="layernorm", variant="fused", backend="numpy", precision="fp32")
    check = fwd.check()
    assert check.passed and check.max_rel_err > 1e-5 and check.tol > 1e-5, check
    y, (h, c) = fwd.run()
    assert not ccases.check_custom([y * 1.01, h, c], problem, 0, "fp32", "layernorm").passed
    train = bwc.build_backward(problem, 0, cell="layernorm", backend="numpy", precision="fp32")
    check = train.check()
    assert check.passed and check.tol > 1e-5, check
    good = bwc.flatten_grads("layernorm", *train.run())
    assert not bwc.check_grads([good[0], good[1] * 1.01, *good[2:]], problem, 0, "fp32", "layernorm").passed


# -- conversions (NumPy only) ----------------------------------------------------------------------

def test_layernorm_extra_names_match_the_cell_declaration():
    assert convert.LAYERNORM_EXTRAS == tuple(p for p, _ in LayerNormLSTMParams.expr.params)
    p = LayerNormLSTMParams.random(3, 4, 2, seed=0)
    back = convert.unpack_extras(convert.pack_extras(p.extras))
    for got, want in zip(back, p.extras):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_grads_from_flax_is_the_adjoint_of_to_flax(cell):
    """to_flax is linear in the canonical weights, so for any flax-shaped G and canonical V,
    <G, to_flax(V)> = <grads_from_flax(G), V> (the chain rule the jax rows rely on)."""
    params = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams}[cell]
    rng = np.random.default_rng(0)
    V = params.random(5, 4, 1, seed=1).layers[0].arrays()
    G = {k: {n: rng.standard_normal(np.shape(a)) for n, a in d.items()}
         for k, d in convert.to_flax(V, cell).items()}
    fv = convert.to_flax(V, cell)
    lhs = sum(float(np.sum(G[k][n] * np.asarray(fv[k][n]))) for k in G for n in G[k])
    rhs = sum(float(np.sum(g * v)) for g, v in zip(convert.grads_from_flax(G, cell), V))
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_grads_from_keras_is_the_adjoint_of_to_keras(cell):
    """As for Flax: <G, to_keras(V)> = <grads_from_keras(G), V> for Keras-shaped G (the
    tensorflow generic rows map the tape's variable gradients back with it)."""
    params = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams}[cell]
    rng = np.random.default_rng(0)
    V = params.random(5, 4, 1, seed=1).layers[0].arrays()
    kv = convert.to_keras(V, cell)
    G = [rng.standard_normal(np.shape(a)) for a in kv]
    lhs = sum(float(np.sum(g * np.asarray(a))) for g, a in zip(G, kv))
    rhs = sum(float(np.sum(g * v)) for g, v in zip(convert.grads_from_keras(G, cell), V))
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


def test_grads_from_tfblock_is_the_adjoint_of_to_tfblock():
    rng = np.random.default_rng(0)
    V = LSTMParams.random(5, 4, 1, seed=1).layers[0].arrays()
    w, b = convert.to_tfblock(V)
    gw, gb = rng.standard_normal(w.shape), rng.standard_normal(b.shape)
    lhs = float(np.sum(gw * w) + np.sum(gb * b))
    rhs = sum(float(np.sum(g * v)) for g, v in zip(convert.grads_from_tfblock(gw, gb, 5), V))
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


def test_grad_names():
    assert convert.grad_names("gru", 1) == ["y", "dx", "dh0", "dw_ih0", "dw_hh0", "db_ih0", "db_hh0"]
    names = convert.grad_names("layernorm", 2)
    assert names[:4] == ["y", "dx", "dh0", "dc0"] and len(names) == 4 + 2 * 10 and names[-1] == "dlnc_b1"


# -- framework rows without a worker: skips and their reasons --------------------------------------

@pytest.mark.parametrize("fw", ["tensorflow", "mxnet"])
def test_frameworks_without_the_path_are_skipped_rows(fw, monkeypatch):
    p = _problem("lstm")
    with pytest.raises(Unsupported, match="no layer-norm LSTM"):
        fcases.build_framework(p, 0, framework=fw, path="layernorm", device="cpu", precision="fp32",
                               cell="layernorm")
    # every adapter has a training step now; one left out of TRAINING_FRAMEWORKS is a skipped row
    monkeypatch.setattr(fcases, "TRAINING_FRAMEWORKS", tuple(f for f in fcases.TRAINING_FRAMEWORKS if f != fw))
    with pytest.raises(Unsupported, match=f"the {fw} adapter times the forward pass only; training-step rows: torch"):
        fcases.build_framework(p, 0, framework=fw, path="generic", device="cpu", precision="fp32",
                               backward=True)


def test_framework_case_labels():
    p = _problem("lstm")
    labels = [c.label for c in fcases.framework_cases("lstm", p, "all", "cpu", ["fp32"], cell="layernorm")]
    assert labels == ["torch/eager", "torch/compile", "tensorflow/layernorm", "jax/scan", "mxnet/layernorm",
                      "chainer/layernorm"]
    labels = [c.label for c in fcases.framework_cases("lstm", p, "torch,jax", "cpu", ["fp32"],
                                                      cell="layernorm", backward=True)]
    assert labels == ["torch/eager+bwd", "torch/compile+bwd", "jax/scan+bwd"]
    labels = [c.label for c in fcases.framework_cases("gru", _problem("gru"), "torch,jax", "cpu", ["fp32"],
                                                      backward=True)]
    assert labels == ["torch/fused+bwd", "torch/generic+bwd", "jax/fused+bwd", "jax/generic+bwd"]
    labels = [c.label for c in fcases.framework_cases("lstm", p, "tensorflow,mxnet", "cpu", ["fp32"],
                                                      backward=True)]
    assert labels == ["tensorflow/fused+bwd", "tensorflow/generic+bwd", "mxnet/fused+bwd", "mxnet/generic+bwd"]


# -- framework rows against the float64 references (a worker each) ---------------------------------

def _framework_row(fw, problem, path, **kw):
    prepared = fcases.build_framework(problem, 1, framework=fw, path=path, device="cpu",
                                      precision="fp32", threads=1, **kw)
    try:
        check = prepared.check()
        assert check.passed, check.detail
        # time it too: a run that works once but not twice must fail here
        m = prepared.measure(Settings(0.0, 0.0, 1.0, 2, 1.0))
        assert m.n >= 2 and m.median > 0
        return prepared.info
    finally:
        prepared.close()


LN_ROWS = [("torch", "eager", False), ("torch", "compile", False), ("jax", "scan", False),
           ("torch", "eager", True), ("torch", "compile", True), ("jax", "scan", True)]


@pytest.mark.parametrize("fw,path,backward", LN_ROWS,
                         ids=[f"{f}-{p}{'-bwd' if b else ''}" for f, p, b in LN_ROWS])
def test_framework_layernorm_rows_match_the_reference(fw, path, backward):
    pytest.importorskip(fw, reason=f"{fw} is not importable here (pip install -e '.[frameworks]')")
    if fw == "jax":
        pytest.importorskip("flax", reason="flax is not importable here")
    info = _framework_row(fw, _problem("lstm", T=5, B=3, I=7, H=6, L=2), path, cell="layernorm",
                          backward=backward)
    assert info["cell"] == "layernorm" and info["pass"] == ("forward+backward" if backward else "forward")


TRAIN_ROWS = [("torch", "lstm", "fused", 2), ("torch", "lstm", "generic", 2), ("torch", "gru", "fused", 2),
              ("torch", "gru", "generic", 2), ("jax", "lstm", "generic", 2), ("jax", "gru", "generic", 2),
              # BlockLSTMV2 through the gradient that matches its gate layout (see _block_lstm), and Keras
              ("tensorflow", "lstm", "fused", 1), ("tensorflow", "lstm", "fused", 2),
              ("tensorflow", "lstm", "generic", 2), ("tensorflow", "gru", "generic", 1),
              ("tensorflow", "gru", "generic", 2)]


@pytest.mark.parametrize("fw,op,path,L", TRAIN_ROWS, ids=[f"{f}-{o}-{p}-L{n}" for f, o, p, n in TRAIN_ROWS])
def test_framework_training_steps_match_the_reference(fw, op, path, L):
    pytest.importorskip(fw, reason=f"{fw} is not importable here (pip install -e '.[frameworks]')")
    if fw == "jax":
        pytest.importorskip("flax", reason="flax is not importable here")
    info = _framework_row(fw, _problem(op, T=5, B=3, I=7, H=6, L=L), path, backward=True)
    assert info["pass"] == "forward+backward"


def test_tensorflow_training_rows_without_a_path_say_why():
    """TF has no fused GRU, and BlockLSTMV2 no double kernel: skipped rows with the reason."""
    pytest.importorskip("tensorflow", reason="tensorflow is not importable here (pip install -e '.[frameworks]')")
    with pytest.raises(Unsupported, match="no fused GRU sequence op"):
        fcases.build_framework(_problem("gru"), 1, framework="tensorflow", path="fused", device="cpu",
                               precision="fp32", backward=True)
    with pytest.raises(Unsupported, match="BlockLSTMV2 runs half and float only; not fp64"):
        fcases.build_framework(_problem("lstm"), 1, framework="tensorflow", path="fused", device="cpu",
                               precision="fp64", threads=1, backward=True)


def test_torch_compile_failure_is_a_skip(monkeypatch):
    """Where torch.compile cannot compile (no C++ compiler, say), the row is skipped with the
    reason, not a crash (the adapter runs in-process here, with torch.compile replaced)."""
    torch = pytest.importorskip("torch", reason="torch is not importable here")
    from microbench.frameworks import torch_adapter

    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return call
    grad = torch.is_grad_enabled()
    try:
        torch_adapter.setup(None, "cpu")
        monkeypatch.setattr(torch, "compile", broken_compile)
        p = LayerNormLSTMParams.random(4, 3, 1, seed=0)
        rng = np.random.default_rng(0)
        arrays = {"x": rng.standard_normal((2, 2, 4)), "h0": rng.standard_normal((1, 2, 3)),
                  "c0": rng.standard_normal((1, 2, 3)), "ln_eps": np.float64(1e-5),
                  **convert.pack_layers([layer.arrays() for layer in p.layers]),
                  **convert.pack_extras(p.extras)}
        with pytest.raises(torch_adapter.Unsupported, match="torch.compile failed here.*C\\+\\+ compiler"):
            torch_adapter.build("layernorm", "compile", "cpu", "fp32", arrays)
    finally:
        torch.set_grad_enabled(grad)


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_backward_rows_and_json(run_cli, tmp_path):
    out = tmp_path / "b.jsonl"
    for op in ("lstm", "gru"):
        r = run_cli(op, "--backward", *TINY, "--json", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "fused+bwd/numpy" in r.stdout and "fwd+bwd" in r.stdout
    r = run_cli("lstm", "--cell", "layernorm", "--backward", *TINY, "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "layernorm-fused+bwd/numba" in r.stdout and "[layernorm] fwd+bwd" in r.stdout
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["op"], r["variant"], r["backend"]) for r in recs] == [
        ("lstm", "fused+bwd", "numpy"), ("lstm", "fused+bwd", "numba"), ("gru", "fused+bwd", "numpy"),
        ("gru", "fused+bwd", "numba"), ("lstm", "layernorm-fused+bwd", "numpy"),
        ("lstm", "layernorm-fused+bwd", "numba")]
    for rec in recs:
        assert rec["status"] == "ok" and rec["check"]["passed"]
        assert rec["info"]["pass"] == "forward+backward"
    assert "compiled" in recs[1]["info"]["step_loop"] and "compiled" in recs[3]["info"]["step_loop"]
    assert recs[0]["flops"] == 3 * RNNProblem("lstm", 3, 2, 8, 8).flops()


def test_help_documents_backward(run_cli):
    for op in ("lstm", "gru"):
        r = run_cli(op, "--help")
        assert r.returncode == 0 and "--backward" in r.stdout and "3x the" in r.stdout


BAD = [
    (["lstm", "--backward", "--naive"], "--backward: only the fused variant has a backward pass, not 'naive'"),
    (["lstm", "--cell", "layernorm", "--backward", "--naive"], "only the fused variant"),
    (["gru", "--backward", "--device", "cuda"], "--backward runs on the CPU only"),
    (["gru", "--backward", "--backend", "onednn"],
     "--backward runs on backend numpy, numba (numpy: kernels.backward; numba: kernels.train), not 'onednn'"),
    (["lstm", "--backward", "--cell", "peephole"], "kernels.backward has no peephole LSTM"),
    (["lstm", "--backward", "--ladder"], "--backward times one arrangement"),
    (["lstm", "--backward", "--dtype", "bf16"], "--backward computes fp32, fp64, not bf16"),
    (["lstm", "--cell", "peephole", "--frameworks", "torch"], "the frameworks have no peephole LSTM path"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_backward_input_is_one_line_exit_2(argv, message, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("microbench: error: ") and message in err


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_readme_target_command_runs(backward, run_cli, tmp_path):
    """python -m microbench lstm --cell layernorm --all --frameworks torch,jax [--backward]."""
    pytest.importorskip("torch", reason="torch is not importable here")
    pytest.importorskip("jax", reason="jax is not importable here")
    out = tmp_path / "t.jsonl"
    r = run_cli("lstm", "--cell", "layernorm", "--all", "--frameworks", "torch,jax",
                *(["--backward"] if backward else []), *TINY, "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    suffix = "+bwd" if backward else ""
    labels = {rec["label"] for rec in recs}
    assert {f"torch/eager{suffix}", f"torch/compile{suffix}", f"jax/scan{suffix}"} <= labels
    for rec in recs:
        if rec["label"] == f"torch/compile{suffix}" and rec["status"] == "skipped":
            assert "torch.compile failed here" in rec["error"]
            continue
        assert rec["status"] == "ok" and rec["check"]["passed"], rec["label"]
