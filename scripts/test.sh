#!/usr/bin/env bash
# The test command: set up the venv if needed (scripts/setup.sh; PYTHON and VENV as there), then
# run the whole suite. Extra arguments go to pytest (e.g. --runslow for the long randomised runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
