#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: sets up the environments, then runs
#   1. the core tests with collab-core alone installed from its wheel (no plugins, no torch);
#   2. the wheel leg: every distribution's sdist and wheel built and checked, the wheels installed
#      into a fresh venv, the CLI and a job run there from outside the checkout (test-wheels.sh);
#   3. every test with core, all plugins (editable) and torch installed.
# Extra arguments go to the last pytest run (e.g. -k wire, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-core-only.sh
echo "== core alone, from its wheel (no plugins, no torch) =="
# bin/pytest, not `python -m pytest`: that would put the checkout first on sys.path
COLLAB_EXPECT_CORE_ONLY=1 .venv-core/bin/pytest -q tests/core
echo "== wheels: every distribution built, installed and run outside the checkout =="
bash scripts/test-wheels.sh
echo "== everything =="
.venv/bin/python -m pytest -q "$@"
