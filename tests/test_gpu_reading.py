"""Defects found by reading the GPU code against CuPy's, cuDNN's and cudnn-frontend's sources, each
with a test that runs without a GPU: the real CuPy is imported and introspected where it is
installed (it imports without a driver), and stand-ins model the semantics that matter."""
import importlib.util
import sys
import types

import numpy as np
import pytest

HAVE_CUPY = importlib.util.find_spec("cupy") is not None


# -- tf32 on the CuPy GEMMs ------------------------------------------------------------------------
def _fake_linalg(monkeypatch):
    """A stand-in for cupy._core._routines_linalg with CuPy 14's names and values."""
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7
    linalg.state = {np.dtype(np.float32): 1}
    linalg.get_compute_type = lambda dt: linalg.state[np.dtype(dt)]
    linalg.set_compute_type = lambda dt, ct: linalg.state.__setitem__(np.dtype(dt), ct)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    cupy = types.ModuleType("cupy")
    cupy._core = core
    for name, mod in (("cupy", cupy), ("cupy._core", core), ("cupy._core._routines_linalg", linalg)):
        monkeypatch.setitem(sys.modules, name, mod)
    return cupy, linalg


def test_tf32_sets_cupys_float32_compute_type_and_restores_it(monkeypatch):
    from kernels.gpu import cublas_math
    cupy, linalg = _fake_linalg(monkeypatch)
    with cublas_math(cupy, "tf32"):
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    with cublas_math(cupy, "fp32"):
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    with pytest.raises(ZeroDivisionError):      # restored on an exception too
        with cublas_math(cupy, "tf32"):
            1 / 0
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT


@pytest.mark.skipif(not HAVE_CUPY, reason="CuPy is not installed (the test extra installs it)")
def test_the_installed_cupy_has_what_tf32_uses():
    """Every tf32 case once raised AttributeError: CuPy 14's cublas module has no
    CUBLAS_TF32_TENSOR_OP_MATH.  The names used now must exist in the real CuPy."""
    import cupy
    from kernels.gpu import tf32_switch
    linalg = tf32_switch(cupy)
    assert linalg.COMPUTE_TYPE_TF32 != linalg.COMPUTE_TYPE_DEFAULT
    assert callable(linalg.get_compute_type) and callable(linalg.set_compute_type)


# -- cuDNN convolution math ------------------------------------------------------------------------
def test_fp32_frontend_graph_deselects_tensor_core_plans():
    """cudnn-frontend may pick Tensor Core (TF32) engines for fp32 unless their plans are
    deselected between create_execution_plans and check_support; engines that down-convert their
    inputs (DOWN_CONVERT_INPUTS, e.g. fp32 to fp16) are another precision than every row's, so
    they go for tf32 and fp16 too, as PyTorch's cuDNN v8 convolution filters them always."""
    from kernels.cudnn.conv import build_graph
    calls = []

    class Graph:
        def __getattr__(self, name):
            return lambda *a: calls.append((name, a))
    cudnn = types.SimpleNamespace(heur_mode=types.SimpleNamespace(A="A", FALLBACK="FB"),
                                  numerical_note=types.SimpleNamespace(TENSOR_CORE="TC", DOWN_CONVERT_INPUTS="DC"))
    build_graph(Graph(), cudnn, "fp32")
    names = [c[0] for c in calls]
    assert ("deselect_numeric_notes", (["DC", "TC"],)) in calls
    assert names.index("create_execution_plans") < names.index("deselect_numeric_notes") \
        < names.index("check_support") < names.index("build_plans")
    for precision in ("tf32", "fp16"):
        calls.clear()
        build_graph(Graph(), cudnn, precision)
        assert [c for c in calls if c[0] == "deselect_numeric_notes"] == [("deselect_numeric_notes", (["DC"],))]


def test_legacy_heuristic_pick_skips_tensor_core_rows_for_fp32():
    from kernels.cudnn import conv as C
    ok = "CUDNN_STATUS_SUCCESS"
    rows = [{"algo": "WINOGRAD_NONFUSED", "status": ok, "math_type": C.CUDNN_TENSOR_OP_MATH},
            {"algo": "IMPLICIT_GEMM", "status": "CUDNN_STATUS_NOT_SUPPORTED", "math_type": 3},
            {"algo": "IMPLICIT_PRECOMP_GEMM", "status": ok, "math_type": C.CUDNN_FMA_MATH}]
    assert C.pick_heuristic_row(rows, "fp32")["algo"] == "IMPLICIT_PRECOMP_GEMM"
    assert C.pick_heuristic_row(rows, "tf32")["algo"] == "WINOGRAD_NONFUSED"
    assert C.pick_heuristic_row(rows[:2], "fp32") is None
    assert (C.CUDNN_TENSOR_OP_MATH, C.CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, C.CUDNN_FMA_MATH) == (1, 2, 3)


