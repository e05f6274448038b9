#!/usr/bin/env bash
# Starts (or resumes) a run on every worker, detached in tmux, one log per
# worker. Rerun the same command after a preemption: training continues from
# the newest checkpoint in WORKDIR.
#   NAME=mmae ZONE=us-central2-b WORKDIR=gs://bucket/mmae_vitb \
#     launch/tpu/run.sh --config=configs/mmae_vitb.py [--config.x=y ...]
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
ARGS="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "
  cd ~/mi_ssl_jax && tmux kill-session -t train 2>/dev/null || true
  W=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)
  tmux new -d -s train \".venv/bin/python -m mi_ssl_jax.main --workdir=$WORKDIR $ARGS &> log.w\$W\""
echo "started; follow with: NAME=$NAME ZONE=$ZONE launch/tpu/tail.sh"
