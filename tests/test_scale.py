"""Scaling out on torch.distributed: ``allreduce`` and ``scale`` under torchrun (gloo on the CPU),
the gradient check of a data-parallel step, bucketing, and failures that must end, not hang."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels.errors import BadInput

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from microbench import scaling  # noqa: E402
from microbench.commands import allreduce as mallreduce  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch build has no torch.distributed gloo backend")
TINY = ["-T", "4", "-B", "4", "-H", "8", "-L", "2", "--steps", "3", "--warmup", "1"]


def validate(recs: list) -> None:
    """Records of allreduce and scale follow microbench.result/1 (compare and report read them)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "microbench" / "schema" / "result-v1.json").read_text())
    from microbench import store
    for rec in recs:
        jsonschema.validate(rec, schema)
        assert store.problem(rec, current=True) is None, rec    # the readers' rules too


def torchrun(*args, nproc=2, env=None, timeout=240, cwd=ROOT):
    """``torchrun --standalone --nproc-per-node N -m microbench ...`` (a free port per run)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    e.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "microbench", *args]
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


SHRINK = {"allreduce": ["--sizes", "1000", "--iters", "2", "--dtype", "fp32"],
          "suite": ["--only", "lstm-h128", "--backend", "numpy", "--warmup", "0", "--min-time", "0.01",
                    "--min-samples", "3", "--max-time", "0.1"]}


def test_readme_scale_examples_run(tmp_path, run_cli):
    """The README's scaling-out block, in order, with tiny sizes (later flags override earlier)."""
    import re
    import shlex
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- scale-examples -->\s*```\w*\n(.*?)```", readme, re.S).group(1)
    lines = [x for x in block.splitlines() if x.strip()]
    assert any(x.startswith("torchrun") for x in lines) and any("--shard" in x for x in lines)
    for line in lines:
        argv = shlex.split(line.split("#")[0])
        if argv[0] == "torchrun":
            args = argv[argv.index("microbench") + 1:]
            if args[:2] == ["scale", "lstm"]:
                extra = [*TINY, "--scaling", "weak"]
            elif args[:2] == ["scale", "conv"]:           # also: conv under torchrun, its records
                extra = ["-B", "2", "-C", "4", "-H", "6", "-W", "6", "-K", "4", "--steps", "2", "--warmup", "0",
                         "--scaling", "weak", "--json", "conv.jsonl"]
            else:
                extra = SHRINK[args[0]]
            r = torchrun(*args, *extra, cwd=tmp_path)
        else:
            assert argv[:3] == ["python3", "-m", "microbench"]
            args = argv[3:]
            r = run_cli(*args, *SHRINK.get(args[0], []), cwd=tmp_path)
        assert r.returncode == 0, f"{line}\n--- stdout ---\n{r.stdout[-2000:]}\n--- stderr ---\n{r.stderr[-4000:]}"
        assert "Traceback" not in r.stderr
    recs = [json.loads(x) for x in (tmp_path / "conv.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(x["status"] == "ok" and x["check"]["passed"] for x in recs)
    assert {x["op"] for x in recs} == {"scale-conv"} and {x["shape"]["N"] for x in recs} == {2, 4}
    assert {x["shape"]["C"] for x in recs} == {4}                   # explicit sizes override --layer
    validate(recs)


# -- allreduce -------------------------------------------------------------------------------------


def test_deepbench_sizes_and_nccl_tests_bandwidths():
    # baidu-research/DeepBench code/kernels/all_reduce_problems.h
    assert mallreduce.DEEPBENCH_SIZES == (100000, 3097600, 4194304, 6553600, 16777217, 38360000, 64500000)
    assert mallreduce.parse_sizes("deepbench") == list(mallreduce.DEEPBENCH_SIZES)
    assert mallreduce.parse_sizes("100000, 4M,2k") == [100000, 4_000_000, 2000]
    algbw, busbw = mallreduce.bandwidths(4_000_000, 1e-3, 4)
    assert algbw == pytest.approx(4.0) and busbw == pytest.approx(4.0 * 2 * 3 / 4)
    assert mallreduce.bandwidths(1000, 1e-6, 1)[1] == 0.0
    for bad in ("0", "x", "-5", ","):
        with pytest.raises(BadInput):
            mallreduce.parse_sizes(bad)
    with pytest.raises(BadInput, match="allowed: fp32, bf16"):
        mallreduce.parse_dtypes("int8")


def test_allreduce_over_two_ranks_prints_the_bandwidth_table(tmp_path):
    out = tmp_path / "ar.jsonl"
    r = torchrun("allreduce", "--device", "cpu", "--sizes", "100000,3000", "--dtype", "fp32,bf16",
                 "--iters", "5", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "all-reduce (sum) over 2 rank(s), gloo on cpu" in r.stdout
    for col in ("algbw GB/s", "busbw GB/s", "#wrong"):
        assert col in r.stdout
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 4 and {x["dtype"] for x in recs} == {"fp32", "bf16"}
    validate(recs)
    for x in recs:
        d = x["derived"]
        assert x["status"] == "ok" and x["check"]["passed"] and x["shape"]["ranks"] == 2
        assert x["bytes"] == x["shape"]["count"] * (4 if x["dtype"] == "fp32" else 2)
        assert d["algbw_gbps"] == pytest.approx(x["bytes"] / d["time_s"] / 1e9)
        assert d["busbw_gbps"] == pytest.approx(d["algbw_gbps"])          # 2(n-1)/n = 1 at n = 2
        assert x["host"] and x["device_index"] is None


# -- scale -----------------------------------------------------------------------------------------


def test_scale_lstm_under_torchrun_checks_gradients_and_prints_the_table(tmp_path):
    out = tmp_path / "s.jsonl"
    r = torchrun("scale", "lstm", "--device", "cpu", *TINY, "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout
    assert "2 rank(s), gloo on cpu" in text
    for col in ("forward", "backward", "all-reduce", "exposed", "efficiency", "samples/s"):
        assert col in text
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    # ours and ddp, weak and strong, n = 1 and 2: every one checked and timed
    assert len(recs) == 8 and all(x["status"] == "ok" and x["check"]["passed"] for x in recs)
    validate(recs)
    assert {(x["variant"], x["options"]["scaling"], x["shape"]["ranks"]) for x in recs} == \
        {(i, m, n) for i in ("ours", "ddp") for m in ("weak", "strong") for n in (1, 2)}
    for x in recs:
        assert x["check"]["max_rel_err"] < 1e-4
        ph = x["info"]["phases"]
        assert {"forward", "backward", "exposed", "allreduce", "step"} <= set(ph)
        eff = x["info"]["efficiency"]
        assert eff is not None and (x["shape"]["ranks"] > 1 or eff == pytest.approx(1.0))
        if x["options"]["scaling"] == "strong":
            assert x["shape"]["global_batch"] == 4
        else:
            assert x["shape"]["B"] == 4


def test_scale_without_torchrun_is_one_rank(run_cli):
    r = run_cli("scale", "gru", "--device", "cpu", *TINY, "--impl", "ours", "--scaling", "weak")
    assert r.returncode == 0, r.stderr
    assert "not started by torchrun" in r.stderr and "ok (" in r.stdout


@pytest.mark.parametrize("fault,words", [("1:hang@step", "process-group timeout of 5 s"),
                                         ("1:die@step", "died")])
def test_a_rank_that_hangs_or_dies_ends_the_run_with_a_message(fault, words):
    r = torchrun("scale", "gru", "--device", "cpu", "-T", "3", "-B", "2", "-H", "8", "-L", "1", "--steps", "2",
                 "--impl", "ours", "--scaling", "weak", "--ranks", "2", "--timeout", "5",
                 env={"MICROBENCH_FAULT": fault}, timeout=180)
    assert r.returncode != 0
    line = next(x for x in r.stderr.splitlines() if x.startswith("microbench: error: rank 0 of 2"))
    assert words in line and "ours weak n=2" in line


@pytest.mark.parametrize("args,words", [(["--ranks", "3"], "allowed: 1..1"), (["--scaling", "both"], "allowed: weak"),
                                        (["--impl", "horovod"], "allowed: ours, ddp"), (["-B", "0"], "-B 0"),
                                        (["--bucket-mb", "0"], "--bucket-mb"),
                                        (["--dist-backend", "mpi"], "invalid choice"),
                                        (["--device", "cuda:7"], "cuda:7")])
def test_scale_bad_input_is_one_line(args, words, run_cli):
    r = run_cli("scale", "lstm", "--device", "cpu", *TINY, *args)     # a later --device wins
    assert r.returncode == 2, r.stdout
    assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr


def test_strong_scaling_needs_a_divisible_batch():
    cfgs = scaling.plan(4, [1, 3], ["strong", "weak"], ["ours"], "lstm", 4)
    reasons = {(c.mode, c.n): why for c, why in cfgs}
    assert reasons[("strong", 3)] and "not divisible" in reasons[("strong", 3)]
    assert reasons[("weak", 3)] is None and reasons[("strong", 1)] is None
    assert [c.n for c, _ in scaling.plan(6, None, ["weak"], ["ours"], "gru", 2)] == [1, 2, 4, 6]


def _rank_outputs(problem, seed, n, r, b, *, average=True):
    """What a correct rank holds after a data-parallel step, computed in float64 without torch."""
    from kernels import backward as bw
    from microbench.cases.backward import flatten_grads
    ys, grads = [], []
    for k in range(n):
        inp = scaling.rank_inputs(problem, seed, "fp64", k, b)
        y, _, tape = bw.forward_train(inp["x"], inp["params"], inp["h0"], inp["c0"], dtype=np.float64)
        g = bw.backward(tape, inp["dy"])
        ys.append(y)
        grads.append(g)
    mine = grads[r]
    for l, layer in enumerate(mine.layers):
        for name in layer:
            total = sum(g.layers[l][name] for g in grads)
            layer[name] = total / n if average else total
    return flatten_grads(problem.op, ys[r], mine)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradient_check_of_a_data_parallel_step(cell):
    """Correct rank outputs pass; a missing average, or another rank's slice, fails."""
    n, b = 2, 3
    problem = scaling.global_problem(cell, 5, 6, 7, 2, n * b)
    for r in range(n):
        good = _rank_outputs(problem, 0, n, r, b)
        assert scaling.check_outputs(good, problem, 0, "fp64", r, b, n).passed
    summed = _rank_outputs(problem, 0, n, 0, b, average=False)
    assert not scaling.check_outputs(summed, problem, 0, "fp64", 0, b, n).passed
    other = _rank_outputs(problem, 0, n, 1, b)
    assert not scaling.check_outputs(other, problem, 0, "fp64", 0, b, n).passed


def test_buckets_follow_backward_order_and_the_cap():
    from kernels import LSTMParams
    p = LSTMParams.random(8, 16, num_layers=3, seed=0)
    per_layer = sum(a.nbytes for a in p.layers[0].arrays()[1:]) + p.layers[0].arrays()[0].nbytes
    bk = scaling.Buckets.__new__(scaling.Buckets)
    # without a process group: only the layout (the constructor needs torch tensors, not a group)
    bk.__init__(p, per_layer, None, 2, np, np.float32, torch.device("cpu"))
    order = [l for bucket in bk.buckets for l, _, _ in bucket]
    assert order == sorted(order, reverse=True)                  # last layer first, as backward ends
    assert all(sum(int(np.prod(s)) * 4 for _, _, s in bucket) <= per_layer for bucket in bk.buckets)
    assert sum(len(b) for b in bk.buckets) == 12
    big = scaling.Buckets(p, 1 << 30, None, 2, np, np.float32, torch.device("cpu"))
    assert len(big.buckets) == 1


@pytest.mark.gpu
def test_scale_and_allreduce_on_gpus_with_nccl(tmp_path):
    n = torch.cuda.device_count()
    if n < 1:
        pytest.skip("torch sees no GPU")
    nproc = min(n, 2)
    r = torchrun("allreduce", "--device", "cuda", "--sizes", "100000,4194304", "--iters", "5", nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("nccl on cuda" if dist.is_nccl_available() else "gloo on cuda") in r.stdout
    r = torchrun("scale", "lstm", "--device", "cuda", *TINY, nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FAILED" not in r.stdout


# -- conv --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geom", [dict(N=2, C=4, H=7, W=6, K=6, R=3, S=2, stride=(2, 1), pad=(1, 0), dilation=(1, 2),
                                       groups=2),
                                  dict(N=3, C=3, H=5, W=5, K=4, R=1, S=1, layout="NHWC"),
                                  dict(N=1, C=2, H=6, W=6, K=3, R=3, S=3, pad=1, bias=False)])
def test_conv_backward_matches_torch_autograd_and_finite_differences(geom):
    from kernels.conv import ConvProblem, conv2d_reference
    from kernels.conv import train as cbw
    p = ConvProblem(**geom)
    x, w, b = p.random_inputs(np.random.default_rng(1), "fp64")
    dy = np.random.default_rng(2).standard_normal(p.y_shape)
    y, tape = cbw.forward_train(x, w, b, p)
    g = cbw.backward(tape, dy)
    np.testing.assert_allclose(y, conv2d_reference(x, w, b, p), rtol=1e-12, atol=1e-12)
    ref = scaling._torch_conv_step(p, x, w, b, dy)
    np.testing.assert_allclose(g["x"], ref[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g["w"], ref[2], rtol=1e-10, atol=1e-12)
    if p.bias:
        np.testing.assert_allclose(g["b"], ref[3], rtol=1e-10, atol=1e-12)
    else:
        assert g["b"] is None
    # one weight and one input element by central differences of sum(y * dy)
    loss = lambda xx, ww: float(np.sum(conv2d_reference(xx, ww, b, p) * dy))  # noqa: E731
    eps = 1e-6
    for arr, grad, which in ((w, g["w"], "w"), (x, g["x"], "x")):
        idx = tuple(s // 2 for s in arr.shape)
        plus, minus = arr.copy(), arr.copy()
        plus[idx] += eps
        minus[idx] -= eps
        args = (lambda a: (a, w)) if which == "x" else (lambda a: (x, a))
        fd = (loss(*args(plus)) - loss(*args(minus))) / (2 * eps)
        assert fd == pytest.approx(grad[idx], rel=1e-6, abs=1e-8)


def test_conv_gradient_check_catches_a_missing_average():
    from kernels.conv import train as cbw
    n, b = 2, 2
    problem = scaling.conv_problem(dict(C=3, H=5, W=5, K=4, R=3, S=3, pad=1), n * b)
    outs, grads = [], []
    for r in range(n):
        inp = scaling.rank_inputs(problem, 0, "fp64", r, b)
        y, tape = cbw.forward_train(inp["x"], inp["w"], inp["b"], scaling._rank_conv(problem, b))
        grads.append(cbw.backward(tape, inp["dy"]))
        outs.append(y)
    avg = {k: sum(g[k] for g in grads) / n for k in ("w", "b")}
    good = [outs[0], grads[0]["x"], avg["w"], avg["b"]]
    assert scaling.check_outputs(good, problem, 0, "fp64", 0, b, n).passed
    bad = [outs[0], grads[0]["x"], grads[0]["w"], avg["b"]]          # rank 0's own dW, not averaged
    assert not scaling.check_outputs(bad, problem, 0, "fp64", 0, b, n).passed


def test_scale_sizes_belong_to_their_op(run_cli):
    r = run_cli("scale", "lstm", "-C", "3")
    assert r.returncode == 2 and "-C is a conv size" in r.stderr
    r = run_cli("scale", "conv", "-I", "3")
    assert r.returncode == 2 and "-I is an RNN size" in r.stderr
    r = run_cli("scale", "conv", "-H", "2", "-R", "5", "--pad", "0")
    assert r.returncode == 2 and "filter must fit" in r.stderr and "Traceback" not in r.stderr


def test_a_rank_under_torchrun_ends_its_process_once_the_command_returns(monkeypatch):
    """rank_command: under torchrun the finished rank leaves with the command's status at once
    (torch's C++ teardown can abort a finished rank); outside torchrun the status is returned."""
    from microbench import distributed as mdist
    ended = []
    monkeypatch.setattr(mdist.os, "_exit", lambda rc: ended.append(rc))

    def command(torchrun):
        def run(args):
            mdist._JOINED = mdist.Group(0, 1, 0, "gloo", "cpu", 0, 5.0, torchrun, [])
            return 3
        return mdist.rank_command(run)
    assert command(False)(None) == 3 and ended == []
    command(True)(None)
    assert ended == [3]
