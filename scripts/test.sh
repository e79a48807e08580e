#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check the core and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MOLRET_DATA="${MOLRET_DATA:-$(cd .. && pwd)/shared/data/chebi20}"
ruff check .
ruff format --check .
mypy
python -m pytest -q -p no:cacheprovider
