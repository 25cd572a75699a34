"""Reliability: the correctness gate cannot be fooled, output files fail cleanly, result records
read back are validated, and bad command-line and Python API input is one clear error.

The command-line bad-input cases follow tests/test_cli.py: one line on stderr, exit 2, no traceback.
"""
import json

import numpy as np
import pytest

from microbench import checks, cli
from microbench.harness import Settings
from microbench.registry import Prepared, VariantRecord

SMALL = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2"]
QUICK = Settings(warmup=0, min_time=0, max_time=5, min_samples=3)


# -- the correctness gate ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_reference_never_passes(bad):
    ref = np.ones((2, 3))
    ref[1, 2] = bad
    got = np.ones((2, 3))
    chk = checks.compare([got], [ref], "fp32", names=("y",))
    assert not chk.passed and "reference y contains NaN or Inf" in chk.detail
    # per-output tolerances take the same path
    assert not checks.compare([got, got], [np.ones((2, 3)), ref], "fp32", names=("y", "h_n"),
                              tol=(1e-5, 1e-5)).passed


def test_a_nan_tolerance_or_error_never_passes():
    assert not checks.compare([np.ones(3)], [np.ones(3)], "fp32", names=("y",), tol=float("nan")).passed
    assert checks.compare([np.ones(3)], [np.ones(3)], "fp32", names=("y",)).passed


def _wrong_later_builder(check_takes_outputs: bool):
    """A variant right on its first call and wrong on every later one (stale state)."""
    def build(problem, seed, *, precision, plan=None):
        ref = np.linspace(1.0, 2.0, 12).reshape(3, 4)
        calls = [0]

        def run():
            calls[0] += 1
            return ref.copy() if calls[0] == 1 else ref + 0.5

        if check_takes_outputs:
            def check(out=None):
                return checks.compare([run() if out is None else out], [ref], precision, names=("y",))
        else:
            def check():
                return checks.compare([run()], [ref], precision, names=("y",))
        return Prepared({}, run, 1, 1, check)
    return build


def _nan_reference_builder(problem, seed, *, precision, plan=None):
    """A variant checked against a reference that holds a NaN (inputs out of range, say)."""
    ref = np.ones((2, 2))
    ref[0, 1] = np.nan
    run = lambda: np.ones((2, 2))  # noqa: E731

    def check(out=None):
        return checks.compare([run() if out is None else out], [ref], precision, names=("y",))
    return Prepared({}, run, 1, 1, check)


@pytest.fixture
def wrong_variants(register_variants):
    register_variants(VariantRecord("lstm", "stale", "numpy", _wrong_later_builder(True), "test double"),
                      VariantRecord("lstm", "stale2", "numpy", _wrong_later_builder(False), "test double"),
                      VariantRecord("lstm", "nanref", "numpy", _nan_reference_builder, "test double"))


def test_the_gate_fails_both_constructed_wrong_results(wrong_variants, capsys, tmp_path):
    out = tmp_path / "g.jsonl"
    code = cli.main(["lstm", "--backend", "numpy", *SMALL, "--json", str(out), "--quiet"])
    capsys.readouterr()
    assert code == 1
    recs = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    for name in ("stale", "stale2"):
        assert recs[name]["status"] == "failed", recs[name]
        assert "wrong after timing (the first call passed)" in recs[name]["error"]
        assert recs[name]["check"]["passed"] is False and recs[name]["stats"] is None
    assert recs["nanref"]["status"] == "failed"
    assert "reference y contains NaN or Inf" in recs["nanref"]["error"]
    # the correct variants still pass both checks
    assert recs["naive"]["status"] == "ok" and recs["fused"]["status"] == "ok"


def test_the_check_after_timing_sees_the_last_timed_call():
    """The outputs checked after timing are those the last timed call returned, not a new call's."""
    from microbench import runner
    from microbench.harness import CpuTimer, measure

    returned = []

    def run():
        returned.append(np.full(3, float(len(returned))))
        return returned[-1]

    timer = CpuTimer()
    measure(run, QUICK, timer)
    assert timer.last is returned[-1]
    seen = []

    def check(out=None):
        seen.append(out)
        return checks.compare([out], [out], "fp64", names=("y",))
    n = len(returned)
    assert runner.check_after_timing(Prepared({}, run, 1, 1, check), timer.last, "cpu").passed
    assert seen[-1] is returned[-1] and len(returned) == n   # no extra call


