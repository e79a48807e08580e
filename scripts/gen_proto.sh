#!/usr/bin/env bash
# Regenerate the Python gRPC stubs of proto/molret/v1/retrieval.proto into engine/proto/
# (import name molret.engine.proto). Needs grpcio-tools and ruff (the `dev` extra).
#
#   bash scripts/gen_proto.sh            # rewrite the committed stubs
#   bash scripts/gen_proto.sh OUT_DIR    # write them elsewhere (tests/unit/test_proto_fresh.py)
#
# protoc names the generated import after the proto package (`from molret.v1 import ...`);
# it is rewritten to the package the stubs live in, then the files are formatted with the
# project's ruff settings so that they pass `ruff check` and `ruff format --check` as committed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/engine/proto}"
if [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
  RUFF="$ROOT/.venv/bin/ruff"
else
  PY="${PYTHON:-python3}"
  RUFF="ruff"
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PY" -m grpc_tools.protoc -I "$ROOT/proto" \
  --python_out="$TMP" --grpc_python_out="$TMP" --pyi_out="$TMP" \
  "$ROOT/proto/molret/v1/retrieval.proto"

mkdir -p "$OUT"
for name in retrieval_pb2.py retrieval_pb2.pyi retrieval_pb2_grpc.py; do
  sed -e 's/^from molret\.v1 import retrieval_pb2 as /from molret.engine.proto import retrieval_pb2 as /' \
    "$TMP/molret/v1/$name" >"$OUT/$name"
done
cat >"$OUT/__init__.py" <<'EOF'
"""Generated gRPC stubs of proto/molret/v1/retrieval.proto; regenerate with scripts/gen_proto.sh."""
EOF

# Format with the project's settings (the config is found from the repository root).
cd "$ROOT"
"$RUFF" check --config "$ROOT/pyproject.toml" --quiet --fix-only --unsafe-fixes --exit-zero \
  "$OUT/__init__.py" "$OUT/retrieval_pb2.py" "$OUT/retrieval_pb2.pyi" "$OUT/retrieval_pb2_grpc.py"
"$RUFF" format --config "$ROOT/pyproject.toml" --quiet \
  "$OUT/__init__.py" "$OUT/retrieval_pb2.py" "$OUT/retrieval_pb2.pyi" "$OUT/retrieval_pb2_grpc.py"
