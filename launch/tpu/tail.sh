#!/usr/bin/env bash
# Follows the log of one worker (WORKER=0 by default: only process 0 prints
# the progress line and writes metrics; other workers log warnings/errors).
#   NAME=mmae ZONE=us-central2-b launch/tpu/tail.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need NAME ZONE
W="${WORKER:-0}"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$W" \
  --command "tail -n 100 -f ~/mi_ssl_jax/log.w$W"