def test_a_graph_replay_returns_the_captured_outputs_for_the_check(monkeypatch):
    """CPU stand-in for CuPy's graph API: the replay hands back the buffers the captured call
    returned (which every replay rewrites), so the check after timing reads the last replay's."""
    import sys
    import types

    from microbench import runner
    from microbench.harness import graph_replay

    class Stream:
        def __init__(self, non_blocking=False):
            self.fn = None
        __enter__ = lambda self: self          # noqa: E731
        __exit__ = lambda self, *a: None       # noqa: E731
        synchronize = begin_capture = lambda self: None  # noqa: E731

        def end_capture(self):
            return types.SimpleNamespace(upload=lambda s: None, launch=lambda s: calls.append(1))

    calls, synced = [], []
    cuda = types.SimpleNamespace(Stream=Stream, get_current_stream=lambda: Stream(),
                                 Device=lambda: types.SimpleNamespace(synchronize=lambda: synced.append(1)))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    buf = np.zeros(3)
    replay = graph_replay(lambda: buf)
    assert replay() is buf and calls == [1]

    def check(out=None):
        return checks.compare([out], [np.ones(3)], "fp64", names=("y",))
    result = runner.check_after_timing(Prepared({}, replay, 1, 1, check), replay(), "cuda")
    assert synced == [1] and not result.passed   # the device is synchronized, then the buffer read


# -- output files ------------------------------------------------------------------------------------

QUICK_ARGS = ["lstm", "--backend", "numpy", "--naive", *SMALL, "--quiet"]


def _one_line_exit_2(argv, capsys, message):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("microbench: error: "), err
    assert message in err, err
    return err


@pytest.mark.parametrize("path,message", [
    ("", "argument --json: '' is empty; give a file path"),
    ("/dev/full", "--json '/dev/full' cannot be written: No space left on device (after 0 record(s))"),
    ("x" * 300, "File name too long"),
    ("/tmp/" + "/".join(["abcdefgh"] * 600), "File name too long"),
    ("/dev/zero/x.jsonl", "cannot be used: Not a directory"),
])
def test_json_output_that_cannot_be_written_is_one_line(path, message, capsys):
    err = _one_line_exit_2([*QUICK_ARGS, "--json", path], capsys, message)
    assert len(err) < 400   # a 5000-character path is shortened in the message


def test_json_to_dev_null_works(capsys):
    assert cli.main([*QUICK_ARGS, "--json", "/dev/null"]) == 0
    assert "naive/numpy" in capsys.readouterr().out


def test_json_to_dev_stdout_streams_the_records(run_cli):
    r = run_cli(*QUICK_ARGS, "--json", "/dev/stdout")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == 1 and recs[0]["status"] == "ok"
    assert "naive/numpy" in r.stdout


def test_json_fifo_without_reader_fails_with_reader_works(tmp_path, capsys):
    import os
    import threading
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    _one_line_exit_2([*QUICK_ARGS, "--json", str(fifo)], capsys, "is a FIFO that no process reads")
    got = []
    ready = threading.Event()

    def reader():
        import time
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # a reader is present from here on
        ready.set()
        data, deadline = b"", time.monotonic() + 120
        while time.monotonic() < deadline:   # until a writer came, wrote and left (end of file)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                data += chunk
            elif chunk == b"" and data:
                break
            else:
                time.sleep(0.01)
        os.close(fd)
        got.append(data)
    t = threading.Thread(target=reader)
    t.start()
    ready.wait(10)
    assert cli.main([*QUICK_ARGS, "--json", str(fifo)]) == 0
    t.join(30)
    assert json.loads(got[0].decode().splitlines()[0])["variant"] == "naive"


