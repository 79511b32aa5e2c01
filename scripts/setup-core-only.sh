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
LOG=$(mktemp)
if ! "$VENV/bin/python" -m pip install --quiet -e ".[test]" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    rm -f "$LOG"
    exit 1
fi
rm -f "$LOG"
