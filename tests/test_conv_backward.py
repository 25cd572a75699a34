"""Convolution backward-data and backward-weights (kernels.conv.backward): the float64 references
against PyTorch autograd and against the forward definition (adjoint identity), the im2col and
direct variants against the references in fp64 and fp32, ``conv --backward`` and the training
suite's three phases, each checked."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kernels.conv import ConvProblem, conv2d_reference
from kernels.conv import backward as cb
from kernels.errors import BadInput, Unsupported
from microbench import cli

GEOMETRIES = [
    ConvProblem(N=2, C=4, H=7, W=6, K=6, R=3, S=2, stride=(2, 1), pad=(1, 2), dilation=(1, 2), groups=2),
    ConvProblem(N=1, C=3, H=5, W=5, K=2, R=3, S=3, pad=1, layout="NHWC"),
    ConvProblem(N=2, C=3, H=7, W=7, K=4, R=1, S=1, pad=3, stride=2, bias=False),   # border sees padding only
    ConvProblem(N=1, C=2, H=4, W=9, K=3, R=5, S=2, stride=3, pad=(2, 0), layout="NHWC", groups=1),
]
IDS = ["groups-dilation", "nhwc", "1x1-pad3-s2", "nhwc-5x2-s3"]


def _inputs(p, seed=0):
    rng = np.random.default_rng(seed)
    x, w, b = p.random_inputs(rng, "fp64")
    return x, w, b, rng.standard_normal(p.y_shape)


@pytest.mark.parametrize("p", GEOMETRIES, ids=IDS)
def test_references_satisfy_the_adjoint_identity(p):
    # <conv(x, w, b), dy> is linear in x, in w and in b: its gradients are dx, dw, db
    x, w, b, dy = _inputs(p)
    dx = cb.conv2d_backward_data_reference(dy, w, p)
    dw, db = cb.conv2d_backward_weights_reference(x, dy, p)
    zero_b = np.zeros_like(b) if p.bias else None
    lhs_x = (conv2d_reference(x, w, zero_b, p) * dy).sum()
    assert np.isclose(lhs_x, (x * dx).sum(), rtol=1e-12) and np.isclose(lhs_x, (w * dw).sum(), rtol=1e-12)
    if p.bias:
        bias_part = ((conv2d_reference(x, w, b, p) - conv2d_reference(x, w, zero_b, p)) * dy).sum()
        assert np.isclose(bias_part, (b * db).sum(), rtol=1e-12)
    else:
        assert db is None


@pytest.mark.parametrize("p", GEOMETRIES, ids=IDS)
def test_references_match_torch_autograd(p):
    torch = pytest.importorskip("torch")
    x, w, b, dy = _inputs(p, 1)
    nchw = (lambda a: a) if p.layout == "NCHW" else (lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    tx = torch.tensor(nchw(x), requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if p.bias else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=p.stride, padding=p.pad, dilation=p.dilation, groups=p.groups)
    (ty * torch.tensor(nchw(dy))).sum().backward()
    dx = cb.conv2d_backward_data_reference(dy, w, p)
    dw, db = cb.conv2d_backward_weights_reference(x, dy, p)
    assert np.abs(nchw(dx) - tx.grad.numpy()).max() < 1e-12
    assert np.abs(dw - tw.grad.numpy()).max() < 1e-12
    if p.bias:
        assert np.abs(db - tb.grad.numpy()).max() < 1e-12


@pytest.mark.parametrize("p", GEOMETRIES, ids=IDS)
@pytest.mark.parametrize("variant", sorted(cb.BACKWARD))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_variants_match_the_references(p, variant, dtype, tol):
    x, w, b, dy = _inputs(p, 2)
    dx = cb.conv2d_backward_data_reference(dy, w, p)
    dw, db = cb.conv2d_backward_weights_reference(x, dy, p)
    x, w, dy = x.astype(dtype), w.astype(dtype), dy.astype(dtype)
    for _ in range(2):                           # a result wrong after the first call must fail
        got_dx = cb.backward(variant, "bwd_data", x, w, dy, p)
        got_dw, got_db = cb.backward(variant, "bwd_weights", x, w, dy, p)
        assert got_dx.dtype == dtype and got_dw.dtype == dtype and got_dx.shape == p.x_shape
        assert np.abs(got_dx - dx).max() <= tol * np.abs(dx).max()
        assert np.abs(got_dw - dw).max() <= tol * np.abs(dw).max()
        if p.bias:
            assert np.abs(got_db - db).max() <= tol * np.abs(db).max()


def test_bad_phase_variant_and_dtype():
    p = GEOMETRIES[0]
    x, w, b, dy = _inputs(p)
    with pytest.raises(BadInput, match="phase"):
        cb.backward("im2col", "bwd_input", x, w, dy, p)
    with pytest.raises(BadInput, match="winograd"):
        cb.backward("winograd", "bwd_data", x, w, dy, p)
    with pytest.raises(BadInput, match="dy has shape"):
        cb.backward("direct", "bwd_data", x, w, dy[:1], p)
    with pytest.raises(Unsupported, match="fp32, fp64"):
        cb.backward("im2col", "bwd_data", x, w, dy.astype(np.float16), p)


def test_conv_backward_command(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert cli.main(["conv", "--backward", "-N", "1", "-C", "4", "-H", "9", "-W", "7", "-K", "6", "--stride", "2",
                     "--warmup", "0", "--min-time", "0", "--min-samples", "2", "--quiet", "--json", str(out)]) == 0
    recs = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(recs) == {"im2col", "direct", "im2col+bwd_data", "im2col+bwd_weights",
                         "direct+bwd_data", "direct+bwd_weights"}
    for name, r in recs.items():
        assert r["status"] == "ok" and r["check"]["passed"], (name, r["error"])
    assert "dx" in recs["im2col+bwd_data"]["check"]["detail"] or recs["im2col+bwd_data"]["info"]["outputs"] == ["dx"]
    assert recs["direct+bwd_weights"]["info"]["outputs"] == ["dw", "db"]
    assert cli.main(["conv", "--backward", "--winograd", "--quiet"]) == 2
    assert "has no backward pass" in capsys.readouterr().err


def test_training_suite_times_three_phases_each_checked(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert cli.main(["suite", "deepbench-conv-train", "--only", "/008$", "--batch", "1", "--device", "cpu",
                     "--variants", "im2col,im2col+bwd_data,im2col+bwd_weights", "--json", str(out), "--quiet",
                     "--warmup", "0", "--min-time", "0", "--min-samples", "2", "--max-time", "0.5"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in recs] == ["im2col", "im2col+bwd_data", "im2col+bwd_weights"]
    for r in recs:
        assert r["status"] == "ok" and r["check"]["passed"]
        assert r["suite"] == {**r["suite"], "entry": "deepbench-conv-train/008", "table": "training_set", "row": 8}
    capsys.readouterr()


# -- framework rows: torch's backward phases (aten.convolution_backward), in a worker each ----------
TORCH_ROWS = [("fused", 0), ("fused", 2), ("generic", 1)]


@pytest.mark.parametrize("path,g", TORCH_ROWS, ids=[f"{p}-{IDS[g]}" for p, g in TORCH_ROWS])
def test_torch_backward_phases_match_the_references(path, g):
    pytest.importorskip("torch")
    from microbench.cases import frameworks as fcases
    p = GEOMETRIES[g]
    for phase, outputs in (("bwd_data", ["dx"]), ("bwd_weights", ["dw", "db"] if p.bias else ["dw"])):
        prepared = fcases.build_framework(p, 3, framework="torch", path=path, device="cpu", precision="fp32",
                                          threads=1, phase=phase)
        try:
            check = prepared.check()
            assert check.passed, (phase, check.detail)
            assert prepared.info["pass"] == phase and prepared.info["outputs"] == outputs
            assert phase in prepared.info["backward"]
            prepared.run()                  # a second call, read back through the worker
            after = prepared.check()
            assert after.passed, (phase, after.detail)
        finally:
            prepared.close()


# -- framework rows: TensorFlow's (Conv2DBackpropInput/Filter + BiasAddGrad), JAX's (jax.vjp),
# MXNet's (y.backward with gradients for one phase's inputs) and Chainer's
# (Convolution2DFunction.backward for one phase's inputs), in a worker each ----------------------
def _python_or_skip(framework):
    """The interpreter the framework's worker runs under (None: this one), or skip saying why."""
    import importlib.util
    from microbench.cases import frameworks as fcases
    from microbench.frameworks import NUMPY1
    if framework in NUMPY1:
        python = fcases.default_python(framework)
        if python is None:
            pytest.skip(f"no .venv-mxnet: run scripts/setup-mxnet to test {framework}")
        return python
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not importable here (pip install -e '.[frameworks]')")
    return None


