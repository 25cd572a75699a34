#!/usr/bin/env bash
# Device run of issue 8 (persistent LSTM/GRU), one call on the GPU machine, ~5 minutes; writes 8
# files under $OUT (the device tool brings back at most 8):
#   1. the .cu's resource report for sm_90 (nvcc), kept under $OUT
#   2. correctness on awkward shapes (pytest -m gpu + the check table)
#   3. compute-sanitizer memcheck and racecheck on a small launch
#   4. T=100 timings against PyTorch nn.LSTM/nn.GRU (cuDNN), fp32 and fp16
# Needs cupy-cuda13x and torch on the machine (carry wheels as .whl if missing).
set -u -o pipefail
OUT=${OUT:-$(pwd)/out-persistent}; mkdir -p "$OUT"
export PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
rc=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
if command -v nvcc >/dev/null; then
  nvcc -arch=sm_90 -c --resource-usage -o /tmp/rnn_persistent.o kernels/cuda/rnn_persistent.cu \
      > "$OUT/resource-usage.txt" 2>&1 || rc=1
else
  echo "nvcc not found: no resource report (the tests compile with NVRTC instead)" > "$OUT/resource-usage.txt"
fi
$PY -c "import pytest" 2>/dev/null && { timeout 180 $PY -m pytest -q -m gpu tests/test_persistent.py 2>&1 | tee "$OUT/pytest.txt" || rc=1; }
timeout 120 $PY benchmarks/gpu/persistent.py check --out /tmp > "$OUT/check.txt" 2>&1 || rc=1
if ! $PY -c "import pytest" 2>/dev/null; then
  echo "pytest is not installed here: GPU tests not run" > "$OUT/pytest.txt"; rc=1
fi
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 \
        $PY benchmarks/gpu/persistent.py small > "$OUT/sanitizer-$tool.txt" 2>&1 || rc=1
    tail -3 "$OUT/sanitizer-$tool.txt"
  done
else
  echo "compute-sanitizer not found: memcheck and racecheck not run" | tee "$OUT/sanitizer-missing.txt"
fi
timeout 240 $PY benchmarks/gpu/persistent.py time --out "$OUT" 2>&1 | tee /tmp/persistent-time.log || rc=1
exit $rc
