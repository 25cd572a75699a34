"""Kernel traces, classification, Nsight parsers and the explanation, on committed data only.

The reference traces are real (CUPTI on an H100); the CSV fixtures are constructed (they say so).
Nothing here needs a GPU; the capture path is tested through fake CUPTI records.
"""
from __future__ import annotations

import collections
import io
import types
from pathlib import Path

import pytest

from kernels.errors import BadInput, MissingDependency
from profiles import classify as cl
from kernels import nvtx
from profiles import explain, nsight
from profiles import trace as tr

FIX = Path(__file__).parent / "fixtures"
ENV, TRACES = tr.load(explain.REFERENCE)
BY_LABEL = {t.label: t for t in TRACES}


# -- classification ----------------------------------------------------------------------------

ISSUE_NAMES = [   # named in the issue, seen on an H100
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize64x64x32_warpgroupsize1x1x1", "gemm"),
    ("_Z17gemv2T_kernel_valIiiffffLi128ELi16ELi4ELi4ELb0ELb0E18cublasGemvParamsExIi30cublas"
     "GemvTensorStridedBatchedIKfES3_S1_IfEfEEvT11_T4_S7_", "gemm"),
    ("gemv2T_kernel_val", "gemm"),
    ("elemWiseRNNcell<float,...>", "cudnn_rnn"),
    ("ampere_lstm_tile16<32, 0>", "cudnn_rnn"),
    ("nvjet_sm90_hsh_128x160_64x5_2x1_v_bz_TNT", "gemm"),
]

# every distinct name in the reference file, by its base name -> expected class
REFERENCE_CLASSES = {
    "elemWiseRNNcell": "cudnn_rnn", "ampere_lstm_tile16": "cudnn_rnn",
    "persistRNN_init_negMax": "cudnn_rnn", "gemv2T_kernel_val": "gemm",
    "RNNInputRearrangement": "copy", "RNNInputRearrangement2": "copy",
    "RNNOutputRearrangement": "copy", "RNNOutputRearrangement2": "copy",
    "vectorized_elementwise_kernel": "copy",          # torch FillFunctor: zeros for h0/c0
    "CatArrayBatchedCopy_vectorized": "copy", "loop_broadcast_fusion": "copy",
    "lstm_cell_forward": "pointwise", "gru_cell_forward": "pointwise",
    "[memcpy]": "copy", "[memset]": "copy",
}


@pytest.mark.parametrize("name,cls", ISSUE_NAMES)
def test_issue_names(name, cls):
    assert cl.classify(name) == cls


def _expected(name: str) -> str:
    base = tr.base_name(name)
    if base in REFERENCE_CLASSES:
        return REFERENCE_CLASSES[base]
    if "fprop" in name:
        return "conv"
    assert name.startswith(("sm80_xmma_gemm", "sm90_xmma_gemm", "nvjet_")), name
    return "gemm"


REF_NAMES = sorted({(r.kind, r.name) for t in TRACES for r in t.records})


@pytest.mark.parametrize("kind,name", REF_NAMES, ids=[n[:50] for _, n in REF_NAMES])
def test_every_reference_name(kind, name):
    assert cl.classify(name, kind) == _expected(name)


def test_table_is_one_ordered_table_of_known_classes():
    assert all(r.cls in cl.CLASSES and r.why for r in cl.RULES)
    assert cl.classify("some_custom_kernel") == "other"
    assert cl.classify("", "memcpy") == "copy"
    # order: a cuDNN implicit-GEMM conv contains "gemm" but is a convolution
    assert cl.classify("sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nchwkcrs") == "conv"


@pytest.mark.parametrize("name,prec", [
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize64x64x32", "tf32"),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8_stage3_warpsize1x2x1_ffma", "fp32"),
    ("nvjet_sm90_hsh_128x160_64x5_2x1_v_bz_TNT", "fp16"),
    ("some_custom_gemm", None),
])
def test_gemm_precision(name, prec):
    assert cl.gemm_precision(name) == prec


