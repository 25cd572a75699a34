"""bf16 on the CPU's fused path (numba backend): the rounding of fusion.pointwise_bf16 against
ml_dtypes, its cell kernels against the NumPy twin, the compiled step loop and its team on bf16
storage, the float64 reference check, the skip (naming the missing ISA) where the CPU lacks
AVX512-BF16 and AMX, and the command line's bf16 rows beside oneDNN's and PyTorch's."""
import json

import numpy as np
import pytest

from fusion import cpuloop
from fusion import pointwise as fpw
from kernels import RNN, Unsupported, cpu_bf16
from kernels.dtypes import bfloat16
from microbench.cases.rnn import build_rnn, compare, make_inputs, reference_outputs
from microbench.problems import RNNProblem

BF16 = bfloat16()


@pytest.fixture(scope="module")
def native():
    """oneDNN with bf16 dot products (AVX512-BF16 or AMX); skipped with the reason elsewhere."""
    why = cpu_bf16.missing()
    if why:
        pytest.skip(why)


def _bits(a):
    return a.astype(BF16).view(np.uint16)


# -- the conversions ----------------------------------------------------------------------------
def test_rounding_to_bf16_is_ml_dtypes_rounding():
    """Round to nearest even on every kind of float32: random bit patterns (all exponents, NaN
    payloads, subnormals), exact ties both ways, the largest finite values (round to inf)."""
    from fusion.pointwise_bf16 import from_bf16_bits, to_bf16_bits
    rng = np.random.default_rng(0)
    pats = [rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)]
    hi = rng.integers(0, 1 << 16, 4096, dtype=np.uint32) << 16
    pats += [hi | 0x8000, hi | 0x7FFF, hi | 0x8001, hi]           # ties, either side of them
    pats.append(np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0xFFC00001,
                          0x00000001, 0x80008000, 0x00018000, 0x7FFFFFFF, 0], np.uint32))
    x = np.concatenate(pats).view(np.float32)
    got = np.empty(x.shape, np.uint16)
    with np.errstate(invalid="ignore"):
        to_bf16_bits(x, got)
        want = x.astype(BF16).view(np.uint16)
    np.testing.assert_array_equal(got, want)
    back = np.empty(x.shape, np.float32)
    from_bf16_bits(got, back)
    np.testing.assert_array_equal(back.view(np.uint32), got.view(BF16).astype(np.float32).view(np.uint32))


# -- the cell kernels against the NumPy twin (no oneDNN: they run on any CPU) -----------------
CELLS = ["lstm", "gru", "rnn_relu", "rnn_tanh"]


def _step_inputs(cell, B, H, per_gate, seed=0):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    def arr(*shape, s=1.0):     # noqa: E306
        return (s * rng.standard_normal(shape)).astype(BF16)
    if per_gate:        # the (G, M, H) layout of a per-gate GEMM, seen as (B, G, H) strided views
        gx, gh = arr(G, B, H, s=1.5).transpose(1, 0, 2), arr(G, B, H, s=1.5).transpose(1, 0, 2)
    else:
        gx, gh = arr(B, G, H, s=1.5), arr(B, G, H, s=1.5)
    b1 = arr(G, H, s=0.3)
    b2 = arr(G, H, s=0.3) if cell == "gru" else None
    return gx, gh, b1, b2, arr(B, H, s=0.8)


def _run_cell(cell, provider, gx, gh, b1, b2, state):
    k = fpw.get(cell, provider)
    h = np.zeros(state.shape, BF16)
    if cell == "lstm":
        c = state.copy()
        k(np, gx, gh, b1, None, c, h, c)
        return [h, c]
    k(np, gx, gh, b1, b2, state, h)
    return [h]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("per_gate", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_bf16_kernels_round_where_the_numpy_twin_rounds(monkeypatch, cell, per_gate, parallel):
    """Same bf16 inputs, fp32 math, one rounding per stored value: the numba kernel's h (and c)
    are the NumPy twin's bits, but for a one-ulp difference where the two tanh (NumPy's and the
    rational fp32 one) straddle a rounding boundary.  Serial and parallel kernels both."""
    import numba
    if parallel:
        monkeypatch.setattr(fpw, "PARALLEL_MIN_UNITS", 1)
    n = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS) if parallel else 1)
    try:
        inp = _step_inputs(cell, 5, 67, per_gate)
        got = _run_cell(cell, "numba", *inp)
    finally:
        numba.set_num_threads(n)
    want = _run_cell(cell, "numpy", *inp)
    for g, w in zip(got, want):
        assert g.dtype == BF16
        ulps = np.abs(g.view(np.uint16).astype(np.int32) - w.view(np.uint16).astype(np.int32))
        assert ulps.max() <= 1 and (ulps == 0).mean() > 0.97, (ulps.max(), (ulps == 0).mean())


