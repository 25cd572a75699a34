"""NVTX ranges cost our rows time that framework rows do not carry: by default (auto) they are
pushed only when an NVTX tool is attached, and the table and records say which level ran."""
from __future__ import annotations

import json

import pytest

from kernels import nvtx
from profiles import nsight

TINY = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2",
        "--backend", "numpy"]


@pytest.fixture
def restore_level():
    yield
    nvtx.set_level("auto")


def test_auto_follows_an_attached_tool(monkeypatch, restore_level):
    for v in nvtx.INJECTION_VARS:
        monkeypatch.delenv(v, raising=False)
    nvtx.set_level("auto")
    assert nvtx.level() == "off" and nvtx.requested() == "auto"
    assert "off (no NVTX tool attached)" in nvtx.describe()
    nvtx.reset_count()
    with nvtx.case("lstm", "fused", "numpy"), nvtx.phase("step"):
        pass
    assert nvtx.reset_count() == 0
    monkeypatch.setenv("NVTX_INJECTION64_PATH", "/opt/nsight/libToolsInjection64.so")
    nvtx.set_level("auto")
    assert nvtx.level() == "on" and "an NVTX tool is attached" in nvtx.describe()
    nvtx.set_level("off")
    assert nvtx.level() == "off" and "--nvtx off" in nvtx.describe()


def test_in_process_trace_still_sees_ranges_when_they_are_off(restore_level):
    from profiles import trace as tr
    nvtx.set_level("off")
    ticks = iter(range(100))
    with tr._log_ranges(lambda: next(ticks)) as log:
        with nvtx.case("lstm", "fused", "numpy"):
            pass
    assert nvtx.level() == "off" and [p for _, _, p in log.closed][-1] == "lstm"


def test_nsight_commands_ask_for_ranges():
    ops = ("lstm", "gru", "rnn", "conv")
    assert nsight.nsys_command(["lstm", "--fused"], ops=ops)[-3:] == ["--nvtx", "on", "--profile"]
    assert nsight.ncu_command(["lstm", "--fused"], ops=ops, variant="fused")[-2:] == ["--nvtx", "on"]
    assert nsight.ncu_command(["lstm", "--fused", "--nvtx", "case"], ops=ops).count("--nvtx") == 2  # ncu's flag + ours


def test_default_run_pushes_no_ranges_and_says_so(run_cli, tmp_path):
    out = tmp_path / "r.jsonl"
    env = {v: "" for v in nvtx.INJECTION_VARS}
    r = run_cli("lstm", "--fused", *TINY, "--json", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert "NVTX ranges off (no NVTX tool attached)" in r.stdout
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["options"]["nvtx"] == "off" and rec["nvtx"]["ranges_per_run"] == 0
    assert rec["env"]["nvtx"]["requested"] == "auto"
    r = run_cli("lstm", "--fused", *TINY, "--nvtx", "on", env=env)
    assert r.returncode == 0 and "NVTX ranges on (--nvtx on)" in r.stdout
