"""Offline jobs (mi_ssl_jax.jobs): fine-tuning vs frozen probe, the job
commands, and fine-tuning through the trainer's loop (resume, non-finite)."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from mi_ssl_jax import finetune, loop, models
from mi_ssl_jax.evaluators import common, fewshot


@pytest.fixture(scope="module")
def digits():
  """sklearn's 8x8 digits (bundled, offline): 1000 train / 797 test."""
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))
  x, y = x[perm], y[perm]
  return (x[:1000], y[:1000]), (x[1000:], y[1000:])


def _tiny_vit_classifier():
  vit = models.VisionTransformer(
      "Ti/2", img_size=8, in_channels=1, width=32, depth=1, mlp_dim=64,
      num_heads=2, patch_size=2, drop_path_rate=0.1, rngs=nnx.Rngs(0))
  return finetune.Classifier(vit, 32, 10, head_init_std=2e-5,
                             rngs=nnx.Rngs(1))


def test_finetuning_beats_frozen_probe_on_small_data(digits):
  (xtr, ytr), test = digits
  mesh = common.default_mesh(jax.devices()[:1])  # tiny model: 1 device
  # Frozen probe: closed-form ridge on the initial backbone's features, with
  # its L2 picked on the test set itself (a best case for the probe).
  (ftr, ltr), (fte, lte) = finetune.backbone_features(
      _tiny_vit_classifier(), common.array_source(xtr, ytr, 250),
      common.array_source(*test, 250), mesh=mesh)
  cache = fewshot.ridge_cache(ftr, ltr, 10)
  frozen = 100.0 * max(float(fewshot.ridge_accuracy(cache, fte, lte, lam))
                       for lam in fewshot.DEFAULT_L2_REGS)
  protocol, _ = finetune.MAE_FINETUNE.with_overrides(
      batch_size=64, base_lr=8e-3, epochs=20, warmup_epochs=1,
      layer_decay=0.75, mixup_alpha=0.0, cutmix_alpha=0.0)

  def batches():
    rng = np.random.default_rng(1)
    while True:
      idx = rng.permutation(len(ytr))
      for i in range(0, len(ytr) - 63, 64):
        yield {"image": xtr[idx[i:i + 64]], "label": ytr[idx[i:i + 64]]}

  model, metrics = finetune.train_classifier(
      _tiny_vit_classifier(), batches(), protocol=protocol, num_classes=10,
      total_steps=20 * 15, warmup_steps=15, mesh=mesh, log_every=60)
  tuned = finetune.evaluate(model, common.array_source(*test, 200),
                            num_classes=10, mesh=mesh)["top1"]
  assert np.isfinite(metrics["train_loss"])
  print(f"fine-tuned {tuned:.1f} vs frozen probe {frozen:.1f}")
  assert tuned > frozen + 5.0, (tuned, frozen)


def _digit_batches(digits, nan_at=None):
  """``start -> batches``: batch s is drawn from ``default_rng([1, s])``."""
  (xtr, ytr), _ = digits

  def batches(start):
    for step in range(start, 10**6):
      idx = np.random.default_rng([1, step]).choice(len(ytr), 32, False)
      x = xtr[idx]
      yield {"image": x * np.nan if step == nan_at else x, "label": ytr[idx]}

  return batches


def _finetune(digits, workdir=None, nan_at=None):
  protocol, _ = finetune.MAE_FINETUNE.with_overrides(
      batch_size=32, base_lr=4e-3, warmup_epochs=0)
  return finetune.train_classifier(
      _tiny_vit_classifier(), _digit_batches(digits, nan_at),
      protocol=protocol, num_classes=10, total_steps=9, warmup_steps=2,
      mesh=common.default_mesh(jax.devices()[:1]), log_every=4,
      ckpt_steps=4, workdir=workdir)


def test_finetuning_runs_through_the_loop_and_resumes_exactly(
    digits, tmp_path, monkeypatch):
  from mi_ssl_jax import checkpointing  # noqa: PLC0415
  ref_model, ref = _finetune(digits)
  real = checkpointing.Checkpointer.reached_preemption
  monkeypatch.setattr(checkpointing.Checkpointer, "reached_preemption",
                      lambda self, step: step == 6 or real(self, step))
  with pytest.raises(loop.Preempted, match="step 6"):
    _finetune(digits, str(tmp_path))
  monkeypatch.setattr(checkpointing.Checkpointer, "reached_preemption", real)
  model, metrics = _finetune(digits, str(tmp_path))
  assert metrics == ref and np.isfinite(metrics["train_loss"])
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                  jax.tree.leaves(nnx.state(ref_model, nnx.Param)),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 4, 7, 8, 9]
  assert checkpointing.checkpoint_steps(str(tmp_path)) == [9]


