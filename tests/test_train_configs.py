"""Every recipe in mi_ssl_jax/configs/ builds, validates, trains 2 steps.

Fast (CI): every config builds its model abstractly (no compile) and passes
its checks; two representative configs train 2 steps on 8 simulated devices
(M-MAE on random images; the quick start on Fashion-MNIST). Slow: all configs
train 2 steps.
"""

import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mi_ssl_jax import config_lib, methods, train
from mi_ssl_jax.data import sources

ROOT = Path(__file__).resolve().parents[1]
# Pretraining recipes; evaluation-job configs (`c.job = "knn"`, ...) are
# tested with their evaluators (tests/test_eval_jobs.py).
CONFIG_DIR = ROOT / "mi_ssl_jax" / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py")
                 if p.stem != "common" and not p.stem.startswith("_")
                 and not re.search(r'c\.job = "(?!pretrain)', p.read_text()))
HAVE_FMNIST = sources.fashion_mnist_dir() is not None


pytestmark = pytest.mark.usefixtures("fast_compile")


def load(name, arg="tiny"):
  spec = importlib.util.spec_from_file_location(
      f"config_{name}", CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.lock()
  return module, config


def test_every_config_has_a_launch_command_and_expected_result():
  for name in CONFIGS:
    module, _ = load(name, None)
    doc = module.__doc__ or ""
    assert "python -m mi_ssl_jax.main" in doc or "make quickstart" in doc, name
    if name != "quickstart":
      assert "Expected result" in doc, name


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_validates(name):
  _, config = load(name)
  full = load(name, None)[1]
  assert full.method == config.method
  for field in ("dataset", "seed", "init_from", "batch_size"):
    assert field in full, field
  assert full.get("total_epochs") or full.get("total_steps")
  method = methods.get_method(config.method)
  method.validate_config(config)
  mconfig = config.copy_and_resolve_references()
  with mconfig.unlocked():
    mconfig.total_steps = 2
  model = nnx.eval_shape(lambda: method.init(mconfig, nnx.Rngs(0)))
  assert nnx.state(model, nnx.Param)  # has trainable parameters


def _train_two_steps(name, tmp_path):
  _, config = load(name)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["num_step_traces"] == 1
  assert all(map(lambda v: v == v, result["metrics"].values()))  # no NaN
  return result


def test_mmae_two_steps(tmp_path):
  result = _train_two_steps("mmae_vitb", tmp_path)
  metrics = result["metrics"]
  assert metrics["reg_tcr"] < 0 and metrics["mae_loss"] > 0
  assert 0 < metrics["rankme"] <= 16 and metrics["effective_rank"] > 0


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_quickstart_two_steps_on_fashion_mnist(tmp_path):
  result = _train_two_steps("quickstart", tmp_path)
  assert result["metrics"]["probe_ce"] > 0
  # The trained checkpoint gives the MAE figure (kNN job's reconstruction PNG).
  import ml_collections  # noqa: PLC0415

  from mi_ssl_jax.jobs import base as jobs  # noqa: PLC0415
  from mi_ssl_jax.jobs import knn  # noqa: PLC0415
  job = ml_collections.ConfigDict(dict(init_from=str(tmp_path), batch_size=8))
  pre = jobs.load_pretrained(job)
  png = knn.save_reconstructions(
      pre, "fashion_mnist", jobs.eval_source(job, pre, "test", 8),
      str(tmp_path / "eval" / "reconstruction.png"), num=4)
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pred, mask, patch = pre.method.reconstruct_fn(
      pre.model, {"image": jnp.zeros((2, 28, 28, 1))}, jax.random.key(0))
  assert pred.shape == (2, mask.shape[1], patch * patch * 1)
  assert 0 < float(mask.mean()) < 1


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "quickstart"])
def test_every_config_two_steps(name, tmp_path):
  _train_two_steps(name, tmp_path)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_mmae_mask_ratio_outside_unit_interval(ratio, tmp_path):
  _, config = load("mmae_vitb")
  config.mask_ratio = ratio
  with pytest.raises(config_lib.ConfigError, match="mask_ratio"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_missing_dataset_writes_nothing(tmp_path):
  _, config = load("mmae_vitb")
  config.dataset = f"folder:{tmp_path / 'no_such_folder'}"
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
