"""The direct oneDNN binding: discovery, status translation and weight layout run everywhere;
LSTM, linear-before-reset GRU, the vanilla RNN (ReLU, tanh) and conv2d run through the real
library against the float64 references.

oneDNN comes from the ``onednn-cpu-gomp`` wheel, a base dependency on x86-64 Linux: where it can
not be loaded these tests skip with the reason, except under CI, where that is a failure.
"""
import ctypes

import json

import numpy as np
import pytest

from kernels.errors import BadInput, MissingDependency, Unsupported
from kernels.onednn import errors as E
from kernels.onednn import lib as L
from kernels.params import GRUParams, LSTMParams, VanillaRNNParams
from kernels.reference import REFERENCES
from onednn_tools import require_onednn


_lib = require_onednn


# -- discovery ---------------------------------------------------------------------------------
def _fake(root, name="lib"):
    d = root / name
    d.mkdir(parents=True)
    (d / L.MAIN).write_bytes(b"not an ELF file")
    return d


def test_env_var_wins_and_may_name_the_file(tmp_path):
    d = _fake(tmp_path)
    f = L.find(env={L.ENV_VAR: str(d / L.MAIN)}, wheel_dirs=[], prefix=str(tmp_path / "none"))
    assert f.directory == str(d) and f.source == f"env {L.ENV_VAR}"


def test_env_var_set_but_wrong_is_reported_not_replaced(tmp_path):
    good = _fake(tmp_path, "wheel")
    f = L.find(env={L.ENV_VAR: str(tmp_path / "nope")}, wheel_dirs=[(str(good), "wheel x")])
    assert f.directory is None
    with pytest.raises(MissingDependency, match="nope.*no libdnnl.so.3.*onednn-cpu-gomp"):
        L.load_from(f)


def test_wheel_then_prefix_then_system(tmp_path):
    w = _fake(tmp_path, "w")
    f = L.find(env={}, wheel_dirs=[(str(w), "wheel onednn-cpu-gomp")], prefix=str(tmp_path))
    assert (f.directory, f.source) == (str(w), "wheel onednn-cpu-gomp")
    p = _fake(tmp_path, "p/lib")
    f = L.find(env={}, wheel_dirs=[], prefix=str(p.parent))
    assert (f.directory, f.source) == (str(p), "sys.prefix")
    f = L.find(env={}, wheel_dirs=[], prefix=str(tmp_path / "empty"))
    assert f.directory == L.SYSTEM
    assert L.find(env={}, wheel_dirs=[], prefix=str(tmp_path / "empty"), system=False).directory is None


def test_unloadable_file_is_a_missing_dependency(tmp_path):
    d = _fake(tmp_path)
    with pytest.raises(MissingDependency, match="dlopen"):
        L.load_from(L.Found(str(d), "test"))


# -- statuses ----------------------------------------------------------------------------------
def test_loader_keeps_a_failure_until_cleared():
    """kernels.vendorlib.Loader (both library loaders): one search per process, the failure kept
    as the skip reason of every variant, forgotten by cache_clear()."""
    from kernels import vendorlib
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) == 1:
            raise MissingDependency("libx", "the x variants", "searched: nowhere")
        return type("Lib", (), {"version": "1.2.3"})()
    loader = vendorlib.Loader(attempt)
    assert loader.available(lambda lib: "ok")[0] is False
    assert loader.version() is None and loader.describe(dict)["reason"].startswith("libx")
    with pytest.raises(MissingDependency, match="searched: nowhere"):
        loader()
    assert len(calls) == 1
    loader.cache_clear()
    assert loader.version() == "1.2.3" and loader.available(lambda lib: f"x {lib.version}") == (True, "x 1.2.3")
    assert len(calls) == 2


def test_statuses_become_named_exceptions():
    with pytest.raises(E.OnednnUnimplemented, match=r"dnnl_foo failed: dnnl_unimplemented \(3\)") as ei:
        E.check("dnnl_foo", 3, "winograd")
    assert isinstance(ei.value, Unsupported) and "winograd" in str(ei.value)
    with pytest.raises(E.OnednnError, match=r"dnnl_bar failed: dnnl_invalid_arguments \(2\)") as ei:
        E.check("dnnl_bar", 2)
    assert not isinstance(ei.value, Unsupported)
    E.check("dnnl_ok", 0)
    assert E.status_name(77) == "dnnl_status_unknown_77"


