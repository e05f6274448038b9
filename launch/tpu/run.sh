#!/usr/bin/env bash
# Starts (or resumes) a run on every worker, detached in tmux, one log per
# worker. Rerun the same command after a preemption: training continues from
# the newest checkpoint in WORKDIR.
#   NAME=mmae ZONE=us-central2-b WORKDIR=gs://bucket/mmae_vitb \
#     launch/tpu/run.sh --config=configs/mmae_vitb.py [--config.x=y ...]
# WORKDIR is required here (no workdirs/<config stem> default): every worker
# must write to the same place and it must outlive a preempted VM, so use
# gs://bucket/path. Uses the venv that setup.sh made (~/mi_ssl_jax/.venv,
# Python 3.11). Only worker 0 prints the progress line (see tail.sh).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
ARGS="$(printf ' %q' "--workdir=$WORKDIR" "$@")"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "
  cd ~/mi_ssl_jax || exit 1
  tmux kill-session -t train 2>/dev/null || true
  W=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)
  tmux new -d -s train \".venv/bin/python -m mi_ssl_jax.main$ARGS > log.w\$W 2>&1\""
echo "started; follow with: NAME=$NAME ZONE=$ZONE launch/tpu/tail.sh"
