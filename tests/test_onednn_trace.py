"""oneDNN verbose logs -> primitive trace records: the parser on logs captured from real runs of
PyTorch (oneDNN 3.12), TensorFlow (3.7) and MXNet 1.9.1 (2.4.4) workers (tests/fixtures/onednn,
written by ``explain ... --device cpu --save-logs``), on awkward and truncated logs, and the
live capture of our own onednn variant.
"""
import os
from pathlib import Path

import pytest

from profiles import onednn_trace as ot
from profiles import trace as tr

FIX = Path(__file__).parent / "fixtures" / "onednn"
CALLS = 5     # the fixtures hold 5 traced calls each (microbench.cpu_explain.CALLS)


def _fixture(name):
    p = FIX / name
    if not p.is_file():
        pytest.fail(f"fixture {p} is missing")
    return ot.parse(p.read_text())


def _rows(parsed):
    return {(r.kind, r.impl): r for r in ot.summarize(parsed.trace("t"), CALLS)}


# -- fixtures from real runs --------------------------------------------------------------------
def test_torch_lstm_runs_one_fused_rnn_and_reorders_its_weights_every_call():
    p = _fixture("torch-fused-lstm.log")
    assert p.version.startswith("3.") and not p.truncated and p.skipped == 0
    rows = ot.summarize(p.trace("torch/fused"), CALLS)
    rnn = [r for r in rows if r.cls == "fused_rnn"]
    assert len(rnn) == 1 and rnn[0].count == 1 and rnn[0].prop == "forward_inference"
    reorders = [r for r in rows if r.cls == "reorder"]
    assert sum(r.count for r in reorders) == 2          # weights_layer and weights_iter
    assert "wei_layer:f32" in rnn[0].formats


def test_mxnet_uses_its_older_onednn_and_the_reference_rnn():
    p = _fixture("mxnet-fused-lstm.log")
    assert p.version.startswith("2.")
    rnn = [r for r in ot.summarize(p.trace("m"), CALLS) if r.cls == "fused_rnn"]
    assert len(rnn) == 1 and rnn[0].impl.startswith("ref")
    assert all(r.prop for r in p.records)


def test_mxnet_generic_issues_per_step_gemm_primitives():
    p = _fixture("mxnet-generic-lstm.log")
    gemm = sum(r.count for r in ot.summarize(p.trace("m"), CALLS) if r.cls == "gemm")
    assert gemm >= 10                                    # T=10 steps: at least one per step


def test_tensorflow_calls_onednn_gemm_per_step():
    for name in ("tensorflow-fused-lstm.log", "tensorflow-generic-lstm.log"):
        p = _fixture(name)
        rows = ot.summarize(p.trace("tf"), CALLS)
        assert rows and all(r.cls == "gemm" for r in rows), name
        assert sum(r.count for r in rows) >= 10


def test_conv_fixtures_name_the_convolution_implementation():
    found = 0
    for f in sorted(FIX.glob("*-conv.log")):
        p = ot.parse(f.read_text())
        conv = [r for r in p.records if ot.classify_primitive(r.name) == "conv"]
        if conv:
            found += 1
            assert all(r.impl for r in conv), f.name
    assert found >= 1


def test_every_fixture_parses_without_unknown_lines():
    files = sorted(FIX.glob("*.log"))
    assert len(files) >= 6
    for f in files:
        p = ot.parse(f.read_text())
        assert p.skipped == 0 and not p.truncated, f.name
        for r in p.records:
            assert r.kind == "primitive" and r.end_ns >= r.start_ns and r.engine == "cpu"


# -- awkward logs --------------------------------------------------------------------------------
V3 = ("onednn_verbose,v1,1796123704777.586914,primitive,exec,cpu,reorder,jit:blk,undef,"
      "src:f32::blocked:abdec::f0 dst:f32::blocked:abdEc16e::f0,attr-scratchpad:user,,1x1x16x4x16,0.5\n")
