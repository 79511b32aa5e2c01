#!/usr/bin/env bash
# The main demo, from a fresh checkout: set up .venv, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/collab plugins
