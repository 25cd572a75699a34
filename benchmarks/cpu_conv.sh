#!/usr/bin/env bash
# Issue 30 item 2's benchmark: our own CPU convolutions (no oneDNN conv primitive) against
# PyTorch's oneDNN path, on ResNet-50's res2_3x3, res4_3x3 and res2_1x1a at N=8, fp32, NCHW,
# 1 and 2 threads: every variant (`--all`: ours, oneDNN's own conv primitive for reference as
# onednn/onednn) and torch/fused + torch/generic, interleaved in rotating rounds in one run per
# layer.  Tables and JSON records go to benchmarks/results/cpu-conv-<date>/ (or $OUT); ratios.txt
# holds, per layer and thread count, our fastest own kernel, torch/fused, onednn/onednn and
# ours / torch/fused (the target is <= 1.00).  Run it on a quiet machine: a row the contention
# check marks is not a measurement.
# MIN_TIME (seconds per case and round, default 2), ROUNDS (default 3), LAYERS (default the
# three above), THREADS (default 1,2).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/cpu-conv-$(date -u +%Y-%m-%d)}"
mkdir -p "$out"
. benchmarks/run.sh
MIN_TIME=${MIN_TIME:-2}
ROUNDS=${ROUNDS:-3}    # rows interleaved in rotating rounds: slow drifts hit every row alike
LAYERS=${LAYERS:-"res2_3x3 res4_3x3 res2_1x1a"}
THREADS=${THREADS:-1,2}
python3 -m microbench env > "$out/env.txt"
for layer in $LAYERS; do
  run "conv-$layer" conv --all --frameworks torch --layer "resnet50/$layer" -N 8 \
    --threads "$THREADS" --min-time "$MIN_TIME" --rounds "$ROUNDS"
done
python3 - "$out" <<'PY' | tee "$out/ratios.txt"
import json, pathlib, sys
print("layer threads: best own kernel ms, torch/fused ms, onednn/onednn ms, own / torch/fused, contended rows")
for f in sorted(pathlib.Path(sys.argv[1]).glob("conv-*.jsonl")):
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    for n in sorted({r["options"]["threads"] for r in rows}, key=str):
        ok = [r for r in rows if r["options"]["threads"] == n and r["status"] == "ok"]
        # our own kernels: not a framework's path, not oneDNN's conv primitive (backend onednn)
        own = [r for r in ok if not r.get("framework") and r["backend"] != "onednn"]
        best = min(own, key=lambda r: r["stats"]["median_s"], default=None)
        pick = lambda label: next((r for r in ok if r["label"] == label), None)  # noqa: E731
        torch, dnnl = pick("torch/fused"), pick("onednn/onednn")
        ms = lambda r: f"{1e3 * r['stats']['median_s']:.2f}" if r else "-"      # noqa: E731
        ratio = f"{best['stats']['median_s'] / torch['stats']['median_s']:.2f}" if best and torch else "-"
        busy = [r["label"] for r in ok if (r.get("contention") or {}).get("contended")]
        name = f"{best['label']} {ms(best)}" if best else "-"
        print(f"{f.stem[5:]} {n}: {name}, {ms(torch)}, {ms(dnnl)}, {ratio}, {', '.join(busy) or 'none'}")
PY
