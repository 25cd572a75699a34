"""Every variant x backend x dtype x fusion plan against the float64 reference, on awkward sizes."""
import itertools

import numpy as np
import pytest

from fusion.pointwise import tanh_rational
from fusion.steps import LADDER, STEPS, Plan, ladder
from fusion.streams import DeferredStreams
from kernels import RNN, BadInput, GRUParams, LSTMParams, Unsupported, gru, lstm
from kernels.dtypes import tolerance
from microbench import registry
from microbench.cases.rnn import compare, make_inputs, reference_outputs
from microbench.problems import RNNProblem

# The CPU backends of our fused step loop, from the registry: a new one is tested here unasked.
CPU_BACKENDS = [r.backend for r in registry.ours("lstm") if r.variant == "fused" and r.device == "cpu"]

SIZES = [  # T, B, I, H, L: ones, odd, a width just past a power of two, several layers
    (1, 1, 1, 1, 1),
    (3, 1, 4, 129, 1),
    (5, 3, 7, 9, 2),
    (2, 4, 3, 1, 3),
]
PLANS = [("naive", None)] + [("fused", plan) for _, plan in ladder()[1:]] + \
    [("fused", Plan(frozenset({"fuse_pointwise"}))), ("fused", Plan(frozenset({"hoist_input", "fuse_pointwise"})))]


def _run(op, variant, backend, precision, plan, size):
    prob = RNNProblem(op, *size)
    inp = make_inputs(prob, seed=11, precision=precision)
    impl = RNN(inp["params"], variant=variant, backend=backend, dtype=precision, opts=plan)
    out = impl(inp["x"], inp["h0"], inp["c0"]) if op == "lstm" else impl(inp["x"], inp["h0"])
    flat = (out[0], *out[1]) if op == "lstm" else (out[0], out[1])
    return compare(flat, reference_outputs(prob, 11, precision), precision), flat, inp


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("variant,plan", PLANS, ids=lambda v: v.label if isinstance(v, Plan) else str(v))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T%dB%dI%dH%dL%d" % s)
def test_variant_matches_reference(op, backend, precision, variant, plan, size):
    check, flat, _ = _run(op, variant, backend, precision, plan, size)
    assert check.passed, check.detail
    assert check.tol == tolerance(precision)
    assert all(a.dtype == np.dtype({"fp32": "float32", "fp64": "float64"}[precision]) for a in flat)


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("variant,plan", PLANS, ids=lambda v: v.label if isinstance(v, Plan) else str(v))
@pytest.mark.parametrize("size", [SIZES[1], SIZES[2]], ids=lambda s: "T%dB%dI%dH%dL%d" % s)
def test_bf16_storage_on_numpy_matches_reference(op, backend, variant, plan, size):
    """The CPU twin of the GPU bf16 path: ml_dtypes storage, fp32-accumulated GEMMs, and a fused
    pointwise stage that widens to fp32 and rounds once per stored value.  On numba (a CPU with
    AVX512-BF16 or AMX): oneDNN's bf16 GEMMs under pretranspose, fusion.pointwise_bf16's kernels."""
    if backend == "numba":
        if variant == "naive":
            pytest.skip("naive on numba is NumPy's op-by-op cell: the numpy row covers it")
        from kernels.cpu_bf16 import missing
        if missing():
            pytest.skip(missing())
    check, flat, inp = _run(op, variant, backend, "bf16", plan, size)
    assert check.passed, check.detail
    assert all(a.dtype.name == "bfloat16" for a in flat) and inp["x"].dtype.name == "bfloat16"
    assert check.max_rel_err > 1e-4    # really bf16: fp32 storage would agree to ~1e-7


