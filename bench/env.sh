# Sourced by the scripts that run on a lent accelerator machine
# (bench/accelerator.sh, bench/gpu_study.sh): cd to the repository root,
# PY (from PYTHON, default python3), ml-collections installed offline from
# a carried .whl/ when missing (make accelerator-wheels makes it where
# there is network), and this tree first on PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --find-links .whl ml_collections
  else
    echo "error: ml-collections is not installed and .whl/ is missing; run 'make accelerator-wheels' where there is network" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
