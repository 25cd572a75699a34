"""The CLI bounds what it is asked to do (issue 27, items 10-14): shard counts cost nothing,
--rounds cannot outlast --max-time, thread counts the machine cannot start are refused, numbers
are ASCII decimal, and a variant/backend conflict is named as such."""
from __future__ import annotations

import random
import resource
import time
import tracemalloc

import numpy as np
import pytest

from kernels.errors import BadInput
from microbench import checks, cli, runner, threads
from microbench.commands import suite
from microbench.harness import Settings
from microbench.problems import RNNProblem
from microbench.registry import Prepared, VariantRecord

SMALL = ["-T", "2", "-B", "1", "-H", "4", "-I", "3", "--device", "cpu", "--warmup", "0",
         "--min-time", "0", "--min-samples", "2"]


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("microbench: error:") and "\n" not in err and "Traceback" not in err
    return err


# -- 10: a shard is computed, not looked up in an N-long list ------------------------------------
def _shard_of_by_scan(costs, n):
    """The rule as first written (least-loaded shard by a scan of all N): the reference."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    load, out = [0.0] * n, [0] * len(costs)
    for i in order:
        k = min(range(n), key=lambda j: (load[j], j))
        out[i] = k
        load[k] += costs[i]
    return out


def test_shard_of_is_the_same_slicing_as_the_scan():
    rng = random.Random(7)
    for _ in range(300):
        m, n = rng.randint(0, 12), rng.randint(1, 7)
        costs = [rng.choice([0.0, 0.0, 1.0, 2.5, rng.random()]) for _ in range(m)]
        assert suite.shard_of(costs, n) == _shard_of_by_scan(costs, n), (costs, n)


def test_a_huge_shard_count_allocates_nothing_in_proportion():
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        owners = suite.shard_of([3.0, 1.0, 2.0], 10_000_000)
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert owners == [0, 2, 1]
    assert peak < 1 << 20 and took < 1.0      # the scan held 80 MB and took seconds


def test_suite_with_shard_one_of_a_hundred_million_plans_at_once(capsys, monkeypatch):
    for argv_shard, env in (("1/100000000", {}),
                            ("auto", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "100000000"})):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        t0 = time.perf_counter()
        assert cli.main(["suite", "quick", "--device", "cpu", "--only", "lstm", "--shard", argv_shard,
                         "--list"]) == 0
        assert time.perf_counter() - t0 < 30
        capsys.readouterr()


# -- 11: --rounds cannot outlast --max-time ------------------------------------------------------
class Bar:
    def __init__(self):
        self.notes = []

    def start(self, text):
        pass

    def within(self, phase):
        pass

    def note(self, text):
        self.notes.append(text)

    def done(self, outcome):
        pass


def test_rounds_are_capped_by_max_time_and_the_record_says_so():
    calls = [0]

    def build(problem, seed, *, precision, plan=None):
        ref = np.ones((2, 2))

        def run():
            calls[0] += 1
            time.sleep(0.002)
            return ref.copy()
        return Prepared({}, run, 1, 1, lambda out=None: checks.compare(
            [run() if out is None else out], [ref], precision, names=("y",)))
    case = runner.Case(VariantRecord("lstm", "slow", "numpy", build, "test double"),
                       RNNProblem("lstm", T=2, B=1, I=2, H=2, L=1), "fp32")
    bar = Bar()
    settings = Settings(warmup=0.0, min_time=0.0, max_time=0.05, min_samples=2, max_noise=10.0, rounds=400)
    t0 = time.perf_counter()
    (out,) = runner.run_interleaved([case], settings, {"env_id": "t"}, 0.0, bar)
    took = time.perf_counter() - t0
    assert out.status == "ok"
    # 400 rounds of a warm-up call and a sample at 2 ms would take 1.6 s and 800 calls
    assert calls[0] < 150 and took < 0.8
    timed = out.record["options"]["rounds_timed"]
    assert 1 <= timed < 400 and out.record["options"]["rounds"] == 400
    assert any("--max-time" in n and f"round {timed} of 400" in n for n in bar.notes)
    # how many rounds it got is how it was timed, not what it computed: --resume and compare
    # still find it the same case
    from microbench import store
    plain = dict(out.record, options={k: v for k, v in out.record["options"].items() if k != "rounds_timed"})
    assert store.identity(out.record) == store.identity(plain)


# -- 12: thread counts the process cannot start are refused -------------------------------------
def test_thread_counts_beyond_the_address_space_limit_are_refused(monkeypatch):
    real = resource.getrlimit

    def limited(which):     # ulimit -v: 1 GiB above what is mapped now
        if which == resource.RLIMIT_AS:
            mapped = threads._proc_status("/proc/self/status", "VmSize") << 10
            return (mapped + (1 << 30), resource.RLIM_INFINITY)
        return real(which)
    monkeypatch.setattr(resource, "getrlimit", limited)
    monkeypatch.delenv("OMP_STACKSIZE", raising=False)
    monkeypatch.delenv("GOMP_STACKSIZE", raising=False)
    cap, why = threads.thread_capacity()
    assert cap is not None and cap < 2 * 1023 and "ulimit -v" in why
    with pytest.raises(BadInput) as e:
        threads.parse_threads("1,1024")
    msg = str(e.value)
    assert "--threads 1024" in msg and "allowed here: 1.." in msg and "ulimit -v" in msg
    allowed = int(msg.rsplit("1..", 1)[1])
    assert threads.parse_threads(f"1,{allowed}") == [1, allowed]


def test_thread_counts_beyond_the_cgroup_pids_limit_are_refused(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_pids", lambda: (100, 90))
    with pytest.raises(BadInput, match=r"--threads 64: .*pids.max 100 with 90 in use.*allowed here: 1\.\.6$"):
        threads.parse_threads("64")
    assert threads.parse_threads("6") == [6]


def test_thread_counts_beyond_the_users_process_limit_are_refused(monkeypatch):
    import os
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (400, 400) if which == resource.RLIMIT_NPROC
                        else real(which))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)       # root is not held to ulimit -u
    monkeypatch.setattr(threads, "_user_threads", lambda uid: 390)
    with pytest.raises(BadInput, match=r"ulimit -u 400 with 390 threads.*allowed here: 1\.\.6$"):
        threads.parse_threads("8")


def test_the_cli_refuses_the_count_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_pids", lambda: (50, 40))
    err = _error(capsys, ["lstm", "--naive", "--backend", "numpy", *SMALL, "--threads", "1024"])
    assert "--threads 1024" in err and "allowed here: 1..6" in err


AS_LIMITED = """
import resource, sys
from microbench import cli
mapped = [int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (mapped + (3 << 30), resource.RLIM_INFINITY))   # ulimit -v
sys.exit(cli.main(["lstm", "--fused", "--backend", "numba", "-T", "4", "-B", "64", "-H", "256",
                   "--device", "cpu", "--warmup", "0", "--min-time", "0", "--min-samples", "2",
                   "--quiet", "--threads", "1024"]))
