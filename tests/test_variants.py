"""The registry is the one list of variants: every record says where its code lives (and that place
exists), the cell and backward records are in it, the GPU conv algorithms come from one table, and
``microbench variants [OP]`` lists them all."""
import ast
import importlib.util
import json
from pathlib import Path

from kernels.backends import BACKENDS
from microbench import cases, cli, registry  # noqa: F401  (cases fills the registry)


def _defined(code: str) -> bool:
    """Whether ``module:name`` names a top-level def, class or assignment (``run = conv2d_direct``),
    read from the source (importing a framework adapter would import the framework)."""
    module, _, name = code.partition(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    name = name.split(".")[0]
    return any((isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
               or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == name for t in n.targets))
               for n in tree.body)


def test_every_record_names_code_that_exists():
    missing = [r.key for r in registry.REGISTRY.values() if not r.code or not _defined(r.code)]
    assert not missing, missing


def test_every_record_is_well_formed():
    for r in registry.REGISTRY.values():
        assert r.direction in registry.DIRECTIONS and r.about, r.key
        assert r.device in ("cpu", "cuda"), r.key
        assert r.tol_scale >= 1.0, r.key
        if not r.framework:
            assert r.precisions and set(r.precisions) <= {d for b in BACKENDS.values() for d in b.dtypes}, r.key


def test_cell_and_backward_records_are_registered_but_not_flags():
    flags = registry.variants("lstm")
    assert {"naive", "fused", "cudnn", "onednn", "persistent"} <= set(flags)
    assert not any("-" in v or "+" in v for v in flags), flags
    ln = {r.key for r in registry.ours("lstm", "layernorm")}
    assert ("lstm", "layernorm-fused", "numba") in ln and ("lstm", "layernorm-naive", "cupy") in ln
    bwd = {r.key for op in ("lstm", "gru", "rnn", "conv") for r in registry.ours(op, direction="bwd")}
    assert {("gru", "fused+bwd", "numpy"), ("conv", "im2col+bwd_data", "numpy")} <= bwd
    assert ("lstm", "layernorm-fused+bwd", "numpy") in {r.key for r in registry.ours("lstm", "layernorm", "bwd")}


def test_gpu_conv_algorithms_come_from_one_table():
    from kernels.conv import gpu as cg
    gpu_recs = [r for r in registry.ours("conv") if r.backend == "cupy" and not r.variant.startswith("cudnn")]
    assert [r.variant for r in gpu_recs] == list(cg.ALGORITHMS)
    for r in gpu_recs:
        algo = cg.ALGORITHMS[r.variant]
        assert r.dtypes == algo.dtypes == cg.DTYPES[r.variant] and r.about == algo.about
        assert cg.RUNNERS[r.variant].__name__ == algo.launcher == r.code.split(":")[1]
        assert all(cg.KERNEL_STEMS[s] == algo.dtypes for s in algo.stems)
    assert set(cg.KERNEL_STEMS) == {s for a in cg.ALGORITHMS.values() for s in a.stems}


def test_variants_command_lists_where_each_variant_lives(capsys):
    assert cli.main(["variants", "lstm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["op", "variant", "backend"]
    fused = [ln for ln in lines[1:] if ln.split()[1:3] == ["fused", "numpy"]]
    assert len(fused) == 1 and "kernels.recurrent:RNN" in fused[0] and fused[0].rstrip().endswith("yes")
    assert all(ln.split()[0] == "lstm" for ln in lines[1:])
    assert any("layernorm-fused" in ln and "kernels.custom:CustomLSTM" in ln for ln in lines)
    assert any(ln.split()[1] == "fused+bwd" and " bwd " in ln for ln in lines)


def test_variants_json_has_every_record_with_its_availability(capsys):
    assert cli.main(["variants", "--json", "--frameworks"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(registry.REGISTRY)
    for row in rows:
        # a row that cannot run says why; one that can has no reason
        assert row["available"] == (row["reason"] == ""), row
    # the GPU rows on a machine without one name the reason, never a bare "no"
    if not any(r["available"] for r in rows if r["device"] == "cuda"):
        assert all("GPU" in r["reason"] or "cuda" in r["reason"] or "CUDA" in r["reason"]
                   for r in rows if r["device"] == "cuda" and not r["framework"]), rows
