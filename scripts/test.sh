#!/usr/bin/env bash
# The whole test suite: set up the machine if needed, lint, type-check, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy agent operator
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
