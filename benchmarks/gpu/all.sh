#!/usr/bin/env bash
# The first thing to run on a GPU: every GPU test file on its own (a failure or a hang in one hides
# none of the others), then the LSTM ladder, every LSTM variant, bf16 and the ResNet-50 res2 3x3
# conv (NCHW), each beside PyTorch.  Writes 5 files under $OUT (the device tool brings
# back at most 8):
#   env.txt          date, nvidia-smi, `microbench env` (GPU, driver, CUDA, cuDNN, packages)
#   gpu-tests.txt    one line per GPU test file: its pytest summary, TIMEOUT, or the exit code
#   pytest-gpu.txt   every file's `pytest -m gpu` output, one after the other
#   bench.txt        the tables, one block per command
#   results.jsonl    every record of those tables
# Budget: 570 s of step timeouts in all (the device tool allows 600 s a command): 440 s for the
# GPU test files, 130 s for the tables.  A test file's timeout is its CPU-side cost MEASURED without
# a GPU on a busy 2-core machine (load average about 7, 2026-12-07), which a 16-core GPU host
# should beat severalfold, so the excess covers the device work; conv_gpu's 330 tests also get
# 0.15 s each.  Measured (seconds): collection with imports 2.7-5.5 (test_scale 21: torch in
# the parent); NVRTC compiles: conv2d.cu every entry 27, rnn_persistent.cu 22, rnn_pointwise.cu
# 2.8 per arch, the custom-cell launchers 8 in all; numba-cuda PTX of the pointwise kernels 13;
# nvcc (PyCUDA's SourceModule) of rnn_pointwise.cu 8.8; one 2-rank torchrun of `scale` 35 (the GPU
# test makes two).  Per file: timing_modes 3.3 -> 15, shards_devices 2.7 -> 15, cudnn 4.3 (23
# tests, no compiles) -> 30, cudnn_conv_backward 3.8 (4 tests) -> 20, persistent 4.0 + 22 -> 45,
# cuda_sources 4.0 + 8.4 + 13 + 8.8 (56 tests) -> 70, custom_cells_gpu 4.7 + 8 + 2 x 13 -> 60,
# conv_gpu 5.5 + 27 + 330 x 0.15 -> 85, scale 21 + 2 x 35 -> 100.  The GRU ladder and the NHWC
# conv table that no longer fit are in benchmarks/gpu/more.sh.
# It installs nothing: start it with the prefix ../shared/device/prepare prints, which adds only
# the wheels the GPU image lacks (see ../shared/device/README.md), e.g.
#   <prefix> OUT=$OUT bash benchmarks/gpu/all.sh
set -u -o pipefail
OUT=${OUT:-$(pwd)/out-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PY:-python3}
rc=0
{ date -u +%FT%TZ; nvidia-smi; $PY -m microbench env; } > "$OUT/env.txt" 2>&1
: > "$OUT/gpu-tests.txt"
: > "$OUT/pytest-gpu.txt"
gpu_test() {  # gpu_test SECONDS FILE: one GPU test file, its summary line in gpu-tests.txt
  local t=$1 file=$2 log line code
  if ! $PY -c "import pytest" 2>/dev/null; then
    echo "$file: not run: pytest is not installed here" >> "$OUT/gpu-tests.txt"; rc=1; return
  fi
  log=$(mktemp)
  timeout "$t" $PY -m pytest -q -m gpu -p no:cacheprovider "$file" > "$log" 2>&1
  code=$?
  { echo "===== $file (timeout ${t}s, exit $code)"; cat "$log"; } >> "$OUT/pytest-gpu.txt"
  line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected)|no tests ran' "$log" | tail -n1 | sed 's/=//g; s/^ *//')
  case $code in
    0|5) ;;
    124) line="TIMEOUT after ${t}s${line:+ (last: $line)}"; rc=1 ;;
    *) line="exit $code${line:+: $line}"; rc=1 ;;
  esac
  echo "$file: ${line:-no summary}" | tee -a "$OUT/gpu-tests.txt"
  rm -f "$log"
}
# CPU-side cost measured per file (see the budget above) -> timeout
gpu_test 15  tests/test_timing_modes.py
gpu_test 15  tests/test_shards_devices.py
gpu_test 30  tests/test_cudnn.py
gpu_test 20  tests/test_cudnn_conv_backward.py
gpu_test 45  tests/test_persistent.py
gpu_test 70  tests/test_cuda_sources.py
gpu_test 60  tests/test_custom_cells_gpu.py
gpu_test 85  tests/test_conv_gpu.py
gpu_test 100 tests/test_scale.py
bench() {  # bench SECONDS ARGS...: one table into bench.txt, its records into results.jsonl
  local t=$1; shift
  echo "\$ microbench $*" >> "$OUT/bench.txt"
  timeout "$t" $PY -m microbench "$@" --min-time 0.2 --max-time 2 --json "$OUT/results.jsonl" \
      >> "$OUT/bench.txt" 2>&1 || { echo "(exit $?)" >> "$OUT/bench.txt"; rc=1; }
}
bench 40 lstm --ladder --backend cupy -H 512 -B 64 -T 100 --dtype fp32,fp16 --frameworks torch
bench 35 lstm --all -H 1024 -B 1 -T 100 --dtype fp32,fp16 --frameworks torch
bench 25 lstm --fused --backend cupy,pycuda -H 512 -B 64 -T 100 --dtype bf16
bench 30 conv --all --layer resnet50/res2_3x3 -N 32 --layout NCHW --dtype fp32 --frameworks torch
exit $rc