# Per framework: groups with dilation (GEOMETRIES[0]) where its CPU op has them, no bias with
# padding wider than the kernel (2), NHWC with stride 3 (3); fp64 where the adapter runs it.
FRAMEWORK_ROWS = [("jax", 0, "fp32"), ("jax", 2, "fp32"), ("jax", 3, "fp64"),
                  ("tensorflow", 2, "fp32"), ("tensorflow", 3, "fp64"),
                  ("mxnet", 0, "fp32"), ("mxnet", 2, "fp32"), ("mxnet", 3, "fp32"),
                  ("chainer", 0, "fp32"), ("chainer", 2, "fp32"), ("chainer", 3, "fp64")]
# what each adapter says runs, per phase (info["backward"])
SAYS = {"jax": ("with respect to x ", "with respect to w"),
        "tensorflow": ("Conv2DBackpropInput", "Conv2DBackpropFilter"),
        "mxnet": ("gradients for x only", "gradients for w"),
        "chainer": ("target indexes [0]", "target indexes [1")}


@pytest.mark.parametrize("fw,g,precision", FRAMEWORK_ROWS, ids=[f"{f}-{IDS[g]}-{pr}" for f, g, pr in FRAMEWORK_ROWS])
def test_framework_backward_phases_match_the_references(fw, g, precision):
    from microbench.cases import frameworks as fcases
    python = _python_or_skip(fw)
    p = GEOMETRIES[g]
    for phase, outputs, says in zip(("bwd_data", "bwd_weights"), (["dx"], ["dw", "db"] if p.bias else ["dw"]),
                                    SAYS[fw]):
        prepared = fcases.build_framework(p, 3, framework=fw, path="fused", device="cpu", precision=precision,
                                          threads=1, python=python, phase=phase)
        try:
            check = prepared.check()
            assert check.passed, (phase, check.detail)
            assert prepared.info["pass"] == phase and prepared.info["outputs"] == outputs
            assert phase in prepared.info["backward"] and says in prepared.info["backward"]
            if fw == "tensorflow":
                assert ("BiasAddGrad" in prepared.info["kernel"]) == (p.bias and phase == "bwd_weights")
            if fw == "jax":     # one phase only: XLA dropped the unused forward convolution
                assert prepared.info["convolutions"] in (1, None)
            prepared.run()                  # a second call, read back through the worker
            after = prepared.check()
            assert after.passed, (phase, after.detail)
        finally:
            prepared.close()


