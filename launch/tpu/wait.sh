#!/usr/bin/env bash
# Waits until the queued resource NAME is ACTIVE (its TPU VM slice exists),
# polling `gcloud compute tpus queued-resources describe` every
# POLL_SECONDS (default 30) for at most WAIT_SECONDS (default 86400: the
# queue can take hours). create.sh runs it after a queued request; run it
# again to keep waiting after a timeout.
#   NAME=mmae ZONE=us-central2-b launch/tpu/wait.sh
# Exit status 0 once ACTIVE; 2 with one `error:` line when the request
# FAILED or was SUSPENDED (it stays in the queue until deleted), the wait
# timed out, or describe failed 5 times in a row (e.g. no such request).
# States (Cloud TPU docs, "Manage queued resources"):
# WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED, SUSPENDING,
# SUSPENDED (and CREATING / ACCEPTED / DELETING of the v2 API).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need NAME ZONE
POLL="${POLL_SECONDS:-30}"
LIMIT="${WAIT_SECONDS:-86400}"
[[ "$POLL" =~ ^[0-9]+$ && "$LIMIT" =~ ^[0-9]+$ ]] \
  || die "POLL_SECONDS and WAIT_SECONDS must be whole seconds"
start=$SECONDS
last=""
failures=0
while true; do
  err="${TMPDIR:-/tmp}/wait.$$"
  if state="$(gcloud compute tpus queued-resources describe "$NAME" \
      --zone="$ZONE" --format='value(state.state)' 2>"$err")"; then
    failures=0
  else
    failures=$((failures + 1))
    why="$(tail -n 1 "$err")"
    (( failures < 5 )) || die "gcloud cannot describe queued resource" \
      "$NAME in $ZONE: ${why:-no message}"
    state="UNKNOWN (describe failed: ${why:-no message})"
  fi
  rm -f "$err"
  if [[ "$state" != "$last" ]]; then
    echo "$(date -u +%H:%M:%S) queued resource $NAME: $state"
    last="$state"
  fi
  case "$state" in
    ACTIVE) exit 0 ;;
    FAILED|SUSPENDING|SUSPENDED)
      die "queued resource $NAME is $state (see: gcloud compute tpus" \
        "queued-resources describe $NAME --zone=$ZONE); delete it with" \
        "gcloud compute tpus queued-resources delete $NAME --zone=$ZONE" \
        "--force, then run create.sh again" ;;
  esac
  if (( SECONDS - start >= LIMIT )); then
    die "queued resource $NAME still $state after ${LIMIT} s" \
      "(WAIT_SECONDS): run launch/tpu/wait.sh again to keep waiting"
  fi
  sleep "$POLL"
done
