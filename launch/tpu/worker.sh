#!/usr/bin/env bash
# What run.sh starts on each worker (in tmux): the trainer, rerun while it
# exits with status 75 (EXIT_RESTART in mi_ssl_jax/errors.py: stopped with
# its state saved, e.g. preempted; rerunning continues), at most
# MAX_RESTARTS times (default 20) with RESTART_DELAY seconds between runs
# (default 10). Any other status ends it with that status.
#   launch/tpu/worker.sh --workdir=gs://bucket/run --config=configs/x.py [...]
# PYTHON (default .venv/bin/python, relative to the checkout) runs
# `-m mi_ssl_jax.main`. MI_SSL_RUN_ID, exported by run.sh, names the run in
# the workdir lock: a rerun of the same run on a recreated VM (a new
# hostname) takes the lock over at once instead of waiting for the stale
# heartbeat (config.lock_stale_seconds).
# With LOG_FILE (this worker's log, which run.sh redirects it to) and
# LOG_DEST (a gs:// or local folder), the log is copied to
# LOG_DEST/LOG_NAME (default: the log's own name) after each run of the
# trainer and when this script ends (exit, SIGTERM, SIGHUP from tmux), so it
# outlives the VM; a failed copy is reported and does not change the status.
set -uo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
MAX_RESTARTS="${MAX_RESTARTS:-20}"
EXIT_RESTART=75

copy_log() {
  [[ -n "${LOG_FILE:-}" && -n "${LOG_DEST:-}" && -f "$LOG_FILE" ]] || return 0
  local dest="${LOG_DEST%/}/${LOG_NAME:-$(basename "$LOG_FILE")}"
  if [[ "$dest" == gs://* ]]; then
    gcloud storage cp --quiet "$LOG_FILE" "$dest" >/dev/null 2>&1
  else
    mkdir -p "$(dirname "$dest")" && cp "$LOG_FILE" "$dest"
  fi || echo "$(date -Is) could not copy $LOG_FILE to $dest" >&2
}
trap copy_log EXIT
trap 'exit 143' TERM
trap 'exit 129' HUP

restarts=0
while true; do
  "$PYTHON" -m mi_ssl_jax.main "$@"
  status=$?
  if [[ "$status" != "$EXIT_RESTART" ]]; then
    exit "$status"
  fi
  if (( restarts >= MAX_RESTARTS )); then
    echo "$(date -Is) exit status $status after $restarts restarts" \
      "(MAX_RESTARTS=$MAX_RESTARTS): giving up; rerun run.sh to continue" >&2
    exit "$status"
  fi
  restarts=$((restarts + 1))
  echo "$(date -Is) exit status $status (state saved): restart" \
    "$restarts of $MAX_RESTARTS" >&2
  copy_log
  sleep "${RESTART_DELAY:-10}"
done
