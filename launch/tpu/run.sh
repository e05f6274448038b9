#!/usr/bin/env bash
# Starts (or resumes) a run on every worker, detached in tmux, one log per
# worker. Each worker runs launch/tpu/worker.sh, which reruns the trainer
# when it exits with status 75 (stopped with its state saved, e.g. on a
# maintenance event's preemption notice), up to MAX_RESTARTS times (default
# 20), and copies its log to $WORKDIR/logs/<start time>/worker<N>.log after
# every run of the trainer and when it ends. After a spot preemption (the
# VM is gone) recreate the VM, run setup.sh, and run this same command
# again: training continues from the newest checkpoint in WORKDIR.
#   NAME=mmae ZONE=us-central2-b WORKDIR=gs://bucket/mmae_vitb \
#     launch/tpu/run.sh --config=configs/mmae_vitb.py [--config.x=y ...]
# WORKDIR is required here (no workdirs/<config stem> default): every worker
# must write to the same place and it must outlive a preempted VM, so use
# gs://bucket/path. Uses the venv that setup.sh made (~/mi_ssl_jax/.venv,
# Python 3.11). Only worker 0 prints the progress line (see tail.sh).
# Environment of the trainer on every worker: XLA_FLAGS and LIBTPU_INIT_ARGS
# when set here (e.g.
# LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true),
# MI_SSL_RUN_ID=$RUN_ID (default: NAME; the workdir lock records it, so the
# rerun on a recreated VM, same RUN_ID and a new hostname, takes the lock
# over at once), and EXTRA_ENV="VAR=value ..." (e.g. the pre-run checks of
# README.md, "Multi-host").
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need NAME ZONE WORKDIR
RUN_ID="${RUN_ID:-$NAME}"
ARGS="$(printf ' %q' "--workdir=$WORKDIR" "$@")"
read -r -a EXTRA <<< "${EXTRA_ENV:-}"
PASS=()
for var in XLA_FLAGS LIBTPU_INIT_ARGS; do
  [[ -z "${!var:-}" ]] || PASS+=("$var=${!var}")
done
LOGS="${WORKDIR%/}/logs/$(date -u +%Y%m%dT%H%M%SZ)"
ENVS="$(printf ' %q' "MI_SSL_RUN_ID=$RUN_ID" \
  "MAX_RESTARTS=${MAX_RESTARTS:-20}" "LOG_DEST=$LOGS" \
  ${PASS[@]+"${PASS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "
  cd ~/mi_ssl_jax || exit 1
  tmux kill-session -t train 2>/dev/null || true
  W=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)
  tmux new -d -s train \"env$ENVS LOG_FILE=log.w\$W LOG_NAME=worker\$W.log launch/tpu/worker.sh$ARGS > log.w\$W 2>&1\""
echo "started; follow with: NAME=$NAME ZONE=$ZONE launch/tpu/tail.sh"
echo "worker logs are copied to $LOGS/"
