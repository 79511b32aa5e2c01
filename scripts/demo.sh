#!/usr/bin/env bash
# The main demo, from a fresh checkout: set up .venv, then run FedAvg on 5 simulated sites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/fedavg/fedavg_train.py "$@"
