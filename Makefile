# mi_ssl_jax developer entry points. Every target works on a fresh machine:
# the virtual environment is created and the project installed on first use.
#
# PYTHON: the first of python3.13, python3.12, python3.11, python3 on PATH that
# runs and is Python >= 3.11 (jax 0.10 needs it). A pyenv shim of a version
# that is not selected exists but fails, so it is skipped. Evaluated once, on
# first use; `make PYTHON=/path/to/python3.11 ...` skips the search.
PYTHON_CANDIDATES ?= python3.13 python3.12 python3.11 python3
# The path of the first command of $(1) that runs and is Python >= $(2).
find_python = $(firstword $(foreach p,$(1),$(shell $(p) -c \
  'import sys; sys.exit(sys.version_info < tuple(map(int, "$(2)".split("."))))' \
  >/dev/null 2>&1 && command -v $(p))))
PYTHON ?= $(eval PYTHON := $(call find_python,$(PYTHON_CANDIDATES),3.11))$(PYTHON)
NO_PYTHON := error: no Python >= 3.11 runs here (tried $(PYTHON_CANDIDATES)); \
install one (Debian/Ubuntu: sudo apt-get install python3.11-venv) or pass \
PYTHON=/path/to/python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
# Two workers, one test file each at a time (2-core CI machine).
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

# Ahead-of-time compiles for TPU slices (docs/scaling.md) need libtpu (the
# `aot` extra), kept in its own environment on top of .venv: a libtpu beside
# a CPU-only jax makes every jax process probe for TPUs. The install asks for
# jax[tpu] at the jax version of .venv, so it adds the libtpu of that jax
# (jax 0.10.2: libtpu 0.0.42.*) and never upgrades jax or jaxlib beside it.
AOT_VENV ?= .venv-aot
AOT_PY := $(AOT_VENV)/bin/python
AOT_STAMP := $(AOT_VENV)/.installed
AOT_ARGS ?= --config=mmae_vitb --topology=v5e-8

.PHONY: install test test-newest newest-leg test-all lint notebooks aot aot-check scaling fashion-mnist quickstart study study-tune study-prereg probe-epochs benchmark step-benchmark parity accelerator gpu-study accelerator-wheels clean