"""


def test_under_ulimit_v_the_count_is_refused_instead_of_libgomp_ending_the_process():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_STACKSIZE", "GOMP_STACKSIZE")}
    r = subprocess.run([sys.executable, "-c", AS_LIMITED], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**env, "PYTHONPATH": root})
    # before: "libgomp: Thread creation failed: Resource temporarily unavailable", exit 1, no record
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--threads 1024" in r.stderr and "allowed here: 1.." in r.stderr and "libgomp" not in r.stderr


# -- 13: ASCII decimal numbers only -------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("-T", "٤"), ("-H", "１６"), ("-B", "1_6"), ("-L", "²"),
                                        ("--min-samples", "٣"), ("--seed", "1_0"),
                                        ("--min-time", "٠.٥"), ("--max-time", "1_0"),
                                        ("--threads", "٤"), ("--threads", "1,2_0")])
def test_numbers_in_other_scripts_or_with_underscores_are_refused(capsys, flag, value):
    argv = ["lstm", "--naive", "--backend", "numpy", *SMALL]
    i = argv.index(flag) if flag in argv else None
    if i is None:
        argv += [flag, value]
    else:
        argv[i + 1] = value
    err = _error(capsys, argv)
    assert value.split(",")[-1] in err           # the value named (the bad part of a list)


@pytest.mark.parametrize("shard", ["١/٢", "1/２", "1_0/20"])
def test_shard_numbers_are_ascii(capsys, shard):
    err = _error(capsys, ["suite", "quick", "--device", "cpu", "--shard", shard, "--list"])
    assert "K/N" in err


def test_launcher_rank_variables_are_ascii(capsys, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "١")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    err = _error(capsys, ["suite", "quick", "--device", "cpu", "--shard", "auto", "--list"])
    assert "not integers" in err


def test_ascii_numbers_still_parse():
    from microbench import args
    assert args.ascii_int(" 16 ") == 16 and args.ascii_int("-3") == -3
    assert args.ascii_float("0.5") == 0.5 and args.ascii_float("2e-3") == 0.002 and args.ascii_float(".5") == 0.5
    assert threads.parse_threads("1, 2") == [1, 2]


# -- 14: a variant flag and --backend that exclude each other ------------------------------------
def test_onednn_with_backend_numpy_names_the_conflict(capsys):
    err = _error(capsys, ["lstm", "--onednn", "--backend", "numpy", *SMALL])
    assert "--onednn runs on backend onednn" in err and "--backend numpy leaves out" in err
    assert "does not run on cpu" not in err


def test_a_variant_left_without_its_backend_is_not_dropped_silently(capsys):
    err = _error(capsys, ["lstm", "--fused", "--onednn", "--backend", "numpy", *SMALL])
    assert "--onednn runs on backend onednn" in err
