"""The CLI end to end: README examples, bad input, JSON records, failed cases."""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from microbench import cli, store
from microbench.registry import Check, Prepared, VariantRecord

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SMALL = ["-T", "3", "-B", "2", "-H", "8", "--warmup", "0", "--min-time", "0", "--min-samples", "2"]
QUICK_TIMING = ["--warmup", "0", "--min-time", "0", "--min-samples", "2"]


def _block_after(marker: str) -> list:
    m = re.search(re.escape(marker) + r"\s*```\w*\n(.*?)```", README, re.S)
    assert m, f"README has no code block after {marker}"
    return [line for line in m.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_the_two_setup_commands():
    assert _block_after("<!-- main-command -->") == ["scripts/setup && python3 -m microbench lstm --fused"]
    assert _block_after("<!-- test-command -->") == ["scripts/setup test && python3 -m pytest -q"]
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


def _as_written(argv):
    """README example argv as written; only paths into the repository are made absolute (the
    test runs in a scratch folder).  Sizes and timing are the smoke mode's (conftest)."""
    return [str(ROOT / a) if "/" in a and (ROOT / a).exists() else a for a in argv]


BENCH_COMMANDS = ("lstm", "gru", "rnn", "conv")


@pytest.mark.parametrize("line", _block_after("<!-- examples -->") + [
    _block_after("<!-- main-command -->")[0].split("&& ")[1]])
def test_readme_examples_run(line, run_cli, tmp_path):
    """Every README example, as written, under smoke mode: it exits 0, prints no traceback, its
    tables say SMOKE and hold no FAILED row, its --json records validate and say smoke, and the
    files it names (a report and its figures) are written."""
    argv = shlex.split(line.split("#")[0])
    assert argv[:3] == ["python3", "-m", "microbench"]
    args = _as_written(argv[3:])
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    if args[0] in BENCH_COMMANDS:
        assert "SMOKE " in r.stdout and "FAILED" not in r.stdout, r.stdout
    if "--json" in args:
        recs = [json.loads(x) for x in (tmp_path / args[args.index("--json") + 1]).read_text().splitlines()]
        assert recs and all(rec["options"].get("smoke") for rec in recs)
        assert all(rec["status"] in ("ok", "skipped") for rec in recs), [rec["error"] for rec in recs]
        jsonschema = pytest.importorskip("jsonschema")
        schema = json.loads((ROOT / "microbench" / "schema" / "result-v1.json").read_text())
        for rec in recs:
            jsonschema.validate(rec, schema)
    if "--html" in args:
        html = (tmp_path / args[args.index("--html") + 1]).read_text()
        figures = re.findall(r"<img [^>]*src=['\"]([^'\"]+)['\"]", html)
        files = [f for f in figures if not f.startswith("data:")]
        assert figures and all((tmp_path / f).exists() for f in files), figures


def test_smoke_mode_shrinks_what_runs_and_says_so(run_cli, tmp_path):
    """A smoke run shrinks a large request to its caps, records the sizes asked for, and marks the
    header and the table; the memory check still applies to what was asked."""
    out = tmp_path / "s.jsonl"
    r = run_cli("lstm", "--fused", "--backend", "numpy", "-H", "512", "-B", "64", "-T", "100",
                "--json", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SMOKE run (MICROBENCH_SMOKE set)" in r.stdout and "SMOKE lstm H48 B4 T6" in r.stdout
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["shape"]["H"] == 48 and rec["shape"]["T"] == 6
    assert rec["options"]["smoke"] == {"asked": {"T": 100, "B": 64, "H": 512, "I": 512}}
    assert rec["stats"]["n"] == 2
    big = run_cli("lstm", "-H", "200000", "-T", "100000", cwd=tmp_path)
    assert big.returncode == 2 and "GiB of memory available" in big.stderr


def test_without_smoke_the_sizes_and_timing_are_as_asked(run_cli, tmp_path, no_smoke):
    out = tmp_path / "n.jsonl"
    r = run_cli("lstm", "--fused", "--backend", "numpy", *SMALL, "--min-samples", "7", "--json", str(out),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SMOKE" not in r.stdout
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert "smoke" not in rec["options"] and rec["stats"]["n"] >= 7 and rec["shape"]["H"] == 8


def test_table_and_json_records(run_cli, tmp_path):
    out = tmp_path / "r.jsonl"
    r = run_cli("lstm", "--all", *SMALL, "--json", str(out), "--threads", "1")
    assert r.returncode == 0, r.stderr
    for label in ("naive/numpy", "naive/numba", "fused/numpy", "fused/numba"):
        assert label in r.stdout
    assert "vs naive" in r.stdout and "max rel err" in r.stdout
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    # naive and fused on numpy and numba, and oneDNN's primitive (once and reorder-per-call)
    assert len(recs) == 6
    assert {r["label"] for r in recs} >= {"onednn/onednn", "onednn_reorder/onednn"}
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "microbench" / "schema" / "result-v1.json").read_text())
    for rec in recs:
        jsonschema.validate(rec, schema)
        assert store.problem(rec, current=True) is None      # what compare and report accept
        assert rec["status"] == "ok" and rec["check"]["passed"]
        assert rec["options"]["threads"] == 1 and rec["threads_used"].get("numba") == 1
        assert len(rec["samples_s"]) == rec["stats"]["n"] >= 2
        assert rec["flops"] == 2 * 3 * 2 * 4 * 8 * (8 + 8)


def test_ladder_rows(run_cli):
    r = run_cli("gru", "--ladder", "--backend", "numba", *SMALL)
    assert r.returncode == 0, r.stderr
    for rung in ("naive/numba", "+group_gemm/numba", "+hoist_input/numba", "+pretranspose/numba",
                 "+fuse_pointwise/numba"):
        assert rung in r.stdout
    assert "vs prev" in r.stdout


BAD = [
    (["lsmt"], "invalid choice: 'lsmt'"),
    (["lstm", "--fast"], "unrecognized arguments: --fast"),
    (["lstm", "--backend", "torch"], "backend 'torch' is unknown for lstm; allowed: numpy, numba"),
    (["lstm", "--backend", "cupy", "--device", "cpu"], "backend cupy does not run on cpu"),
    (["lstm", "--dtype", "fp8"], "dtype 'fp8' is unknown"),
    (["lstm", "--dtype", "fp16", "--device", "cpu"], "--dtype fp16: the chosen backends on cpu compute bf16, fp32, fp64"),
    (["lstm", "-H", "0"], "-H=0 is out of range"),
    (["lstm", "-B", "-3"], "-B=-3 is out of range"),
    (["lstm", "-T", "x"], "argument -T: invalid int value: 'x'"),
    (["lstm", "-H", "200000", "-T", "100000"], "GiB of memory available"),
    (["lstm", "--opt", "group_gemm,warp"], "fusion step 'warp' is unknown"),
    (["lstm", "--ladder", "--opt", "group_gemm"], "--ladder chooses the variants and steps itself"),
    (["lstm", "--threads", "two"], "--threads 'two' is not an integer"),
    (["lstm", "--threads", "0"], "--threads 0 is out of range"),
    (["lstm", "--nvtx", "loud"], "argument --nvtx: invalid choice: 'loud'"),
    (["lstm", "--min-time", "-1"], "--min-time -1"),
    (["lstm", "--device", "tpu"], "argument --device: 'tpu' is unknown; allowed: auto, cpu, cuda, cuda:K"),
    (["lstm", "--device", "cuda"], "--device cuda: no CUDA GPU found"),
    (["lstm", "--json", "/nonexistent-dir/x.jsonl"], "does not exist"),
    (["lstm", "--json", "/"], "is a directory"),
    (["conv", "-H", "2", "-R", "5", "--pad", "0"], "output size P=-2 <= 0"),
    (["conv", "--groups", "3"], "groups=3 must divide both C=64 and K=64"),
    (["conv", "--layer", "resnet50/res9_3x3"], "resnet50/res9_3x3"),
    (["conv", "--dtype", "fp16"], "--dtype fp16: the conv variants on the CPU compute fp64, fp32, bf16"),
    (["explain", "rnn"], "argument op: invalid choice: 'rnn'"),
    (["explain", "lstm", "--frameworks", "caffe"], "no reference lstm trace for framework 'caffe'"),
    (["profile", "vtune", "lstm"], "argument tool: invalid choice: 'vtune'"),
    (["profile", "ncu", "resnet"], "profile needs a benchmark op first, got 'resnet'"),
    (["lstm", "--cell", "layernorm", "--backend", "cupy", "--device", "cpu"],
     "--cell layernorm runs on cpu backends numpy, numba, not 'cupy'"),
    (["lstm", "--cell", "peephole", "--naive", "--opt", "group_gemm"],
     "sets the fusion steps of the fused variant, which is not selected"),
    (["lstm", "--cell", "peephole", "--ladder", "--fused"], "--ladder chooses the variants and steps itself"),
    (["lstm", "--cell", "peephole", "--frameworks", "torch"], "the frameworks have no peephole LSTM path"),
    (["gru", "--cell", "layernorm"], "unrecognized arguments: --cell"),
    (["lstm", "--persistent", "--device", "cpu"], "variant 'persistent' runs on cuda only; this run is on cpu"),
    (["variants", "lsmt"], "variants: op 'lsmt' is unknown; allowed: lstm, gru, rnn, conv"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("microbench: error: ")
    assert message in err


def test_custom_cell_ladder_and_opt(run_cli, tmp_path):
    """A custom cell runs on the plain cells' runner: the ladder's rungs and --opt's plan, each
    checked against the cell's float64 reference; without --opt the record's plan stays null."""
    out = tmp_path / "r.jsonl"
    r = run_cli("lstm", "--cell", "peephole", "--ladder", "--backend", "numba", *SMALL, "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["options"]["rung"] for x in recs] == ["naive", "+group_gemm", "+hoist_input",
                                                   "+fuse_pointwise", "+pretranspose", "+graph"]
    assert all(x["status"] == "ok" and x["check"]["passed"] for x in recs)
    assert recs[-1]["info"]["pointwise"] == "generated fused kernel" and recs[0]["info"]["gemms_per_step"] == 8
    # the compiled step loop calls the hand-written kernels only: a declared cell's graph rung
    # runs the Python loop and its record says why
    assert recs[-1]["info"]["step_loop"].startswith("Python loop: the compiled step loop runs numba's hand-written")
    out2 = tmp_path / "r2.jsonl"
    r = run_cli("lstm", "--cell", "layernorm", "--fused", "--backend", "numba", "--opt", "group_gemm,fuse_pointwise",
                *SMALL, "--json", str(out2))
    assert r.returncode == 0, r.stdout + r.stderr
    (rec,) = [json.loads(line) for line in out2.read_text().splitlines()]
    assert rec["options"]["plan"] == "group_gemm,fuse_pointwise" and rec["check"]["passed"]
    assert rec["info"]["gemms_per_step"] == 2      # input GEMM not hoisted: one per step


def test_bad_input_through_a_subprocess_has_no_traceback(run_cli):
    r = run_cli("gru", "-L", "0")
    assert r.returncode == 2 and r.stderr.strip() == "microbench: error: -L=0 is out of range; allowed: 1..16777216"


@pytest.fixture
def broken_variant(register_variants):
    """A registered variant whose results are wrong, to see FAILED handling end to end."""
    def build(problem, seed, *, precision, plan=None):
        def check():
            return Check(0.5, 1e-5, False, "y: max relative error 5.00e-01 > 1e-05")
        return Prepared({}, lambda: None, 1, 1, check)

    def crash(problem, seed, *, precision, plan=None):
        raise RuntimeError("kernel exploded")

    register_variants(VariantRecord("lstm", "broken", "numpy", build, "test double"),
                      VariantRecord("lstm", "crashing", "numpy", crash, "test double"))


def test_failed_case_is_reported_and_run_continues(broken_variant, capsys, tmp_path):
    out = tmp_path / "f.jsonl"
    code = cli.main(["lstm", "--backend", "numpy", *SMALL, "--json", str(out), "--quiet"])
    text = capsys.readouterr()
    assert code == 1
    assert "FAILED" in text.out and "kernel exploded" in text.out
    recs = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert recs["broken"]["status"] == "failed" and not recs["broken"]["check"]["passed"]
    assert recs["crashing"]["status"] == "failed" and "RuntimeError: kernel exploded" in recs["crashing"]["error"]
    assert recs["fused"]["status"] == "ok" and recs["naive"]["status"] == "ok"


def test_env_json(run_cli):
    r = run_cli("env", "--json")
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["libraries"]["numpy"] == np.__version__
    assert env["cores"] >= 1 and env["env_id"]
    assert env["nvtx"]["cost_per_range_s"] > 0


def test_help_lists_every_command(run_cli):
    r = run_cli("--help")
    for name in ("lstm", "gru", "conv", "explain", "profile", "variants", "env"):
        assert name in r.stdout
    r = run_cli("lstm", "--help")
    for flag in ("--naive", "--fused", "--ladder", "--opt", "--threads", "--json", "--nvtx", "--profile"):
        assert flag in r.stdout


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README))))
def test_readme_python_blocks_run(index):
    block = re.findall(r"```python\n(.*?)```", README, re.S)[index]
    namespace: dict = {}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    if "y" in namespace:   # the research-code example: a real forward pass
        assert namespace["y"].shape == (100, 16, 512) and np.isfinite(namespace["y"]).all()
    if "CIFG" in namespace:
        assert namespace["CIFG"].name == "cifg_lstm"
