#!/usr/bin/env bash
# Create .venv (if missing) and install collab-core and every plugin, editable, in one pip call.
# torch is pinned to the CPU build 2.13.0 for development and CI; the packages themselves only
# ask for a compatible range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${COLLAB_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PLUGINS=()
for p in plugins/*/; do
    [ -f "$p/pyproject.toml" ] && PLUGINS+=(-e "$p[test]")
done
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0" -e ".[test]" "${PLUGINS[@]}"
