python -m microbench lstm --onednn --onednn_reorder --fused --frameworks torch --device cpu -H 512 -B 64 -T 100 --json benchmarks/results/cpu-2026-12-01/lstm-onednn.jsonl
