#!/usr/bin/env bash
# Copies this checkout to every worker of the TPU VM and installs it there:
# a Python 3.11 venv in ~/mi_ssl_jax/.venv with `pip install -e '.[tpu]'`.
#   NAME=mmae ZONE=us-central2-b launch/tpu/setup.sh
# PYTHON=3.12 picks another Python (>= 3.11: jax 0.10 needs it; 3.11 gets
# jax 0.10.2, 3.12 and 3.13 the newest jax < 0.13).
#
# Targets the TPU VM runtime images that create.sh uses: tpu-ubuntu2204-base
# (v4) and v2-alpha-tpuv5-lite / v2-alpha-tpuv5 / v2-alpha-tpuv6e (v5e, v5p,
# v6e). All are Ubuntu 22.04 with Python 3.10, too old for jax 0.10, so a
# standalone Python is installed with uv (no apt changes, no sudo). A venv
# left by an older setup with Python < 3.11 is recreated.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need NAME ZONE
PY="${PYTHON:-3.11}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=workdirs -czf /tmp/mi_ssl_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/mi_ssl_jax.tgz "$NAME":~/ --zone="$ZONE" --worker=all
REMOTE="$(cat <<'EOF'
set -e
mkdir -p ~/mi_ssl_jax && tar -C ~/mi_ssl_jax -xzf ~/mi_ssl_jax.tgz
cd ~/mi_ssl_jax
export PATH="$HOME/.local/bin:$PATH"
# uv: from PyPI into ~/.local, else its standalone installer (same place).
command -v uv >/dev/null || python3 -m pip install -q --user uv \
  || curl -LsSf https://astral.sh/uv/install.sh | sh
if ! .venv/bin/python -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
  rm -rf .venv
  uv venv -q --python "$PY" .venv  # downloads a standalone CPython if needed
fi
uv pip install -q --python .venv/bin/python -e ".[tpu]"
.venv/bin/python -c "import sys, jax; print(sys.version.split()[0], jax.__version__, jax.process_index(), jax.device_count())"
EOF
)"
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all \
  --command "PY=$(printf %q "$PY"); $REMOTE"
