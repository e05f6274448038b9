#!/usr/bin/env bash
# The GPU study (mi_ssl_jax/study/gpu): MAE / U-MAE / M-MAE, Matrix-SSL /
# MEC and the positive control (VICReg, small ViT) on Fashion-MNIST for up
# to 100 epochs each, sized by a ~30-second
# calibration to DEADLINE_MIN minutes (default 6.5), kNN and standardised
# linear probe beside raw pixels and random init. No TensorFlow needed.
# Writes $OUT/runs/*.json (one per run, as it finishes; a rerun skips
# finished runs), $OUT/plan.json, $OUT/gpu_study.md and the persistent
# compilation cache $OUT/jax_cache.
#
# Like bench/accelerator.sh: on a machine without network, carry .whl/
# (make accelerator-wheels) and the Fashion-MNIST IDX files (DATA_DIR, or
# MI_SSL_DATA_DIR, or /usr/share/datasets/fashion-mnist).
# Environment: PYTHON, OUT (default bench_results/gpu_study), DATA_DIR,
# DEADLINE_MIN (default 6.5); extra arguments go to the driver.
set -euo pipefail
source "$(dirname "$0")/env.sh"
OUT="${OUT:-bench_results/gpu_study}"
DEADLINE_MIN="${DEADLINE_MIN:-6.5}"
# The driver stops starting runs at the deadline; the timeout is a backstop
# (one run's evaluation may end after it).
LIMIT=$("$PY" -c "print(int(float('$DEADLINE_MIN') * 60 + 120))")
timeout "$LIMIT" "$PY" -m mi_ssl_jax.study.gpu --out="$OUT" \
  --deadline_min="$DEADLINE_MIN" ${DATA_DIR:+--data_dir="$DATA_DIR"} "$@"
