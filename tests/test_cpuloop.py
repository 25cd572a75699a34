"""The compiled CPU step loop (fusion.cpuloop): the same numbers as the Python loop it replaces,
for every cell, layer count, state and input mode, on the serial and the parallel kernel; oneDNN
errors inside the loop surface with the step; and it is used exactly when it applies."""
import numpy as np
import pytest

from fusion import Plan, cpuloop
from fusion import pointwise as fpw
from kernels import RNN
from kernels.onednn.errors import OnednnError
from microbench.cases.rnn import build_rnn, compare, make_inputs, reference_outputs
from microbench.problems import RNNProblem


@pytest.fixture(scope="module")
def onednn(onednn_lib):
    return onednn_lib


CELLS = [("lstm", {}), ("gru", {}), ("rnn", {"nonlinearity": "relu"}), ("rnn", {"nonlinearity": "tanh"})]


def _params(op, extra, I, H, L, seed=3):
    from kernels.params import GRUParams, LSTMParams, VanillaRNNParams
    cls = {"lstm": LSTMParams, "gru": GRUParams, "rnn": VanillaRNNParams}[op]
    return cls.random(I, H, num_layers=L, seed=seed, **extra)


def _both(impl, x, states):
    """One call through the compiled loop and one through the Python loop, same built runner
    (same packed primitives and kernels)."""
    assert impl.compiled_loop
    fast = impl(x, *states)
    impl.compiled_loop = False
    try:
        slow = impl(x, *states)
    finally:
        impl.compiled_loop = True
    return fast, slow


def _flat(out):
    y, st = out
    return [y, *st] if isinstance(st, tuple) else [y, st]


