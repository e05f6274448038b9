"""Fair baselines: the random-init model's BatchNorm statistics recomputed
on training batches (precise BN), and warm-ups that scale with a short
run."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax import config_lib
from mi_ssl_jax.evaluators import baselines
from mi_ssl_jax.models import norm


class _Net(nnx.Module):
  def __init__(self):
    self.bn = norm.BatchNorm(3, rngs=nnx.Rngs(0))


def _predict(model, batch):
  return model.bn(batch["image"], use_running_average=True)  # eval mode


def test_running_statistics_become_the_mean_over_batches():
  model = _Net()
  rng = np.random.default_rng(0)
  batches = [{"image": jnp.asarray(rng.normal(5.0 * i, 1.0 + i, (64, 3)),
                                   jnp.float32)} for i in range(3)]
  assert baselines.recompute_batch_stats(model, _predict, iter(batches)) == 3
  means = [np.asarray(b["image"]).mean(0) for b in batches]
  variances = [np.asarray(b["image"]).var(0) for b in batches]
  np.testing.assert_allclose(model.bn.mean.get_value(), np.mean(means, 0),
                             rtol=1e-5)
  np.testing.assert_allclose(model.bn.var.get_value(), np.mean(variances, 0),
                             rtol=1e-4)
  assert model.bn.momentum == pytest.approx(0.99)  # restored
  # Back to eval mode: the running statistics are used again.
  out = _predict(model, batches[1])
  np.testing.assert_allclose(
      out, (batches[1]["image"] - model.bn.mean.get_value())
      / np.sqrt(model.bn.var.get_value() + model.bn.epsilon), rtol=1e-4,
      atol=1e-4)


def test_a_model_without_batchnorm_is_left_alone():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  assert baselines.recompute_batch_stats(
      model, lambda m, b: m(b), iter([jnp.ones((2, 2))])) == 0


@pytest.mark.parametrize("fields, total, expected", [
    (dict(warmup_epochs=1.0), 100, 10),  # 1 epoch = 200 steps > the run
    (dict(warmup_epochs=0.1), 100, 20),  # shorter than the run: as given
    (dict(warmup_steps=100), 100, 10),  # as long as the run
    ({}, 100, 0),
])
def test_a_warmup_longer_than_the_run_is_a_tenth_of_it(fields, total,
                                                       expected):
  c = ml_collections.ConfigDict(dict(
      warmup_steps=None, warmup_examples=None, warmup_epochs=None,
      warmup_percent=None))
  c.update(fields)
  assert config_lib.warmup_steps("warmup", c, data_size=51200,
                                 batch_size=256, total_steps=total) == expected
