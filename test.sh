#!/usr/bin/env bash
# The tests: set up a virtual environment with the dev tools and the small local model, then run the
# linters, the type checker, the layer rules and every test (including the slow real-model test).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[dev,local-small]'
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # The report's and the review app's browser tests need headless Chromium (the review test drives it
  # with the playwright package from the dev extra, never Playwright's own browser download); without
  # it those tests are skipped and say so.
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed"
fi
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/mypy"
"$VENV/bin/lint-imports"
"$VENV/bin/python" -m pytest "$@"
