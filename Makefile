# mi_ssl_jax developer entry points. Every target works on a fresh machine:
# the virtual environment is created and the project installed on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
# Two workers, one test file each at a time (2-core CI machine).
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

# Ahead-of-time compiles for TPU slices (docs/scaling.md) need libtpu (the
# `aot` extra), kept in its own environment on top of .venv: a libtpu beside
# a CPU-only jax makes every jax process probe for TPUs.
AOT_VENV ?= .venv-aot
AOT_PY := $(AOT_VENV)/bin/python
AOT_STAMP := $(AOT_VENV)/.installed
AOT_ARGS ?= --config=mmae_vitb --topology=v5e-8

.PHONY: install test test-all lint notebooks aot aot-check scaling fashion-mnist quickstart study study-tune benchmark step-benchmark parity accelerator accelerator-wheels clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

$(AOT_STAMP): $(STAMP)
	@test -x $(AOT_PY) || $(PY) -m venv $(AOT_VENV)
	@echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
	  > "$$($(AOT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_mi_ssl_base.pth"
	$(AOT_PY) -m pip install -q -e '.[aot]'
	@touch $(AOT_STAMP)

# Compile a recipe's train step for a TPU slice on this machine (no TPU):
# memory per chip, FLOPs, roofline; e.g. make aot AOT_ARGS="--config=mmae_vitl
# --topology=v5e-8 --find_max_batch".
aot: $(AOT_STAMP)
	$(AOT_PY) -m mi_ssl_jax.bench.aot $(AOT_ARGS)

# Every table of docs/scaling.md (resumable: rows already compiled are kept
# in bench_results/scaling/; hours on 2 CPU cores). SCALING_ARGS adds
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

# The test suite CI runs (README "Quick start"). Tests marked `slow` are excluded.
test: $(STAMP) $(AOT_STAMP) fashion-mnist
	MI_SSL_AOT_PYTHON=$(AOT_PY) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Everything, including tests marked `slow`.
test-all: $(STAMP) $(AOT_STAMP) fashion-mnist
	MI_SSL_AOT_PYTHON=$(AOT_PY) $(PY) -m pytest $(PYTEST_ARGS)

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

# Wheels for a machine without network: ml-collections and its pure-Python
# dependencies into .whl/ (carry .whl/ with the tree; bench/accelerator.sh
# installs from it).
accelerator-wheels: $(STAMP)
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.12 \
	  --no-deps -d .whl ml-collections absl-py PyYAML

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(AOT_VENV) .pytest_cache .ruff_cache .hypothesis