V3_RNN = ("onednn_verbose,v1,1796123704778.586914,primitive,exec,cpu,rnn,brgemm:avx2,forward_inference,"
          "src_layer:f32::blocked:abc::f0 wei_layer:f32:a:blocked:abdEc16e::f0,attr-scratchpad:user,"
          "alg:vanilla_lstm direction:unidirectional_left2right,l1t5mb2sic16slc16dhc16dic16,2.25\n")
V2 = ("dnnl_verbose,exec,cpu,rnn,ref:any,forward_inference,src_layer_f32::blocked:abc:f0 "
      "wei_layer_f32::blocked:abcde:f0,,alg:vanilla_lstm,l1t5mb2sic16slc16dhc16dic16,0.25\n")


def test_timestamps_place_records_where_execution_started():
    p = ot.parse(V3 + V3_RNN)
    a, b = p.records
    assert (a.start_ns, a.end_ns) == (0, 500_000)
    assert b.start_ns == 1_000_000 and b.duration_ns == 2_250_000
    assert b.formats == "src_layer:f32 abc, wei_layer:f32 abdEc16e"


def test_without_timestamps_records_are_laid_end_to_end():
    p = ot.parse(V2 + V2)
    assert [(r.start_ns, r.end_ns) for r in p.records] == [(0, 250_000), (250_000, 500_000)]
    assert p.records[0].formats == "src_layer:f32 abc, wei_layer:f32 abcde"


def test_truncated_last_line_is_dropped_and_reported():
    cut = V3 + V3_RNN[:70]
    p = ot.parse(cut)
    assert len(p.records) == 1 and p.truncated and p.skipped == 0


def test_other_output_and_broken_lines_are_counted_not_raised():
    text = ("hello from python\n" + V2 + "onednn_verbose,exec,cpu,rnn\n"
            + "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,x,,,1x2,not-a-time\n"
            + "onednn_verbose,v1,graph,exec,cpu,p1,x,y,z,1.0\n"
            + "some text onednn_verbose,exec glued\n"
            + "onednn_verbose,v1,primitive,create:cache_miss,cpu,rnn,brgemm:avx2,x,y,z,a,b,0.1\n"
            + "\n\r\n" + V2)
    p = ot.parse(text)
    assert len(p.records) == 2 and p.created == 1
    assert p.skipped == 5 and not p.truncated


def test_empty_log_and_info_lines():
    assert ot.parse("").records == []
    p = ot.parse("dnnl_verbose,info,oneDNN v2.4.4 (commit 5818c40)\n"
                 "dnnl_verbose,info,cpu,isa:Intel AVX2\n")
    assert (p.version, p.isa, p.records) == ("2.4.4", "Intel AVX2", [])


def test_markers_cut_out_the_traced_calls():
    log = V2 + ot.BEGIN + "\n" + V3 + ot.END + "\n" + V2
    assert ot.parse(ot.between_markers(log)).records[0].name == "reorder"
    assert len(ot.parse(ot.between_markers(log)).records) == 1
    died = V2 + ot.BEGIN + "\n" + V3 + V3_RNN[:40]   # worker died mid-line, no END
    p = ot.parse(ot.between_markers(died))
    assert len(p.records) == 1 and p.truncated
    assert len(ot.parse(ot.between_markers(V2)).records) == 1   # no markers: the whole log


def test_summary_takes_the_median_call():
    slow = V2.replace(",0.25\n", ",99.0\n")
    p = ot.parse(V2 + V2 + slow)
    [row] = ot.summarize(p.trace("t"), 3)
    assert row.count == 1 and row.total_ns == 250_000


def test_primitive_records_round_trip_through_the_trace_file(tmp_path):
    t = ot.parse(V3 + V3_RNN).trace("ours/onednn", {"op": "lstm"})
    tr.dump([t], tmp_path / "t.json", {"host": "x"})
    _, [back] = tr.load(tmp_path / "t.json")
    assert back.records == t.records and back.meta["op"] == "lstm"


