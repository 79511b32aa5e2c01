# Sourced by the other scripts (from the repository root): what they share.

# The pinned versions that dev and CI installs use; the packages themselves ask only for ranges.
TORCH_PIN="torch==2.13.0"

# Every plugin distribution: each folder plugins/<name>/ that holds a pyproject.toml.
collab_plugins() {
    local p
    for p in plugins/*/; do
        if [ -f "${p}pyproject.toml" ]; then echo "${p%/}"; fi
    done
}

# A hash of what an environment's install depends on: every pyproject.toml, the packages'
# __version__ lines, the pins above, and the files given as arguments (the calling script, ...).
collab_setup_hash() {
    local f
    {
        for f in pyproject.toml $(collab_plugins | sed 's|$|/pyproject.toml|') "$@"; do
            echo "== $f"
            cat "$f"
        done
        grep -H '^__version__' collab_core/__init__.py plugins/*/src/*/__init__.py || true
        echo "$TORCH_PIN"
    } | sha256sum | cut -d' ' -f1
}

# A hash of the files that go into the collab-core wheel.
collab_core_source_hash() {
    {
        collab_setup_hash "$@"
        find collab_core README.md LICENSE -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' \
            -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}

# A fresh venv's python must run; a venv left over from a removed interpreter does not.
collab_venv_ok() {
    [ -x "$1/bin/python" ] && "$1/bin/python" -c "import sys" >/dev/null 2>&1
}
