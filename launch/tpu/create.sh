#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (spot by default) for mi_ssl_jax.
#   NAME=mmae ZONE=us-central2-b TYPE=v4-32 launch/tpu/create.sh
# Set SPOT=0 for an on-demand VM, QUEUED=1 to go through queued resources
# (recommended for long runs: the request waits for capacity instead of failing).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${TYPE:?set TYPE, e.g. v4-32}"
# TPU VM runtime image: tpu-ubuntu2204-base suits v4; use VERSION=
# v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p) or v2-alpha-tpuv6e (v6e).
# They ship Python 3.10; setup.sh installs Python 3.11 next to it.
VERSION="${VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-1}"
if [[ "${QUEUED:-0}" == 1 ]]; then
  gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" \
    --zone="$ZONE" --accelerator-type="$TYPE" --runtime-version="$VERSION" \
    $([[ "$SPOT" == 1 ]] && echo --spot)
  echo "queued; check with: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE"
else
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
    --accelerator-type="$TYPE" --version="$VERSION" \
    $([[ "$SPOT" == 1 ]] && echo --spot)
fi