def test_classification():
    assert ot.classify_primitive("rnn") == "fused_rnn"
    assert ot.classify_primitive("inner_product") == "gemm"
    assert ot.classify_primitive("matmul") == "gemm"
    assert ot.classify_primitive("gemm_api") == "gemm"
    assert ot.classify_primitive("reorder") == "reorder"
    assert ot.classify_primitive("convolution") == "conv"
    assert ot.classify_primitive("eltwise") == "pointwise"
    assert ot.classify_primitive("shuffle") == "other"


# -- live capture of our own variant ---------------------------------------------------------------
def test_capture_of_our_onednn_rows():
    import numpy as np

    from kernels.onednn import lib as L
    from kernels.onednn.rnn import OnednnRNN
    from kernels.params import LSTMParams
    ok, reason = L.available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    p = LSTMParams.random(8, 8, 1, seed=0).astype(np.float32)
    for each, reorders in ((False, 0), (True, 2)):
        with OnednnRNN(p, batch=2, seq_len=3, reorder_each_call=each) as rnn:
            rnn.bind(np.ones((3, 2, 8), np.float32), np.zeros((1, 2, 8), np.float32),
                     np.zeros((1, 2, 8), np.float32))
            rnn.run()
            got = ot.capture_ours(rnn.run, 3)
        assert got.version == L.load().version
        rows = ot.summarize(got.trace("ours"), 3)
        assert [r.count for r in rows if r.cls == "fused_rnn"] == [1]
        assert sum(r.count for r in rows if r.cls == "reorder") == reorders
    os.write(1, b"")          # fd 1 is usable again after the capture


