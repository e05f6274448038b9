#!/usr/bin/env bash
# Starts (or resumes) a run on every worker, detached in tmux, one log per
# worker. Each worker runs launch/tpu/worker.sh, which reruns the trainer
# when it exits with status 75 (stopped with its state saved, e.g. on a
# maintenance event's preemption notice), up to MAX_RESTARTS times (default
# 20). After a spot preemption (the VM is gone) recreate the VM, run
# setup.sh, and run this same command again: training continues from the
# newest checkpoint in WORKDIR.
#   NAME=mmae ZONE=us-central2-b WORKDIR=gs://bucket/mmae_vitb \
#     launch/tpu/run.sh --config=configs/mmae_vitb.py [--config.x=y ...]
# WORKDIR is required here (no workdirs/<config stem> default): every worker
# must write to the same place and it must outlive a preempted VM, so use
# gs://bucket/path. Uses the venv that setup.sh made (~/mi_ssl_jax/.venv,
# Python 3.11). Only worker 0 prints the progress line (see tail.sh).
# RUN_ID (default: NAME) is exported as MI_SSL_RUN_ID: the workdir lock
# records it, so the rerun on a recreated VM (same RUN_ID, new hostname)
# takes the lock over at once. EXTRA_ENV="VAR=value ..." is exported to the
# trainer too (e.g. the pre-run checks of README.md, "Multi-host").
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
RUN_ID="${RUN_ID:-$NAME}"
ARGS="$(printf ' %q' "--workdir=$WORKDIR" "$@")"
read -r -a EXTRA <<< "${EXTRA_ENV:-}"
ENVS="$(printf ' %q' "MI_SSL_RUN_ID=$RUN_ID" \
  "MAX_RESTARTS=${MAX_RESTARTS:-20}" ${EXTRA[@]+"${EXTRA[@]}"})"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "
  cd ~/mi_ssl_jax || exit 1
  tmux kill-session -t train 2>/dev/null || true
  W=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)
  tmux new -d -s train \"env$ENVS launch/tpu/worker.sh$ARGS > log.w\$W 2>&1\""
echo "started; follow with: NAME=$NAME ZONE=$ZONE launch/tpu/tail.sh"