def test_nonfinite_finetuning_loss_is_a_one_line_error(digits, tmp_path):
  from mi_ssl_jax import checkpointing, errors  # noqa: PLC0415
  with pytest.raises(loop.NonFiniteError, match="step 3") as info:
    _finetune(digits, str(tmp_path), nan_at=2)
  assert isinstance(info.value, errors.UserError)
  assert checkpointing.checkpoint_steps(str(tmp_path)) == []


@pytest.mark.parametrize("job", ["linear_probe", "knn", "evaluate",
                                 "finetune"])
def test_main_finds_every_job(job):
  """main runs `mi_ssl_jax.jobs.<config.job>.run(config, workdir)`."""
  import importlib  # noqa: PLC0415
  import inspect  # noqa: PLC0415
  target = importlib.import_module(f"mi_ssl_jax.jobs.{job}")
  assert list(inspect.signature(target.run).parameters) == ["config",
                                                           "workdir"]
  source = inspect.getsource(importlib.import_module("mi_ssl_jax.main"))
  assert 'f"mi_ssl_jax.jobs.{job}"' in source


def _job_config(name):
  import importlib.util  # noqa: PLC0415
  path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A 2-step run of the trainer's toy method (4x4 grey images)."""
  from mi_ssl_jax import train  # noqa: PLC0415
  from tests import train_toy_method as toy  # noqa: PLC0415
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  train.train_and_evaluate(toy.get_config("steps=2,ckpt=2,log=1"), workdir)
  return workdir


# The knn job runs in CI (it covers restore, data, result files); the other
# two add ~10 s each of compile time on 2 CPU cores, so they are `slow`.
@pytest.mark.parametrize("job,settings", [
    pytest.param("linear_probe", dict(overrides=dict(epochs=2, batch_size=64)),
                 marks=pytest.mark.slow),
    ("knn", dict(ks=(5, 20))),
    pytest.param("finetune", dict(overrides=dict(
        batch_size=64, epochs=1.0, warmup_epochs=0.0)),
                 marks=pytest.mark.slow),
])
def test_job_writes_named_result(pretrained, tmp_path, capsys, job, settings):
  import importlib  # noqa: PLC0415
  config = _job_config(job)
  config.init_from = pretrained
  config.dataset = "fashion_mnist"  # the toy pretrained on random images
  config.batch_size = 64
  config.max_train_examples = 256
  config.max_eval_examples = 128
  for key, value in settings.items():
    if isinstance(value, dict):
      for k, v in value.items():
        config[key][k] = v
    else:
      config[key] = value
  module = importlib.import_module(f"mi_ssl_jax.jobs.{job}")
  result = module.run(config, str(tmp_path))
  protocol = {"linear_probe": "mae_linear", "knn": "knn",
              "finetune": "mae_finetune"}[job]
  path = tmp_path / "eval" / f"{protocol}-fashion_mnist-test-step2.json"
  with open(path) as f:
    saved = json.load(f)
  assert saved["protocol"] == protocol and saved["protocol_version"] == 1
  assert saved["checkpoint_step"] == 2
  assert (saved["dataset"], saved["split"]) == ("fashion_mnist", "test")
  assert saved == json.loads(json.dumps(result))
  top1 = [v for k, v in saved["metrics"].items() if k.startswith("top1")]
  assert top1 and all(0.0 <= v <= 100.0 for v in top1)
  out = capsys.readouterr().out
  assert f"{protocol}@v1 step=2 fashion_mnist:test" in out
  if job == "knn":
    assert (tmp_path / "eval" /
            "diagnostics-fashion_mnist-test-step2.png").stat().st_size > 1000
    diag = saved["extra"]["diagnostics"]
    if "lidar" in diag:  # multi-crop diagnostics (on unless lidar=False)
      assert 1.0 <= diag["lidar"] and np.isfinite(diag["dime"])
      assert diag["crop_mutual_information"] > 0


def test_job_errors_are_one_line(tmp_path):
  from mi_ssl_jax import config_lib  # noqa: PLC0415
  from mi_ssl_jax.jobs import linear_probe  # noqa: PLC0415
  config = _job_config("linear_probe")
  with pytest.raises(config_lib.ConfigError, match="set --config.init_from"):
    linear_probe.run(config, str(tmp_path))
  config.init_from = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match="no config.json"):
    linear_probe.run(config, str(tmp_path))
  config.protocol = "nope"  # checked before init_from is read
  with pytest.raises(config_lib.ConfigError,
                     match="unknown linear-probe protocol"):
    linear_probe.run(config, str(tmp_path))
