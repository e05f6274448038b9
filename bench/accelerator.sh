#!/usr/bin/env bash
# Every measurement that needs an accelerator, in one run (<= 8 minutes on
# one GPU): writes bench_results/accelerator.{json,md}. See
# mi_ssl_jax/bench/accelerator.py for the sections.
#
# On a lent machine without network: make accelerator-wheels here first (it
# downloads ml-collections and its pure-Python dependencies into .whl/), then
# carry .whl/ with the tree; this script installs them offline if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --find-links .whl ml_collections
  else
    echo "error: ml-collections is not installed and .whl/ is missing; run 'make accelerator-wheels' where there is network" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-bench_results}"
timeout "${TIMEOUT:-480}" "$PY" -m mi_ssl_jax.bench.accelerator --out="$OUT" "$@"
