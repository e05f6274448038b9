"""FSDP trains: a `data=2 × fsdp=4` mesh with `param_sharding="fsdp"` gives
the losses and parameters of pure data parallelism (`data=8`) on 8 CPU
devices, and checkpoints resume across the two layouts.

The toy method (tests/train_toy_method.py: MLP, batch covariance term, EMA
teacher, loss state), widened so that FSDP splits its kernels, their Adam
moments and the teacher over the `fsdp` axis (`config.fsdp_min_size`).
float32 throughout; the two layouts reduce in different orders (the
gradient all-reduce vs a reduce-scatter, the covariance's partial sums), so
values agree to `RTOL` relative (measured: equal losses, every state leaf
within 1.5e-8 absolute), not bit for bit.
"""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import train
from tests import train_toy_method as toy

pytestmark = pytest.mark.usefixtures("fast_compile")

RTOL, ATOL = 1e-5, 1e-6  # float32, relative to each value / absolute
DP = (("data", -1),)
FSDP = (("data", 2), ("fsdp", 4))


def _config(mesh, steps):
  """Steps of the toy recipe on `mesh`; a constant learning rate, so that a
  run stopped at step 2 and resumed to 4 is the run of 4 steps."""
  config = toy.get_config(f"steps={steps},ckpt=2,log=1")
  config.image_size = 8  # fc1 [64, 32]: split 4 ways under FSDP
  config.toy_width = 32
  config.warmup_steps = None
  config.schedule = "constant"
  config.mesh = mesh
  if mesh == FSDP:
    config.param_sharding = "fsdp"
    config.fsdp_min_size = 128  # the kernels, not the biases
  return config


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["loss"] for row in map(json.loads, f)}


def _train(mesh, steps, workdir):
  result = train.train_and_evaluate(_config(mesh, steps), str(workdir))
  assert result["step"] == steps
  return result


def _assert_close(a, b, what):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL,
                               atol=ATOL, err_msg=what)


@pytest.fixture(scope="module")
def dp4(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dp4")
  return workdir, _train(DP, 4, workdir)


def test_fsdp_matches_data_parallel(dp4, tmp_path):
  dp_dir, dp = dp4
  fsdp = _train(FSDP, 4, tmp_path)
  params = fsdp["state"]["params"]
  # FSDP really splits: the kernels and their Adam moments over 'fsdp'.
  split = P("fsdp", None)  # [64, 32] and [32, 4]: the first dimension
  assert params["fc1"]["kernel"].sharding.spec == split
  assert params["fc2"]["kernel"].sharding.spec == split
  assert fsdp["state"]["rest"]["teacher_fc2"].sharding.spec == split
  assert params["fc1"]["bias"].sharding.spec == P()
  moments = [x for x in jax.tree.leaves(fsdp["state"]["opt"])
             if x.shape == params["fc1"]["kernel"].shape]
  assert len(moments) == 2 and all(x.sharding.spec == split
                                   for x in moments)  # Adam's mu and nu
  assert dp["state"]["params"]["fc1"]["kernel"].sharding.spec == P()
  got, want = _losses(tmp_path), _losses(dp_dir)
  assert sorted(got) == sorted(want) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[s] for s in range(1, 5)],
                             [want[s] for s in range(1, 5)], rtol=RTOL)
  assert got[4] != got[1]  # it trained
  _assert_close(fsdp["state"], dp["state"], "FSDP vs data parallel")


@pytest.mark.parametrize("first, then", [(DP, FSDP), (FSDP, DP)],
                         ids=["dp_then_fsdp", "fsdp_then_dp"])
def test_checkpoints_resume_across_layouts(dp4, tmp_path, first, then):
  _, dp = dp4
  _train(first, 2, tmp_path)
  resumed = train.train_and_evaluate(_config(then, 4), str(tmp_path))
  assert resumed["step"] == 4
  kernel = resumed["state"]["params"]["fc1"]["kernel"]
  assert kernel.sharding.spec == (P("fsdp", None) if then == FSDP else P())
  losses = _losses(tmp_path)
  assert sorted(losses) == [1, 2, 3, 4]
  np.testing.assert_allclose(losses[4], _losses(dp4[0])[4], rtol=RTOL)
  _assert_close(resumed["state"], dp["state"], f"{first} -> {then}")


@pytest.mark.slow  # ~40 s (two ViT compiles); run with `make test-all`
def test_fsdp_matches_data_parallel_on_the_quickstart_vit(tmp_path):
  """The quick start's M-MAE ViT (attention, log-det regulariser, decoder)
  on synthetic images, 3 steps: FSDP equals data parallelism (measured:
  equal losses, every state leaf within 2.5e-6 absolute; Adam divides by
  small second moments)."""
  from mi_ssl_jax import configs  # noqa: PLC0415

  def run(mesh, name):
    config = configs.load("quickstart:tiny")
    config.update(dict(dataset="synthetic", num_train_examples=1024,
                       total_steps=3, log_steps=1, batch_size=32,
                       tensorboard=False, diagnostics_steps=0, mesh=mesh))
    config.evals = type(config.evals)()
    if mesh == FSDP:
      config.param_sharding, config.fsdp_min_size = "fsdp", 256
    return train.train_and_evaluate(config, str(tmp_path / name))

  dp, fsdp = run(DP, "dp"), run(FSDP, "fsdp")
  specs = [x.sharding.spec for x in jax.tree.leaves(fsdp["state"]["params"])]
  assert sum("fsdp" in spec for spec in specs) >= 8  # the kernels
  np.testing.assert_allclose(
      [_losses(tmp_path / "fsdp")[s] for s in (1, 2, 3)],
      [_losses(tmp_path / "dp")[s] for s in (1, 2, 3)], rtol=RTOL)
  for x, y in zip(jax.tree.leaves(fsdp["state"]), jax.tree.leaves(
      dp["state"]), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-5)
