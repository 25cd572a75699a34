"""The direct cuDNN binding: discovery, status translation, weight layout and argument checks
run everywhere; the ``gpu`` tests run LSTM/GRU (every algorithm) and conv against the references.

The real-library tests use the cuDNN that kernels.cudnn.lib.find() locates (a wheel on sys.path
or MICROBENCH_CUDNN_PATH): the test extras install the wheel, so in CI its absence fails them;
elsewhere they skip saying why.
"""
import ctypes
import os

import numpy as np
import pytest

from kernels.cudnn import errors as E
from kernels.cudnn import lib as L
from kernels.cudnn import handles
from kernels.cudnn import rnn as R
from kernels.errors import BadInput, MissingDependency, Unsupported
from kernels.params import GRUParams, LSTMParams

# cuDNN's documented linLayerID order (cudnnGetRNNWeightParams / cudnnRNNMode_t), written out
# independently of kernels.cudnn.rnn: (matrix applied to, gate).
LSTM_DOC = {0: ("input", "input gate"), 1: ("input", "forget gate"), 2: ("input", "new memory"),
            3: ("input", "output gate"), 4: ("recurrent", "input gate"),
            5: ("recurrent", "forget gate"), 6: ("recurrent", "new memory"),
            7: ("recurrent", "output gate")}
GRU_DOC = {0: ("input", "reset gate"), 1: ("input", "update gate"), 2: ("input", "new memory"),
           3: ("recurrent", "reset gate"), 4: ("recurrent", "update gate"),
           5: ("recurrent", "new memory")}
# our canonical gate letters for cuDNN's gate names
CANON = {"input gate": "i", "forget gate": "f", "new memory": None, "output gate": "o",
         "reset gate": "r", "update gate": "z"}


# -- discovery ---------------------------------------------------------------------------------
def _fake_lib_dir(root, sub=("nvidia", "cudnn", "lib")):
    d = root.joinpath(*sub)
    d.mkdir(parents=True)
    (d / L.MAIN).write_bytes(b"not an ELF file")
    return d


def test_env_var_directory_wins(tmp_path):
    d = _fake_lib_dir(tmp_path / "env")
    _fake_lib_dir(tmp_path / "site")
    f = L.find({L.ENV_VAR: str(d)}, [str(tmp_path / "site")])
    assert f.directory == str(d) and f.source == f"env {L.ENV_VAR}"


def test_env_var_may_name_the_file_and_list_several(tmp_path):
    d = _fake_lib_dir(tmp_path / "b")
    value = os.pathsep.join([str(tmp_path / "missing"), str(d / L.MAIN)])
    f = L.find({L.ENV_VAR: value}, [])
    assert f.directory == str(d)
    assert [c.present for c in f.searched] == [False, True]


def test_env_var_set_but_wrong_is_reported_not_replaced(tmp_path):
    _fake_lib_dir(tmp_path / "site")
    f = L.find({L.ENV_VAR: str(tmp_path / "nowhere")}, [str(tmp_path / "site")])
    assert f.directory is None
    with pytest.raises(MissingDependency) as e:
        L.load_from(f)
    assert str(tmp_path / "nowhere") in str(e.value) and L.ENV_VAR in str(e.value)


def test_wheel_layout_on_search_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    d = _fake_lib_dir(tmp_path / "site")
    f = L.find({}, [str(empty), str(tmp_path / "site")], system=False)
    assert f.directory == str(d) and f.source == "sys.path"


def test_nothing_found_lists_places_searched(tmp_path):
    (tmp_path / "site" / "nvidia" / "cudnn" / "lib").mkdir(parents=True)  # wheel dir, no library
    f = L.find({}, [str(tmp_path / "site")], system=False)
    assert f.directory is None
    with pytest.raises(MissingDependency) as e:
        L.load_from(f)
    msg = str(e.value)
    assert "site/nvidia/cudnn/lib" in msg and "nvidia-cudnn-cu13" in msg


