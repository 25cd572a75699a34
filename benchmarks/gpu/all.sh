#!/usr/bin/env bash
# The first thing to run on a GPU: the GPU tests, then the GPU ladder, every LSTM variant,
# bf16 and the ResNet-50 res2 3x3 conv in both layouts, each beside PyTorch.  Writes 4 files
# under $OUT (the device tool brings back at most 8):
#   env.txt          date, nvidia-smi, `microbench env` (GPU, driver, CUDA, cuDNN, packages)
#   pytest-gpu.txt   `pytest -m gpu` (every test that needs a GPU)
#   bench.txt        the tables, one block per command
#   results.jsonl    every record of those tables
# Budget: at most 8.5 minutes, each step under its own timeout so one hang cannot eat the rest.
# It installs nothing: start it with the prefix ../shared/device/prepare prints, which adds only
# the wheels the GPU image lacks (see ../shared/device/README.md), e.g.
#   <prefix> OUT=$OUT bash benchmarks/gpu/all.sh
set -u -o pipefail
OUT=${OUT:-$(pwd)/out-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PY:-python3}
rc=0
{ date -u +%FT%TZ; nvidia-smi; $PY -m microbench env; } > "$OUT/env.txt" 2>&1
if $PY -c "import pytest" 2>/dev/null; then
  timeout 150 $PY -m pytest -q -m gpu -x -p no:cacheprovider > "$OUT/pytest-gpu.txt" 2>&1 || rc=1
else
  echo "pytest is not installed here: GPU tests not run" > "$OUT/pytest-gpu.txt"; rc=1
fi
bench() {  # bench SECONDS ARGS...: one table into bench.txt, its records into results.jsonl
  local t=$1; shift
  echo "\$ microbench $*" >> "$OUT/bench.txt"
  timeout "$t" $PY -m microbench "$@" --min-time 0.2 --max-time 2 --json "$OUT/results.jsonl" \
      >> "$OUT/bench.txt" 2>&1 || { echo "(exit $?)" >> "$OUT/bench.txt"; rc=1; }
}
for cell in lstm gru; do
  bench 70 $cell --ladder --backend cupy -H 512 -B 64 -T 100 --dtype fp32,fp16 --frameworks torch
done
bench 60 lstm --all -H 1024 -B 1 -T 100 --dtype fp32,fp16 --frameworks torch
bench 40 lstm --fused --backend cupy,pycuda -H 512 -B 64 -T 100 --dtype bf16
for layout in NCHW NHWC; do
  bench 45 conv --all --layer resnet50/res2_3x3 -N 32 --layout $layout --dtype fp32 --frameworks torch
done
exit $rc