$(STAMP): pyproject.toml
	@test -x $(PY) || { test -n "$(PYTHON)" || { echo "$(NO_PYTHON)"; exit 2; }; \
	  echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

$(AOT_STAMP): $(STAMP)
	@test -x $(AOT_PY) || $(PY) -m venv $(AOT_VENV)
	@echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
	  > "$$($(AOT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_mi_ssl_base.pth"
	$(AOT_PY) -m pip install -q -e '.[aot]' \
	  "jax[tpu]==$$($(PY) -c 'import importlib.metadata as m; print(m.version("jax"))')"
	@touch $(AOT_STAMP)

# Compile a recipe's train step for a TPU slice on this machine (no TPU):
# memory per chip, FLOPs, roofline; e.g. make aot AOT_ARGS="--config=mmae_vitl
# --topology=v5e-8 --find_max_batch".
aot: $(AOT_STAMP)
	$(AOT_PY) -m mi_ssl_jax.bench.aot $(AOT_ARGS)

# Every table of docs/scaling.md (resumable: each row's record is kept in
# docs/figures/scaling/, committed with the doc; a row without a record
# keeps its line of the doc; hours on 2 CPU cores). SCALING_ARGS adds
# options, e.g. --tables=targets or --markdown.
SCALING_ARGS ?=
scaling: $(AOT_STAMP)
	$(AOT_PY) -m mi_ssl_jax.bench.scaling --docs=docs/scaling.md $(SCALING_ARGS)

# The ahead-of-time tests alone (they also run in `make test`).
aot-check: $(STAMP) $(AOT_STAMP)
	MI_SSL_AOT_PYTHON=$(AOT_PY) $(PY) -m pytest -q tests/test_aot.py

# The offline default dataset (Debian package `dataset-fashion-mnist`). Installed
# with apt where we are root (CI) or have passwordless sudo; otherwise we say how.
fashion-mnist:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] || [ -n "$$MI_SSL_DATA_DIR" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "note: Fashion-MNIST not found; install it with 'sudo apt-get install dataset-fashion-mnist' or set MI_SSL_DATA_DIR to a folder with the IDX files (tests that need it are skipped)"; \
	fi

# The test suite CI runs (README "Quick start"), in two legs: the whole suite
# in .venv (Python >= 3.11, the oldest jax we support where the Python is 3.11),
# then `test-newest`. Tests marked `slow` are excluded.
test: $(STAMP) $(AOT_STAMP) fashion-mnist
	MI_SSL_AOT_PYTHON=$(AOT_PY) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-newest

# Second leg: the newest jax, flax and orbax that pyproject.toml allows, on
# Python >= 3.12 (jax 0.11 and later need it), in .venv-newest (upgraded to the
# newest served whenever pyproject.toml changes). It runs a subset that fits
# CI's time budget: the matrix core, the losses, checkpoints, the trainer and
# notebook 01. Its Python: python3.12 or python3.13 on PATH if it runs, else
# pyenv's (PYENV_ROOT, default ~/.pyenv) versions/3.12* or 3.13*. With none,
# one `note:` line and the leg is skipped.
NEWEST_VENV ?= .venv-newest
NEWEST_PY := $(NEWEST_VENV)/bin/python
NEWEST_STAMP := $(NEWEST_VENV)/.installed
PYENV_DIR ?= $(or $(PYENV_ROOT),$(HOME)/.pyenv)
NEWEST_CANDIDATES ?= python3.12 python3.13 \
  $(sort $(wildcard $(PYENV_DIR)/versions/3.12*/bin/python3.12)) \
  $(sort $(wildcard $(PYENV_DIR)/versions/3.13*/bin/python3.13))
NEWEST_PYTHON ?= $(eval NEWEST_PYTHON := \
  $(call find_python,$(NEWEST_CANDIDATES),3.12))$(NEWEST_PYTHON)
NEWEST_TESTS ?= tests/test_matrix_core.py tests/test_losses.py \
  tests/test_checkpointing.py tests/test_train.py \
  'tests/test_notebooks.py::test_notebook_runs[01_matrix_entropy_intuition]'

$(NEWEST_STAMP): pyproject.toml
	@test -x $(NEWEST_PY) || { echo "$(NEWEST_PYTHON) -m venv $(NEWEST_VENV)"; \
	  $(NEWEST_PYTHON) -m venv $(NEWEST_VENV); }
	$(NEWEST_PY) -m pip install -q --upgrade pip
	$(NEWEST_PY) -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	@touch $(NEWEST_STAMP)

test-newest:
	@if [ -x $(NEWEST_PY) ] || [ -n "$(NEWEST_PYTHON)" ]; then \
	  $(MAKE) --no-print-directory NEWEST_PYTHON="$(NEWEST_PYTHON)" newest-leg; \
	else \
	  echo "note: newest-jax leg skipped: no Python >= 3.12 runs here (tried $(strip $(NEWEST_CANDIDATES))); install python3.12 to run it"; \
	fi

newest-leg: $(NEWEST_STAMP)
	@$(NEWEST_PY) -c 'import sys, jax, flax, orbax.checkpoint as o; \
	  print(f"newest leg: Python {sys.version.split()[0]}, jax {jax.__version__},", \
	        f"flax {flax.__version__}, orbax-checkpoint {o.__version__}")'
	$(NEWEST_PY) -m pytest -m "not slow" $(PYTEST_ARGS) $(NEWEST_TESTS)

# Everything, including tests marked `slow`.
test-all: $(STAMP) $(AOT_STAMP) fashion-mnist
	MI_SSL_AOT_PYTHON=$(AOT_PY) $(PY) -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-newest

# Quick start: M-MAE with a tiny ViT on the offline Fashion-MNIST, on CPU
# (about 5 minutes on 2 cores); prints the kNN accuracy on the test split.
QS_WORKDIR ?= workdirs/quickstart
quickstart: $(STAMP) fashion-mnist
	@echo "Run directory: $(QS_WORKDIR) (TensorBoard events, metrics.jsonl, checkpoints/)"
	$(PY) -m mi_ssl_jax.main --config=configs/quickstart.py --workdir=$(QS_WORKDIR)
	@echo "Logs: tensorboard --logdir $(QS_WORKDIR); checkpoints: $(QS_WORKDIR)/checkpoints"

# Runs every notebook top to bottom in a fresh Jupyter kernel at its full
# size on this machine's CPU and saves it with its outputs (what GitHub and
# Colab show; stderr dropped). Run directories go to workdirs/notebooks (03
# and 05 share one M-MAE run). NOTEBOOKS picks some, e.g.
# NOTEBOOKS=notebooks/02_read_metrics_jsonl.ipynb.
NOTEBOOKS ?= $(sort $(wildcard notebooks/*.ipynb))
notebooks: $(STAMP) fashion-mnist
	$(PY) -m pip install -q -e '.[notebooks]'
	$(PY) -m mi_ssl_jax.notebook_utils $(NOTEBOOKS)

# The Fashion-MNIST study behind docs/results.md: every method x 3 seeds at
# an equal budget, kNN + linear probe, baselines, figures (hours on 2 CPU
# cores; resumable: rerun to continue). study-tune reruns the validation-split
# tuning behind docs/results_tuning.md. STUDY_ARGS adds overrides.
STUDY_ARGS ?=
study: $(STAMP) fashion-mnist
	$(PY) -m mi_ssl_jax.study --config=configs/study/fmnist.py $(STUDY_ARGS)

study-tune: $(STAMP) fashion-mnist
	$(PY) -m mi_ssl_jax.study --config=configs/study/fmnist.py:tune $(STUDY_ARGS)

# The pre-registered experiment (docs/results.md, "Pre-registered
# experiment"): selection on a validation split, positive control, MAE-family
# ordering at 3x budget (about 2 1/4 hours on 2 idle CPU cores; resumable:
# rerun to continue). Its results go between the study_prereg markers of
# docs/results.md.
study-prereg: $(STAMP) fashion-mnist
	$(PY) -m mi_ssl_jax.study --config=configs/study/prereg.py $(STUDY_ARGS)

# Does the study's linear probe converge? The raw-pixel probe of the study's
# protocol (standardised features, batch 256) at 10, 30 and 90 epochs on the
# Fashion-MNIST test split (minutes on 2 CPU cores); compare the top-1 lines.
probe-epochs: $(STAMP) fashion-mnist
	for e in 10 30 90; do $(PY) -m mi_ssl_jax.main \
	  --config=configs/evaluate.py:protocol=simclr_linear \
	  --config.baseline=raw_pixels --config.dataset=fashion_mnist \
	  '--config.protocols=("linear",)' --config.overrides.batch_size=256 \
	  --config.overrides.batch_norm=True --config.overrides.epochs=$$e \
	  --workdir=workdirs/probe_epochs/e$$e; done

# The benchmark commands behind docs/benchmarks.md (minutes each on 2 CPU cores).
benchmark: $(STAMP)
	$(PY) -m mi_ssl_jax.bench.matrix
	$(PY) -m mi_ssl_jax.bench.losses
	$(PY) -m mi_ssl_jax.bench.data

# One train step of a recipe: img/s, time split, FLOPs, MFU, memory, compile.
STEP_CONFIG ?= configs/quickstart.py
step-benchmark: $(STAMP)
	$(PY) -m mi_ssl_jax.bench.step --config=$(STEP_CONFIG)

# CPU parity: our M-MAE step vs the PyTorch reference of the same model,
# interleaved (docs/benchmarks.md, "CPU parity"); installs the `bench` extra.
parity: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m mi_ssl_jax.bench.parity --loss
	$(PY) -m mi_ssl_jax.bench.parity --rounds=3 --steps=10

# Everything that needs a GPU/TPU, in one run (<= 8 minutes on one GPU):
# bench_results/accelerator.{json,md}. Needs jax, flax, optax, orbax and
# ml-collections only (no TensorFlow, TFDS or clu).
accelerator:
	bash bench/accelerator.sh

# The GPU study (no TensorFlow): calibrates, then trains the MAE family and
# Matrix-SSL / MEC for up to 100 epochs within DEADLINE_MIN (6.5) minutes;
# bench_results/gpu_study/{runs/*.json,gpu_study.md}. Rerunning skips
# finished runs.
gpu-study:
	bash bench/gpu_study.sh

# Wheels for a machine without network: ml-collections and its pure-Python
# dependencies into .whl/ (carry .whl/ with the tree; bench/accelerator.sh
# installs from it).
accelerator-wheels: $(STAMP)
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.12 \
	  --no-deps -d .whl ml-collections absl-py PyYAML

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(AOT_VENV) $(NEWEST_VENV) .pytest_cache .ruff_cache .hypothesis