def test_report_refuses_non_regular_targets(tmp_path, capsys):
    import os
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(_record()) + "\n")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for flag in ("--html", "--md"):
        _one_line_exit_2(["report", str(src), flag, "/dev/null"], capsys,
                         f"{flag} '/dev/null' is a character device, not a regular file")
        _one_line_exit_2(["report", str(src), flag, str(fifo)], capsys, "is a FIFO, not a regular file")
        _one_line_exit_2(["report", str(src), flag, ""], capsys, "'' is empty")
        _one_line_exit_2(["report", str(src), flag, str(tmp_path / ("y" * 300))], capsys, "too long")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_compare_on_a_fifo_or_device_does_not_hang(tmp_path, capsys):
    import os
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(_record()) + "\n")
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    _one_line_exit_2(["compare", str(fifo), str(src)], capsys, "no microbench records in")
    _one_line_exit_2(["compare", "/dev/zero", str(src)], capsys,
                     "results file '/dev/zero' is a character device, not a regular file or a pipe")
    _one_line_exit_2(["suite", "quick", "--resume", "--json", "/dev/null", "--device", "cpu"], capsys,
                     "--resume reads --json '/dev/null' back, so it must be a regular file")


def _record(**over):
    """A valid microbench.result/1 record of an ok case."""
    rec = {"schema": "microbench.result/1", "op": "lstm", "variant": "naive", "backend": "numpy",
           "device": "cpu", "dtype": "fp32", "shape": {"T": 3, "B": 2, "I": 8, "H": 8, "L": 1},
           "options": {"plan": None, "threads": None, "seed": 0, "rung": None, "nvtx": "on", "mode": "warm"},
           "label": "naive/numpy", "status": "ok", "error": None, "env_id": "e1", "env": {},
           "timer": "perf_counter", "samples_s": [1e-3, 1.1e-3, 1.2e-3],
           "stats": {"n": 3, "median_s": 1.1e-3, "q1_s": 1.05e-3, "q3_s": 1.15e-3, "iqr_s": 1e-4,
                     "min_s": 1e-3, "mean_s": 1.1e-3, "rel_noise": 1e-4 / 1.1e-3, "noisy": True},
           "flops": 1000, "bytes": 1000, "derived": {"gflops": 1.0, "gbps": 1.0},
           "check": {"max_rel_err": 1e-7, "tol": 1e-5, "passed": True, "detail": ""}}
    rec.update(over)
    return rec


# -- result records read back ------------------------------------------------------------------------

def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


BAD_RECORDS = [
    ("current stats without iqr_s", lambda r: {**r, "stats": _without(r["stats"], "iqr_s")}, "stats: 'iqr_s' is a required"),
    ("median 0", lambda r: {**r, "stats": {**r["stats"], "median_s": 0}}, "stats.median_s: 0 is not a time"),
    ("median 1e-300", lambda r: {**r, "stats": {**r["stats"], "median_s": 1e-300}}, "is not a time"),
    ("median Infinity", lambda r: {**r, "stats": {**r["stats"], "median_s": float("inf")}}, "stats.median_s: inf is not a finite"),
    ("median NaN", lambda r: {**r, "stats": {**r["stats"], "median_s": float("nan")}}, "stats.median_s: nan is not a finite"),
    ("list for a string", lambda r: {**r, "variant": ["naive"]}, "variant: ['naive'] is not of type 'string'"),
    ("string for a number", lambda r: {**r, "stats": {**r["stats"], "q1_s": "fast"}}, "stats.q1_s: 'fast' is not of type 'number'"),
    ("unknown status", lambda r: {**r, "status": "great"}, "status: 'great' is not one of"),
    ("options a list", lambda r: {**r, "options": ["warm"]}, "options: ['warm'] is not of type 'object'"),
    ("threads a string", lambda r: {**r, "options": {**r["options"], "threads": "two"}}, "options.threads"),
    ("samples Infinity", lambda r: {**r, "samples_s": [1e-3, float("inf")]}, "samples_s[1]: inf is not a finite number >= 0"),
    ("sample a string", lambda r: {**r, "samples_s": [1e-3, "x"]}, "samples_s[1]: 'x' is not a finite"),
    ("sample negative", lambda r: {**r, "samples_s": [-1.0]}, "samples_s[0]: -1.0 is not a finite"),
    ("env.gpu a string", lambda r: {**r, "env": {"gpu": "H100"}}, "env.gpu: 'H100' is not of type"),
    ("missing label", lambda r: _without(r, "label"), "'label' is a required property"),
    ("ok without a check", lambda r: {**r, "check": None}, "check: None is not of type 'object'"),
]