# -- names and the trace model -----------------------------------------------------------------

@pytest.mark.parametrize("mangled,parts,templated", [
    ("_Z15elemWiseRNNcellIfffL14cudnnRNNMode_t2EEvii", ["elemWiseRNNcell"], True),
    ("_ZN2at6native29vectorized_elementwise_kernelILi4EEEviT0_",
     ["at", "native", "vectorized_elementwise_kernel"], True),
    ("_ZN2at6native38_GLOBAL__N__7649b931_6_RNN_cu_eca79a6d6kernel17lstm_cell_forwardIffEEv",
     ["at", "native", "(anonymous)", "kernel", "lstm_cell_forward"], True),
    ("_Z22RNNInputRearrangement2IffEvPT0_", ["RNNInputRearrangement2"], True),
    ("_Z3fooii", ["foo"], False),
])
def test_fallback_demangler(mangled, parts, templated):
    assert tr._fallback_parts(mangled) == (parts, templated)


def test_short_and_base_names():
    assert tr.short_name("nvjet_sm90_hsh_128x160_64x5_2x1_v_bz_TNT").startswith("nvjet")
    assert "elemWiseRNNcell" in tr.short_name("_Z15elemWiseRNNcellIfffEvii")
    assert tr.base_name("void at::native::vectorized_elementwise_kernel<(int)4>(int)") == \
        "vectorized_elementwise_kernel"
    assert tr.base_name("_ZN2at6native29vectorized_elementwise_kernelILi4EEEvi") == \
        "vectorized_elementwise_kernel"


def test_load_reference_and_roundtrip(tmp_path):
    assert ENV["gpu"] == "NVIDIA H100 80GB HBM3" and len(TRACES) == 13
    t = BY_LABEL["jax/lstm/cudnn H512 B64 T100 float32"]
    assert {r.kind for r in t.records} == {"kernel", "memcpy", "memset"}
    out = tmp_path / "t.json"
    tr.dump([t], out, ENV)
    env2, (t2,) = tr.load(out)
    assert env2 == ENV and t2.records == t.records and t2.meta == t.meta


def test_bad_trace_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        tr.load(tmp_path / "missing.json")
    with pytest.raises(BadInput, match="nope"):
        tr.select(TRACES, ["nope"])
    with pytest.raises(BadInput, match="allowed: kernel, memcpy, memset"):
        tr.KernelRecord.from_dict({"kind": "graph", "start_ns": 0, "end_ns": 1})


# -- capture, through fakes --------------------------------------------------------------------

class _Kind:
    CONCURRENT_KERNEL, MEMCPY, MEMSET, RUNTIME, DRIVER = 10, 1, 2, 5, 6


def _act(kind, **kw):
    base = dict(kind=kind, correlation_id=0, start=0, end=0, stream_id=7, name=None, bytes=0,
                grid_x=1, grid_y=1, grid_z=1, block_x=1, block_y=1, block_z=1)
    return types.SimpleNamespace(**{**base, **kw})


def test_cupti_records_become_trace_with_nvtx_paths():
    acts = [_act(_Kind.RUNTIME, correlation_id=1, start=105),
            _act(_Kind.CONCURRENT_KERNEL, correlation_id=1, start=1000, end=1500, name="k_gemm",
                 grid_x=32, block_x=128),
            _act(_Kind.RUNTIME, correlation_id=2, start=300),
            _act(_Kind.MEMSET, correlation_id=2, start=1600, end=1650, bytes=4),
            _act(_Kind.RUNTIME, correlation_id=3, start=900),
            _act(_Kind.CONCURRENT_KERNEL, correlation_id=3, start=1700, end=1800, name="late")]
    pairs, launch = tr.from_cupti(acts, _Kind)
    assert launch == {1: 105, 2: 300, 3: 900} and len(pairs) == 3
    clock = iter(range(100, 1000, 100))                   # 100, 200, ... one tick per call
    log = tr.RangeLog(lambda: next(clock))
    log.push("lstm")        # 100
    log.push("fused")       # 200
    log.push("step")        # 300
    log.pop()               # 400: lstm/fused/step [300, 400]
    log.pop()               # 500: lstm/fused [200, 500]
    log.pop()               # 600: lstm [100, 600]
    log.pop()               # a pop for a range pushed before capture: ignored
    t = tr._finish(pairs, launch, log.closed, 0, 2000, "x", {"T": 1}, "cupti")
    assert [r.nvtx for r in t.records] == ["lstm", "lstm/fused/step", ""]
    assert t.records[0].start_ns == 0 and t.records[0].grid == (32, 1, 1)
    assert t.records[1].kind == "memset" and t.records[1].bytes == 4 and t.wall_ns == 2000