@pytest.mark.parametrize("onednn_opts", [None, "0"], ids=["default", "TF_ENABLE_ONEDNN_OPTS=0"])
def test_tensorflow_conv_rows_skip_exactly_what_tensorflow_refuses_here(onednn_opts, monkeypatch):
    """Which of TensorFlow's CPU conv gradient kernels refuse dilation and groups depends on the
    build and the CPU (its oneDNN custom ops run both; TensorFlow's own kernels refuse both); the
    adapter asks TensorFlow by running the op, so a row is skipped, with TensorFlow's own message,
    exactly where TensorFlow itself refuses (tests/tf_probe.py asks it directly), and runs and
    passes its check elsewhere.  With the oneDNN ops off (TensorFlow's own kernels, as on an AVX2
    CPU by default) the refusing branch is taken on every machine."""
    pytest.importorskip("tensorflow")
    if onednn_opts is not None:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn_opts)
    from tf_probe import tensorflow_runs
    from microbench.cases import frameworks as fcases
    runs = tensorflow_runs()
    for p, phase, feature in (
            (ConvProblem(N=1, C=2, H=6, W=6, K=2, R=3, S=3, dilation=2), "bwd_data", "dilation"),
            (ConvProblem(N=1, C=2, H=6, W=6, K=2, R=3, S=3, dilation=2), "bwd_weights", "dilation"),
            (ConvProblem(N=1, C=4, H=6, W=6, K=4, R=3, S=3, groups=2), "bwd_data", "groups"),
            (ConvProblem(N=1, C=4, H=6, W=6, K=4, R=3, S=3, groups=2), "bwd_weights", "groups")):
        kw = dict(framework="tensorflow", path="fused", device="cpu", precision="fp32", threads=1, phase=phase)
        if not runs[(phase, feature)]:
            with pytest.raises(Unsupported, match=r"TensorFlow .* refuses Conv2DBackprop\w+.* for "
                                                  + ("dilation \\(2, 2\\)" if feature == "dilation" else "groups=2")):
                fcases.build_framework(p, 0, **kw)
            continue
        prepared = fcases.build_framework(p, 0, **kw)
        try:
            assert prepared.check().passed, (phase, feature)
        finally:
            prepared.close()