@pytest.mark.parametrize("name,bad,why", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_an_invalid_record_is_skipped_with_file_and_line(name, bad, why, tmp_path):
    from microbench import store
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(_record()) + "\n\n" + json.dumps(bad(_record())) + "\n")
    recs, notes = store.read(f)
    assert len(recs) == 1 and len(notes) == 1, notes
    assert notes[0].startswith(f"{f}:3: ") and why in notes[0], notes[0]


def test_old_records_without_iqr_load_with_it_derived(tmp_path):
    from microbench import store
    old = {"op": "lstm", "variant": "naive", "backend": "numpy",
           "stats": {"median": 0.01, "q1": 0.009, "q3": 0.012},
           "check": {"max_rel_err": 0.0, "tol": 1e-5, "passed": True}}
    f = tmp_path / "old.jsonl"
    f.write_text(json.dumps(old) + "\n" + json.dumps({**old, "stats": {"median": "x"}}) + "\n")
    recs, notes = store.read(f)
    assert len(recs) == 1 and recs[0]["stats"]["iqr_s"] == pytest.approx(0.003)
    assert notes == [f"{f}:2: stats.median_s: 'x' is not of type 'number'"]


@pytest.mark.parametrize("cmd", [["compare", "{bad}", "{good}"], ["compare", "{good}", "{bad}"],
                                 ["report", "{bad}"], ["report", "{bad}", "--md", "{out}"]])
def test_commands_skip_bad_records_and_fail_only_when_none_is_left(cmd, tmp_path, capsys):
    bad, good, out = tmp_path / "bad.jsonl", tmp_path / "good.jsonl", tmp_path / "o.md"
    bad.write_bytes(b"".join(json.dumps(b(_record())).encode() + b"\n" for _, b, _ in BAD_RECORDS)
                    + b"\x00\xff\xfe binary\n")
    good.write_text(json.dumps(_record()) + "\n")
    argv = [a.format(bad=bad, good=good, out=out) for a in cmd]
    _one_line_exit_2(argv, capsys, f"no microbench records in {bad} ({len(BAD_RECORDS) + 1} line(s) skipped; "
                                   f"first: {bad}:1: stats: 'iqr_s' is a required property)")
    # one usable record among the bad ones: the command works and names the skipped lines
    with open(bad, "a") as f:
        f.write(json.dumps(_record()) + "\n")
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert f"note: skipped {bad}:2: stats.median_s: 0 is not a time" in err
    assert f"and {len(BAD_RECORDS) + 1 - 5} more skipped line(s)" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\x00\x01\xff\xfe" * 10, b"[1, 2]", b'{"traces": 3}',
                                     b'{"traces": [{"label": "x"}]}', b'{"traces": [{"label": "x", "records": [{"start_ns": "a"}]}]}',
                                     b'{"env": [], "traces": []}',
                                     b'{"traces": [{"label": "x", "meta": {"op": "LSTM"}, "records": []}]}',
                                     b'{"traces": [{"label": "x", "meta": {"path": ["cudnn"]}, "records": '
                                     b'[{"start_ns": 1, "end_ns": 2}]}]}',
                                     b'{"traces": [{"label": "x", "meta": {"T": "x"}, "records": '
                                     b'[{"start_ns": 1, "end_ns": 2}]}]}'])
def test_explain_reference_rejects_a_bad_trace_file(content, tmp_path, capsys):
    f = tmp_path / "t.json"
    f.write_bytes(content)
    _one_line_exit_2(["explain", "lstm", "--reference", str(f)], capsys, str(f))


