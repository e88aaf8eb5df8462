#!/usr/bin/env bash
# The prepared GPU check of issue 16, in one go on one GPU (under 8 minutes on an H100):
#   bench/gpu_check.sh --out DIR              # JSON summary in DIR/summary.json, one log per check beside it
#   bench/gpu_check.sh --out DIR --cpu-smoke  # the same checks, tiny, on CPU (tests/test_gpu_check.py runs it)
# Every check runs in its own subprocess with a timeout; a failure is recorded and the rest still run.
# PYTHON picks the interpreter (default: the repository's .venv if there is one, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
