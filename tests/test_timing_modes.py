"""Cold-cache flushing, GPU clock verdicts and the --graph guard (GPU parts with fakes or skipped)."""
import numpy as np
import pytest

from microbench import caches, cli, gpustate


def test_cpu_llc_is_read_from_sysfs(monkeypatch, tmp_path):
    d = tmp_path / "cpu0" / "cache"
    for i, size in enumerate(["32K", "1024K", "32768K"]):
        (d / f"index{i}").mkdir(parents=True)
        (d / f"index{i}" / "size").write_text(size + "\n")
    monkeypatch.setattr(caches.glob, "glob", lambda pattern: sorted(str(p) for p in d.glob("index*/size")))
    assert caches.cpu_llc_bytes() == 32 << 20


def test_cpu_flusher_touches_twice_the_cache():
    f = caches.CpuFlusher(llc=1 << 20)
    assert f.bytes == 2 << 20
    before = f._buf.copy()
    f()
    assert np.all(f._buf == before + 1)


def test_clock_verdicts():
    base = {"sm_mhz": 1980, "mem_mhz": 2619, "temp_c": 40, "power_w": 300.0, "throttle": 0}
    assert gpustate.verdict(base, dict(base)) is None
    assert gpustate.verdict(None, base) is None
    sag = gpustate.verdict(base, dict(base, sm_mhz=1500, temp_c=83))
    assert "1980 -> 1500 MHz" in sag and "40 -> 83 C" in sag
    hot = gpustate.verdict(base, dict(base, throttle=0x40))
    assert "thermal (hardware)" in hot


def test_graph_mode_needs_a_gpu(capsys):
    assert cli.main(["lstm", "--graph", "--device", "cpu", "-H", "4", "-T", "2", "-B", "1"]) == 2
    assert "--graph replays CUDA graphs" in capsys.readouterr().err


def test_cold_mode_is_recorded(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    code = cli.main(["gru", "--fused", "--backend", "numpy", "-H", "4", "-T", "2", "-B", "1", "--cold",
                     "--min-time", "0", "--warmup", "0", "--min-samples", "2", "--json", str(out), "--quiet"])
    assert code == 0
    import json
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["options"]["mode"] == "cold" and rec["status"] == "ok"


@pytest.mark.gpu
def test_gpu_flusher_and_graph_replay():
    import cupy
    from microbench.harness import graph_replay
    f = caches.GpuFlusher()
    assert f.bytes >= 2 * cupy.cuda.Device().attributes["L2CacheSize"]
    a = cupy.arange(10, dtype=cupy.float32)
    replay = graph_replay(lambda: a.__imul__(2))
    replay()
    cupy.cuda.Stream.null.synchronize()
    assert float(a[1]) > 1