def test_bf16_fused_pointwise_rounds_once():
    """Widening inside the fused NumPy stage keeps its error at the storage rounding; rounding
    after each in-place op (what the naive cell does) is measurably worse over a long sequence."""
    prob = RNNProblem("lstm", 60, 8, 16, 64, 1)
    errs = {}
    for variant, plan in (("naive", None), ("fused", Plan(frozenset({"fuse_pointwise"})))):
        inp = make_inputs(prob, seed=5, precision="bf16")
        impl = RNN(inp["params"], variant=variant, backend="numpy", dtype="bf16", opts=plan)
        y, (h, c) = impl(inp["x"], inp["h0"], inp["c0"])
        errs[variant] = compare((y, h, c), reference_outputs(prob, 5, "bf16"), "bf16").max_rel_err
    assert errs["fused"] < errs["naive"], errs


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_fp32_error_stays_small_over_long_sequences(op):
    check, _, _ = _run(op, "fused", "numba", "fp32", None, (100, 4, 32, 64, 1))
    assert check.passed and check.max_rel_err < 1e-5


def test_batch_first_and_public_functions():
    p = LSTMParams.random(3, 5, 2, seed=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3))
    want, (wh, wc) = lstm(x, p, variant="naive")
    for backend in CPU_BACKENDS:
        got, (h, c) = lstm(x.transpose(1, 0, 2), p, backend=backend, batch_first=True)
        np.testing.assert_allclose(got, want.transpose(1, 0, 2), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h, wh, rtol=1e-12, atol=1e-14)
    g = GRUParams.random(3, 5, 1, seed=4)
    y, h = gru(x.astype(np.float32), g, backend="numba")
    assert y.dtype == np.float32 and h.shape == (1, 2, 5)


def test_calls_do_not_modify_inputs_or_share_outputs():
    prob = RNNProblem("lstm", 3, 2, 4, 5, 1)
    inp = make_inputs(prob, 1, "fp32")
    before = {k: v.copy() for k, v in inp.items() if isinstance(v, np.ndarray)}
    impl = RNN(inp["params"], backend="numba", dtype="fp32")
    y1, (h1, c1) = impl(inp["x"], inp["h0"], inp["c0"])
    y2, _ = impl(inp["x"], inp["h0"], inp["c0"])
    for k, v in before.items():
        np.testing.assert_array_equal(inp[k], v)
    assert y1 is not y2
    np.testing.assert_array_equal(y1, y2)


def test_nan_never_passes():
    prob = RNNProblem("gru", 2, 2, 3, 4, 1)
    ref = reference_outputs(prob, 0, "fp32")
    bad = [r.copy() for r in ref]
    bad[0][0, 0, 0] = np.nan
    check = compare(bad, ref, "fp32")
    assert not check.passed and "NaN" in check.detail
    assert compare([r.copy() for r in ref], ref, "fp32").passed


def test_wrong_result_fails_the_check():
    prob = RNNProblem("lstm", 2, 2, 3, 4, 1)
    ref = reference_outputs(prob, 0, "fp32")
    off = [r * (1 + 1e-3) for r in ref]
    check = compare(off, ref, "fp32")
    assert not check.passed and "max relative error" in check.detail


def test_inputs_are_random_not_zero():
    inp = make_inputs(RNNProblem("lstm", 3, 2, 4, 5, 2), 0, "fp32")
    for k in ("x", "h0", "c0"):
        assert np.count_nonzero(inp[k]) == inp[k].size
    assert not np.array_equal(make_inputs(RNNProblem("lstm", 3, 2, 4, 5, 2), 1, "fp32")["x"], inp["x"])