def test_system_loader_is_the_last_resort(tmp_path):
    f = L.find({}, [str(tmp_path)])
    assert f.directory == L.SYSTEM and f.searched[-1].source == L.SYSTEM


def test_unloadable_file_is_a_missing_dependency(tmp_path):
    d = _fake_lib_dir(tmp_path / "bad")
    with pytest.raises(MissingDependency, match="cannot be loaded"):
        L.load_from(L.find({L.ENV_VAR: str(d)}, []))


def test_version_format():
    assert L.format_version(92801) == "9.28.1"
    assert L.format_version(90100) == "9.1.0"
    assert L.format_version(8907) == "8.9.7"


def _real_library():
    """The installed cuDNN (it loads without a GPU); a skip without one, and in CI, where the
    test extras install the wheel, a failure."""
    f = L.find()
    try:
        if f.directory is None:
            raise MissingDependency("libcudnn.so.9", "the cuDNN tests", f.searched_text())
        return L.load_from(f)
    except MissingDependency as e:
        if os.environ.get("CI"):
            pytest.fail(f"cuDNN is a test dependency (the test-cuda13 extra) but: {e}")
        pytest.skip(str(e))


def test_real_library_loads_and_reports_version():
    lib = _real_library()
    assert lib.version_int >= 90000
    d = L.describe()
    assert d["available"] and d["version"] == lib.version
    assert set(d["sublibraries"]) <= set(L.SUBLIBS)


def test_real_library_names_match_our_table():
    lib = _real_library()
    for code, name in E.STATUS_NAMES.items():
        assert lib.error_string(code) == name, code


def test_real_library_host_side_descriptors():
    """Descriptor calls that need no GPU: create, set (v8 RNN, tensor), read back, destroy."""
    from contextlib import ExitStack
    lib = _real_library()
    R.bind(lib)
    with ExitStack() as st:
        rnn = st.enter_context(R.Descriptor(lib, "RNNDescriptor"))
        drop = st.enter_context(R.Descriptor(lib, "DropoutDescriptor"))
        lib.call("cudnnSetRNNDescriptor_v8", rnn.ptr, R.CUDNN_RNN_ALGO["standard"],
                 R.CUDNN_CELL["lstm"], R.CUDNN_RNN_DOUBLE_BIAS, R.CUDNN_UNIDIRECTIONAL,
                 R.CUDNN_LINEAR_INPUT, R.CUDNN_DATA_FLOAT, R.CUDNN_DATA_FLOAT, R.CUDNN_FMA_MATH,
                 32, 64, 64, 2, drop.ptr, R.CUDNN_RNN_PADDED_IO_DISABLED)
        t = R.tensor_nd(lib, st, R.CUDNN_DATA_FLOAT, (2, 3, 5))
        assert R.tensor_dims(lib, t) == (2, 3, 5)
    assert not rnn.ptr and not t.ptr  # released


def test_real_library_error_carries_name_text_and_call():
    lib = _real_library()
    R.bind(lib, ("cudnnSetTensorNdDescriptor",))
    from contextlib import ExitStack
    with ExitStack() as st:
        t = st.enter_context(R.Descriptor(lib, "TensorDescriptor"))
        dims = (ctypes.c_int * 3)(2, -1, 5)
        with pytest.raises(E.CudnnError) as e:
            lib.call("cudnnSetTensorNdDescriptor", t.ptr, R.CUDNN_DATA_FLOAT, 3, dims, dims)
    assert e.value.call == "cudnnSetTensorNdDescriptor"
    assert e.value.name.startswith("CUDNN_STATUS_BAD_PARAM")
    assert "cudnnSetTensorNdDescriptor failed: CUDNN_STATUS_BAD_PARAM" in str(e.value)


# -- error translation -------------------------------------------------------------------------
class _FakeLib:
    def error_string(self, status):
        return f"text for {status}"

    def last_error(self):
        return "detail"


