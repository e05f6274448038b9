#!/usr/bin/env bash
# Requests a Cloud TPU VM slice for mi_ssl_jax through queued resources (the
# request waits in a queue for capacity instead of failing) and waits until
# it is ACTIVE (launch/tpu/wait.sh).
#   NAME=mmae ZONE=us-central2-b TYPE=v4-32 launch/tpu/create.sh
#   NAME=mmae ZONE=us-west4-a TYPE=v5litepod-16 launch/tpu/create.sh
# TYPE is the accelerator type: v4-N / v5p-N (N TensorCores, 2 per chip),
# v5litepod-N (v5e) / v6e-N (N chips); launch/README.md has the table.
# VERSION (the runtime image) defaults to the one Cloud TPU recommends for
# JAX on that TPU generation. SPOT=0 asks for on-demand capacity (default:
# spot); QUEUED=0 creates the VM directly (fails at once when there is no
# capacity); WAIT=0 returns after queueing (then run wait.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need NAME ZONE TYPE
# Cloud TPU docs, "TPU software versions" (PyTorch and JAX): v6e
# v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older
# tpu-ubuntu2204-base. All ship Python 3.10; setup.sh installs 3.11 beside it.
case "$TYPE" in
  v6e-*) default=v2-alpha-tpuv6e ;;
  v5p-*) default=v2-alpha-tpuv5 ;;
  v5litepod-*) default=v2-alpha-tpuv5-lite ;;
  v2-*|v3-*|v4-*) default=tpu-ubuntu2204-base ;;
  *) [[ -n "${VERSION:-}" ]] || die "unknown TYPE=$TYPE: use v4-N, v5p-N," \
       "v5litepod-N or v6e-N, or set VERSION to its runtime version" ;;
esac
VERSION="${VERSION:-$default}"
SPOT_FLAG=()
[[ "${SPOT:-1}" == 1 ]] && SPOT_FLAG=(--spot)
if [[ "${QUEUED:-1}" == 1 ]]; then
  gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" \
    --zone="$ZONE" --accelerator-type="$TYPE" --runtime-version="$VERSION" \
    ${SPOT_FLAG[@]+"${SPOT_FLAG[@]}"}
  if [[ "${WAIT:-1}" == 1 ]]; then
    "$(dirname "$0")/wait.sh"
  else
    echo "queued; wait with: NAME=$NAME ZONE=$ZONE launch/tpu/wait.sh"
  fi
else
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
    --accelerator-type="$TYPE" --version="$VERSION" \
    ${SPOT_FLAG[@]+"${SPOT_FLAG[@]}"}
fi
echo "TPU VM $NAME ($TYPE, $VERSION) is ready; next:" \
  "NAME=$NAME ZONE=$ZONE launch/tpu/setup.sh"