def test_range_hook_restores_nvtx():
    before = nvtx._load()
    ticks = iter(range(1000))
    with tr._log_ranges(lambda: next(ticks)) as log:
        with nvtx.case("lstm", "fused", "numpy"):
            with nvtx.phase("step"):
                pass
    assert nvtx._load() == before
    assert [p for _, _, p in log.closed] == ["lstm/fused/numpy/step", "lstm/fused/numpy",
                                             "lstm/fused", "lstm"]


def test_capture_without_tracer_says_what_it_needs(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name in ("cupti", "torch"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingDependency, match="cupti-python"):
        tr.capture(lambda: None)


# -- Nsight ------------------------------------------------------------------------------------

def test_nsys_kern_sum_fixture():
    rows = nsight.read_kern_sum(FIX / "nsys_cuda_gpu_kern_sum.csv")
    assert [(r.cls, r.count) for r in rows] == [("gemm", 100), ("gemm", 1), ("cudnn_rnn", 100),
                                                ("copy", 2)]
    assert rows[2].total_ns == 282144
    s = explain.stats_from_rows("nsys", rows, {"T": 100})
    assert s.busy_from_sum and s.kernels == 203 and s.per_step == pytest.approx(2.03)
    assert explain.brief(rows[2].name) == "elemWiseRNNcell"


def test_nsys_nvtx_sum_fixture():
    rows = nsight.read_nvtx_sum(FIX / "nsys_nvtx_sum.csv")
    assert [r.range for r in rows] == ["lstm", "cudnn", "torch", "step"]
    assert rows[3].instances == 1000 and rows[0].total_ns == 24_100_000


def test_ncu_details_and_raw_fixtures():
    ks = nsight.read_ncu(FIX / "ncu_details.csv")
    assert [k.id for k in ks] == [0, 1, 2, 3]
    assert ks[0].duration_ns == pytest.approx(5280) and ks[2].duration_ns == pytest.approx(5312)
    rows = nsight.ncu_rows(ks)
    assert [(r.cls, r.count, r.total_ns) for r in rows] == [("gemm", 2, 10592),
                                                            ("cudnn_rnn", 2, 5640)]
    raw = nsight.read_ncu(FIX / "ncu_raw.csv")
    assert [k.duration_ns for k in raw] == [238052, 27584]
    assert {cl.classify(k.name) for k in raw} == {"conv"}


def test_csv_without_table_is_bad_input():
    with pytest.raises(BadInput, match="cuda_gpu_kern_sum"):
        nsight.read_kern_sum("a,b\n1,2\n")


OPS = ("lstm", "gru", "rnn", "conv")


def test_command_builders():
    cmd = nsight.profile_command("nsys", ["lstm", "--fused"], ops=OPS)
    assert cmd[:2] == ["nsys", "profile"] and "--capture-range=cudaProfilerApi" in cmd
    assert "--trace=cuda,nvtx" in cmd and cmd[-1] == "--profile"
    assert cmd[cmd.index("-m") + 1:] == ["microbench", "lstm", "--fused", "--nvtx", "on", "--profile"]
    ncu = nsight.profile_command("ncu", ["lstm", "--fused", "-H", "512"], ops=OPS, variant="fused")
    assert ncu[:4] == ["ncu", "--nvtx", "--nvtx-include", "microbench@lstm/fused/"]
    assert nsight.profile_command("ncu", ["gru"], ops=OPS, variant="cudnn")[3] == "microbench@gru/cudnn/"
    assert nsight.profile_command("ncu", ["conv", "--all"], ops=OPS)[3] == "microbench@conv/"
    assert nsight.profile_command("ncu", ["lstm"], ops=OPS, variant="fused", backend="cupy")[3] == \
        "microbench@lstm/fused/cupy/"
    assert nsight.nvtx_filter("lstm", "fused", "cupy") == "microbench@lstm/fused/cupy/"
    line = nsight.shell(["ncu", "--nvtx-include", "a b/"])
    assert line == "ncu --nvtx-include 'a b/'"
    with pytest.raises(BadInput, match="allowed: nsys, ncu"):
        nsight.profile_command("nvprof", ["lstm"], ops=OPS)
    with pytest.raises(BadInput, match="allowed: lstm, gru, rnn, conv"):
        nsight.profile_command("nsys", ["mlp"], ops=OPS)


def _registry_cases() -> list:
    """(bench args, the op, variant and backend their NVTX filter names) for every forward
    variant flag of every op, every registered cell, a backend, a training step."""
    from microbench import cases, registry  # noqa: F401  (cases fills the registry)
    out = [([op, f"--{v}"], (op, v, None)) for op in registry.ops() for v in registry.variants(op)]
    out += [([r.op, "--cell", r.cell, "--fused"], (r.op, f"{r.cell}-fused", None))
            for r in registry.REGISTRY.values() if r.cell != "plain" and r.variant.endswith("-fused")
            and r.backend == "numba"]
    out += [(["lstm", "--fused", "--backend", "numba"], ("lstm", "fused", "numba")),
            (["gru", "--backward"], ("gru", "fused+bwd", None)),
            (["conv", "--backward", "--im2col"], ("conv", None, None)),
            (["rnn", "--ladder"], ("rnn", None, None))]
    return out


def test_profile_takes_every_op_and_variant_the_registry_has():
    """`profile ncu OP --VARIANT` filters on that variant's range for every record of the registry
    (rnn, oneDNN's and the cells' included), through the benchmark's own parser."""
    from microbench import registry
    from microbench.commands.profile import nvtx_target
    seen = set()
    for bench, want in _registry_cases():
        assert nvtx_target(bench) == want, bench
        cmd = nsight.profile_command("ncu", bench, ops=registry.ops(), variant=want[1], backend=want[2])
        assert cmd[3] == nsight.nvtx_filter(*want), bench
        seen.add(want[:2])
    assert {(op, v) for op in registry.ops() for v in registry.variants(op)} <= seen
    assert {op for op, _ in seen} == set(registry.ops()) >= {"lstm", "gru", "rnn", "conv"}
    with pytest.raises(BadInput, match="select layernorm-onednn, which no lstm record of cell layernorm has"):
        nvtx_target(["lstm", "--cell", "layernorm", "--onednn"])


def test_profile_command_prints_the_registry_filter(capsys):
    from microbench import cli
    assert cli.main(["profile", "ncu", "rnn", "--onednn"]) == 0
    assert "--nvtx-include microbench@rnn/onednn/ " in capsys.readouterr().out
    assert cli.main(["profile", "ncu", "lstm", "--cell", "peephole", "--naive"]) == 0
    assert "microbench@lstm/peephole-naive/ " in capsys.readouterr().out


# -- explain on the reference traces -----------------------------------------------------------

def _classes(label):
    return collections.Counter(cl.classify(r.name, r.kind) for r in BY_LABEL[label].records)


def test_reference_facts():
    """The facts the issue states, checked against the data rather than taken on trust."""
    cudnn = BY_LABEL["torch/lstm/cudnn H512 B64 T100 float32"]
    names = collections.Counter(tr.base_name(r.name) for r in cudnn.kernels)
    assert names["elemWiseRNNcell"] == 100
    gemms = [r for r in cudnn.kernels if cl.classify(r.name) == "gemm"]
    assert len(gemms) == 101                                   # 1 input + 100 recurrent
    assert collections.Counter(r.name for r in gemms).most_common()[-1][1] == 1
    fp16 = BY_LABEL["torch/lstm/cudnn H512 B64 T100 float16"]
    tiles = [r for r in fp16.kernels if "lstm_tile16" in r.name]
    assert len(tiles) == 1
    aten = _classes("torch/lstm/aten H512 B64 T100 float32")
    assert aten["gemm"] == 400 and aten["pointwise"] == 100
    assert sum("lstm_cell_forward" in r.name for r in
               BY_LABEL["torch/lstm/aten H512 B64 T100 float32"].kernels) == 100
    jax = BY_LABEL["jax/lstm/cudnn H512 B64 T100 float32"]
    shared = {r.name for r in jax.kernels} & {r.name for r in cudnn.kernels}
    assert any("elemWiseRNNcell" in n for n in shared)
    assert {cl.gemm_precision(r.name) for r in jax.kernels if cl.classify(r.name) == "gemm"} == {"tf32"}


def test_explain_lstm_reference():
    an = explain.explain_reference("lstm")
    s = {i.label: i for i in an.impls}
    t = s["torch/lstm/cudnn H512 B64 T100 float32"]
    assert t.kernels == 203 and t.per_step == pytest.approx(2.03) and t.wall_traced
    assert t.by_class()["cudnn_rnn"][0] == 100 and t.busy_ns < t.wall_ns
    assert 0 < t.gaps_ns[0] < t.wall_ns
    assert "H100" in an.source and "2026-11-26" in an.source and "9.19.0" in an.source
    text = " ".join(explain.sentences(an))
    j = s["jax/lstm/cudnn H512 B64 T100 float32"]
    # the sentence carries the computed figures, not canned ones
    assert "same elemWiseRNNcell kernel" in text and "TF32" in text
    assert f"{j.by_class()['gemm'][1] / 1e6:.2f} ms vs {t.by_class()['gemm'][1] / 1e6:.2f} ms" in text
    assert "ampere_lstm_tile16" in text and "400 GEMMs" in text
    assert "traced" in text


def test_explain_filters_and_bad_input():
    an = explain.explain_reference("lstm", frameworks=["jax"])
    assert [i.name for i in an.impls] == ["jax/cudnn"]
    an = explain.explain_reference("gru", variants=["aten"])
    assert [i.name for i in an.impls] == ["torch/aten"]
    with pytest.raises(BadInput, match="allowed: lstm, gru, conv"):
        explain.explain_reference("mlp")
    with pytest.raises(BadInput, match="recorded: jax, torch"):
        explain.explain_reference("lstm", frameworks=["mxnet"])
    with pytest.raises(BadInput, match="not a trace here"):
        explain.analyze(TRACES[:1], walls={"no such label": 1})


def test_untraced_wall_and_conv_sentences():
    t = BY_LABEL["torch/conv2d/cudnn res2_3x3 N32 float32"]
    an = explain.analyze([t], walls={t.label: 300_000}, op="conv")
    (s,) = an.impls
    assert s.wall_ns == 300_000 and not s.wall_traced and s.idle_ns == 300_000 - s.busy_ns
    text = " ".join(explain.sentences(an))
    assert "79% of the wall time" in text and "traced" not in text
    conv = " ".join(explain.sentences(explain.explain_reference("conv")))
    assert "float16 NHWC" in conv and "sm90_xmma_fprop_implicit_gemm" in conv


def test_render_runs():
    from rich.console import Console
    buf = io.StringIO()
    explain.render(explain.explain_reference("lstm"), Console(file=buf, width=200))
    out = buf.getvalue()
    assert "traced wall" in out and "elemWiseRNNcell" in out and "Same kernels" in out