def test_status_table_matches_the_library():
    lib = _lib()
    for code, name in E.STATUS_NAMES.items():
        assert "dnnl_" + lib.name_of("dnnl_status2str", code) == name


def test_enum_numbers_match_the_library_names():
    lib = _lib()
    assert L.check_enums(lib) == []
    # the aliases resolve to the tags oneDNN means by them
    for alias, tag in L.TAG_ALIAS.items():
        assert lib.name_of("dnnl_fmt_tag2str", L.TAG[tag]) == tag, alias


def test_describe_names_version_isa_and_runtime():
    _lib()
    d = L.describe()
    assert d["available"] and d["version"].startswith("3.")
    assert d["isa"].startswith("cpu_isa_") and d["cpu_runtime"]


def test_failed_creation_names_call_and_status_and_releases():
    from kernels.onednn import core
    lib = _lib()
    s = core.Scope(lib)
    ctx = core.Context(s)
    assert ctx.engine and ctx.stream
    with pytest.raises(E.OnednnError, match="dnnl_memory_desc_create_with_tag failed: "
                                            "dnnl_invalid_arguments"):
        s.md((2, -3), L.DT["f32"], "ab")
    n = len(s._owned)
    assert n == 2
    s.close()
    s.close()                                   # idempotent
    assert s._owned == [] and s.buffers == []


def test_aligned_buffers():
    from kernels.onednn.core import aligned_empty
    for n in (1, 63, 1000):
        a = aligned_empty(n)
        assert a.ctypes.data % 64 == 0 and a.nbytes == n


# -- weight layout, pure NumPy -----------------------------------------------------------------
def test_gru_gates_go_update_first_and_lbr_bias_has_four():
    from kernels.onednn.rnn import onednn_bias, onednn_weights
    H, I = 2, 3
    p = GRUParams.random(I, H, 1, seed=0)
    w = onednn_weights(p, [0], "w_ih")
    assert w.shape == (1, 1, 3, H, I)
    np.testing.assert_array_equal(w[0, 0, 0], p.gate(0, "z"))     # u = our z
    np.testing.assert_array_equal(w[0, 0, 1], p.gate(0, "r"))     # r
    np.testing.assert_array_equal(w[0, 0, 2], p.gate(0, "n"))     # o = our n
    b = onednn_bias(p, [0])[0, 0]
    g = lambda k, which: p.gate(0, k, which)  # noqa: E731
    np.testing.assert_allclose(b[0], g("z", "b_ih") + g("z", "b_hh"), rtol=1e-6)
    np.testing.assert_allclose(b[1], g("r", "b_ih") + g("r", "b_hh"), rtol=1e-6)
    np.testing.assert_allclose(b[2], g("n", "b_ih"), rtol=1e-6)
    np.testing.assert_allclose(b[3], g("n", "b_hh"), rtol=1e-6)


def test_lstm_gates_keep_our_order():
    from kernels.onednn.rnn import onednn_bias, onednn_weights
    p = LSTMParams.random(3, 2, 2, seed=1)
    w = onednn_weights(p, [0, 1], "w_hh")
    assert w.shape == (2, 1, 4, 2, 2)
    for k, gate in enumerate("ifgo"):
        np.testing.assert_array_equal(w[1, 0, k], p.gate(1, gate, "w_hh"))
    np.testing.assert_allclose(onednn_bias(p, [1])[0, 0].ravel(),
                               p.layers[1].b_ih + p.layers[1].b_hh, rtol=1e-6)


def test_vanilla_rnn_has_one_gate_and_the_biases_summed():
    from kernels.onednn.rnn import onednn_bias, onednn_weights
    p = VanillaRNNParams.random(3, 2, 2, seed=2, nonlinearity="relu")
    w = onednn_weights(p, [1], "w_ih")
    assert w.shape == (1, 1, 1, 2, 2)
    np.testing.assert_array_equal(w[0, 0, 0], p.layers[1].w_ih)
    b = onednn_bias(p, [0, 1])
    assert b.shape == (2, 1, 1, 2) and b.dtype == np.float32
    np.testing.assert_allclose(b[0, 0, 0], p.layers[0].b_ih + p.layers[0].b_hh, rtol=1e-6)


def test_layer_groups():
    from kernels.onednn.rnn import layer_groups
    assert layer_groups(1, 5, 8) == [[0]]
    assert layer_groups(3, 8, 8) == [[0, 1, 2]]
    assert layer_groups(3, 5, 8) == [[0], [1, 2]]