# -- explain --device cpu, end to end --------------------------------------------------------------
def test_explain_cpu_traces_ours_and_torch_live(run_cli, tmp_path):
    pytest.importorskip("torch")
    out_json = tmp_path / "explain.jsonl"
    r = run_cli("explain", "lstm", "--device", "cpu", "--frameworks", "torch", "-T", "4", "-B", "2",
                "-H", "16", "--save-logs", str(tmp_path), "--json", str(out_json), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    for label in ("ours/onednn", "ours/onednn_reorder", "torch/fused", "torch/generic"):
        assert label in out
    assert "ours/onednn vs torch/fused" in out          # the sentence comparing the two
    assert "reorder primitive(s) per call" in out       # what torch adds around the rnn primitive
    logs = {p.name: ot.parse(p.read_text()) for p in tmp_path.glob("*.log")}
    fused = logs["torch-fused-lstm.log"]
    assert any(r.name == "rnn" for r in fused.records) and fused.version
    # --json: each timed row as the benchmark records it (same identity), with its trace
    from microbench import cases, results, store  # noqa: F401  (cases fills the registry)
    from microbench.problems import RNNProblem
    from microbench.registry import REGISTRY
    from microbench.runner import Case
    recs, skipped = store.load(out_json)
    assert not skipped
    by_label = {r["label"]: r for r in recs}
    assert set(by_label) == {"onednn/onednn", "onednn_reorder/onednn", "torch/fused", "torch/generic"}
    case = Case(REGISTRY[("lstm", "torch", "fused")], RNNProblem("lstm", 4, 2, 16, 16, 1), "fp32")
    bench = results.record(case=case, status="skipped", env={"env_id": by_label["torch/fused"]["env_id"]}, error="-")
    assert store.identity(by_label["torch/fused"]) == store.identity(store.normalize(bench))
    kinds = {p["kind"] for p in by_label["torch/fused"]["onednn_trace"]["primitives"]}
    assert "rnn" in kinds and by_label["torch/fused"]["status"] == "ok"
    generic = by_label["torch/generic"]["onednn_trace"]
    assert generic["primitives"] == [] and "no oneDNN primitive" in generic["note"]


def test_explain_cpu_refuses_reference_options(run_cli):
    r = run_cli("explain", "lstm", "--device", "cpu", "--reference", "x.json")
    assert r.returncode == 2 and "--device cpu traces live" in r.stderr


def test_explain_json_needs_the_cpu_traces(capsys):
    from microbench import cli
    assert cli.main(["explain", "lstm", "--device", "cuda", "--json", "x.jsonl"]) == 2
    assert "--json writes the rows traced live on the CPU" in capsys.readouterr().err


def test_explain_records_carry_a_trace_only_where_one_was_taken():
    """An empty trace says the row executed no oneDNN primitive; a trace that could not be taken
    says nothing, so its record carries none."""
    from microbench.cpu_explain import Row, records
    rec = {"op": "lstm", "label": "torch/generic"}
    empty = Row("torch/generic", wall_s=0.1, record=rec, traced=True, note="executed no oneDNN primitive")
    failed = Row("mxnet/fused", wall_s=0.1, record=dict(rec, label="mxnet/fused"), note="no trace: worker died")
    untimed = Row("tensorflow/fused", note="skipped: no such op")
    got = records([empty, failed, untimed])
    assert [r["label"] for r in got] == ["torch/generic", "mxnet/fused"]
    assert got[0]["onednn_trace"]["primitives"] == [] and "no oneDNN primitive" in got[0]["onednn_trace"]["note"]
    assert "onednn_trace" not in got[1]


def test_breakdown_splits_a_call_into_primitive_reorders_and_outside():
    from microbench.cpu_explain import breakdown
    PR = ot.PrimitiveRow
    prims = [PR("rnn", "brgemm:avx2", "forward_inference", 1, 8_000_000),
             PR("reorder", "jit:blk", "undef", 2, 1_000_000), PR("eltwise", "jit", "f", 3, 500_000)]
    b = breakdown(prims, 0.012, "lstm")
    assert (b["layer_s"], b["reorder_s"], b["other_s"]) == pytest.approx((0.008, 0.001, 0.0005))
    assert b["outside_s"] == pytest.approx(0.0025) and not b["exceeds"]
    b = breakdown([{"class": "conv", "ns_per_call": 5_000_000}], 0.004, "conv")
    assert b["exceeds"] and b["outside_s"] is None and b["layer_s"] == pytest.approx(0.005)


def test_explain_accounts_for_the_difference_between_ours_and_a_framework():
    """The comparison splits the traced difference into the compute primitive, the reorders and
    the work outside oneDNN (it once named only torch's extra reorders, while the primitive
    itself made the difference), and says when sequential timing may be the cause."""
    from microbench.cpu_explain import Row, sentences
    PR = ot.PrimitiveRow
    ours = Row("ours/onednn", wall_s=0.300, version="3.2.0",
               primitives=[PR("rnn", "brgemm:avx2", "forward_inference", 1, 277_000_000)])
    torch = Row("torch/fused", wall_s=0.240, version="3.12.0",
                primitives=[PR("rnn", "brgemm:avx2", "forward_inference", 1, 217_000_000),
                            PR("reorder", "jit:blk", "undef", 2, 1_200_000)])
    text = " ".join(sentences([ours, torch], "lstm"))
    assert ("ours/onednn vs torch/fused: 300.00 ms vs 240.00 ms untraced (+25%); traced, ours "
            "differs by the rnn primitive +60.00 ms (brgemm:avx2 in oneDNN 3.2.0 against "
            "brgemm:avx2 in oneDNN 3.12.0), reorders -1.20 ms (0 against 2 per call), work outside "
            "oneDNN +1.20 ms.") in text
    assert "`lstm --onednn --frameworks torch --rounds 5` times them interleaved" in text
    close = Row("torch/fused", wall_s=0.299, version="3.12.0", primitives=torch.primitives)
    assert "--rounds" not in " ".join(sentences([ours, close], "lstm"))
