#!/usr/bin/env bash
# The example report: a quiet run's records, the oneDNN traces of the same shapes, and the report
# drawn from them (convergence with the explanation beside it, the fusion ladder, thread scaling,
# the roofline). Run it on a quiet machine, nothing else running: every table and its records go
# to benchmarks/results/cpu-report-<date>/, the report to its report/ folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out="benchmarks/results/cpu-report-$(date -u +%Y-%m-%d)"
mkdir -p "$out/report"
. benchmarks/run.sh   # run NAME ARGS...: one microbench run, its table and records under $out
python3 -m microbench env > "$out/env.txt"
shape="-H 512 -B 64 -T 100"
# convergence: ours (naive, fused, oneDNN) beside each framework's paths ...
run lstm lstm --all --onednn --frameworks torch,mxnet --device cpu $shape --min-time 3
run gru gru --all --onednn --frameworks torch,mxnet --device cpu $shape --min-time 3
run conv conv --all --onednn --frameworks torch,mxnet --layer resnet50/res2_3x3 -N 8 --min-time 2
# ... and the same shapes traced: records with the oneDNN primitives of each row (same cases)
run lstm-explain explain lstm --device cpu --frameworks torch,mxnet $shape
run gru-explain explain gru --device cpu --frameworks torch,mxnet $shape
run conv-explain explain conv --device cpu --frameworks torch,mxnet -B 8 -C 64 --size 56
# the fusion ladder, and thread scaling of each framework's paths and ours
run lstm-ladder lstm --ladder --backend numba --device cpu $shape --threads 1,2 --min-time 1 --rounds 3
run lstm-threads lstm --fused --onednn --backend numba,onednn --frameworks torch,mxnet --device cpu \
    -H 256 -B 16 -T 100 --threads 1,2 --min-time 1 --rounds 3
python3 -m microbench report "$out"/*.jsonl --html "$out/report/report.html" --csv "$out/report/results.csv"
