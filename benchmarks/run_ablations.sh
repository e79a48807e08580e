#!/usr/bin/env bash
# Train every config in configs/ablations/ on the same split and budget, one after another,
# then print the table (benchmarks/ablation_table.py). Usage:
#   MOLRET_DATA=../shared/data/chebi20 bash benchmarks/run_ablations.sh RUNS_DIR [THREADS]
set -euo pipefail
runs=${1:?runs directory}
threads=${2:-1}
# Order: the first-order choice first (it decides cpu-fast), then the rest.
for name in infonce full no-memory-bank no-second-order distance-sign sum-pool fingerprint-branch sentence-branch maccs-keys; do
  cfg=configs/ablations/$name.yaml
  molret train --config "$cfg" --out "$runs/$name" --threads "$threads" > "$runs/$name.log" 2>&1
done
python benchmarks/ablation_table.py "$runs"/*/