def test_bf16_kernel_passes_nan_through():
    gx, gh, b1, b2, state = _step_inputs("lstm", 2, 16, False)
    gx[1, 2, 5] = np.nan
    h, c = _run_cell("lstm", "numba", gx, gh, b1, b2, state)
    assert np.isnan(h[1, 5].astype(np.float32)) and np.isnan(c[1, 5].astype(np.float32))
    assert np.isfinite(np.delete(h.astype(np.float32).ravel(), 16 + 5)).all()


# -- the whole layer (oneDNN's bf16 GEMMs: a CPU with AVX512-BF16 or AMX) -------------------------
def _params(op, nonlinearity, I, H, L, seed=3):
    from kernels.params import GRUParams, LSTMParams, VanillaRNNParams
    if op == "rnn":
        return VanillaRNNParams.random(I, H, num_layers=L, seed=seed, nonlinearity=nonlinearity).astype(BF16)
    return {"lstm": LSTMParams, "gru": GRUParams}[op].random(I, H, num_layers=L, seed=seed).astype(BF16)


def _flat(out):
    y, st = out
    return [y, *st] if isinstance(st, tuple) else [y, st]


OPS = [("lstm", ""), ("gru", ""), ("rnn", "relu"), ("rnn", "tanh")]


@pytest.mark.parametrize("op,act", OPS)
@pytest.mark.parametrize("skip_input", [False, True])
def test_bf16_cases_pass_the_reference_check(onednn_lib, native, op, act, skip_input):
    """What the CLI times: every step (oneDNN bf16 GEMMs, the compiled loop), two layers, the
    bf16 tolerance against float64; really bf16 (fp32 storage would agree to ~1e-7)."""
    prob = RNNProblem(op, 6, 3, 5, 24, 2, nonlinearity=act, skip_input=skip_input)
    prep = build_rnn(prob, seed=4, variant="fused", backend="numba", precision="bf16")
    assert "compiled" in prep.info["step_loop"]
    gemm = prep.info["gemm"]
    assert gemm["provider"] == "onednn" and "fp32 accumulation" in gemm["math"]
    assert "bf16" in json.dumps(gemm["step"])                  # brgemm:avx512_core_bf16 (or AMX's)
    for _ in range(2):
        check = prep.check()
        assert check.passed and check.max_rel_err > 1e-4, check


@pytest.mark.parametrize("op,act", OPS)
@pytest.mark.parametrize("parallel", [False, True])
def test_bf16_compiled_loop_equals_the_python_loop(onednn_lib, native, monkeypatch, op, act, parallel):
    """The one-thread-issued loop runs the same primitive and kernel as the Python loop (the
    serial kernel, or numba's parallel one above PARALLEL_MIN_UNITS): the same bits."""
    import numba
    monkeypatch.setattr(cpuloop, "TEAM_MIN_UNITS", 1 << 20)
    if parallel:
        monkeypatch.setattr(fpw, "PARALLEL_MIN_UNITS", 1)
    T, B, I, H, L = 5, 3, 7, 9, 2
    n = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS) if parallel else n)
    try:
        impl = RNN(_params(op, act, I, H, L), backend="numba", dtype="bf16").prepare(T, B)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((T, B, I)).astype(BF16)
        states = (rng.standard_normal((L, B, H)).astype(BF16),) * (2 if op == "lstm" else 1)
        assert impl.compiled_loop
        fast = impl(x, *states)
        impl.compiled_loop = False
        slow = impl(x, *states)
    finally:
        numba.set_num_threads(n)
    for a, b in zip(_flat(fast), _flat(slow)):
        assert a.dtype == BF16
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_bf16_team_loop_passes_the_reference_check(onednn_lib, native):
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2 or cpuloop.team_reason(64, 2):
        pytest.skip("no step-loop team of 2 threads here")
    n = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        for op in ("lstm", "gru"):
            prob = RNNProblem(op, 5, 2, 6, 32, 1)
            prep = build_rnn(prob, seed=4, variant="fused", backend="numba", precision="bf16")
            assert "team of 2 threads" in prep.info["step_loop"]
            check = prep.check()
            assert check.passed and check.max_rel_err > 1e-4, check
    finally:
        numba.set_num_threads(n)


# -- where the CPU lacks it -----------------------------------------------------------------
class _Lib:
    version = "3.2.0"

    def __init__(self, code, isa):
        self.isa_code, self.isa = code, isa


