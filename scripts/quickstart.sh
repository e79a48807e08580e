#!/usr/bin/env bash
# The main job: set up .venv (scripts/setup.sh), then `molret quickstart` on ChEBI-20 at
# $MOLRET_DATA (default ../shared/data/chebi20 beside the checkout): train the fast CPU model
# (configs/quickstart.yaml, one epoch), export the ONNX bundle, build the molecule and text
# indexes, start a gRPC server on a free loopback port, answer example queries, stop.
# Extra arguments go to `molret quickstart` (e.g. --out DIR, --epochs N, --data DIR).
# Re-running reuses runs/quickstart (training resumes or is kept, bundle and indexes are kept).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${MOLRET_DATA:-}" ] && [ -f ../shared/data/chebi20/train.txt ]; then
  export MOLRET_DATA="$(cd .. && pwd)/shared/data/chebi20"
fi
exec molret quickstart "$@"