def test_conv_backward_command_with_framework_rows(tmp_path, capsys):
    import importlib.util
    pytest.importorskip("torch")
    out = tmp_path / "f.jsonl"
    # dilation 2: TensorFlow's CPU gradient ops refuse it, so its phase rows are skipped saying so
    assert cli.main(["conv", "--backward", "--direct", "--frameworks", "torch,tensorflow,jax", "-N", "1",
                     "-C", "3", "-H", "7", "-W", "6", "-K", "4", "--stride", "2", "--pad", "1", "--dilation", "2",
                     "--threads", "1", "--warmup", "0", "--min-time", "0", "--min-samples", "2", "--max-time", "0.5",
                     "--quiet", "--json", str(out)]) == 0
    recs = {f"{r['variant']}/{r['backend']}": r for r in map(json.loads, out.read_text().splitlines())}
    rows = [("torch", "fused"), ("torch", "generic")]
    if importlib.util.find_spec("jax") is not None:
        rows.append(("jax", "fused"))
    for fw, path in rows:
        for phase in ("bwd_data", "bwd_weights"):
            r = recs[f"{fw}/{path}+{phase}"]
            assert r["status"] == "ok" and r["check"]["passed"], (fw, r["error"])
            assert r["info"]["pass"] == phase and phase in r["info"]["backward"]
    if importlib.util.find_spec("tensorflow") is not None:
        # dilation 2: skipped with TensorFlow's own message where its CPU gradient kernels
        # refuse it (tests/tf_probe.py asks), checked and passed where they run it
        from tf_probe import tensorflow_runs
        for phase in ("bwd_data", "bwd_weights"):
            r = recs[f"tensorflow/fused+{phase}"]
            if tensorflow_runs()[(phase, "dilation")]:
                assert r["status"] == "ok" and r["check"]["passed"], r["error"]
            else:
                assert r["status"] == "skipped" and "refuses Conv2DBackprop" in r["error"], r["error"]
                assert "dilation (2, 2)" in r["error"]
        assert recs["tensorflow/fused"]["status"] == "ok"            # its forward row still runs
    capsys.readouterr()


def test_training_suite_adds_the_framework_phases(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "s.jsonl"
    assert cli.main(["suite", "deepbench-conv-train", "--only", "/008$", "--batch", "1", "--device", "cpu",
                     "--variants", "im2col", "--frameworks", "torch", "--json", str(out), "--quiet",
                     "--warmup", "0", "--min-time", "0", "--min-samples", "2", "--max-time", "0.5"]) == 0
    recs = {f"{r['variant']}/{r['backend']}": r for r in map(json.loads, out.read_text().splitlines())}
    for label in ("torch/fused", "torch/fused+bwd_data", "torch/fused+bwd_weights", "torch/generic+bwd_weights"):
        r = recs[label]
        assert r["status"] == "ok" and r["check"]["passed"], (label, r["error"])
        assert r["suite"]["entry"] == "deepbench-conv-train/008"
    capsys.readouterr()
