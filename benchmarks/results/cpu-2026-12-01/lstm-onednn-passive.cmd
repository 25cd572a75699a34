MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY=1 python -m microbench lstm --onednn --frameworks torch --device cpu -H 512 -B 64 -T 100 --json benchmarks/results/cpu-2026-12-01/lstm-onednn-passive.jsonl
