"""Optimizers and learning-rate schedules (all from optax).

Recipes:
* `adamw` — the MAE / U-MAE / M-MAE pre-training recipe (docs/methods.md §3.3):
  AdamW(β1, β2 = 0.9, 0.95), weight decay 0.05 on matrices only (no decay on
  biases and norm parameters, i.e. on parameters with ndim ≤ 1, as timm's
  `add_weight_decay` without a skip list, which MAE pre-training uses).
* `lars` — Siamese recipes and the linear probe: LARS with momentum 0.9,
  trust coefficient 1e-3; parameters with ndim ≤ 1 get neither weight decay
  nor trust-ratio adaptation (BYOL / MAE `linprobe`).
* `sgd` — SGD with (Nesterov) momentum; L2 weight decay on matrices is added
  to the gradient before the momentum, as in `torch.optim.SGD`.

The peak learning rate is `lr = base_lr * batch_size / lr_scaling_batch`
(`lr_scaling_batch=256` is the MAE/Goyal et al. linear scaling rule; set it to
0 to use `base_lr` as is). Schedule: linear warm-up from 0 over
`warmup_{steps,epochs,examples}`, then a half-cycle cosine down to `min_lr`
at `total_steps` (MAE's per-iteration schedule).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from mi_ssl_jax import config_lib


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`base_lr * batch_size / lr_scaling_batch`, or `base_lr` if that is 0."""
  scale_batch = config.get("lr_scaling_batch", 256)
  if not scale_batch:
    return float(config.base_lr)
  return float(config.base_lr) * config.batch_size / scale_batch


def make_schedule(config: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int | None) -> optax.Schedule:
  """Linear warm-up from 0 to the peak lr, then cosine decay to `min_lr`."""
  peak = peak_learning_rate(config)
  warmup = config_lib.warmup_steps(
      "warmup", config, (steps_per_epoch or 0) * config.batch_size,
      config.batch_size, total_steps)
  if config.get("schedule", "cosine") == "constant":
    return optax.linear_schedule(0.0, peak, warmup) if warmup else (
        optax.constant_schedule(peak))
  if config.get("schedule", "cosine") != "cosine":
    raise config_lib.ConfigError(
        f"config.schedule must be 'cosine' or 'constant', "
        f"got {config.schedule!r}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=float(config.get("min_lr", 0.0)))


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: ndim > 1 (no biases/norms)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax optimizer named by `config.optimizer`.

  Args:
    config: the experiment config (fields: optimizer, base_lr, batch_size,
      lr_scaling_batch, weight_decay, adam_b1, adam_b2, momentum, nesterov,
      lars_trust, warmup_*, min_lr, schedule, grad_clip_norm).
    total_steps: number of optimizer steps of the run.
    steps_per_epoch: for `warmup_epochs`.

  Returns:
    (optimizer, learning-rate schedule).
  """
  schedule = make_schedule(config, total_steps, steps_per_epoch)
  name = config.get("optimizer", "adamw")
  wd = float(config.get("weight_decay", 0.0))
  if name == "adamw":
    tx = optax.adamw(schedule, b1=config.get("adam_b1", 0.9),
                     b2=config.get("adam_b2", 0.999),
                     eps=config.get("adam_eps", 1e-8), weight_decay=wd,
                     mask=decay_mask)
  elif name == "lars":
    tx = optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                    trust_coefficient=config.get("lars_trust", 1e-3),
                    trust_ratio_mask=decay_mask,
                    momentum=config.get("momentum", 0.9),
                    nesterov=config.get("nesterov", False))
  elif name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(wd, mask=decay_mask),
        optax.sgd(schedule, momentum=config.get("momentum", 0.9),
                  nesterov=config.get("nesterov", False)))
  else:
    raise config_lib.ConfigError(
        f"config.optimizer must be 'adamw', 'lars' or 'sgd', got {name!r}")
  clip = config.get("grad_clip_norm")
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx, schedule