# -- PyCUDA and the default GPU plan ---------------------------------------------------------------
def test_pycuda_default_plan_leaves_out_the_steps_it_cannot_run():
    """PyCUDA launches on the legacy default stream only; the default GPU plan once held
    ``graph`` (a capture on a non-blocking stream), so the pycuda backend never ran it."""
    from fusion.steps import Plan, full_plan
    from kernels.backends import BACKENDS
    from kernels.errors import Unsupported
    pyc = full_plan("cuda", "pycuda")
    assert "graph" not in pyc and "wavefront" not in pyc and "fuse_pointwise" in pyc
    assert "streams" in pyc            # its pointwise kernel stays on the caller's stream
    assert full_plan("cuda", "cupy") == Plan.full("cuda")
    BACKENDS["pycuda"].check_plan(pyc)
    with pytest.raises(Unsupported, match="legacy default stream"):
        BACKENDS["pycuda"].check_plan(Plan(frozenset({"fuse_pointwise", "graph"})))


# -- the persistent kernel's launcher --------------------------------------------------------------
def _persistent_on_stand_in(monkeypatch, cell, precision):
    """PersistentRNN with a stand-in CuPy (NumPy arrays) and a kernel that records its arguments."""
    from kernels import persistent as kp
    from kernels.params import PARAMS
    from tests import fakecuda
    cp = fakecuda.install(monkeypatch)
    cp.cuda.runtime = types.SimpleNamespace(getDevice=lambda: 0)
    cp.cuda.driver = types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=lambda *a: 1)
    launches = []

    class Kernel:
        kernel = types.SimpleNamespace(ptr=1)

        def __call__(self, grid, block, args, shared_mem=0):
            launches.append(args)
    monkeypatch.setattr(kp, "_cupy_kernel", lambda symbol, dev: Kernel())
    monkeypatch.setattr(kp, "limits_from_device", lambda dev, k: kp.H100)
    p = PARAMS[cell].random(8, 16, 1, seed=3)
    return kp.PersistentRNN(p, precision), launches


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_call_converts_x_and_defaults_states(monkeypatch, cell):
    """fp32 x with fp16 weights once promoted the input GEMM to fp32 while the kernel read it as
    fp16; c0=None (zeros everywhere else) was passed on as None."""
    run, launches = _persistent_on_stand_in(monkeypatch, cell, "fp16")
    x = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float32)
    run(x)
    w_hh, gx, _, h0, c0, y, h_n, c_n = launches[-1][:8]
    assert gx.dtype == np.float16 and y.dtype == np.float16
    assert h0.shape == (3, 16) and not h0.any()
    if cell == "lstm":
        assert c0.shape == (3, 16) and not c0.any()
    from kernels.errors import BadInput
    with pytest.raises(BadInput, match="h0 must be"):
        run(x, np.zeros((2, 16), np.float16))


# -- framework rows: the mode and timer they really ran with ---------------------------------------
def test_framework_worker_reports_the_mode_it_runs():
    """Framework rows were labelled cold/+graph while the worker ignored both: the worker now
    flushes when asked (its own flush, or on the CPU a NumPy buffer), never replays a graph, and
    reports what it ran."""
    from microbench.frameworks.worker import timing_mode
    bare = types.SimpleNamespace()
    _, flush, mode, name = timing_mode(bare, "cpu", {"cold": True, "graph": True})
    assert flush is not None and mode == "cold" and name == "perf_counter"
    flush()
    _, flush, mode, _ = timing_mode(bare, "cuda", {"cold": True, "graph": False})
    assert flush is None and mode == "warm"         # no device flush offered: not called cold
    events = types.SimpleNamespace(name="cuda-events", sample=lambda fn: 0.0)
    gpu = types.SimpleNamespace(timer=lambda dev: events, flusher=lambda dev: (lambda: None))
    timer, flush, mode, name = timing_mode(gpu, "cuda", {"cold": True})
    assert timer is events and mode == "cold" and name == "cuda-events"