@pytest.mark.parametrize("code,isa,flags,want", [
    (0xE7, "cpu_isa_avx512_core_bf16", set(), None),
    (0x1EF, "cpu_isa_avx512_core_fp16", set(), None),
    (0xFEF, "cpu_isa_avx512_core_amx", {"amx_bf16"}, None),
    (0x27, "cpu_isa_avx512_core", {"avx512f"}, "needs AVX512-BF16 or AMX-BF16 (CPU flag avx512_bf16 or amx_bf16), "
                                               "which this CPU lacks (oneDNN 3.2.0 dispatches to cpu_isa_avx512_core)"),
    (0x7, "cpu_isa_avx2", {"avx512_bf16"}, "the CPU has avx512_bf16 but oneDNN 3.2.0 dispatches to cpu_isa_avx2"),
])
def test_missing_names_the_isa(monkeypatch, code, isa, flags, want):
    from kernels.onednn import lib as L
    monkeypatch.setattr(L, "load", lambda: _Lib(code, isa))
    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: flags)
    cpu_bf16.missing.cache_clear()
    try:
        got = cpu_bf16.missing()
    finally:
        cpu_bf16.missing.cache_clear()
    if want is None:
        assert got is None
    else:
        assert want in got and "\n" not in got


@pytest.fixture
def no_bf16_isa(monkeypatch):
    why = "bf16 on the CPU needs AVX512-BF16 or AMX-BF16 (CPU flag avx512_bf16 or amx_bf16), which this CPU lacks"
    monkeypatch.setattr(cpu_bf16, "missing", lambda: why)
    return why


def test_numba_bf16_is_refused_with_the_missing_isa(no_bf16_isa):
    from kernels.params import LSTMParams
    with pytest.raises(Unsupported, match="dtype bf16 on backend numba: bf16 on the CPU needs AVX512-BF16"):
        RNN(LSTMParams.random(2, 3), backend="numba", dtype="bf16")
    RNN(LSTMParams.random(2, 3), backend="numba", dtype="fp32")      # other precisions unaffected


def test_numpy_bf16_keeps_blas_where_the_isa_is_missing(no_bf16_isa, onednn_lib):
    prob = RNNProblem("lstm", 3, 2, 4, 8, 1)
    inp = make_inputs(prob, 0, "bf16")
    impl = RNN(inp["params"], backend="numpy", dtype="bf16")
    assert impl.gemm_info["provider"] == "blas" and "no oneDNN bf16 GEMM" in impl.gemm_info["reason"]
    y, (h, c) = impl(inp["x"], inp["h0"], inp["c0"])
    assert compare((y, h, c), reference_outputs(prob, 0, "bf16"), "bf16").passed


def test_cli_skips_the_numba_bf16_row_with_the_reason(no_bf16_isa, capsys, tmp_path):
    """`lstm --fused --backend numba --dtype bf16` was refused outright ("the chosen backends on
    cpu compute fp32, fp64"); where the ISA is missing it is now a skipped row saying which."""
    from microbench import cli
    out = tmp_path / "r.jsonl"
    code = cli.main(["lstm", "--fused", "--backend", "numba", "--dtype", "bf16", "--device", "cpu",
                     "-T", "2", "-B", "1", "-H", "8", "--min-time", "0", "--warmup", "0", "--quiet",
                     "--json", str(out)])
    capsys.readouterr()
    [rec] = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and rec["status"] == "skipped" and rec["dtype"] == "bf16"
    assert "AVX512-BF16" in rec["error"]


def test_cli_bf16_rows_beside_onednn_and_torch(onednn_lib, native, capsys, tmp_path):
    """The DoD command's shape at a tiny size: ours, oneDNN's bf16 LSTM and PyTorch's bf16 LSTM
    (oneDNN's RNN inside ATen) in one run, each checked against float64 with bf16's tolerance."""
    pytest.importorskip("torch")
    from microbench import cli
    out = tmp_path / "r.jsonl"
    code = cli.main(["lstm", "--fused", "--onednn", "--backend", "numba,onednn", "--frameworks", "torch",
                     "--dtype", "bf16", "--device", "cpu", "-T", "3", "-B", "2", "-H", "16",
                     "--min-time", "0", "--warmup", "0", "--quiet", "--json", str(out)])
    capsys.readouterr()
    recs = {(r["variant"], r.get("backend")): r for r in map(json.loads, out.read_text().splitlines())}
    assert code == 0
    ours = recs[("fused", "numba")]
    assert ours["status"] == "ok" and ours["check"]["passed"] and ours["check"]["tol"] == 1e-2
    assert recs[("onednn", "onednn")]["status"] == "ok"
    torch = recs[("torch", "fused")]
    assert torch["status"] == "ok" and torch["dtype"] == "bf16" and torch["check"]["passed"], torch["error"]
    assert torch["info"]["kernel"] == "oneDNN (mkldnn_rnn)"
