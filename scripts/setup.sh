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
# build back-ends are chatty on stderr; show their output only if the install fails
LOG=$(mktemp)
if ! "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" -e ".[test]" "${PLUGINS[@]}" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    rm -f "$LOG"
    exit 1
fi
rm -f "$LOG"