# -- the real library --------------------------------------------------------------------------
def _reference(op, p, x, h0, c0):
    if op == "lstm":
        y, (h, c) = REFERENCES["lstm"](x, p, h0, c0)
        return y, h, c
    return REFERENCES["gru"](x, p, h0)


@pytest.mark.parametrize("op", ["lstm", "gru"])
@pytest.mark.parametrize("I,H,L_", [(16, 32, 1), (24, 32, 3), (32, 32, 2)])
@pytest.mark.parametrize("each", [False, True])
def test_rnn_matches_reference(op, I, H, L_, each):
    from kernels.onednn.rnn import OnednnRNN
    _lib()
    T, B = 6, 3
    p = (LSTMParams if op == "lstm" else GRUParams).random(I, H, L_, seed=3)
    rng = np.random.default_rng(4)
    with OnednnRNN(p.astype(np.float32), batch=B, seq_len=T, reorder_each_call=each) as rnn:
        for _ in range(2):       # fresh inputs on the second call: nothing stale may pass
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            h0 = (0.5 * rng.standard_normal((L_, B, H))).astype(np.float32)
            c0 = (0.5 * rng.standard_normal((L_, B, H))).astype(np.float32)
            out = rnn(x, h0, c0 if op == "lstm" else None)
            ref = _reference(op, p.astype(np.float32), x.astype(np.float64), h0.astype(np.float64),
                             c0.astype(np.float64))
            assert len(out) == len(ref)
            for a, r in zip(out, ref):
                assert np.isfinite(a).all()
                np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
        info = rnn.info()
        assert info["primitives_per_call"] == len(rnn.steps)
        assert info["weight_reorder"] == ("every call" if each else "once, at build")


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("I,H,L_", [(16, 32, 1), (24, 32, 3), (33, 33, 2)])
def test_vanilla_rnn_matches_reference(act, I, H, L_):
    from kernels.onednn.rnn import OnednnRNN
    _lib()
    T, B = 7, 3
    p = VanillaRNNParams.random(I, H, L_, seed=5, nonlinearity=act).astype(np.float32)
    rng = np.random.default_rng(6)
    with OnednnRNN(p, batch=B, seq_len=T) as rnn:
        for _ in range(2):       # fresh inputs on the second call: nothing stale may pass
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            h0 = (0.5 * rng.standard_normal((L_, B, H))).astype(np.float32)
            y, h = rnn(x, h0)
            ry, rh = REFERENCES["rnn"](x.astype(np.float64), p, h0.astype(np.float64))
            np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-5)
        assert rnn.info()["primitive"] == "dnnl_vanilla_rnn_forward"
        assert rnn.info()["activation"] == f"eltwise_{act}"
    # the activation reached the primitive: ReLU clips to exact zeros, tanh does not
    assert (y == 0).any() == (act == "relu")


