#!/usr/bin/env bash
# Issue 22's benchmark: the CPU pretranspose (weights packed once for oneDNN's inner product).
# LSTM and GRU, T=100, fp32, at H512 B64, H256 B16 and H1024 B1, 1 and 2 threads: our
# fused/numba beside torch/fused and our onednn variant in the same run, then the ladder of each
# shape (the +pretranspose rung against +hoist_input), then the GEMM providers alone.
# Tables and JSON records go to benchmarks/results/cpu-pretranspose-<date>/ (or $OUT); ratios.txt holds
# fused/numba / torch/fused per row (the target is <= 1.00).  Run it on a quiet machine.
# LADDERS selects the ladders ("all", "none", or names such as "lstm-H256-B16 gru-H512-B64");
# GEMM=0 leaves out the GEMM providers' script.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/cpu-pretranspose-$(date -u +%Y-%m-%d)}"
mkdir -p "$out"
. benchmarks/run.sh
MIN_TIME=${MIN_TIME:-3}
ROUNDS=${ROUNDS:-3}    # rows interleaved in rotating rounds: slow drifts hit every row alike
LADDERS=${LADDERS:-all}
GEMM=${GEMM:-1}
python3 -m microbench env > "$out/env.txt"
for op in lstm gru; do
  for shape in "512 64" "256 16" "1024 1"; do
    set -- $shape
    run "$op-H$1-B$2" "$op" --fused --onednn --backend numba,onednn --frameworks torch \
      --device cpu -T 100 -H "$1" -B "$2" --threads 1,2 --min-time "$MIN_TIME" --rounds "$ROUNDS"
    case " $LADDERS " in
      *" all "*|*" $op-H$1-B$2 "*)
        run "$op-H$1-B$2-ladder" "$op" --ladder --backend numba \
          --device cpu -T 100 -H "$1" -B "$2" --threads 1,2 --min-time "$MIN_TIME" --rounds "$ROUNDS";;
    esac
  done
done
if [ "$GEMM" != 0 ]; then
  python3 benchmarks/cpu_gemm.py --threads 1,2 | tee "$out/gemm-providers.txt"
fi
python3 - "$out" <<'PY' | tee "$out/ratios.txt"
import json, pathlib, sys
print("op shape threads: fused/numba ms, torch/fused ms, onednn ms, fused/numba / torch/fused, gemm provider")
for f in sorted(pathlib.Path(sys.argv[1]).glob("*-B*.jsonl")):
    if f.stem.endswith("-ladder"):
        continue
    rows = {}
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if r["status"] == "ok":
            rows[(r["options"]["threads"], r["label"])] = r
    for n in sorted({k[0] for k in rows}, key=str):
        ours, torch, dnnl = (rows.get((n, k)) for k in ("fused/numba", "torch/fused", "onednn/onednn"))
        ms = lambda r: f"{1e3 * r['stats']['median_s']:.2f}" if r else "-"
        ratio = f"{ours['stats']['median_s'] / torch['stats']['median_s']:.2f}" if ours and torch else "-"
        gemm = ((ours or {}).get("info") or {}).get("gemm", {}).get("provider", "-")
        print(f"{f.stem} {n}: {ms(ours)}, {ms(torch)}, {ms(dnnl)}, {ratio}, {gemm}")
PY
