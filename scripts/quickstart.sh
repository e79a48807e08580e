#!/usr/bin/env bash
# Set up, then the main job for now: a short training of the CPU model on ChEBI-20 at
# $MOLRET_DATA (one epoch of configs/cpu-fast.yaml), evaluated on the held-out validation part
# against every train + validation molecule. Re-running resumes / reuses runs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${MOLRET_DATA:-}" ] && [ -f ../shared/data/chebi20/train.txt ]; then
  export MOLRET_DATA="$(cd .. && pwd)/shared/data/chebi20"
fi
molret train --config configs/cpu-fast.yaml --epochs 1 --out runs/quickstart
