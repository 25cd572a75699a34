"""The CPU GEMM provider of the fused plan: under ``pretranspose`` (fp32) the weights are packed
once into oneDNN's inner-product layout and every GEMM runs from them; without oneDNN the plan
runs on BLAS and says so.  Every result is checked against the float64 reference."""
import json

import numpy as np
import pytest

from fusion import cpuloop
from fusion import gemm as fgemm
from fusion.steps import Plan, ladder
from kernels import RNN, MissingDependency
from kernels.onednn import lib as dnnl
from microbench.cases.rnn import build_rnn, compare, make_inputs, reference_outputs
from microbench.problems import RNNProblem

SIZES = [  # T, B, I, H, L: batch 1, odd widths, two layers, a width past a power of two
    (4, 1, 5, 16, 1),
    (5, 3, 7, 9, 2),
    (3, 2, 33, 129, 1),
    (6, 1, 1, 3, 2),
]
PACKED_PLANS = ["all", "pretranspose", "group_gemm,pretranspose", "hoist_input,pretranspose",
                "group_gemm,hoist_input,pretranspose,fuse_pointwise"]


@pytest.fixture(scope="module")
def onednn(onednn_lib):
    return onednn_lib


def _check(op, backend, plan, size, *, batch_first=False, precision="fp32"):
    prob = RNNProblem(op, *size)
    inp = make_inputs(prob, seed=5, precision=precision)
    impl = RNN(inp["params"], variant="fused", backend=backend, dtype=precision, opts=plan)
    x = inp["x"]
    if batch_first:   # (B, T, I): each step's rows are a strided view the provider must copy
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    states = (inp["h0"], inp["c0"]) if op == "lstm" else (inp["h0"],)
    out = impl(x, *states, batch_first=batch_first)
    y = out[0].transpose(1, 0, 2) if batch_first else out[0]
    flat = (y, *out[1]) if op == "lstm" else (y, out[1])
    check = compare(flat, reference_outputs(prob, 5, precision), precision)
    assert check.passed, check.detail
    return impl


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("plan", PACKED_PLANS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T%dB%dI%dH%dL%d" % s)
def test_packed_provider_matches_reference(onednn, op, backend, plan, size):
    impl = _check(op, backend, plan, size)
    assert impl.gemm_info["provider"] == fgemm.ONEDNN
    team = [v for k, v in impl._step_loops.items() if isinstance(v, cpuloop.TeamLoop) and k[:2] == (0, size[1])]
    if team:    # a step-loop team ran the steps: each thread's own GEMM on its columns
        steps = team[0].info()["gemms"]
        assert [g["n"] for g in steps] == [impl.params.num_gates * u for u in team[0].info()["units"]]
    else:
        made = impl.layers[0].proj_h.info()
        assert list(made) == [f"M={size[1]}"], made
        steps = [made[f"M={size[1]}"]]
    for step in steps:
        # the faster of the two at build time, both timed (fusion.gemm.find_fastest)
        assert step["primitive"] in ("inner_product", "matmul")
        assert set(step["find_us"]) == {"inner_product", "matmul"}
        assert step["find_us"][step["primitive"]] == min(step["find_us"].values())


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("plan", ["all", "pretranspose"])
def test_batch_first_input_through_packed_gemm(onednn, op, plan):
    """Not hoisted, a step's input rows are strided: copied into a buffer made once per M."""
    impl = _check(op, "numba", plan, (5, 3, 7, 9, 2), batch_first=True)
    stages = impl.layers[0].proj_x._stage
    assert list(stages) == ([] if "hoist_input" in impl.plan else [3])


@pytest.mark.parametrize("plan", ["all", "pretranspose",
                                  "group_gemm,hoist_input,pretranspose,fuse_pointwise,streams,wavefront"])
def test_prepare_packs_every_gemm_before_the_first_call(onednn, plan):
    """prepare(T, B) makes every primitive a call uses: the call itself packs nothing more."""
    T, B = 9, 3     # streams/wavefront: chunks of ceil(9/8) = 2 steps, the last of 1: M = 6 and 3
    prob = RNNProblem("lstm", T, B, 6, 8, 2)
    inp = make_inputs(prob, seed=5, precision="fp32")
    impl = RNN(inp["params"], variant="fused", backend="numpy", dtype="fp32",
               opts=Plan(frozenset(plan.split(","))) if plan != "all" else plan).prepare(T, B)
    before = [(sorted(l.proj_x._packed), sorted(l.proj_h._packed)) for l in impl.layers]
    for _ in range(2):
        out = impl(inp["x"], inp["h0"], inp["c0"])
    after = [(sorted(l.proj_x._packed), sorted(l.proj_h._packed)) for l in impl.layers]
    assert before == after
    assert all(h == [B] for _, h in after)
    want_x = {"all": [T * B], "pretranspose": [B]}.get(plan, [B, 2 * B])
    assert after[0][0] == want_x, after
    check = compare((out[0], *out[1]), reference_outputs(prob, 5, "fp32"), "fp32")
    assert check.passed, check.detail


def _missing():
    """Stands in for the loader where no oneDNN can be found."""
    raise MissingDependency("oneDNN 3 (libdnnl.so.3)", "the onednn variants", "searched: nowhere")


def test_fallback_to_blas_when_onednn_cannot_be_loaded(monkeypatch):
    monkeypatch.setattr(dnnl, "load", _missing)
    for op in ("lstm", "gru"):
        impl = _check(op, "numba", "all", (5, 3, 7, 9, 2))
        assert impl.gemm_info["provider"] == fgemm.BLAS
        assert "oneDNN not loaded" in impl.gemm_info["reason"]
        assert impl.gemm_info["fallback"] is True
        assert impl.layers[0].proj_h.packer is None and not impl.layers[0].proj_h._packed
    prep = build_rnn(RNNProblem("lstm", 3, 2, 4, 5, 1), 0, variant="fused", backend="numba",
                     precision="fp32", plan="all")
    assert prep.info["gemm"]["provider"] == "blas"
    assert "searched: nowhere" in prep.info["gemm"]["reason"]
    assert prep.check().passed


def test_provider_only_where_packing_applies(onednn):
    """fp64 and plans without pretranspose keep BLAS; fp64 records why."""
    impl = _check("lstm", "numba", "all", (3, 2, 4, 5, 1), precision="fp64")
    assert impl.gemm_info["provider"] == fgemm.BLAS and "fp32 and bf16 only" in impl.gemm_info["reason"]
    assert "fallback" not in impl.gemm_info    # a choice, not a missing library: no table note
    impl = _check("lstm", "numba", "group_gemm,hoist_input,fuse_pointwise", (3, 2, 4, 5, 1))
    assert impl.gemm_info == {}
    prep = build_rnn(RNNProblem("gru", 3, 2, 4, 5, 1), 0, variant="fused", backend="numba",
                     precision="fp32", plan="all")
    assert prep.info["gemm"]["provider"] == "onednn"
    assert prep.info["gemm"]["step"]["M=2"]["impl"]


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_ladder_rungs_with_the_packed_provider(onednn, op):
    """Every CPU rung still matches the reference; packing starts exactly at +pretranspose."""
    seen = []
    for label, plan in ladder("cpu"):
        impl = _check(op, "numba", plan, (5, 3, 7, 9, 2))
        seen.append((label, impl.gemm_info.get("provider")))
    start = [label for label, _ in seen].index("+pretranspose")
    assert all(p is None for _, p in seen[:start]), seen
    assert all(p == fgemm.ONEDNN for _, p in seen[start:]), seen


def test_threads_limit_reaches_onednn_openmp(onednn):
    """--threads sets oneDNN's OpenMP pool too (loaded before threadpoolctl is entered)."""
    from microbench import threads
    with threads.limit(1) as used:
        assert used.get("openmp") == 1 and used.get("numba") == 1, used


def test_table_and_record_say_when_pretranspose_ran_on_blas(run_cli, tmp_path):
    """A oneDNN search path with no library in it (the loader then looks nowhere else): the
    fused row still runs and checks, its note and its record say BLAS and why."""
    out = tmp_path / "r.jsonl"
    r = run_cli("lstm", "--fused", "--backend", "numba", "--device", "cpu", "-T", "3", "-B", "2",
                "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2",
                "--json", str(out), env={"MICROBENCH_ONEDNN_PATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "BLAS GEMMs (no oneDNN packing)" in r.stdout and "oneDNN not loaded" in r.stdout
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["status"] == "ok" and rec["info"]["gemm"]["provider"] == "blas"
    assert str(tmp_path) in rec["info"]["gemm"]["reason"]


@pytest.mark.parametrize("cell", ["layernorm", "peephole"])
@pytest.mark.parametrize("size", [(5, 3, 7, 9, 2), (4, 1, 5, 16, 1)], ids=lambda s: "T%dB%dI%dH%dL%d" % s)
def test_custom_cells_use_the_packed_provider(onednn, monkeypatch, cell, size):
    """The layer-norm and peephole LSTMs' fused layer runs the same GEMMs (hoisted, grouped):
    packed on oneDNN when it loads, on BLAS (recorded) when it does not."""
    from microbench.cases.custom import build_custom
    prob = RNNProblem("lstm", *size)
    prep = build_custom(prob, 3, cell=cell, variant="fused", backend="numba", precision="fp32")
    assert prep.info["gemm"]["provider"] == "onednn"
    assert list(prep.info["gemm"]["step"]) == [f"M={size[1]}"]
    check = prep.check()
    assert check.passed, check.detail

    monkeypatch.setattr(dnnl, "load", _missing)
    prep = build_custom(prob, 3, cell=cell, variant="fused", backend="numba", precision="fp32")
    assert prep.info["gemm"]["provider"] == "blas" and prep.info["gemm"]["fallback"]
    check = prep.check()
    assert check.passed, check.detail


def test_packed_row_counts_are_bounded(onednn):
    """One packed copy of the weights per row count: ever new sequence lengths (hoisted
    M = T*B) once grew memory without bound; the oldest is released past MAX_PACKED."""
    pack, info = fgemm.provider_for(np, "cpu", "fp32", Plan.parse("pretranspose", "cpu"))
    assert info["provider"] == fgemm.ONEDNN, info
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    proj = fgemm.Projection(np, w, 2, grouped=True, pretransposed=True, packer=pack)
    for M in range(1, fgemm.MAX_PACKED + 5):
        x = rng.standard_normal((M, 5)).astype(np.float32)
        out = proj(x, proj.alloc(M, np.float32))
        np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)
    assert len(proj._packed) == fgemm.MAX_PACKED
    x = rng.standard_normal((1, 5)).astype(np.float32)     # released, packed again: still right
    np.testing.assert_allclose(proj(x, proj.alloc(1, np.float32)), x @ w.T, rtol=1e-5, atol=1e-5)


class _Timed:
    """A stand-in primitive kind whose calls take a set time (fusion.gemm.find_fastest)."""
    delay = 0.0
    closed = 0

    def __init__(self, mat, *, m, bias, lib):
        self.shape = (m, mat.shape[1])

    def __call__(self, x, out):
        import time
        time.sleep(self.delay)
        out[...] = 1.0
        return out

    def close(self):
        type(self).closed += 1


def test_find_fastest_keeps_the_faster_kind_and_closes_the_other(monkeypatch):
    slow = type("slow", (_Timed,), {"delay": 0.004, "kind": "slow", "closed": 0})
    fast = type("fast", (_Timed,), {"delay": 0.0, "kind": "fast", "closed": 0})
    w = np.zeros((3, 4), np.float32)
    for kinds in ([slow, fast], [fast, slow]):
        monkeypatch.setattr(fgemm, "FOUND", {})
        best = fgemm.find_fastest(kinds, w, 2, None, lib=None)
        assert isinstance(best, fast) and set(best.found) == {"slow", "fast"}
        assert best.found["fast"] < best.found["slow"]
    assert slow.closed == 2 and fast.closed == 0


def test_find_fastest_keeps_its_choice_per_shape_and_thread_count(monkeypatch):
    """A second find for the same GEMM keeps the first one's kind even when the timings have
    turned (the two kinds round differently, so a re-find could change a layer's output bits
    between two calls); another shape, bias or OpenMP thread count finds anew."""
    monkeypatch.setattr(fgemm, "FOUND", {})
    threads = [(2,)]
    monkeypatch.setattr(fgemm, "_openmp_threads", lambda: threads[0])
    a = type("a", (_Timed,), {"delay": 0.0, "kind": "a", "closed": 0})
    b = type("b", (_Timed,), {"delay": 0.004, "kind": "b", "closed": 0})
    w = np.zeros((3, 4), np.float32)
    first = fgemm.find_fastest([a, b], w, 2, None, lib=None)
    a.delay, b.delay = 0.004, 0.0                       # the machine's phase changes
    again = fgemm.find_fastest([b, a], w, 2, None, lib=None)
    assert isinstance(first, a) and isinstance(again, a) and again.found == first.found
    assert b.closed == 1                                # the kept kind alone was built again
    assert isinstance(fgemm.find_fastest([a, b], w, 3, None, lib=None), b)            # other M
    assert isinstance(fgemm.find_fastest([a, b], w, 2, np.zeros(4, np.float32), lib=None), b)
    threads[0] = (1,)
    assert isinstance(fgemm.find_fastest([a, b], w, 2, None, lib=None), b)            # 1 thread


@pytest.mark.parametrize("op,cell", [("lstm", "plain"), ("gru", "plain"), ("rnn", "plain"),
                                     ("lstm", "layernorm")])
def test_training_step_runs_its_weight_gemms_packed(onednn, monkeypatch, op, cell):
    """--backward on the CPU in fp32: the forward's input and recurrent GEMMs and the backward's
    dX and dh GEMMs run from packed weights (the weight gradients stay on BLAS); checked against
    the float64 gradients, twice; fp64 and a missing oneDNN stay on BLAS and say so."""
    from microbench.cases.backward import build_backward
    made = []

    class Spy(fgemm.PackedWeights):
        def __call__(self, key, a, w):
            made.append((key, a.shape[0]))
            return super().__call__(key, a, w)

    monkeypatch.setattr(fgemm, "PackedWeights", Spy)
    T, B = 4, 3
    prob = RNNProblem(op, T, B, 5, 6, 2)
    prep = build_backward(prob, 2, cell=cell, backend="numpy", precision="fp32")
    assert prep.info["gemm"]["provider"] == fgemm.ONEDNN
    for _ in range(2):
        check = prep.check()
        assert check.passed, check.detail
    keys = set(made)
    for l in range(2):
        assert {(("w_ih.T", l), T * B), (("w_hh.T", l), B), (("w_hh", l), B)} <= keys
    assert (("w_ih", 1), T * B) in keys       # dX of the top layer feeds the layer below
    made.clear()
    assert build_backward(prob, 2, cell=cell, backend="numpy", precision="fp64").info["gemm"]["provider"] == "blas"
    monkeypatch.setattr(dnnl, "load", _missing)
    prep = build_backward(prob, 2, cell=cell, backend="numpy", precision="fp32")
    assert prep.info["gemm"]["provider"] == "blas" and prep.info["gemm"]["fallback"]
    assert prep.check().passed and made == []


def test_gemm_benchmark_times_an_fp32_gemm_on_every_provider(onednn, capsys, monkeypatch):
    """benchmarks/cpu_gemm.py: every row is an fp32 GEMM.  A float64 operand would have NumPy time
    a DGEMM (twice as slow here) and still print an fp32-sized error, rounded into the fp32
    output: so the operands NumPy's matmul sees are checked."""
    import importlib.util
    import pathlib
    seen, matmul = [], np.matmul

    def spy(a, b, *args, **kw):
        seen.append((a.dtype, b.dtype))
        return matmul(a, b, *args, **kw)
    monkeypatch.setattr(np, "matmul", spy)
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_gemm.py"
    spec = importlib.util.spec_from_file_location("cpu_gemm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--threads", "1", "-H", "16", "-B", "2", "-T", "3", "--reps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("threads=")]
    assert len(rows) == 6 and sum("numpy/openblas" in r for r in rows) == 2
    errs = [float(r.split(" err ")[1].split()[0]) for r in rows]
    assert all(1e-9 < e < 1e-5 for e in errs), rows
    assert seen and set(seen) == {(np.dtype(np.float32), np.dtype(np.float32))}, set(seen)
