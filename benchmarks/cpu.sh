#!/usr/bin/env bash
# The CPU figures quoted in README and the issues, on whatever machine runs this; each table and
# its JSON lines go to benchmarks/results/<host-date>/ (tables as printed, records for compare/report).
set -euo pipefail
cd "$(dirname "$0")/.."
out="benchmarks/results/cpu-$(date -u +%Y-%m-%d)"
mkdir -p "$out"
. benchmarks/run.sh   # run NAME ARGS...: one microbench run, its table and records under $out
python3 -m microbench env > "$out/env.txt"
run lstm-ladder lstm --ladder -H 512 -B 64 -T 100 --device cpu --min-time 3
run gru-ladder gru --ladder -H 512 -B 64 -T 100 --device cpu --min-time 3
run lstm-frameworks lstm --all --frameworks all --device cpu -H 512 -B 64 -T 100 --min-time 3
run gru-frameworks gru --all --frameworks all --device cpu -H 512 -B 64 -T 100 --min-time 3
run conv-res2-3x3 conv --all --frameworks all --layer resnet50/res2_3x3 -N 8 --min-time 2
run conv-res2-1x1 conv --all --frameworks torch --layer resnet50/res2_1x1 -N 8 --min-time 2
run conv-res4-3x3 conv --all --frameworks torch --layer resnet50/res4_3x3 -N 8 --min-time 2
run conv-conv1-7x7 conv --all --frameworks torch --layer resnet50/conv1_7x7 -N 8 --min-time 2
run lstm-layernorm lstm --cell layernorm --all --frameworks torch,jax --device cpu -H 512 -B 64 -T 100 --min-time 3
run lstm-layernorm-backward lstm --cell layernorm --all --frameworks torch,jax --backward --device cpu -H 512 -B 64 -T 100 --min-time 3
run lstm-backward lstm --backward --frameworks torch,jax --device cpu -H 512 -B 64 -T 100 --min-time 3