@pytest.mark.parametrize("op,extra", CELLS, ids=lambda v: v if isinstance(v, str) else v.get("nonlinearity", ""))
@pytest.mark.parametrize("T,B,I,H,L", [(5, 3, 7, 9, 2), (1, 1, 4, 3, 1), (7, 2, 33, 17, 1)])
@pytest.mark.parametrize("given_states", [False, True])
def test_compiled_loop_equals_python_loop(onednn, monkeypatch, op, extra, T, B, I, H, L, given_states):
    monkeypatch.setattr(cpuloop, "TEAM_MIN_UNITS", 1 << 20)     # the one-thread-issued loop: same GEMMs
    rng = np.random.default_rng(T * 100 + B)
    impl = RNN(_params(op, extra, I, H, L), backend="numba", dtype="fp32").prepare(T, B)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    states = ()
    if given_states:
        states = (rng.standard_normal((L, B, H)).astype(np.float32),)
        if op == "lstm":
            states += (rng.standard_normal((L, B, H)).astype(np.float32),)
    fast, slow = _both(impl, x, states)
    for a, b in zip(_flat(fast), _flat(slow)):
        np.testing.assert_array_equal(a, b)
    # a second call starts from the given states again (the loop keeps nothing between calls)
    again = impl(x, *states)
    for a, b in zip(_flat(again), _flat(fast)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_parallel_kernel_inside_the_loop(onednn, monkeypatch, op):
    """Above PARALLEL_MIN_UNITS the loop calls numba's parallel kernel (2 threads here)."""
    import numba
    monkeypatch.setattr(fpw, "PARALLEL_MIN_UNITS", 1)
    n = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        impl = RNN(_params(op, {}, 6, 8, 1), backend="numba", dtype="fp32").prepare(4, 3)
        x = np.random.default_rng(0).standard_normal((4, 3, 6)).astype(np.float32)
        fast, slow = _both(impl, x, ())
    finally:
        numba.set_num_threads(n)
    for a, b in zip(_flat(fast), _flat(slow)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_compiled_cases_pass_the_reference_check_with_skip_input(onednn, op):
    """Through the case builder (what the CLI times): skip-input and two layers, float64 reference."""
    prob = RNNProblem(op, 6, 3, 5, 8, 2, skip_input=True)
    prep = build_rnn(prob, seed=4, variant="fused", backend="numba", precision="fp32")
    assert "compiled" in prep.info["step_loop"]
    for _ in range(2):
        check = prep.check()
        assert check.passed, check.detail


def test_a_onednn_error_inside_the_loop_names_the_step(onednn):
    impl = RNN(_params("lstm", {}, 4, 5, 1), backend="numba", dtype="fp32").prepare(3, 2)
    loop = impl._step_loop(0, 2)
    prim, stream, args, nargs, _src = loop._handles
    loop._handles = (prim, stream, args, nargs, 0)       # a NULL memory: set_data_handle refuses it
    x = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(OnednnError, match=r"step 0 \(dnnl_memory_set_data_handle\)"):
        impl(x)


def test_the_loop_refuses_arrays_it_would_overrun(onednn):
    """numba does not check bounds: a missing state or a bias of the wrong shape is refused."""
    impl = RNN(_params("lstm", {}, 4, 5, 1), backend="numba", dtype="fp32").prepare(3, 2)
    loop = impl._step_loop(0, 2)
    f32 = np.float32
    h0, y, gx, gh = (np.zeros(s, f32) for s in ((2, 5), (3, 2, 5), (6, 20), (2, 20)))
    with pytest.raises(Exception, match="needs its cell state c"):
        loop(h0, y, gx, gh, None, None, None, 0, 3)
    with pytest.raises(Exception, match=r"bx must be a C-contiguous float32 array of shape \(4, 5\)"):
        loop(h0, y, gx, gh, np.zeros((1, 5), f32), None, np.zeros((2, 5), f32), 0, 3)
    with pytest.raises(Exception, match="step loop shapes disagree"):
        loop(h0, y, gx, gh, None, None, np.zeros((2, 5), f32), 2, 1)


@pytest.mark.parametrize("backend,opts,dtype,why", [
    ("numba", None, "fp32", None),
    ("numba", "group_gemm,hoist_input,pretranspose,graph", "fp32", "needs step fuse_pointwise"),
    ("numba", "hoist_input,pretranspose,fuse_pointwise,graph", "fp32", "needs step group_gemm"),
    ("numba", "group_gemm,hoist_input,pretranspose,fuse_pointwise", "fp32", "no graph step"),
    ("numba", None, "fp64", "GEMMs are BLAS's"),                        # BLAS provider in fp64
    ("numpy", "group_gemm,hoist_input,pretranspose,fuse_pointwise", "fp32", "no graph step"),
    ("numba", Plan(frozenset({"group_gemm", "hoist_input", "pretranspose", "fuse_pointwise", "streams", "graph"})),
     "fp32", "not split by streams"),                                   # GPU steps, serial on NumPy
])
def test_the_loop_is_used_exactly_when_it_applies(onednn, backend, opts, dtype, why):
    """The compiled loop is the CPU's graph step: it runs when the plan has it and what it calls
    (the fused kernel, one packed GEMM per step) is there; otherwise the Python loop, saying why."""
    impl = RNN(_params("lstm", {}, 4, 5, 1), backend=backend, dtype=dtype, opts=opts)
    assert impl.compiled_loop is (why is None)
    assert (impl.step_loop_why is None) if why is None else (why in impl.step_loop_why)
    prob = RNNProblem("lstm", 3, 2, 4, 5, 1)
    inp = make_inputs(prob, seed=1, precision=dtype)
    out = RNN(inp["params"], backend=backend, dtype=dtype, opts=opts)(inp["x"], inp["h0"], inp["c0"])
    check = compare((out[0], *out[1]), reference_outputs(prob, 1, dtype), dtype)
    assert check.passed, check.detail


def test_declared_cells_keep_the_python_loop(onednn):
    assert "hand-written kernels" in cpuloop.why_not(
        frozenset({"group_gemm", "hoist_input", "pretranspose", "fuse_pointwise", "graph"}), "numba", "lstm", True, "onednn")
    with pytest.raises(Exception, match="compiled step loop runs cells"):
        cpuloop.StepLoop(None, "peephole", np.float32)


def test_a_released_packed_gemm_gets_a_new_loop(onednn, monkeypatch):
    """Batch sizes beyond MAX_PACKED release the oldest packed GEMMs; a loop over a released one
    is rebuilt over the new primitive, never run on a closed one."""
    from fusion import gemm as fgemm
    monkeypatch.setattr(fgemm, "MAX_PACKED", 2)
    impl = RNN(_params("gru", {}, 4, 5, 1), backend="numba", dtype="fp32")
    rng = np.random.default_rng(0)
    xs = {B: rng.standard_normal((3, B, 4)).astype(np.float32) for B in (1, 2, 3)}
    first = impl(xs[1])[0]
    for B in (2, 3):
        impl(xs[B])
    again = impl(xs[1])[0]          # B=1's primitive was released and packed anew (the find step
    np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-7)   # may pick the other kind)
    assert all(not loop.closed for loop in impl._step_loops.values())


@pytest.fixture
def two_threads():
    """numba on 2 threads (the team needs them; a 1-core runner still runs 2 threads, slowly)."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread (NUMBA_NUM_THREADS=1)")
    if cpuloop.team_reason(64, 2) is not None:
        pytest.skip(f"no step-loop team here: {cpuloop.team_reason(64, 2)}")
    n = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(n)


@pytest.mark.parametrize("op,extra", CELLS, ids=lambda v: v if isinstance(v, str) else v.get("nonlinearity", ""))
@pytest.mark.parametrize("T,B,I,H,L", [(6, 3, 7, 16, 2), (4, 1, 5, 37, 1)])
def test_team_loop_matches_the_python_loop(onednn, two_threads, op, extra, T, B, I, H, L):
    """One team of 2 threads over all steps (each its share of the hidden units: an odd H splits
    18/19): the Python loop's numbers up to the GEMMs' rounding (each thread's GEMM has N = G*H/2,
    so oneDNN may block and sum differently), and the float64 reference's check passes."""
    rng = np.random.default_rng(H)
    impl = RNN(_params(op, extra, I, H, L), backend="numba", dtype="fp32").prepare(T, B)
    team = impl._step_loop(0, B)
    assert isinstance(team, cpuloop.TeamLoop) and team.threads == 2
    assert team.info()["units"] == [H // 2, H - H // 2]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    states = (rng.standard_normal((L, B, H)).astype(np.float32),)
    if op == "lstm":
        states += (rng.standard_normal((L, B, H)).astype(np.float32),)
    fast, slow = _both(impl, x, states)
    assert all(isinstance(impl._step_loop(l, B), cpuloop.TeamLoop) and impl._step_loop(l, B).runs == 1
               for l in range(L))
    for a, b in zip(_flat(fast), _flat(slow)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    again = impl(x, *states)       # nothing is kept between calls
    for a, b in zip(_flat(again), _flat(fast)):
        np.testing.assert_array_equal(a, b)


def test_team_case_passes_the_reference_check_and_says_so(onednn, two_threads):
    prob = RNNProblem("lstm", 5, 2, 6, 32, 2)
    prep = build_rnn(prob, seed=4, variant="fused", backend="numba", precision="fp32")
    assert "team of 2 threads" in prep.info["step_loop"]
    team = prep.info["gemm"]["step"]["M=2"]
    assert team["units"] == [16, 16] and [g["n"] for g in team["gemms"]] == [64, 64]
    for _ in range(2):
        check = prep.check()
        assert check.passed, check.detail


def test_team_runs_skip_input_layers(onednn, two_threads):
    """A skip-input layer's steps read the caller's rows (gx given, biases in bx): team too."""
    prob = RNNProblem("gru", 4, 2, 32, 32, 1, skip_input=True)
    prep = build_rnn(prob, seed=2, variant="fused", backend="numba", precision="fp32")
    check = prep.check()
    assert check.passed, check.detail
    assert "team of 2 threads" in prep.info["step_loop"]


def test_team_is_not_formed_for_small_layers_or_one_thread(onednn):
    assert "fewer than" in cpuloop.team_reason(cpuloop.TEAM_MIN_UNITS * 2 - 1, 2)
    assert cpuloop.team_reason(512, 1) == "one thread"
    assert cpuloop.shares(37, 2).tolist() == [0, 18, 37] and cpuloop.shares(1000, 3).tolist() == [0, 336, 672, 1000]
    with pytest.raises(Exception, match="cannot run here: one thread"):
        cpuloop.TeamLoop(np.zeros((64, 256), np.float32), 2, "lstm", np.float32, 1, None)


def test_team_is_refused_when_onednn_binds_to_another_openmp_runtime(onednn, monkeypatch):
    """oneDNN must see the team's omp_in_parallel(): with its OpenMP calls bound to another runtime
    than numba's threads run in, it would open regions of its own inside every thread."""
    if cpuloop._gomp()[1]:
        pytest.skip(cpuloop._gomp()[1])
    monkeypatch.setattr(cpuloop, "_bound", lambda path, name: 1)
    path, why = cpuloop._gomp.__wrapped__()
    assert path is None and "another runtime than numba's" in why


def test_team_forms_beside_pytorchs_bundled_libgomp(onednn):
    """A process that imports PyTorch first has PyTorch's libgomp in the global scope (loaded
    RTLD_GLOBAL) and numba's and oneDNN's calls bind to it: the team forms there and runs."""
    import subprocess
    import sys
    pytest.importorskip("torch")
    code = (
        "import torch, numba, numpy as np\n"
        "from fusion import cpuloop\n"
        "from kernels import RNN\n"
        "from kernels.params import LSTMParams\n"
        "numba.set_num_threads(2)\n"
        "print(cpuloop.team_reason(64, 2))\n"
        "impl = RNN(LSTMParams.random(8, 64, seed=1), backend='numba', dtype='fp32').prepare(3, 2)\n"
        "impl(np.ones((3, 2, 8), np.float32))\n"
        "print(impl._step_loop(0, 2).runs)\n")
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread (NUMBA_NUM_THREADS=1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "1"], out.stdout


def test_team_hands_back_when_numba_would_not_give_each_share_a_thread(onednn, two_threads):
    """A team called at another numba thread count than it was built for, or with a parallel
    chunk size set, hands the steps back (False, nothing run) and the runner runs the
    one-thread-issued loop (same numbers up to GEMM rounding); an OpenMP team of another size
    than the shares is seen inside the region by every thread before any barrier."""
    import numba
    impl = RNN(_params("gru", {}, 5, 16, 1), backend="numba", dtype="fp32").prepare(3, 2)
    team = impl._step_loop(0, 2)
    x = np.random.default_rng(1).standard_normal((3, 2, 5)).astype(np.float32)
    want = impl(x)[0]
    old = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(2)
    try:
        assert team(np.zeros((2, 16), np.float32), np.zeros((3, 2, 16), np.float32),
                    np.zeros((6, 48), np.float32), None, impl.layers[0].bh, None, 0, 3) is False
        got = impl(x)[0]
    finally:
        numba.set_parallel_chunksize(old)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_onednn_error_inside_the_team_names_the_step_and_thread(onednn, two_threads):
    impl = RNN(_params("lstm", {}, 4, 16, 1), backend="numba", dtype="fp32").prepare(3, 2)
    team = impl._step_loop(0, 2)
    prims, streams, args, nargs, srcs = team._handles
    bad = srcs.copy()
    bad[1] = 0                                         # thread 1's source memory: NULL
    team._handles = (prims, streams, args, nargs, bad)
    with pytest.raises(OnednnError, match=r"step 0 \(dnnl_memory_set_data_handle, thread 1\)"):
        impl(np.zeros((3, 2, 4), np.float32))


def test_teams_beyond_max_packed_are_closed(onednn, two_threads, monkeypatch):
    from fusion import gemm as fgemm
    monkeypatch.setattr(fgemm, "MAX_PACKED", 2)
    impl = RNN(_params("rnn", {"nonlinearity": "tanh"}, 4, 16, 1), backend="numba", dtype="fp32")
    teams = []
    for B in (1, 2, 3):
        impl(np.zeros((2, B, 4), np.float32))
        teams.append(impl._step_loop(0, B))
    assert teams[0].closed and not teams[2].closed
    assert sum(isinstance(v, cpuloop.TeamLoop) for v in impl._step_loops.values()) <= 2
    impl(np.zeros((2, 1, 4), np.float32))              # B=1 again: a new team, never a closed one
    assert not impl._step_loop(0, 1).closed


def test_the_spinning_barrier_holds_every_thread_until_all_arrive(two_threads):
    """Each thread writes its phase number with a plain store, meets the others, then reads the
    other thread's number: it must be the same phase (a barrier that let a thread through early
    would show the previous one), and a second meeting keeps the next write from overtaking the
    read.  20000 phases."""
    import numba

    from fusion import spin
    meet = spin.barrier()

    import ctypes
    team_size = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(ctypes.CDLL(cpuloop._gomp()[0]).omp_get_num_threads,
                                                           ctypes.c_void_p).value)

    @numba.njit(parallel=True)
    def phases(arrive, val, wrong, K):
        for p in numba.prange(2):
            if team_size() != 2:        # one thread running both shares would wait forever
                wrong[p] = -1
                continue
            for k in range(1, K + 1):
                val[p * 8] = k
                meet(arrive, p, 2, 2 * k - 1)
                if val[(1 - p) * 8] != k:
                    wrong[p] += 1
                meet(arrive, p, 2, 2 * k)

    wrong = np.zeros(2, np.int64)
    phases(np.zeros(2 * spin.SLOT, np.int64), np.zeros(16, np.int64), wrong, 20000)
    if -1 in wrong:
        pytest.skip("OpenMP gave the region fewer than 2 threads")
    assert wrong.tolist() == [0, 0]


def test_a_waiter_naps_once_its_spin_is_over(two_threads):
    """A team member that is off the CPU (here: asleep for 0.3 s, as a thread descheduled behind
    another process is for a scheduler slice) must not keep its partner spinning on a core the
    scheduler could give to it: past the spin bound the waiter naps.  The process's CPU time over
    the wait stays a small share of the wall time (a waiter that spun and yielded throughout used
    about all of it)."""
    import ctypes
    import time

    import numba

    from fusion import spin
    meet = spin.barrier()
    team_size = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(ctypes.CDLL(cpuloop._gomp()[0]).omp_get_num_threads,
                                                           ctypes.c_void_p).value)
    usleep = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint)(ctypes.cast(ctypes.CDLL(None).usleep,
                                                                       ctypes.c_void_p).value)

    @numba.njit(parallel=True)
    def late(arrive, ran, us):
        for p in numba.prange(2):
            if team_size() != 2:
                ran[p] = -1
                continue
            if p == 1:
                usleep(us)             # the late member, off the CPU
            meet(arrive, p, 2, 1)
            ran[p] = 1

    ran = np.zeros(2, np.int64)
    late(np.zeros(2 * spin.SLOT, np.int64), ran, 1000)          # compiled and warm
    ran[:] = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    late(np.zeros(2 * spin.SLOT, np.int64), ran, 300_000)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if -1 in ran:
        pytest.skip("OpenMP gave the region fewer than 2 threads")
    assert ran.tolist() == [1, 1] and wall >= 0.3
    assert cpu < 0.25 * wall, f"the waiter used {cpu:.3f} s of CPU over a {wall:.3f} s wait"


def test_a_team_of_another_size_runs_nothing_and_hangs_nothing(onednn, two_threads):
    """Three shares on two OpenMP threads: every thread sees the team size before its first
    barrier, so none waits; the call returns False and leaves y as it was."""
    impl = RNN(_params("lstm", {}, 4, 16, 1), backend="numba", dtype="fp32").prepare(3, 2)
    team = impl._step_loop(0, 2)
    team._handles = tuple(np.concatenate([h, h[:1]]) for h in team._handles)     # 3 shares
    y = np.full((3, 2, 16), 7.0, np.float32)
    assert team(np.zeros((2, 16), np.float32), y, np.zeros((6, 64), np.float32), None,
                None, np.zeros((2, 16), np.float32), 0, 3) is False
    assert (y == 7.0).all() and team.runs == 0
