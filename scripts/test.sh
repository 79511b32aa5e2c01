#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: sets up both environments, then runs
#   1. the core tests with collab-core alone installed (no plugins, no torch);
#   2. every test with core, all plugins and torch installed.
# Extra arguments go to the second pytest run (e.g. -k wire, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-core-only.sh
bash scripts/setup.sh
echo "== core alone (no plugins, no torch) =="
COLLAB_EXPECT_CORE_ONLY=1 .venv-core/bin/python -m pytest -q tests/core
echo "== everything =="
.venv/bin/python -m pytest -q "$@"
