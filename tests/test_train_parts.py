"""Trainer parts: optimizers/schedules, metrics files, the step function."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mi_ssl_jax import (
  checkpointing,
  metrics_writer,
  model_state,
  optim,
  sharding,
  train,
)
from mi_ssl_jax.configs import common


def _opt_config(**fields):
  config = common.base_config()
  config.batch_size = 1024
  config.base_lr = 1.5e-4
  for k, v in fields.items():
    config[k] = v
  return config


def test_mae_lr_scaling_warmup_and_cosine():
  config = _opt_config(warmup_steps=10)
  assert optim.peak_learning_rate(config) == pytest.approx(6e-4)  # ·1024/256
  schedule = optim.make_schedule(config, total_steps=110, steps_per_epoch=5)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(3e-4)
  assert float(schedule(10)) == pytest.approx(6e-4)
  # Half-cycle cosine: halfway through the decay the lr is half the peak.
  assert float(schedule(60)) == pytest.approx(3e-4, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)
  # Warm-up given in epochs (40 epochs × 5 steps) longer than the run: a
  # tenth of the run (config_lib.warmup_steps), then the cosine.
  config = _opt_config(warmup_epochs=40.0, lr_scaling_batch=0)
  schedule = optim.make_schedule(config, total_steps=100, steps_per_epoch=5)
  assert float(schedule(5)) == pytest.approx(1.5e-4 * 0.5)
  assert float(schedule(10)) == pytest.approx(1.5e-4)
  assert float(schedule(55)) == pytest.approx(1.5e-4 * 0.5, rel=1e-5)


@pytest.mark.parametrize("name", ["adamw", "lars", "sgd"])
def test_no_weight_decay_on_biases_and_norms(name):
  config = _opt_config(optimizer=name, weight_decay=0.5, warmup_steps=0,
                       base_lr=1.0, lr_scaling_batch=0)
  tx, _ = optim.make_optimizer(config, total_steps=10)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,)),
            "scale": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert np.all(np.asarray(updates["kernel"]) < 0)  # decayed
  np.testing.assert_array_equal(updates["bias"], 0.0)
  np.testing.assert_array_equal(updates["scale"], 0.0)


def test_unknown_optimizer():
  with pytest.raises(train.ConfigError, match="config.optimizer"):
    optim.make_optimizer(_opt_config(optimizer="adam"), 10)


def test_metrics_jsonl_tensorboard_and_config(tmp_path):
  config = common.base_config()
  writer = metrics_writer.MetricsWriter(str(tmp_path), total_steps=10,
                                        tensorboard=True)
  writer.write_hparams(config)
  for step in (1, 2):
    writer.step_done(step)
    writer.write_scalars(step, {"loss": 1.0 / step, "lr": float("nan")})
  writer.close()
  metrics_writer.write_config(str(tmp_path), config)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[1]["loss"] == 0.5 and rows[1]["lr"] == "nan"
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert json.load(open(tmp_path / "config.json"))["batch_size"] == 256


class _Net(nnx.Module):
  """Linear layers in an nnx.List (integer keys) plus a non-Param counter."""

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(3, 3, rngs=rngs) for _ in range(2)])
    self.calls = nnx.BatchStat(jnp.zeros(()))


def _per_example_method():
  def loss_fn(model, batch, key, step):
    del key, step
    h = batch["x"]
    for layer in model.layers:
      h = layer(h)
    model.calls[...] = model.calls[...] + 1
    loss = jnp.mean(jnp.sum((h - batch["y"]) ** 2, axis=-1))
    return loss, {"first": h[0, 0]}

  return types.SimpleNamespace(
      init=lambda config, rngs: _Net(rngs), loss_fn=loss_fn,
      predict_fn=lambda model, batch: batch["x"])


def _step_setup(accum):
  method = _per_example_method()
  codec = model_state.ModelCodec(nnx.eval_shape(lambda: _Net(nnx.Rngs(0))))
  params, rest = codec.split(_Net(nnx.Rngs(0)))
  tx = optax.sgd(0.1)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
           "opt": tx.init(params), "nonfinite": jnp.zeros((), jnp.int32),
           "last_nonfinite": jnp.full((), -1, jnp.int32)}
  step = train.make_train_step(method, codec, tx, optax.constant_schedule(0.1),
                               jax.random.key(0), accum)
  return codec, state, step


def _batch(bad=False):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 3)).astype(np.float32)
  if bad:
    x[0, 0] = np.nan
  return {"x": jnp.asarray(x), "y": jnp.ones((8, 3))}


def test_gradient_accumulation_equals_full_batch_for_per_example_loss():
  _, state1, step1 = _step_setup(1)
  _, state4, step4 = _step_setup(4)
  new1, m1 = jax.jit(step1)(state1, _batch())
  new4, m4 = jax.jit(step4)(state4, _batch())
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new1["params"]),
                  jax.tree.leaves(new4["params"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(new4["rest"]["calls"]) == 4  # state threads through the scan


def test_nonfinite_step_changes_nothing_and_is_counted():
  _, state, step = _step_setup(1)
  before = jax.tree.map(np.asarray, state)
  new, metrics = jax.jit(step)(state, _batch(bad=True))
  assert not np.isfinite(metrics["loss"])
  for key in ("params", "rest", "opt"):
    for a, b in zip(jax.tree.leaves(new[key]), jax.tree.leaves(before[key]),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  assert int(new["step"]) == 1 and int(new["nonfinite"]) == 1
  assert int(new["last_nonfinite"]) == 0


def test_codec_roundtrip_and_checkpoint_with_integer_keys(tmp_path):
  codec, state, _ = _step_setup(1)
  model = codec.model(state["params"], state["rest"])
  assert isinstance(model.layers[1], nnx.Linear)
  params, _ = codec.split(model)
  assert set(params["layers"]) == {0, 1}
  mesh = sharding.make_mesh()
  state = jax.device_put(state, sharding.replicated(mesh))
  ckpt = checkpointing.Checkpointer(str(tmp_path), 1)
  try:
    ckpt.save(1, state)
    ckpt.wait()
    _, restored = ckpt.restore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        state))
  finally:
    ckpt.close()
  np.testing.assert_array_equal(restored["params"]["layers"][1]["kernel"],
                                state["params"]["layers"][1]["kernel"])
