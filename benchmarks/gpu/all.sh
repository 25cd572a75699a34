#!/usr/bin/env bash
# One device run for a session that has a GPU: the whole GPU test suite, then the GPU ladder,
# cuDNN and persistent benchmarks, results (with GPU, driver, cuDNN, date) under $OUT.
# Start it with the prefix ../shared/device/prepare prints (it puts .device wheels on PYTHONPATH).
# Budget: about 9 minutes when every step runs to its timeout before the bf16 and conv lines (add 4.5);
# each step has its own timeout so one hang cannot eat the rest.
set -u -o pipefail
OUT=${OUT:-$(pwd)/out-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PY:-python3}
rc=0
{ nvidia-smi; $PY -m microbench env; } > "$OUT/env.txt" 2>&1
timeout 240 $PY -m pytest -q -m gpu -x 2>&1 | tail -40 > "$OUT/pytest-gpu.txt" || rc=1
for cell in lstm gru; do
  timeout 120 $PY -m microbench $cell --ladder --backend cupy -H 512 -B 64 -T 100 --dtype fp32,fp16 \
      --frameworks torch --min-time 0.5 --json "$OUT/ladder.jsonl" >> "$OUT/ladder.txt" 2>&1 || rc=1
done
timeout 120 $PY -m microbench lstm --all -H 1024 -B 1 -T 100 --dtype fp32,fp16 --frameworks torch \
    --min-time 0.5 --json "$OUT/all.jsonl" > "$OUT/all.txt" 2>&1 || rc=1
timeout 90 $PY -m microbench lstm --fused --backend cupy,pycuda -H 512 -B 64 -T 100 --dtype bf16 \
    --min-time 0.3 --json "$OUT/bf16.jsonl" > "$OUT/bf16.txt" 2>&1 || rc=1
for layout in NCHW NHWC; do
  timeout 90 $PY -m microbench conv --all --layer resnet50/res2_3x3 -N 32 --layout $layout --dtype fp32 \
      --frameworks torch --min-time 0.3 --json "$OUT/conv.jsonl" >> "$OUT/conv.txt" 2>&1 || rc=1
done
exit $rc
