"""GPU timing and stream code against a stand-in CuPy that keeps CUDA's ordering rules
(tests/fakecuda.py): each defect below once passed every other test because nothing on a CPU
modelled which stream a piece of work runs on."""
import numpy as np
import pytest

from tests import fakecuda


@pytest.fixture
def cp(monkeypatch):
    return fakecuda.install(monkeypatch)


def test_event_timer_times_work_on_the_current_stream(cp):
    from microbench.harness import CudaEventTimer
    t = CudaEventTimer()
    assert t.sample(lambda: cp.kernel(3.0)) == pytest.approx(3e-3)


def test_events_on_the_legacy_stream_miss_a_non_blocking_stream(cp):
    """The model itself: what the --graph defect looked like (a few us whatever the work)."""
    from microbench.harness import CudaEventTimer
    side = cp.cuda.Stream(non_blocking=True)

    def run():
        with side:
            cp.kernel(3.0)
    assert CudaEventTimer().sample(run) == pytest.approx(0.0)


def test_graph_replay_is_timed_by_the_events(cp):
    """--graph: the replay must run between the timer's two events (it once ran on its own
    non-blocking stream, and every sample read ~0 whatever the graph did)."""
    from microbench.harness import CudaEventTimer, graph_replay
    replay = graph_replay(lambda: cp.kernel(2.0, "work"))
    samples = [CudaEventTimer().sample(replay) for _ in range(3)]
    assert samples == pytest.approx([2e-3] * 3)


def test_graph_replay_runs_after_the_cold_flush(cp):
    """--cold --graph: the flush is queued before each sample and must finish before the graph
    starts, on the same stream."""
    from microbench.caches import GpuFlusher
    from microbench.harness import CudaEventTimer, Settings, graph_replay, measure
    replay = graph_replay(lambda: cp.kernel(1.0, "work"))
    flush = GpuFlusher()
    m = measure(replay, Settings(warmup=0, min_time=0, max_time=5, min_samples=4), CudaEventTimer(),
                before_sample=flush)
    assert m.samples == pytest.approx([1e-3] * len(m.samples))
    log = cp.device.log
    for i, (label, stream, start, end) in enumerate(log):
        if label == "work" and i > 0 and log[i - 1][0] == "fill":
            assert start >= log[i - 1][3], "the graph started before the flush had finished"
    assert sum(1 for e in log if e[0] == "fill") >= 4


def test_capture_on_the_legacy_stream_is_refused_by_the_model(cp):
    with pytest.raises(RuntimeError, match="legacy"):
        cp.cuda.get_current_stream().begin_capture()


# -- no host objects inside a timed call (streams, wavefront, graph) ------------------------------
def _rnn_on_fake_cupy(cp, steps, cell="lstm"):
    """A built RNN whose orchestration runs against the stand-in CuPy (array math is NumPy's)."""
    from fusion.steps import Plan
    from kernels.params import PARAMS
    from kernels.recurrent import RNN
    p = PARAMS[cell].random(5, 6, 2, seed=1).astype(np.float32)
    rnn = RNN(p, variant="fused", backend="numpy", dtype="fp32", opts=Plan(frozenset(steps)),
              reuse_outputs=True)
    rnn.xp = cp
    return p, rnn


FUSED = ("group_gemm", "hoist_input", "fuse_pointwise")


@pytest.mark.parametrize("steps", [FUSED + ("streams",), FUSED + ("streams", "wavefront")])
def test_stream_plans_make_their_streams_and_events_once(cp, steps):
    from kernels.reference import REFERENCES
    p, rnn = _rnn_on_fake_cupy(cp, steps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 3, 5)).astype(np.float32)
    rnn(x)
    with fakecuda.no_new_host_objects(cp):
        y, (h, c) = rnn(x)
    ry, (rh, rc) = REFERENCES["lstm"](x, p)
    assert np.max(np.abs(y - ry)) < 1e-5


def test_graph_call_makes_no_events_and_copies_nothing_with_its_own_buffers(cp):
    p, rnn = _rnn_on_fake_cupy(cp, FUSED + ("graph",), cell="gru")
    x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
    h0 = np.zeros((2, 2, 6), np.float32)
    sx, sh, _ = rnn.graph_inputs(x, h0)
    first = rnn(sx, sh)
    with fakecuda.no_new_host_objects(cp):
        y, h = rnn(sx, sh)
    assert y is first[0]          # reuse_outputs: the graph's buffers, not copies
    entry = next(iter(rnn._graphs.values()))
    assert sx is entry["static"]["seq"] and sh is entry["static"]["h0"]
