#!/usr/bin/env bash
# The wheel leg: every distribution as a package index serves it. Builds the sdist and wheel of
# each (scripts/build-wheels.sh), checks their contents (scripts/check-dists.sh), installs all the
# wheels -- not editable -- into a fresh .venv-wheels, and from a folder outside the checkout (so
# nothing of it is on sys.path) runs `collab --version`, `collab plugins`, the numpy quickstart and
# `collab run` of its exported job folder, and the project `collab new` writes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_common.sh
START=$SECONDS
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv-wheels"
bash scripts/build-wheels.sh
bash scripts/check-dists.sh
WHEELS=()
for d in . $(collab_plugins); do
    name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$d/pyproject.toml" | head -1 | tr '.-' '__')
    WHEELS+=("$(ls "$ROOT"/dist/"$name"-*.whl)")
done
echo "wheels: installing ${#WHEELS[@]} wheels and numpy into a fresh $(basename "$VENV")"
rm -rf "$VENV"
"$PY" -m venv --without-pip "$VENV"
# .venv's pip installs into the new venv (--python): no pip bootstrap there, the same cache
"$ROOT/.venv/bin/python" -m pip --python "$VENV/bin/python" install --quiet "${WHEELS[@]}" numpy
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
unset PYTHONPATH
export COLLAB_WORKSPACE_ROOT="$WORK/ws"
echo "wheels: in $WORK"
"$VENV/bin/python" - "$VENV" "${WHEELS[@]}" <<'PY'
import importlib, sys, sysconfig, zipfile
from pathlib import Path
venv, wheels = Path(sys.argv[1]).resolve(), sys.argv[2:]
site = Path(sysconfig.get_paths()["purelib"]).resolve()
assert site.is_relative_to(venv), (site, venv)
for whl in wheels:
    tops = {n.split("/")[0] for n in zipfile.ZipFile(whl).namelist() if not n.split("/")[0].endswith(".dist-info")}
    for top in sorted(tops):
        mod = importlib.import_module(top)
        where = Path(mod.__file__).resolve()
        assert where.is_relative_to(site), f"{top} imported from {where}, not {site}"
        print(f"wheels: import {top} -> {where}")
PY
"$VENV/bin/collab" --version | tee version.txt
for whl in "${WHEELS[@]}"; do
    nv=$(basename "$whl" | cut -d- -f1,2)            # collab_sim-0.1.0
    grep -qx "$(echo "${nv%%-*}" | tr _ -) ${nv#*-}" version.txt \
        || { echo "wheels: collab --version does not list $nv" >&2; exit 1; }
done
"$VENV/bin/collab" plugins
cp "$ROOT/examples/quickstart/quickstart.py" .
"$VENV/bin/python" quickstart.py | tee run.txt
grep -q "^status: finished" run.txt
"$VENV/bin/python" quickstart.py --export job --rounds 3
"$VENV/bin/collab" run job --clients 3 | tee run.txt
grep -q "^status: finished" run.txt
"$VENV/bin/collab" new newproject
(cd newproject && "$VENV/bin/python" job.py --rounds 2 | tee ../run.txt)
grep -q "^status: finished" run.txt
echo "wheels: passed in $((SECONDS - START)) s"
