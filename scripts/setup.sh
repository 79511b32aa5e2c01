#!/usr/bin/env bash
# Create .venv (if missing) and install collab-core and every plugin (each plugins/*/pyproject.toml),
# editable, with their test extras, in one pip call. torch is pinned to the CPU build 2.13.0 for
# development and CI; the packages themselves only ask for a compatible range.
#
# Does nothing when .venv is up to date: $VENV/.collab-setup.stamp holds a hash of every
# pyproject.toml, the packages' __version__ lines, the pins and this script. Delete the stamp (or
# the venv) to force a reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_common.sh
PY=${PYTHON:-python3}
VENV=${COLLAB_VENV:-.venv}
STAMP="$VENV/.collab-setup.stamp"
HASH=$(collab_setup_hash scripts/setup.sh scripts/_common.sh)
if collab_venv_ok "$VENV" && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
    echo "setup: $VENV is up to date"
    exit 0
fi
START=$SECONDS
if ! collab_venv_ok "$VENV"; then
    echo "setup: creating $VENV with $("$PY" -V 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"
PLUGINS=()
for p in $(collab_plugins); do
    PLUGINS+=(-e "$p[test]")
done
echo "setup: upgrading pip"
"$VENV/bin/python" -m pip install --quiet --upgrade pip || echo "setup: (could not upgrade pip; going on)"
echo "setup: installing $TORCH_PIN, collab-core and $((${#PLUGINS[@]} / 2)) plugins ($(collab_plugins | xargs -n1 basename | paste -sd' ')), editable, into $VENV"
# pip's own progress, less the lines that say nothing (already satisfied, cache paths, "started")
PYTHONUNBUFFERED=1 "$VENV/bin/python" -m pip install "$TORCH_PIN" -e ".[test]" "${PLUGINS[@]}" 2>&1 \
    | sed -u -e '/^Requirement already satisfied/d' -e '/^  Stored in directory/d' -e "/: started$/d"
echo "$HASH" > "$STAMP"
echo "setup: $VENV ready in $((SECONDS - START)) s"