@pytest.mark.parametrize("code,name", sorted(E.STATUS_NAMES.items()))
def test_every_status_translates(code, name):
    if code == 0:
        E.check("cudnnAnything", code)
        return
    with pytest.raises(E.CudnnError) as e:
        E.check("cudnnAnything", code, _FakeLib())
    err = e.value
    assert (err.status, err.name, err.call) == (code, name, "cudnnAnything")
    assert err.text == f"text for {code}" and err.detail == "detail"
    msg = str(err)
    assert msg.startswith(f"cudnnAnything failed: {name} ({code})") and "detail" in msg
    assert isinstance(err, Unsupported) == (code // 1000 == 3)


def test_status_table_is_complete_per_category():
    assert set(E.STATUS_CODES) == set(E.STATUS_NAMES.values())
    for code in E.STATUS_NAMES:
        assert E.category(code) in E.CATEGORIES


def test_unknown_status_still_has_a_name():
    assert E.status_name(3999) == "CUDNN_STATUS_NOT_SUPPORTED_999 (unknown to microbench)"
    assert E.status_name(77) == "CUDNN_STATUS_UNKNOWN_77"
    with pytest.raises(E.CudnnNotSupported):
        E.check("f", 3999)


def test_error_text_failure_does_not_mask_status():
    class Broken:
        def error_string(self, s):
            raise OSError("boom")
    with pytest.raises(E.CudnnError, match="CUDNN_STATUS_EXECUTION_FAILED"):
        E.check("cudnnRNNForward", 5000, Broken())


# -- weight layout -----------------------------------------------------------------------------
def test_plan_follows_documented_order():
    for cell, doc in (("lstm", LSTM_DOC), ("gru", GRU_DOC)):
        G = len(doc) // 2
        plan = R.weight_plan(cell, 2, 8)
        assert len(plan) == 2 * 2 * G
        for s in plan:
            side, gate = doc[s.lin_id]
            assert s.matrix == ("w_ih" if side == "input" else "w_hh")
            assert s.bias == ("b_ih" if side == "input" else "b_hh")
            letter = CANON[gate] or ("g" if cell == "lstm" else "n")
            assert s.gate == letter
            k = "ifgo".index(letter) if cell == "lstm" else "rzn".index(letter)
            assert (s.rows.start, s.rows.stop) == (k * 8, (k + 1) * 8)


class FakeWeightSpace:
    """Stands in for cudnnGetRNNWeightParams: hands out blocks in a flat buffer in an order of
    its own (reversed, with gaps), and records what was written where."""

    def __init__(self, cell, I, H, L, dims_style=3):
        G = 4 if cell == "lstm" else 3
        self.blocks, off = {}, 64
        for layer in reversed(range(L)):
            width = I if layer == 0 else H
            for lin in reversed(range(2 * G)):
                cols = width if lin < G else H
                mdims = (1, H, cols) if dims_style == 3 else (H * cols,)
                self.blocks[(layer, lin)] = (R.Block(off, mdims), R.Block(off + H * cols, (1, H, 1)))
                off += H * cols + H + 3  # a gap cuDNN might leave
        self.buf = np.full(off, np.nan)
        self.queried = []

    def query(self, layer, lin):
        self.queried.append((layer, lin))
        return self.blocks[(layer, lin)]

    def write(self, addr, a):
        self.buf[addr:addr + a.size] = a.ravel()

    def read(self, layer, lin):
        m, b = self.blocks[(layer, lin)]
        n = int(np.prod(m.dims))
        return self.buf[m.addr:m.addr + n], self.buf[b.addr:b.addr + int(np.prod(b.dims))]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_weights_land_where_cudnn_says(cell):
    I, H, L = 5, 7, 3
    P = LSTMParams if cell == "lstm" else GRUParams
    params = P.random(I, H, L, seed=3)
    fake = FakeWeightSpace(cell, I, H, L)
    R.load_weights(params, fake.query, fake.write)
    doc = LSTM_DOC if cell == "lstm" else GRU_DOC
    G = len(doc) // 2
    assert sorted(fake.queried) == sorted(fake.blocks)
    for (layer, lin) in fake.blocks:
        side, gate = doc[lin]
        letter = CANON[gate] or ("g" if cell == "lstm" else "n")
        k = params.gates.index(letter)
        which = "w_ih" if side == "input" else "w_hh"
        bias = "b_ih" if side == "input" else "b_hh"
        m, b = fake.read(layer, lin)
        lay = params.layers[layer]
        np.testing.assert_array_equal(m, getattr(lay, which)[k * H:(k + 1) * H].ravel())
        np.testing.assert_array_equal(b, getattr(lay, bias)[k * H:(k + 1) * H])
    assert lin < 2 * G


def test_flat_matrix_dims_are_accepted():
    params = LSTMParams.random(3, 4, 1)
    fake = FakeWeightSpace("lstm", 3, 4, 1, dims_style=1)
    R.load_weights(params, fake.query, fake.write)


def test_layout_mismatch_is_refused():
    params = LSTMParams.random(3, 4, 1)
    fake = FakeWeightSpace("lstm", 3, 4, 1)
    m, b = fake.blocks[(0, 0)]
    fake.blocks[(0, 0)] = (R.Block(m.addr, (1, 3, 4)), b)  # transposed: same size, wrong shape
    with pytest.raises(R.LayoutMismatch, match="linLayerID 0"):
        R.load_weights(params, fake.query, fake.write)
    fake.blocks[(0, 0)] = (R.Block(0, m.dims), b)
    with pytest.raises(R.LayoutMismatch, match="NULL"):
        R.load_weights(params, fake.query, fake.write)


# -- argument validation -----------------------------------------------------------------------
def _params(cell="lstm", dtype=np.float32):
    return (LSTMParams if cell == "lstm" else GRUParams).random(4, 6, 2, dtype=dtype)


def test_config_values():
    cfg = R.rnn_config(_params(), batch=3, seq_len=5, algo="persist_static")
    assert (cfg.algo_id, cfg.math_type, cfg.data_type) == (1, R.CUDNN_FMA_MATH, R.CUDNN_DATA_FLOAT)
    assert cfg.describe()["algo"] == "CUDNN_RNN_ALGO_PERSIST_STATIC"
    cfg = R.rnn_config(_params(dtype=np.float16), batch=3, seq_len=5, precision="fp16")
    assert (cfg.data_type, cfg.math_prec, cfg.math_type) == (R.CUDNN_DATA_HALF, R.CUDNN_DATA_FLOAT,
                                                             R.CUDNN_TENSOR_OP_MATH)
    # tf32 is CUDNN_DEFAULT_MATH (TF32 Tensor Cores for fp32 data, as PyTorch with TF32 allowed);
    # ALLOW_CONVERSION would let cuDNN down-convert fp32 to fp16 (values from cudnn_graph.h)
    cfg = R.rnn_config(_params(), batch=3, seq_len=5, precision="tf32")
    assert cfg.math_type == R.CUDNN_DEFAULT_MATH == 0
    assert handles.CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION == 2 and R.CUDNN_FMA_MATH == 3
    assert all(p[3] != handles.CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION for p in R.PRECISION.values())


@pytest.mark.parametrize("kw,exc,match", [
    (dict(algo="persistent"), BadInput, "algo 'persistent' is unknown"),
    (dict(mode="backward"), BadInput, "mode 'backward' is unknown"),
    (dict(precision="fp64"), Unsupported, "dtype fp64"),
    (dict(precision="fp16"), BadInput, "params are float32"),
    (dict(batch=0), BadInput, "batch=0"),
    (dict(seq_len=1.5), BadInput, "seq_len"),
])
def test_config_rejects(kw, exc, match):
    args = dict(batch=2, seq_len=3)
    args.update(kw)
    with pytest.raises(exc, match=match):
        R.rnn_config(_params(), **args)


def test_config_rejects_other_params():
    with pytest.raises(BadInput, match="LSTMParams or GRUParams"):
        R.rnn_config(object(), batch=1, seq_len=1)


def test_array_checks():
    cfg = R.rnn_config(_params("gru"), batch=2, seq_len=3)
    x, h = np.zeros((3, 2, 4), np.float32), np.zeros((2, 2, 6), np.float32)
    R.check_arrays(cfg, x, h, None)
    with pytest.raises(BadInput, match="GRU has no cell state"):
        R.check_arrays(cfg, x, h, h)
    with pytest.raises(BadInput, match=r"x has shape \(3, 2, 5\)"):
        R.check_arrays(cfg, np.zeros((3, 2, 5), np.float32), h, None)
    with pytest.raises(BadInput, match="h0 is float64"):
        R.check_arrays(cfg, x, h.astype(np.float64), None)
    with pytest.raises(BadInput, match="C-contiguous"):
        R.check_arrays(cfg, np.zeros((2, 3, 4), np.float32).transpose(1, 0, 2), h, None)
    lcfg = R.rnn_config(_params("lstm"), batch=2, seq_len=3)
    with pytest.raises(BadInput, match="c0 is required"):
        R.check_arrays(lcfg, x, h, None)


def test_conv_request_checks():
    from kernels.conv import ConvProblem
    from kernels.cudnn import conv as C
    p = ConvProblem(N=1, C=2, H=5, W=5, K=3, R=3, S=3, layout="NHWC")
    assert C.check_request(p, "float16", "auto") == "fp16"
    with pytest.raises(BadInput, match="conv algo 'fast'"):
        C.check_request(p, "fp32", "fast")
    with pytest.raises(Unsupported, match="fp64"):
        C.check_request(p, "fp64", "gemm")
    w = np.arange(3 * 2 * 3 * 3).reshape(3, 2, 3, 3)
    assert C.weights_for_layout(w, "NHWC")[1, 2, 0, 1] == w[1, 1, 2, 0]


# -- registry ----------------------------------------------------------------------------------
def test_cases_registered_and_skip_without_gpu():
    from kernels import gpu
    from microbench.cases import cudnn as cases
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    for op in ("lstm", "gru"):
        for variant in cases.ALGORITHMS:
            rec = REGISTRY[(op, variant, "cupy")]
            assert rec.device == "cuda" and not rec.fusable
    if gpu.available():
        return
    with pytest.raises(Unsupported, match="needs a GPU"):
        REGISTRY[("lstm", "cudnn", "cupy")].build(RNNProblem("lstm", 3, 2, 4, 5), 0,
                                                  precision="fp32", plan=None)


# -- on a GPU ----------------------------------------------------------------------------------
ALGOS = list(R.CUDNN_RNN_ALGO)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_rnn_every_algorithm_matches_reference(op, algo, precision):
    from microbench.cases import cudnn as cases
    from microbench.problems import RNNProblem
    variant = next(v for v, a in cases.ALGORITHMS.items() if a == algo)
    problem = RNNProblem(op, T=7, B=4, I=24, H=32, L=2)
    try:
        prep = cases.build_cudnn_rnn(problem, 5, algo=algo, precision=precision)
    except Unsupported as e:
        pytest.skip(f"{variant}: {e}")
    try:
        chk = prep.check()
        assert chk.passed, chk.detail
        prep.run()  # second call: buffers reused, still fine
        assert prep.check().passed
    finally:
        prep.close()


@pytest.mark.gpu
def test_rnn_training_mode_and_close():
    import cupy as cp
    from microbench.cases.rnn import make_inputs
    from microbench.problems import RNNProblem
    problem = RNNProblem("lstm", T=5, B=3, I=8, H=16, L=1)
    inp = make_inputs(problem, 1, "fp32")
    rnn = R.CudnnRNN(inp["params"], batch=3, seq_len=5, mode="training")
    assert rnn.reserve_bytes > 0
    y, h, c = rnn(cp.asarray(inp["x"]), cp.asarray(inp["h0"]), cp.asarray(inp["c0"]))
    assert y.shape == (5, 3, 16)
    rnn.close()
    with pytest.raises(BadInput, match="closed"):
        rnn(cp.asarray(inp["x"]), cp.asarray(inp["h0"]), cp.asarray(inp["c0"]))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_conv_every_algorithm_matches_reference(layout, precision):
    import cupy as cp
    from kernels import dtypes
    from kernels.conv import ConvProblem, conv2d_reference
    from kernels.cudnn import conv as C
    p = ConvProblem(N=2, C=8, H=9, W=9, K=16, R=3, S=3, pad=1, layout=layout)
    x, w, b = p.random_inputs(np.random.default_rng(0), precision)
    want = conv2d_reference(x, w, b, p)
    ran = 0
    for algo in C.FWD_ALGOS:
        try:
            conv = C.CudnnConv(p, precision=precision, algo=algo)
        except Unsupported:
            continue
        with conv:
            got = conv(cp.asarray(x), cp.asarray(w), cp.asarray(b)).get().astype(np.float64)
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert err <= dtypes.tolerance(precision) * 10, (algo, err)
        ran += 1
    assert ran >= 1
    table = C.algorithm_table(p, precision)
    assert [r["algo"] for r in table] == list(C.FWD_ALGOS)


@pytest.mark.gpu
def test_conv_frontend_matches_reference():
    import cupy as cp
    from kernels.conv import ConvProblem, conv2d_reference
    from kernels.cudnn import conv as C
    ok, reason = C.frontend_available()
    if not ok:
        pytest.skip(reason)
    p = ConvProblem(N=2, C=8, H=9, W=9, K=16, R=3, S=3, pad=1, layout="NHWC")
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp16")
    with C.FrontendConv(p, precision="fp16") as conv:
        got = conv(cp.asarray(x), cp.asarray(w), cp.asarray(b)).get().astype(np.float64)
    want = conv2d_reference(x, w, b, p)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 2e-2


def test_conv_cudnn_variants_are_registered_and_skip_without_a_gpu():
    from kernels.conv import ConvProblem
    from kernels.cudnn.conv import FWD_ALGOS
    from kernels import gpu
    from microbench import registry
    import microbench.cases  # noqa: F401
    names = {r.variant for r in registry.ours("conv") if r.device == "cuda" and r.variant.startswith("cudnn")}
    assert names == {"cudnn", "cudnn_frontend"} | {f"cudnn_{a}" for a in FWD_ALGOS}
    if gpu.detect()[0]:
        pytest.skip("a GPU is present")
    rec = registry.REGISTRY[("conv", "cudnn", "cupy")]
    with pytest.raises(Unsupported, match="need a GPU"):
        rec.build(ConvProblem(N=1, C=4, H=8, W=8, K=4, R=3, S=3, pad=1), 0, precision="fp32")


@pytest.mark.gpu
def test_rnn_tf32_keeps_fp32_range():
    """tf32 must be TF32 (fp32's exponent range), not a down-conversion to fp16: with inputs of
    magnitude 1e-20 and zero states and biases, the outputs are ~1e-21, which fp16 flushes to 0
    (relative error 1) while TF32 keeps them to ~1e-3.  A CPU cannot tell these apart; the
    constant is checked in test_config_values."""
    import cupy as cp
    from kernels.params import LSTMParams
    from kernels.reference import lstm_reference
    p = LSTMParams.random(8, 16, 1, seed=2, dtype=np.float32)
    for layer in p.layers:
        layer.b_ih[...] = 0
        layer.b_hh[...] = 0
    x = (1e-20 * np.random.default_rng(3).standard_normal((5, 3, 8))).astype(np.float32)
    zeros = np.zeros((1, 3, 16), np.float32)
    rnn = R.CudnnRNN(p, batch=3, seq_len=5, precision="tf32")
    y = rnn(cp.asarray(x), cp.asarray(zeros), cp.asarray(zeros))[0].get().astype(np.float64)
    ry, _ = lstm_reference(x, p, zeros, zeros)
    assert np.max(np.abs(y - ry)) / np.max(np.abs(ry)) < 1e-2
