"""A tiny method + config for trainer tests (not a test module itself).

Method: a 2-layer MLP on randomly masked, flattened images; the loss is a
per-example regression to one-hot labels plus a batch-coupled covariance
term `‖ZᵀZ/B − I‖²/D` (like VICReg/Barlow regularisers), so it exercises the
global-batch reductions. It also carries an EMA teacher (a non-Param
Variable, updated in `post_update`) and a loss state (running mean of the
loss), so checkpoints must hold both.

Used as a config file too: `--config=tests/train_toy_method.py:steps=30`.
With the environment variable MI_SSL_TOY_KILL_AT_STEP=k the process SIGKILLs
itself when step k finishes (resume tests).
"""

import os
import signal

import jax
import jax.numpy as jnp
from flax import nnx

from mi_ssl_jax import config_lib
from mi_ssl_jax.configs import common

INPUT = "single_view"
BATCH_COUPLED = True


class Teacher(nnx.Variable):
  """EMA weights: not nnx.Param, so the optimizer never touches them."""


class LossState(nnx.Variable):
  pass


class Toy(nnx.Module):

  def __init__(self, config, rngs: nnx.Rngs):
    d_in = config.image_size**2 * config.channels
    self.fc1 = nnx.Linear(d_in, config.toy_width, rngs=rngs)
    self.norm = nnx.LayerNorm(config.toy_width, rngs=rngs)
    self.fc2 = nnx.Linear(config.toy_width, config.num_classes, rngs=rngs)
    self.teacher_fc2 = Teacher(self.fc2.kernel[...])
    self.loss_ema = LossState(jnp.zeros(()))
    self.mask_ratio = config.mask_ratio
    self.coupling = config.toy_coupling
    self.momentum = config.toy_ema
    self.nan_step = config.toy_nan_step

  def features(self, x):  # [B, H, W, C] -> [B, K]
    h = nnx.gelu(self.norm(self.fc1(x.reshape(x.shape[0], -1))))
    return self.fc2(h)


def validate_config(config):
  config_lib.check_open_unit_interval(config.mask_ratio, "mask_ratio")


def init(config, rngs):
  return Toy(config, rngs)


def loss_fn(model, batch, key, step):
  x = batch["image"]  # [B, H, W, C]
  keep = jax.random.uniform(key, x.shape) > model.mask_ratio
  z = model.features(jnp.where(keep, x, 0.0))  # [B, K]
  target = jax.nn.one_hot(batch["label"], z.shape[-1])
  regression = jnp.mean((z - target) ** 2)
  zc = z - z.mean(0)
  cov = zc.T @ zc / z.shape[0]  # [K, K], a global-batch reduction
  coupling = jnp.sum((cov - jnp.eye(z.shape[-1])) ** 2) / z.shape[-1]
  loss = regression + model.coupling * coupling
  loss = jnp.where(step == model.nan_step, jnp.nan, loss)  # policy tests
  model.loss_ema[...] = 0.9 * model.loss_ema[...] + 0.1 * loss
  return loss, {"regression": regression, "coupling": coupling,
                "loss_ema": model.loss_ema[...]}


def predict_fn(model, batch):
  return model.features(batch["image"])


def diagnostics_fn(model, batch, key, step):
  del key, step
  z = model.features(batch["image"])  # [B, K]
  return {"feature_std": jnp.std(z, axis=0).mean()}


def _kill_if(step, at):
  """Sends this process MI_SSL_TOY_SIGNAL (default KILL) at step `at`."""
  if int(step) + 1 == at:
    name = os.environ.get("MI_SSL_TOY_SIGNAL", "KILL")
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def post_update(model, step):
  m = model.momentum
  model.teacher_fc2[...] = m * model.teacher_fc2[...] + (
      1 - m) * model.fc2.kernel[...]
  kill_at = int(os.environ.get("MI_SSL_TOY_KILL_AT_STEP") or 0)
  if kill_at:
    jax.debug.callback(_kill_if, step, kill_at)


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=20, batch=16, ckpt=5, log=5)
  config = common.base_config()
  config.method = "tests.train_toy_method"
  config.dataset = "synthetic"
  config.batch_size = arg.batch
  config.total_steps = arg.steps
  config.ckpt_steps = arg.ckpt
  config.log_steps = arg.log
  config.image_size = 4
  config.channels = 1
  config.num_classes = 4
  config.base_lr = 1e-2
  config.warmup_steps = 3
  config.tensorboard = False
  config.mask_ratio = 0.25
  config.toy_width = 16
  config.toy_coupling = 0.1
  config.toy_ema = 0.9
  config.toy_nan_step = -1  # the 0-based step whose loss is made NaN
  return config
