#!/usr/bin/env bash
# Every measurement that needs an accelerator, in one run (<= 8 minutes on
# one GPU): the GPU tests (cuDNN attention against XLA), then
# mi_ssl_jax/bench/accelerator.py (PyTorch reference eager and compiled,
# attention kernels, ViT-B M-MAE / MAE and ResNet-50 steps, matrix
# functions, augmentation). Writes $OUT/gpu_tests.log and
# $OUT/accelerator.{json,md}; the JSON after every section.
#
# On a lent machine without network: make accelerator-wheels here first (it
# downloads ml-collections and its pure-Python dependencies into .whl/), then
# carry .whl/ with the tree; this script installs them offline if missing.
# Environment: PYTHON (default python3), OUT (default bench_results),
# TIMEOUT (seconds for the benchmark, default 480), SKIP_TESTS=1.
set -euo pipefail
source "$(dirname "$0")/env.sh"
# JAX keeps 60% of the GPU's memory, so the PyTorch reference (run in its
# own processes by the benchmark) has the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
OUT="${OUT:-bench_results}"
mkdir -p "$OUT"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  # The tests that need the accelerator (skipped where there is none).
  MI_SSL_TEST_ACCELERATOR=1 timeout 180 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_attention_kernels.py -k gpu 2>&1 | tee "$OUT/gpu_tests.log" \
    || echo "[accelerator] GPU tests failed (see $OUT/gpu_tests.log)"
fi
timeout "${TIMEOUT:-480}" "$PY" -m mi_ssl_jax.bench.accelerator --out="$OUT" "$@"
