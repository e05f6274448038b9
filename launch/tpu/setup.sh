#!/usr/bin/env bash
# Copies this checkout to every worker of the TPU VM and installs it there
# (a venv in ~/mi_ssl_jax/.venv with jax[tpu]).
#   NAME=mmae ZONE=us-central2-b launch/tpu/setup.sh
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=workdirs -czf /tmp/mi_ssl_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/mi_ssl_jax.tgz "$NAME":~/ --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command '
  set -e
  mkdir -p ~/mi_ssl_jax && tar -C ~/mi_ssl_jax -xzf ~/mi_ssl_jax.tgz
  cd ~/mi_ssl_jax
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e . "jax[tpu]>=0.10.2,<0.11"
  .venv/bin/python -c "import jax; print(jax.process_index(), jax.device_count())"'
