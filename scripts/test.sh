#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole suite. Extra arguments go to pytest
# (e.g. --runslow for the long randomised runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
