#!/usr/bin/env bash
# Create .venv-core with collab-core alone (no plugins, no torch), installed from its wheel as a
# user gets it (not editable; built by scripts/build-wheels.sh), plus the test extras: proves the
# core imports, works and fails clearly without them.
#
# Does nothing when .venv-core is up to date: $VENV/.collab-setup.stamp holds a hash of the
# pyprojects, the pins, this script and every file that goes into the core wheel; when any of them
# changed, the wheel is rebuilt and reinstalled. Delete the stamp (or the venv) to force it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_common.sh
PY=${PYTHON:-python3}
VENV=.venv-core
STAMP="$VENV/.collab-setup.stamp"
HASH=$(collab_core_source_hash scripts/setup-core-only.sh scripts/build-wheels.sh)
if collab_venv_ok "$VENV" && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
    echo "setup-core-only: $VENV is up to date"
    exit 0
fi
START=$SECONDS
echo "setup-core-only: building the collab-core wheel"
bash scripts/build-wheels.sh .
WHEEL=$(ls dist/collab_core-*.whl)
if ! collab_venv_ok "$VENV"; then
    echo "setup-core-only: creating $VENV with $("$PY" -V 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"
echo "setup-core-only: installing $WHEEL and its test extras into $VENV"
# the same version rebuilt from changed code: take the old one out so pip installs the new wheel
"$VENV/bin/python" -m pip uninstall --quiet --yes collab-core 2>/dev/null || true
PYTHONUNBUFFERED=1 "$VENV/bin/python" -m pip install "$WHEEL[test]" 2>&1 \
    | sed -u -e '/^Requirement already satisfied/d' -e '/^  Stored in directory/d' -e "/: started$/d"
echo "$HASH" > "$STAMP"
echo "setup-core-only: $VENV ready in $((SECONDS - START)) s"