# -- command-line consistency ------------------------------------------------------------------------

BAD_ARGS = [
    (["lstm", "--seed", "-1"], "argument --seed: -1 is out of range; allowed: 0.."),
    (["conv", "--seed", "-1"], "argument --seed: -1 is out of range"),
    (["suite", "quick", "--seed", "-1"], "argument --seed: -1 is out of range"),
    (["lstm", "--backend", ","], "--backend ',' names nothing; allowed: numpy, numba"),
    (["lstm", "--backend", ""], "--backend '' names nothing"),
    (["suite", "quick", "--backend", ","], "--backend ',' names nothing"),
    (["lstm", "--opt", ""], "--opt '' names no step"),
    (["lstm", "--opt", ","], "--opt ',' names no step"),
    (["lstm", "--dtype", ","], "--dtype ',' names no precision"),
    (["lstm", "--frameworks", ""], "--frameworks names no framework"),
    (["conv", "--frameworks", ""], "--frameworks names no framework"),
    (["explain", "lstm", "--frameworks", ","], "--frameworks ',' names nothing"),
    (["lstm", "--naive", "--opt", "group_gemm"],
     "--opt 'group_gemm' sets the fusion steps of the fused variant, which is not selected (naive)"),
    (["lstm", "--ladder", "--opt", ""], "--ladder chooses the variants and steps itself"),
    (["profile", "nsys", "lstm", "--frobnicate"], "benchmark arguments 'lstm --frobnicate': unrecognized arguments: --frobnicate"),
    (["profile", "ncu", "gru", "-H", "x"], "argument -H: invalid int value: 'x'"),
    (["lstm", "--frameworks", "jax", "--python", "jax=/bin/true"],
     "--python jax=/bin/true: not a working Python 3 interpreter"),
    (["explain", "lstm", "--cpu", "-T", "100000", "-B", "100000", "-H", "10000"],
     "explain --cpu lstm T=100000 B=100000 H=10000 needs about"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_command_line_is_one_line_exit_2(argv, message, capsys):
    _one_line_exit_2(argv, capsys, message)
    assert capsys.readouterr().out == ""      # refused before anything is printed or run


def test_repeated_dtypes_and_thread_counts_run_once():
    from microbench.commands.rnn import plan_cases
    args = cli.build_parser().parse_args(["lstm", "--backend", "numpy", "--device", "cpu",
                                          "--dtype", "fp32,fp32,float32", "--threads", "1,1", *SMALL])
    cases, _ = plan_cases(args)
    assert len(cases) == 2 and {c.precision for c in cases} == {"fp32"}   # naive + fused, once each


def test_opt_with_the_fused_variant_among_others_is_kept():
    from microbench.commands.rnn import plan_cases
    args = cli.build_parser().parse_args(["lstm", "--naive", "--fused", "--backend", "numpy",
                                          "--device", "cpu", "--opt", "group_gemm", *SMALL])
    cases, _ = plan_cases(args)
    assert [c.plan.label if c.plan else None for c in cases] == [None, "group_gemm"]


# -- Python API --------------------------------------------------------------------------------------

def _api_cases():
    from kernels.params import GRUParams, LSTMParams
    from kernels.reference import gru_reference, lstm_reference
    from kernels.recurrent import RNN
    p, g = LSTMParams.random(4, 3), GRUParams.random(4, 3, 2)
    x = np.ones((2, 1, 4))
    s = np.ones((1, 1, 3))
    return [
        ("complex h0", lambda: RNN(p, backend="numpy")(x, s.astype(complex)), "h0 has dtype complex128 (complex)"),
        ("complex c0", lambda: RNN(p, backend="numpy")(x, s, s.astype(np.complex64)), "c0 has dtype complex64"),
        ("complex x", lambda: RNN(p, backend="numpy")(x.astype(complex)), "x has dtype complex128"),
        ("text h0", lambda: RNN(p, backend="numpy")(x, np.full((1, 1, 3), "a")), "h0 has dtype <U1 (not numbers)"),
        ("reference complex h0", lambda: lstm_reference(x, p, s.astype(complex)), "h0 has dtype complex128"),
        ("gru reference complex x", lambda: gru_reference(x.astype(complex), g), "x has dtype complex128"),
        ("int64 weights", lambda: LSTMParams.random(4, 3, dtype=np.int64), "dtype 'int64' is unknown; allowed: fp64"),
        ("int weights by astype", lambda: p.astype(np.int32),
         "layer 0 weights have dtype int32; allowed: float64, float32, float16, bfloat16"),
        ("opts list", lambda: RNN(p, backend="numpy", opts=["group_gemm"]),
         "opts=['group_gemm'] is not a fusion plan; allowed: a comma-separated string of steps (group_gemm"),
        ("opts int", lambda: RNN(p, backend="numpy", opts=3), "opts=3 is not a fusion plan"),
        ("gate layer 5", lambda: p.gate(5, "i"), "layer 5 is out of range; allowed: 0..0"),
        ("gate layer -1", lambda: g.gate(-1, "r"), "layer -1 is out of range; allowed: 0..1"),
        ("gate layer '0'", lambda: p.gate("0", "i"), "layer '0' is out of range"),
        ("layers None", lambda: LSTMParams(4, 3, None),
         "layers=None must be a tuple or list of kernels.params.Layer, one per layer"),
    ]


@pytest.mark.parametrize("index", range(14))
def test_python_api_bad_input_is_bad_input(index):
    from kernels.errors import BadInput
    name, call, message = _api_cases()[index]
    with pytest.raises(BadInput) as e:
        call()
    assert message in str(e.value), (name, str(e.value))


def test_python_api_still_takes_real_inputs_and_low_precision_weights():
    from kernels.params import LSTMParams
    from kernels.recurrent import RNN
    p = LSTMParams.random(4, 3, dtype="fp32")
    assert p.dtype == np.float32 and np.abs(p.layers[0].w_ih).max() > 0
    assert LSTMParams.random(4, 3, dtype="bf16").dtype.name == "bfloat16"
    y, _ = RNN(p, backend="numpy")(np.ones((2, 1, 4), dtype=np.int64), np.zeros((1, 1, 3), np.float16))
    assert y.shape == (2, 1, 3) and np.isfinite(y).all()


# -- Winograd's NaN tiles (documented in docs/conv.md) ------------------------------------------------

@pytest.mark.parametrize("pos", [(5, 5), (4, 4), (6, 7), (0, 0)])
def test_winograd_spreads_a_nan_over_whole_tiles_and_fails_the_check(pos):
    from kernels.conv import CONV_VARIANTS, ConvProblem, conv2d_reference
    p = ConvProblem(N=1, C=4, H=16, W=16, K=4, R=3, S=3, pad=(1, 1))
    x, w, b = p.random_inputs(np.random.default_rng(0), "fp32")
    x[0, 0, pos[0], pos[1]] = np.nan
    ref = np.isnan(conv2d_reference(x, w, b, p))
    y = CONV_VARIANTS["winograd"].run(x, w, b, p)
    nan = np.isnan(y)
    assert ref.sum() in (16, 36) and 64 <= nan.sum() <= 100     # docs/conv.md's numbers
    assert nan[ref].all()                                        # every reference NaN is there
    # ... and no NaN outside the 4x4 output tiles whose 6x6 input tile (rows 4t-1..4t+4 with
    # pad 1) holds the NaN input
    hit = [[t for t in range(4) if 4 * t - 1 <= pos[a] <= 4 * t + 4] for a in (0, 1)]
    inside = np.zeros((16, 16), bool)
    for tr in hit[0]:
        for tc in hit[1]:
            inside[4 * tr:4 * tr + 4, 4 * tc:4 * tc + 4] = True
    assert not (nan & ~inside).any()
    for name in ("direct", "im2col", "winograd_f2"):
        assert (np.isnan(CONV_VARIANTS[name].run(x, w, b, p)) == ref).all()
    assert not checks.compare([y], [conv2d_reference(x, w, b, p)], "fp32", names=("y",)).passed