def test_tanh_rational_accuracy():
    x = np.linspace(-12, 12, 400001, dtype=np.float32)
    want = np.tanh(x.astype(np.float64))
    got = tanh_rational(x).astype(np.float64)
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    assert rel.max() < 5e-7
    assert np.abs(got).max() <= 1.0


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(variant="fast"), BadInput, "variant 'fast' is unknown; allowed: naive, fused"),
    (dict(backend="torch"), BadInput, "backend 'torch' is unknown; allowed: numpy, numba"),
    (dict(dtype="fp16"), Unsupported, "dtype fp16 is not available on backend numpy; allowed: fp32, fp64, bf16"),
    (dict(dtype="fp16", backend="numba"), Unsupported, "dtype fp16 is not available on backend numba; allowed: fp32, fp64, bf16$"),
    (dict(dtype="int8"), BadInput, "dtype 'int8' is unknown"),
    (dict(opts="group_gemm,warp_speed"), BadInput, "fusion step 'warp_speed' is unknown"),
    (dict(variant="naive", opts="group_gemm"), BadInput, "variant 'naive' takes no fusion steps"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        RNN(LSTMParams.random(2, 3), **kwargs)


def test_bad_call_shapes():
    impl = RNN(LSTMParams.random(2, 3, 2))
    with pytest.raises(BadInput, match="input width 5"):
        impl(np.zeros((2, 1, 5)))
    with pytest.raises(BadInput, match=r"c0 has shape \(1, 1, 3\); expected \(L, B, H\) = \(2, 1, 3\)"):
        impl(np.ones((2, 1, 2)), None, np.zeros((1, 1, 3)))
    with pytest.raises(BadInput, match="GRU has no cell state"):
        RNN(GRUParams.random(2, 3))(np.ones((2, 1, 2)), None, np.zeros((1, 1, 3)))


def test_ladder_is_cumulative_and_complete():
    rungs = ladder("cpu")
    assert [label for label, _ in rungs] == ["naive"] + ["+" + s for s in LADDER if "cpu" in STEPS[s].devices]
    assert [label for label, _ in ladder("cuda")] == ["naive"] + ["+" + s for s in LADDER]
    for (_, a), (_, b) in itertools.pairwise(rungs):
        assert a.steps < b.steps and len(b.steps - a.steps) == 1
    assert rungs[-1][1] == Plan.full("cpu")


GPU_PLANS = [
    frozenset({"group_gemm", "hoist_input", "fuse_pointwise", "streams"}),
    frozenset({"group_gemm", "hoist_input", "fuse_pointwise", "streams", "wavefront"}),
    frozenset({"hoist_input", "wavefront"}),
    frozenset({"streams"}),                       # per-step input GEMMs on their own stream
    frozenset({"group_gemm", "streams", "wavefront", "fuse_pointwise"}),
    frozenset({"wavefront"}),                     # per-step input GEMMs on the layer's stream
    frozenset({"group_gemm", "wavefront", "fuse_pointwise"}),
]


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("steps", GPU_PLANS, ids=lambda p: ",".join(sorted(p)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_orchestration_in_adversarial_order(op, steps, seed):
    """streams/wavefront on NumPy with a scheduler that runs work in random event-consistent order."""
    prob = RNNProblem(op, 11, 2, 3, 5, 3)
    inp = make_inputs(prob, seed=5, precision="fp64")
    sched = DeferredStreams(seed)
    impl = RNN(inp["params"], variant="fused", backend="numba", dtype="fp64", opts=Plan(steps), scheduler=sched)
    out = impl(inp["x"], inp["h0"], inp["c0"]) if op == "lstm" else impl(inp["x"], inp["h0"])
    flat = (out[0], *out[1]) if op == "lstm" else (out[0], out[1])
    check = compare(flat, reference_outputs(prob, 5, "fp64"), "fp64")
    assert check.passed, check.detail
    if "wavefront" in steps:   # the layers' streams really interleave
        streams_run = [s for s in sched.executed if isinstance(s, tuple) and s[0] == "layer"]
        first_l2 = streams_run.index(("layer", 2))
        assert ("layer", 0) in streams_run[first_l2:]


def test_a_missing_wait_is_caught_by_the_adversarial_scheduler():
    prob = RNNProblem("lstm", 11, 2, 3, 5, 2)
    inp = make_inputs(prob, seed=5, precision="fp64")
    failures = 0
    for seed in range(4):
        sched = DeferredStreams(seed)
        sched.wait = lambda stream, event: None      # drop every cross-stream dependency
        impl = RNN(inp["params"], variant="fused", backend="numpy", dtype="fp64",
                   opts=Plan(frozenset({"hoist_input", "streams", "wavefront"})), scheduler=sched)
        y, (h, c) = impl(inp["x"], inp["h0"], inp["c0"])
        failures += not compare((y, h, c), reference_outputs(prob, 5, "fp64"), "fp64").passed
    assert failures >= 3


def test_graph_step_on_the_cpu_is_the_numba_step_loop():
    """On the CPU the graph step is the compiled step loop.  The numpy backend has none: a plan
    with it is a plain call there (how the GPU orchestration runs in tests), and its full plan and
    ladder leave it out; on numba without packed GEMMs (fp64) the Python loop runs and says why."""
    from fusion.steps import full_plan
    from microbench import planner
    prob = RNNProblem("gru", 4, 2, 3, 5, 2)
    plan = Plan(frozenset({"group_gemm", "hoist_input", "fuse_pointwise", "graph"}))
    inp = make_inputs(prob, seed=1, precision="fp32")
    impl = RNN(inp["params"], variant="fused", backend="numpy", dtype="fp32", opts=plan)
    y, h = impl(inp["x"], inp["h0"])
    assert compare((y, h), reference_outputs(prob, 1, "fp32"), "fp32").passed
    assert "graph" not in full_plan("cpu", "numpy") and "graph" not in RNN(inp["params"], backend="numpy").plan
    assert [label for r, _, label in planner.ladder_rungs("gru", ["numpy"], "cpu")][-1] == "+pretranspose"
    pytest.importorskip("numba")
    assert "graph" in full_plan("cpu", "numba")
    inp = make_inputs(prob, seed=1, precision="fp64")
    impl = RNN(inp["params"], variant="fused", backend="numba", dtype="fp64", opts=plan)
    assert not impl.compiled_loop and "pretranspose" in impl.step_loop_why
    y, h = impl(inp["x"], inp["h0"])
    assert compare((y, h), reference_outputs(prob, 1, "fp64"), "fp64").passed


def test_small_steps_run_the_serial_pointwise_kernel(monkeypatch):
    """Below PARALLEL_MIN_UNITS (or on one thread) the numba kernel compiled without ``parallel``
    runs: waking the workers costs more than the step, and even on one thread the parallel
    kernel's scheduling costs ~10 us.  Both compilations give the same numbers; the caller's
    numba thread count is never touched."""
    import numba

    from fusion import pointwise
    kernel = pointwise._numba_kernels("float32")[0]
    ran = []
    real_serial = pointwise.serial

    def spy_serial(k):
        ran.append("serial")
        return real_serial(k)

    monkeypatch.setattr(pointwise, "serial", spy_serial)
    before = numba.get_num_threads()
    B, H = 2, 8
    gx, gh = (np.random.default_rng(0).standard_normal((B, 4, H)).astype(np.float32) for _ in range(2))
    c0 = np.random.default_rng(1).standard_normal((B, H)).astype(np.float32)
    c1, h1 = c0.copy(), np.empty((B, H), np.float32)
    pointwise.NumbaLSTM()(np, gx, gh, None, None, c1, h1, c1)
    assert ran == ["serial"] and numba.get_num_threads() == before
    monkeypatch.setattr(pointwise, "PARALLEL_MIN_UNITS", 1)
    c2, h2 = c0.copy(), np.empty((B, H), np.float32)
    pointwise.NumbaLSTM()(np, gx, gh, None, None, c2, h2, c2)
    assert ran == ["serial"] * (1 if before > 1 else 2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)
    assert real_serial(kernel) is real_serial(kernel)       # compiled once


def test_opt_all_is_each_backends_own_full_plan(tmp_path):
    """--opt all runs every step each backend has: the numpy rows leave out graph (it would
    change nothing there), the numba rows keep it; neither is refused or skipped."""
    import json

    from microbench import cli
    pytest.importorskip("numba")
    out = tmp_path / "r.jsonl"
    assert cli.main(["lstm", "--fused", "--opt", "all", "--backend", "numpy,numba", "--device", "cpu",
                     "-T", "2", "-H", "4", "-B", "1", "--min-time", "0.01", "--json", str(out)]) == 0
    plans = {r["label"]: (r["status"], r["options"]["plan"]) for r in map(json.loads, out.read_text().splitlines())}
    assert plans["fused/numpy"] == ("ok", "group_gemm,hoist_input,pretranspose,fuse_pointwise")
    assert plans["fused/numba"] == ("ok", "group_gemm,hoist_input,pretranspose,fuse_pointwise,graph")