def test_runner_records_the_mode_a_framework_row_ran(monkeypatch):
    from microbench import runner
    from microbench.harness import Settings
    from microbench.problems import RNNProblem
    from microbench.registry import Check, Prepared, VariantRecord
    from microbench.stats import Measurement
    from microbench import store

    def build(problem, seed, *, precision, plan):
        return Prepared(inputs={}, run=lambda: None, flops=1, bytes=1,
                        check=lambda: Check(0.0, 1e-5, True, ""), info={},
                        measure=lambda s: Measurement([1e-3] * 5, s.max_noise, mode="warm",
                                                      timer="perf_counter around a synchronizing call"))
    rec = VariantRecord("lstm", "fused", "torch", build, "stand-in", framework="torch")
    case = runner.Case(rec, RNNProblem("lstm", 2, 2, 2, 2, 1), "fp32")
    out = runner.run_case(case, Settings(warmup=0, min_time=0, graph=True), {"env_id": "x"}, 0.0)
    assert out.status == "ok", out.error
    opts = out.record["options"]
    assert opts["mode"] == "warm" and opts["mode_asked"] == "warm+graph"
    assert out.record["timer"] == "perf_counter around a synchronizing call"
    # keyed by what was asked, so --resume finds it
    assert store.identity(out.record) == store.case_identity(case, "x", "warm+graph")


def test_cudnn_loaded_directory_reads_the_process_maps(monkeypatch, tmp_path):
    """benchmarks/gpu/cudnn_vs_torch.py points our binding at the cuDNN PyTorch already mapped,
    so one process never holds two cuDNN builds under one soname."""
    import builtins
    from kernels.cudnn import lib
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /opt/x/torch/lib/libcudnn.so.9\n"
                    "7f02-7f03 r-xp 0 08:01 2 /usr/lib/libc.so.6\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(maps if p == "/proc/self/maps" else p, *a, **k))
    assert lib.loaded_directory() == "/opt/x/torch/lib"


# -- installs --------------------------------------------------------------------------------------
def test_a_cuda13_cupy_on_an_older_driver_is_a_skip_with_the_reason():
    from kernels.gpu import driver_mismatch
    assert driver_mismatch(12040, 13) == (
        "the installed cupy-cuda13x needs a driver for CUDA 13; this driver supports CUDA 12.4: "
        "update the driver, or install cupy-cuda12x (scripts/setup picks the CuPy that matches "
        "the driver)")
    assert driver_mismatch(13000, 13) is None and driver_mismatch(13020, 12) is None


def test_backend_reports_the_driver_mismatch(monkeypatch):
    from kernels import gpu
    from kernels.backends import BACKENDS
    monkeypatch.setattr(gpu, "detect", lambda: (True, "1 GPU: stand-in"))
    monkeypatch.setattr(gpu, "driver_cuda_version", lambda: 12080)
    monkeypatch.setattr(gpu, "cupy_cuda_major", lambda: 13)
    assert "needs a driver for CUDA 13" in BACKENDS["cupy"].missing()
    monkeypatch.setattr(gpu, "driver_cuda_version", lambda: 13000)
    if HAVE_CUPY:
        assert BACKENDS["cupy"].missing() is None


@pytest.mark.skipif(not HAVE_CUPY, reason="CuPy is not installed (the test extra installs it)")
def test_the_installed_cupy_wheel_names_its_cuda_major():
    from kernels.gpu import cupy_cuda_major
    assert cupy_cuda_major() in (12, 13)


