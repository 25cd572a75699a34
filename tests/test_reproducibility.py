"""Reproducibility data: --version, the git commit (and dirty state) and command line in env and
records, env's memory/clock/MXNet worker rows, and the CSV export."""
from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

from microbench import __version__, cli
from microbench import env as menv

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "results-sample.jsonl"
TINY = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2",
        "--backend", "numpy"]


def test_version_flag(run_cli):
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"microbench {__version__}"


def test_source_names_the_commit_and_whether_the_tree_differs():
    src = menv.source()
    assert src["version"] == __version__
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert src["commit"] == head.stdout.strip() and isinstance(src["dirty"], bool)


def test_records_carry_version_commit_and_command_line(run_cli, tmp_path):
    out = tmp_path / "r.jsonl"
    r = run_cli("lstm", "--fused", *TINY, "--json", str(out))
    assert r.returncode == 0, r.stderr
    env = json.loads(out.read_text().splitlines()[0])["env"]
    assert env["microbench"]["version"] == __version__
    assert env["command"].startswith("python -m microbench lstm --fused -T 3")
    assert env["memory_gib"] > 0 and "current_mhz" in env["cpu_clock"]


def test_env_lists_nvtx_once_and_the_mxnet_worker(run_cli):
    r = run_cli("env")
    assert r.returncode == 0, r.stderr
    rows = [l.split("│")[1].strip() for l in r.stdout.splitlines() if l.count("│") >= 2]
    assert rows.count("nvtx") == 1 and "mxnet worker" in rows and "memory" in rows and "microbench" in rows
    from microbench import args
    args.COMMAND_LINE = ["env"]
    assert menv.argv() == "python -m microbench env"


def test_report_csv(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert cli.main(["report", str(FIXTURE), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 40 and rows[0]["op"] == "lstm" and rows[0]["label"] == "naive/numpy"
    assert float(rows[0]["median_s"]) > 0 and rows[0]["H"] == "64" and rows[0]["threads"] == "1"
    assert rows[0]["framework"] == "" and rows[0]["status"] == "ok"
