#!/usr/bin/env bash
# The main job: set up the machine if needed, then trace a two-service sample app
# running in its own cgroups and print the traces. Ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m podspan_demo "$@"
