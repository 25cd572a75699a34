#!/usr/bin/env bash
# The tables benchmarks/gpu/all.sh has no time left for (it gives its 10 minutes to the GPU tests
# first): the GRU ladder and the ResNet-50 res2 3x3 conv in NHWC, each beside PyTorch.  Writes
# bench.txt and results.jsonl under $OUT.  Budget: 150 s of step timeouts (two tables of about
# 20 cases, --max-time 2 each); installs nothing (start it as all.sh, with the device prefix).
set -u -o pipefail
OUT=${OUT:-$(pwd)/out-gpu-more}; mkdir -p "$OUT"
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PY:-python3}
rc=0
bench() {  # bench SECONDS ARGS...: one table into bench.txt, its records into results.jsonl
  local t=$1; shift
  echo "\$ microbench $*" >> "$OUT/bench.txt"
  timeout "$t" $PY -m microbench "$@" --min-time 0.2 --max-time 2 --json "$OUT/results.jsonl" \
      >> "$OUT/bench.txt" 2>&1 || { echo "(exit $?)" >> "$OUT/bench.txt"; rc=1; }
}
bench 80 gru --ladder --backend cupy -H 512 -B 64 -T 100 --dtype fp32,fp16 --frameworks torch
bench 70 conv --all --layer resnet50/res2_3x3 -N 32 --layout NHWC --dtype fp32 --frameworks torch
exit $rc
