"""Suites split across devices and hosts: ``suite --shard K/N``, host and device in every record,
merged shards in compare/report, and ``--device cuda:K`` with NVML reading the same GPU."""
from __future__ import annotations

import ctypes
import json
import sys
import types
from pathlib import Path

import pytest

from kernels import devices
from kernels.errors import BadInput, Unsupported
from microbench import cli, store
from microbench.commands import suite as msuite

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--warmup", "0", "--min-time", "0.01", "--min-samples", "3", "--max-time", "0.1"]
QUICK = ["suite", "quick", "--only", "h128", "--backend", "numpy", "--device", "cpu", "--quiet", *FAST]

# The fields that say what a record computed (not how long it took or where).
IDENTITY_FIELDS = ("op", "variant", "backend", "device", "dtype", "shape", "label", "status")


def _what(rec: dict) -> tuple:
    opts = {k: v for k, v in rec["options"].items() if k != "nvtx"}
    return tuple(json.dumps(rec.get(k), sort_keys=True) for k in IDENTITY_FIELDS) + (json.dumps(opts, sort_keys=True),)


def test_shard_assignment_is_disjoint_covering_balanced_and_deterministic():
    costs = [5.0, 1.0, 1.0, 3.0, 2.0, 2.0, 0.5, 4.0, 0.0]
    for n in (1, 2, 3, 4, 12):
        owner = msuite.shard_of(costs, n)
        assert owner == msuite.shard_of(list(costs), n)            # same plan, same slices
        assert all(0 <= o < n for o in owner) and len(owner) == len(costs)
        loads = [sum(c for c, o in zip(costs, owner) if o == k) for k in range(n)]
        assert max(loads) - min(loads) <= max(costs)               # greedy balance bound
    assert msuite.shard_of(costs, 2).count(0) >= 3


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "2", "1/2/3", "-1/2", ""])
def test_bad_shard_is_one_line(text, capsys):
    assert cli.main(["suite", "quick", f"--shard={text}", "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "K/N" in err and "Traceback" not in err


def test_sharded_quick_suite_equals_the_unsharded_run(tmp_path, run_cli):
    """--shard 1/2 and 2/2 together: exactly the records of one unsharded run (identity fields,
    not timings), none in both shards, each record with host, device and its shard."""
    whole, one, two = tmp_path / "whole.jsonl", tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"
    for path, extra in ((whole, []), (one, ["--shard", "1/2"]), (two, ["--shard", "2/2"])):
        r = run_cli(*QUICK, "--json", str(path), *extra)
        assert r.returncode == 0, r.stderr
    w, _ = store.read(whole)
    a, _ = store.read(one)
    b, _ = store.read(two)
    assert len(w) == 10 and a and b
    assert not {_what(r) for r in a} & {_what(r) for r in b}
    assert sorted(_what(r) for r in a + b) == sorted(_what(r) for r in w)
    assert {store.identity(r) for r in a + b} == {store.identity(r) for r in w}
    for r in a + b:
        assert r["shard"]["count"] == 2 and r["shard"]["plan"] == a[0]["shard"]["plan"]
        assert r["host"] and r["device_index"] is None and r["device_name"]
    assert {r["shard"]["index"] for r in a} == {1} and {r["shard"]["index"] for r in b} == {2}
    assert "shard" not in w[0] and w[0]["host"] == a[0]["host"]
    # compare merges the shards of one side (comma list or a quoted glob) and matches every case
    cmp = run_cli("compare", str(whole), f"{one},{two}")
    assert cmp.returncode == 0, cmp.stderr
    assert "10 case(s) in both" in cmp.stdout and "shard(s) 1, 2 of 2 merged" in cmp.stdout
    cmp = run_cli("compare", str(whole), str(tmp_path / "s*.jsonl"))
    assert cmp.returncode == 0 and "10 case(s) in both" in cmp.stdout, cmp.stderr
    rep = run_cli("report", str(one))
    assert rep.returncode == 0 and "MISSING shard(s) 2" in rep.stderr, rep.stderr


def test_a_shard_with_no_case_says_so(tmp_path, run_cli):
    r = run_cli("suite", "quick", "--only", "lstm-h128", "--backend", "numpy", "--device", "cpu",
                "--variants", "naive", "--shard", "2/2", "--json", str(tmp_path / "e.jsonl"), *FAST)
    assert r.returncode == 0, r.stderr
    assert "holds no case to run" in r.stdout


def _rec(host: str, cpu: str, med: float) -> dict:
    return {"schema": "microbench.result/1", "op": "lstm", "variant": "fused", "backend": "numpy",
            "device": "cpu", "host": host, "device_index": None, "device_name": cpu, "dtype": "fp32",
            "shape": {"T": 10, "B": 8, "I": 64, "H": 64, "L": 1},
            "options": {"plan": "all", "threads": None, "seed": 0, "rung": None, "nvtx": "on"},
            "label": "fused/numpy", "status": "ok", "error": None, "env_id": "e", "env": {"host": host, "cpu": cpu},
            "samples_s": [med * 0.98, med * 1.02], "check": {"max_rel_err": 0.0, "tol": 1e-5, "passed": True},
            "stats": {"n": 2, "median_s": med, "q1_s": med * 0.99, "q3_s": med * 1.01, "iqr_s": med * 0.02,
                      "min_s": med * 0.98, "mean_s": med, "rel_noise": 0.02, "noisy": False}}


def test_compare_refuses_ratios_across_machines_unless_asked(tmp_path, capsys):
    fa, fb, fc = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    fa.write_text(json.dumps(_rec("node1", "EPYC", 1e-3)) + "\n")
    fb.write_text(json.dumps(_rec("node2", "EPYC", 2e-3)) + "\n")
    fc.write_text(json.dumps(_rec("node1", "EPYC", 2e-3)) + "\n")
    assert cli.main(["compare", str(fa), str(fb)]) == 2
    err = capsys.readouterr().err
    assert "different machines" in err and "node1" in err and "node2" in err and "--across-machines" in err
    assert cli.main(["compare", str(fa), str(fb), "--across-machines"]) == 0
    assert "2.00x" in capsys.readouterr().out
    assert cli.main(["compare", str(fa), str(fc)]) == 0          # same machine, another run
    # GPU ordinals of one host with the same model are one machine
    ga, gb = _rec("n", "EPYC", 1e-3), _rec("n", "EPYC", 1e-3)
    for r, k in ((ga, 0), (gb, 1)):
        r.update(device="cuda", device_index=k, device_name="NVIDIA H100")
    assert store.same_machine(ga, gb) and not store.same_machine(ga, {**gb, "host": "m"})
    assert cli.main(["compare", str(tmp_path / "nothing-*.jsonl"), str(fa)]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_thread_scaling_never_pairs_two_machines():
    from microbench.plots import scaling_series
    r1, r2 = _rec("node1", "EPYC", 2e-3), _rec("node2", "EPYC", 1e-3)
    r1["options"]["threads"], r2["options"]["threads"] = 1, 2
    assert scaling_series([r1, r2]) == []
    r2["host"] = r2["env"]["host"] = "node1"
    assert len(scaling_series([r1, r2])) == 1


# -- --device cuda:K -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                                       ("cuda:0", ("cuda", 0)), ("CUDA:3", ("cuda", 3))])
def test_device_syntax(text, want):
    assert devices.parse(text) == want


@pytest.mark.parametrize("bad", ["gpu1", "cuda:", "cuda:-1", "cuda:x", "cuda0", "cpu:1"])
def test_device_syntax_errors_name_the_allowed(bad):
    with pytest.raises(BadInput, match="allowed: auto, cpu, cuda, cuda:K"):
        devices.parse(bad)


def test_device_cuda_k_on_a_cpu_machine_is_one_line(run_cli, monkeypatch):
    from kernels import gpu
    if gpu.detect()[0]:
        pytest.skip("this machine has a GPU")
    for cmd in (["lstm", "--fused", "--device", "cuda:1"], ["conv", "--device", "cuda:0"],
                ["suite", "quick", "--device", "cuda:1", "--list"]):
        r = run_cli(*cmd)
        assert r.returncode == 2, (cmd, r.stdout)
        assert r.stderr.count("\n") == 1 and "no CUDA GPU found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("lstm", "--device", "cuda:one")
    assert r.returncode == 2 and "cuda:K" in r.stderr and "Traceback" not in r.stderr


class FakeDriver:
    """A stand-in for libcuda: two GPUs visible (CUDA_VISIBLE_DEVICES="2,0" of three), so CUDA
    ordinal 0 is the machine's third GPU (PCI 0000:C1:00.0) and NVML index 0 is another one."""

    BUS = {0: b"0000:C1:00.0", 1: b"0000:41:00.0"}       # by CUDA ordinal
    UUID = {0: bytes(range(16)), 1: bytes(range(16, 32))}

    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, n):
        n._obj.value = 2
        return 0

    def cuDeviceGet(self, dev, k):
        if not 0 <= k < 2:
            return 101                                    # CUDA_ERROR_INVALID_DEVICE
        dev._obj.value = k
        return 0

    def cuDeviceGetPCIBusId(self, buf, size, dev):
        ctypes.memmove(buf, self.BUS[dev.value] + b"\0", len(self.BUS[dev.value]) + 1)
        return 0

    def cuDeviceGetUuid(self, raw, dev):
        ctypes.memmove(raw, self.UUID[dev.value], 16)
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        ctypes.memmove(buf, b"Fake GPU\0", 9)
        return 0

    def cuGetErrorName(self, rc, name):
        return 1


def _fake_nvml():
    """pynvml stand-in: three GPUs in PCI order; handles know their NVML index."""
    by_bus = {"0000:01:00.0": 0, "0000:41:00.0": 1, "0000:C1:00.0": 2}
    nv = types.SimpleNamespace(NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0)
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: ("nvml", i)
    nv.nvmlDeviceGetHandleByPciBusId_v2 = lambda bus: ("nvml", by_bus[bus.upper()])
    nv.nvmlDeviceGetClockInfo = lambda h, which: 1000 + 100 * h[1] + which
    nv.nvmlDeviceGetTemperature = lambda h, which: 40 + h[1]
    nv.nvmlDeviceGetPowerUsage = lambda h: 100000
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0
    return nv


@pytest.fixture
def fake_gpus(monkeypatch):
    from kernels import gpu
    drv = FakeDriver()
    monkeypatch.setattr(gpu, "_load_driver", lambda: drv)
    monkeypatch.setattr(gpu, "detect", lambda: (True, "2 GPUs: Fake GPU"))
    monkeypatch.setattr(devices, "_use", lambda k: None)
    monkeypatch.setattr(gpu, "_SELECTED", 0)
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    return drv


def test_nvml_reads_the_gpu_behind_the_cuda_ordinal(fake_gpus):
    from microbench import gpustate
    assert devices.select(0) == 0
    assert gpustate.read()["temp_c"] == 42            # NVML index 2, not index 0
    devices.select(1)
    assert gpustate.read()["temp_c"] == 41
    assert gpustate.read(0)["sm_mhz"] == 1200
    assert devices.pci_bus_id() == "0000:41:00.0"


def test_select_validates_the_ordinal(fake_gpus):
    with pytest.raises(BadInput, match=r"cuda:2: this machine shows 2 GPUs; allowed: cuda:0, cuda:1"):
        devices.select(2)
    assert devices.selected() == 0


def test_worker_gets_the_selected_gpu_by_uuid(fake_gpus):
    devices.select(1)
    assert devices.worker_env() == {"CUDA_VISIBLE_DEVICES": "GPU-10111213-1415-1617-1819-1a1b1c1d1e1f"}
    assert devices.uuid(0) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"


def test_records_carry_the_ordinal(fake_gpus):
    from microbench import results
    devices.select(1)
    p = results.placement("cuda", {"host": "h", "cpu": "c"})
    assert p == {"host": "h", "device_index": 1, "device_name": "Fake GPU"}
    assert results.placement("cpu", {"host": "h", "cpu": "c"}) == {"host": "h", "device_index": None,
                                                                   "device_name": "c"}


def test_no_driver_means_no_bus_id(monkeypatch):
    from kernels import gpu
    monkeypatch.setattr(gpu, "_load_driver", lambda: "no NVIDIA driver: test")
    with pytest.raises(Unsupported, match="no NVIDIA driver"):
        devices.pci_bus_id(0)
    assert devices.worker_env() == {}


@pytest.mark.gpu
def test_nvml_and_cuda_agree_on_a_real_gpu():
    from microbench import gpustate
    pynvml = pytest.importorskip("pynvml")
    pynvml.nvmlInit()
    h = devices.nvml_handle(pynvml, 0)
    assert pynvml.nvmlDeviceGetUUID(h) == devices.uuid(0)
    assert gpustate.read(0) and "error" not in gpustate.read(0)


def test_shard_auto_reads_the_launcher(monkeypatch, tmp_path):
    import argparse
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
              "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(k, raising=False)
    args = argparse.Namespace(device="cpu")
    with pytest.raises(BadInput, match="--shard auto needs torchrun"):
        msuite.auto_shard(args)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert msuite.auto_shard(args) == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert msuite.auto_shard(args) == (2, 2) and args.device == "cpu"
    assert msuite.parse_shard("AUTO") == "auto"


def test_shard_auto_under_torchrun_writes_one_file_per_shard(tmp_path, run_cli):
    base = ["suite", "quick", "--only", "lstm-h128", "--backend", "numpy", "--device", "cpu", "--quiet",
            "--shard", "auto", *FAST]
    r = run_cli(*base, "--json", str(tmp_path / "one.jsonl"), env={"RANK": "0", "WORLD_SIZE": "2"})
    assert r.returncode == 2 and "put {shard} in the path" in r.stderr
    for rank in ("0", "1"):
        r = run_cli(*base, "--json", str(tmp_path / "q-{shard}.jsonl"), env={"RANK": rank, "WORLD_SIZE": "2"})
        assert r.returncode == 0, r.stderr
    a, _ = store.read(tmp_path / "q-1.jsonl")
    b, _ = store.read(tmp_path / "q-2.jsonl")
    assert len(a) + len(b) == 5 and {r["shard"]["index"] for r in a + b} == {1, 2}
