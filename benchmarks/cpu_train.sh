#!/usr/bin/env bash
# Issue 30's training-step benchmark: forward + backward of sum(y * dY) for LSTM and GRU at
# H512 B64 T50, fp32, 1 and 2 threads: our fused+bwd/numba (kernels.train: compiled step loops on
# packed oneDNN GEMMs, fused numba kernels) and fused+bwd/numpy beside torch's training steps,
# rows interleaved in ROUNDS rotating rounds (OPS, default "lstm gru").  Then (SUITE=1, the default) the DeepBench training
# rows of about a minute or less each (recurrent part only), ours beside torch.
# Tables and JSON records go to benchmarks/results/cpu-train-<date>/ (or $OUT); ratios.txt holds
# fused+bwd/numba / torch/fused+bwd per row (the target is <= 1.00).  Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/cpu-train-$(date -u +%Y-%m-%d)}"
mkdir -p "$out"
. benchmarks/run.sh
ROUNDS=${ROUNDS:-3}    # rows interleaved in rotating rounds: slow drifts hit every row alike
MIN_TIME=${MIN_TIME:-3}
SUITE=${SUITE:-1}
OPS=${OPS-lstm gru}    # OPS= (empty): the suite rows only, beside an earlier run's files in $out
python3 -m microbench env > "$out/env.txt"
for op in $OPS; do
  run "$op-H512-B64-T50" "$op" --backward --frameworks torch --device cpu -H 512 -B 64 -T 50 \
    --threads 1,2 --min-time "$MIN_TIME" --rounds "$ROUNDS"
done
if [ "$SUITE" != 0 ]; then
  # entries 000, 004 (vanilla ReLU), 012-017, 028, 031-033 (LSTM): about a minute or less each on a
  # 2-core machine (every GRU row of the table takes several minutes or more memory)
  run deepbench-rnn-train suite deepbench-rnn-train --device cpu --frameworks torch --backend numba \
    --only '/0(00|04|1[2-7]|28|3[1-3])$' --threads 2 --rounds "$ROUNDS"
fi
python3 - "$out" <<'PY' | tee "$out/ratios.txt"
import json, pathlib, sys
print("file shape threads: fused+bwd/numba ms, fused+bwd/numpy ms, torch/fused+bwd ms, numba / torch")
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl")):
    rows = {}
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if r["status"] == "ok":
            label = r["label"].replace("+input-gemm", "")      # suite rows: the whole layer
            shape = "T{T} B{B} H{H}".format(**r["shape"])
            rows[(shape, r["options"]["threads"], label)] = r
    for shape, n in sorted({k[:2] for k in rows}, key=str):
        ours, numpy, torch = (rows.get((shape, n, k)) for k in ("fused+bwd/numba", "fused+bwd/numpy",
                                                                 "torch/fused+bwd"))
        ms = lambda r: f"{1e3 * r['stats']['median_s']:.1f}" if r else "-"
        ratio = f"{ours['stats']['median_s'] / torch['stats']['median_s']:.2f}" if ours and torch else "-"
        print(f"{f.stem} {shape} {n}: {ms(ours)}, {ms(numpy)}, {ms(torch)}, {ratio}")
PY