def test_rnn_rejects_bad_arguments():
    from kernels.onednn.rnn import OnednnRNN
    _lib()
    p = LSTMParams.random(4, 4, 1, seed=0).astype(np.float32)
    with pytest.raises(BadInput, match="LSTMParams, GRUParams or VanillaRNNParams"):
        OnednnRNN("nope", batch=2, seq_len=2)
    with pytest.raises(Unsupported, match="fp64 is not offered"):
        OnednnRNN(p, batch=2, seq_len=2, precision="fp64")
    with OnednnRNN(p, batch=2, seq_len=2) as rnn:
        with pytest.raises(BadInput, match="x has shape"):
            rnn(np.zeros((3, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32),
                np.zeros((1, 2, 4), np.float32))
        with pytest.raises(BadInput, match="needs c0"):
            rnn(np.zeros((2, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32))


def test_rnn_bf16_runs_or_skips_with_the_reason():
    from kernels.onednn.rnn import OnednnRNN
    from kernels import dtypes
    _lib()
    bf16 = dtypes.bfloat16()
    p = LSTMParams.random(8, 8, 1, seed=0)
    try:
        rnn = OnednnRNN(p.astype(bf16), batch=2, seq_len=3, precision="bf16")
    except Unsupported as e:
        assert "dnnl_unimplemented" in str(e)
        return
    with rnn:
        x = np.random.default_rng(0).standard_normal((3, 2, 8)).astype(bf16)
        z = np.zeros((1, 2, 8), bf16)
        y, h, c = rnn(x, z, z)
        ref = _reference("lstm", p.astype(bf16), x.astype(np.float64), z.astype(np.float64),
                         z.astype(np.float64))
        np.testing.assert_allclose(y.astype(np.float64), ref[0], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kw", [dict(N=2, C=8, H=9, W=7, K=16, R=3, S=3, pad=(1, 1)),
                                dict(N=1, C=8, H=10, W=10, K=8, R=3, S=3, stride=2, pad=1,
                                     dilation=2, groups=2),
                                dict(N=2, C=3, H=9, W=9, K=5, R=2, S=3, bias=False)])
def test_conv_matches_reference(layout, kw):
    from kernels.conv import ConvProblem, conv2d_reference
    from kernels.onednn.conv import OnednnConv
    _lib()
    p = ConvProblem(layout=layout, **kw)
    rng = np.random.default_rng(0)
    with OnednnConv(p) as conv:
        for _ in range(2):
            x, w, b = p.random_inputs(rng, "fp32")
            y = conv(x, w, b)
            np.testing.assert_allclose(y, conv2d_reference(x, w, b, p), rtol=1e-5, atol=1e-5)
        assert conv.info()["impl"]


def test_conv_winograd_runs_or_skips_with_the_library_reason():
    from kernels.conv import ConvProblem, conv2d_reference
    from kernels.onednn.conv import OnednnConv
    _lib()
    p = ConvProblem(N=1, C=16, H=12, W=12, K=16, R=3, S=3, pad=1)
    try:
        conv = OnednnConv(p, algo="winograd")
    except Unsupported as e:
        assert "dnnl_unimplemented" in str(e) and "convolution_winograd" in str(e)
        return
    with conv:
        x, w, b = p.random_inputs(np.random.default_rng(0), "fp32")
        np.testing.assert_allclose(conv(x, w, b), conv2d_reference(x, w, b, p), rtol=1e-4, atol=1e-4)


# -- variants in the registry and the runner -----------------------------------------------------
def test_variants_registered_on_the_cpu():
    from microbench import cases  # noqa: F401
    from microbench.registry import REGISTRY
    for op in ("lstm", "gru", "rnn"):
        for v in ("onednn", "onednn_reorder"):
            assert REGISTRY[(op, v, "onednn")].device == "cpu"
        assert (op, "naive", "onednn") not in REGISTRY
    assert {("conv", "onednn", "onednn"), ("conv", "onednn_winograd", "onednn")} <= set(REGISTRY)


@pytest.mark.parametrize("op,variant,act", [("lstm", "onednn", ""), ("gru", "onednn_reorder", ""),
                                            ("rnn", "onednn", "relu"), ("rnn", "onednn_reorder", "tanh")])
def test_case_checks_and_times(op, variant, act):
    from microbench import cases  # noqa: F401
    from microbench.harness import Settings
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    from microbench.runner import Case, run_case
    _lib()
    case = Case(REGISTRY[(op, variant, "onednn")], RNNProblem(op, 5, 4, 8, 16, 2, nonlinearity=act),
                "fp32", 0)
    o = run_case(case, Settings(0.01, 0.05, 1.0, 3, 1.0), {"env_id": "t"}, 0.0)
    assert o.status == "ok", o.error
    assert o.check.passed and o.check.max_rel_err < 1e-5
    assert o.record["info"]["impl"]


def test_skip_input_case_skips_with_the_reason():
    # oneDNN always multiplies the layer input by weights_layer: no recurrent-only row
    from microbench import cases  # noqa: F401
    from microbench.harness import Settings
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    from microbench.runner import Case, run_case
    case = Case(REGISTRY[("rnn", "onednn", "onednn")],
                RNNProblem("rnn", 3, 2, 8, 8, 1, nonlinearity="relu", skip_input=True), "fp32", 0)
    o = run_case(case, Settings(0.01, 0.05, 1.0, 3, 1.0), {"env_id": "t"}, 0.0)
    assert o.status == "skipped" and "no skip-input mode" in o.error and "--input-gemm" in o.error


def test_deepbench_vanilla_rows_get_onednn_rows_with_input_gemm(tmp_path, monkeypatch, capsys):
    import dataclasses
    import json

    from microbench import cli
    from microbench.suites import catalog
    _lib()
    suite = catalog.get("deepbench-rnn-device")       # rows 0, 1: vanilla ReLU; 2: LSTM
    specs = tuple(dataclasses.replace(s, H=8, T=3, B=2) for s in suite.specs)
    monkeypatch.setitem(catalog.SUITES, suite.name, dataclasses.replace(suite, specs=specs))
    out = tmp_path / "dev.jsonl"
    assert cli.main(["suite", suite.name, "--device", "cpu", "--variants", "onednn", "--backend", "onednn",
                     "--input-gemm", "--json", str(out), "--quiet", "--warmup", "0", "--min-time",
                     "0.005", "--min-samples", "3", "--max-time", "0.05"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["op"], r["variant"], r["status"]) for r in recs] == \
        [("rnn", "onednn", "ok"), ("rnn", "onednn", "ok"), ("lstm", "onednn", "ok")]
    assert all(r["check"]["passed"] for r in recs)
    assert [r["options"].get("nonlinearity") for r in recs] == ["relu", "relu", None]
    capsys.readouterr()


def test_missing_library_skips_with_the_places_searched(tmp_path, monkeypatch):
    from microbench import cases  # noqa: F401
    from microbench.harness import Settings
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    from microbench.runner import Case, run_case
    monkeypatch.setenv(L.ENV_VAR, str(tmp_path))
    L._loader.cache_clear()
    try:
        case = Case(REGISTRY[("lstm", "onednn", "onednn")], RNNProblem("lstm", 2, 2, 4, 4, 1), "fp32")
        o = run_case(case, Settings(0.01, 0.05, 1.0, 3, 1.0), {"env_id": "t"}, 0.0)
        assert o.status == "skipped"
        assert str(tmp_path) in o.error and "onednn-cpu-gomp" in o.error
    finally:
        monkeypatch.delenv(L.ENV_VAR)
        L._loader.cache_clear()


def test_nvtx_phase_per_primitive_named_by_its_kind():
    from kernels.onednn.rnn import OnednnRNN
    from kernels import nvtx
    _lib()
    p = LSTMParams.random(4, 4, 1, seed=0).astype(np.float32)
    with OnednnRNN(p, batch=2, seq_len=2, reorder_each_call=True) as rnn:
        assert [s.kind for s in rnn.steps] == ["reorder", "reorder", "rnn"]
        rnn.bind(np.ones((2, 2, 4), np.float32), np.zeros((1, 2, 4), np.float32),
                 np.zeros((1, 2, 4), np.float32))
        old = nvtx.level()
        try:
            nvtx.set_level("on")
            nvtx.reset_count()
            rnn.run()
            assert nvtx.reset_count() == 3          # one range per primitive executed
            nvtx.set_level("case")
            rnn.run()
            assert nvtx.reset_count() == 0
        finally:
            nvtx.set_level(old)


def test_bf16_case_runs_or_skips_with_onednn_status():
    from microbench import cases  # noqa: F401
    from microbench.harness import Settings
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    from microbench.runner import Case, run_case
    _lib()
    case = Case(REGISTRY[("gru", "onednn", "onednn")], RNNProblem("gru", 3, 2, 8, 8, 1), "bf16", 0)
    o = run_case(case, Settings(0.01, 0.05, 1.0, 3, 1.0), {"env_id": "t"}, 0.0)
    if o.status == "skipped":
        assert "dnnl_unimplemented" in o.error
    else:
        assert o.status == "ok" and o.check.passed, o.error


def test_rnn_after_close_is_refused_not_executed():
    """Executing released primitives crashed the process; after close() a call is an error."""
    from kernels.onednn.rnn import OnednnRNN
    _lib()
    p = VanillaRNNParams.random(4, 5, 1, seed=1, nonlinearity="tanh").astype(np.float32)
    rnn = OnednnRNN(p, batch=2, seq_len=3)
    x, h0 = np.ones((3, 2, 4), np.float32), np.zeros((1, 2, 5), np.float32)
    rnn(x, h0)
    rnn.close()
    with pytest.raises(BadInput, match="was closed"):
        rnn(x, h0)


def test_conv_bf16_is_reachable_from_the_command_line(capsys, tmp_path):
    """The onednn conv records compute bf16, but `conv` refused every CPU dtype but fp32/fp64:
    the row now runs, or is skipped with oneDNN's status where the CPU has no bf16."""
    from microbench import cli
    _lib()
    out = tmp_path / "c.jsonl"
    code = cli.main(["conv", "--onednn", "--dtype", "bf16", "--device", "cpu", "-N", "1", "-C", "4",
                     "-H", "6", "-W", "6", "-K", "4", "--min-time", "0", "--warmup", "0", "--quiet",
                     "--json", str(out)])
    capsys.readouterr()
    [rec] = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and rec["dtype"] == "bf16" and rec["variant"] == "onednn"
    assert rec["status"] == "ok" or (rec["status"] == "skipped" and "dnnl_" in rec["error"])
