#!/usr/bin/env bash
# Build the sdist and the wheel of every distribution -- collab-core (the root) and each
# plugins/*/pyproject.toml -- into dist/, the wheel built from the sdist (as from a package index),
# so a file the sdist misses fails the build. Arguments: the distribution folders to build
# (default: all). Builds with .venv's `build` and setuptools (test extras), without isolation:
# no network, a few seconds per distribution. Replaces older builds of the same distributions.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_common.sh
VENV=${COLLAB_VENV:-.venv}
bash scripts/setup.sh
if [ $# -eq 0 ]; then
    # shellcheck disable=SC2046
    set -- . $(collab_plugins)
fi
mkdir -p dist
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for d in "$@"; do
    out="$TMP/$(basename "$(cd "$d" && pwd)")"
    mkdir -p "$out"
    # the back-end's chatter is shown only if the build fails
    if ! "$VENV/bin/python" -m build --no-isolation --outdir "$out" "$d" >"$out.log" 2>&1; then
        cat "$out.log" >&2
        echo "build-wheels: building $d failed" >&2
        exit 1
    fi
    built=()
    for f in "$out"/*; do
        name=$(basename "$f")
        rm -f dist/"${name%%-*}"-*
        built+=("dist/$name")
    done
    mv "$out"/* dist/
    echo "build-wheels: $d -> ${built[*]}"
done
