#!/usr/bin/env bash
# Create .venv-core with collab-core alone (no plugins, no torch): proves the core imports,
# works and fails clearly without them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-core
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