def test_gpu_device_script_fits_its_budget_and_file_limit():
    """benchmarks/gpu/all.sh is the first run on any GPU: its step timeouts (loops counted) must
    add up to under the device tool's 600 s a command with room for the environment step, every
    GPU test file must be one of its steps (no `-x` across files), and it may write at most 8
    files (what comes back)."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    text = (root / "benchmarks/gpu/all.sh").read_text()
    total, mult, files = 0, 1, []
    for line in text.splitlines():
        s = line.strip()
        loop = re.match(r"for \w+ in (.+); do", s)
        if loop:
            mult = len(loop.group(1).split())
        elif s == "done":
            mult = 1
        m = re.match(r"(?:timeout|bench|gpu_test) (\d+) ", s)
        if m and not s.startswith("timeout \"$t\""):
            total += mult * int(m.group(1))
        f = re.match(r"gpu_test \d+ +(tests/\S+\.py)$", s)
        if f:
            files.append(f.group(1))
    assert 0 < total <= 570, total
    gpu_files = sorted(str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py")
                       if re.search(r"^\s*(@pytest\.mark\.gpu\b|pytestmark = .*mark\.gpu\b)", p.read_text(), re.M))
    assert sorted(files) == gpu_files
    assert " -x" not in text
    out = set(re.findall(r'\$OUT/([\w.-]+)"', text))
    assert 0 < len(out) <= 8, out


class _Reached(Exception):
    """Raised by the stand-in library's first real call: construction got that far."""


class _StandInCudnn:
    version = 90000

    def __init__(self):
        self.bound = []

    def fn(self, name, argtypes, restype=None):
        self.bound.append(name)
        return lambda *a: 0

    def call(self, name, *args):
        raise _Reached(name)


@pytest.mark.parametrize("what", ["rnn", "conv"])
def test_cudnn_variants_build_with_the_process_library(monkeypatch, what):
    """Built without ``lib=`` (as the GPU benchmarks and tests do), a cuDNN variant binds and
    calls the library ``load()`` returns: a refactor once left the constructor binding ``None``
    (AttributeError on a GPU) and using a module it no longer imported (NameError)."""
    import kernels.gpu
    import kernels.cudnn.lib as L
    monkeypatch.setattr(kernels.gpu, "detect", lambda *a, **k: (True, ""))
    lib = _StandInCudnn()
    monkeypatch.setattr(L, "load", lambda *a, **k: lib)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=0)))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    if what == "rnn":
        from kernels.cudnn.rnn import CudnnRNN
        from kernels.params import LSTMParams
        build = lambda: CudnnRNN(LSTMParams.random(8, 16, 1, seed=0).astype(np.float32), batch=3, seq_len=5)  # noqa: E731
    else:
        from kernels.conv import ConvProblem
        from kernels.cudnn.conv import CudnnConv
        build = lambda: CudnnConv(ConvProblem(N=2, C=8, H=9, W=9, K=16, R=3, S=3, pad=1))  # noqa: E731
    with pytest.raises(_Reached):
        build()
    assert lib.bound, "the constructor bound no cuDNN function on the loaded library"


def test_persistent_shared_memory_limit_follows_the_largest_plan(monkeypatch):
    """The dynamic shared-memory limit is an attribute of the CUfunction that every instance of
    one cell and precision shares: planned per batch, a smaller plan lowered it below what an
    earlier, larger one launches with (cudaErrorInvalidValue on a GPU)."""
    from kernels import persistent as kp
    from tests import fakecuda
    cp = fakecuda.install(monkeypatch)
    cp.cuda.runtime = types.SimpleNamespace(getDevice=lambda: 0)
    cp.cuda.driver = types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=lambda *a: 1)

    class Kernel:           # one CUfunction, shared like the loader's cached one
        kernel = types.SimpleNamespace(ptr=7)
        max_dynamic_shared_size_bytes = 0

        def __call__(self, grid, block, args, shared_mem=0):
            if shared_mem > 48 * 1024 and shared_mem > self.max_dynamic_shared_size_bytes:
                raise RuntimeError(f"launch with {shared_mem} B of dynamic shared memory above "
                                   f"the function's limit {self.max_dynamic_shared_size_bytes}")
    shared = Kernel()
    monkeypatch.setattr(kp, "_cupy_kernel", lambda symbol, dev: shared)
    monkeypatch.setattr(kp, "limits_from_device", lambda dev, k: kp.H100)
    from kernels.params import PARAMS
    H = 1024
    big, small = 64, 8
    assert kp.plan("lstm", H, big, "fp16").smem > kp.plan("lstm", H, small, "fp16").smem > 48 * 1024
    p = PARAMS["lstm"].random(4, H, 1, seed=0)
    first, second = kp.PersistentRNN(p, "fp16"), kp.PersistentRNN(p, "fp16")
    x = lambda B: np.zeros((2, B, 4), np.float16)  # noqa: E731
    first(x(big))
    second(x(small))          # plans the smaller batch on the same function
    first(x(big))             # ... which must not have lowered the limit the larger one needs
    second(x(big))
