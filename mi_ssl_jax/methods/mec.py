"""MEC, maximum entropy coding (Liu et al., NeurIPS 2022): the trainer method.

Network as Matrix-SSL (the two share `mec/builder.py`, docs/methods.md §2.3):
ResNet + 3-layer projector, predictor on the student, EMA teacher of
backbone + projector. Loss (`mi_ssl_jax.losses.mec_loss`, official
`xinliu20/MEC/main_pretrain.py`, docs/methods.md §5), with P̂ the row-normalised
teacher and Ẑ the row-normalised student (predictor) outputs:

    T(P, Z; λ) = tr Σ_{k=1}^{n} (−1)^{k+1} (λ P̂Ẑᵀ)^k / k
    L = −(1/(λB)) · ½ · [T(T1, S2; λ) + T(T2, S1; λ)]

λ = d/(B ε²) (ε² = `config.mec_eps_sq` = 64, so λ = 1/32 at B = 1024,
d = 2048) with the official warm-up of 1/λ: linear from
`mec_warmup_factor`/λ (8/λ) to 1/λ over `mec_warmup_*` (10 epochs), then
constant (`losses.mec_lambda_schedule`). B and d are the global batch and the
projector width of the run. `config.mec_log_method="slogdet"` evaluates the
exact log det instead of the series.

Config fields: `mec_eps_sq`, `mec_order`, `mec_warmup_{epochs,steps,
examples,percent}`, `mec_warmup_factor`, `mec_log_method`, plus the shared
Siamese fields. Recipe: `configs/mec_r50.py`; offline:
`configs/fmnist_siamese.py:method=mec`.
"""

from __future__ import annotations

import jax.numpy as jnp

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese
from mi_ssl_jax.methods._siamese import (  # noqa: F401 (method interface)
    diagnostics_fn,
    post_update,
    predict_fn,
)

INPUT = siamese.INPUT
BATCH_COUPLED = True


def validate_config(config) -> None:
  siamese.validate_model_config(config)
  if config.get("mec_log_method", "taylor") not in ("taylor", "slogdet"):
    raise config_lib.ConfigError(
        f"config.mec_log_method must be 'taylor' or 'slogdet', got "
        f"{config.mec_log_method!r}")
  config_lib.check_positive(config, "mec_eps_sq", "mec_warmup_factor")


def warmup_steps(config) -> int:
  """`mec_warmup_*` in steps (0 when unset).

  Epochs need the dataset size, which the trainer puts in
  `config.num_train_examples`; without it (e.g. `model_state.restore_model` for
  evaluation, where the schedule is unused) the warm-up is taken as 0.
  """
  try:
    return config_lib.steps(
        "mec_warmup", config, data_size=config.get("num_train_examples"),
        batch_size=config.batch_size, total_steps=config.total_steps,
        default=0)
  except config_lib.ConfigError:
    return 0


def init(config, rngs):
  model = siamese.build(config, rngs, predictor=True, teacher=True)
  model.eps_sq = float(config.get("mec_eps_sq", 64.0))
  model.order = int(config.get("mec_order", 4))
  model.warmup_steps = warmup_steps(config)
  model.warmup_factor = float(config.get("mec_warmup_factor", 8.0))
  model.log_method = str(config.get("mec_log_method", "taylor"))
  return model


def lamb(model, step, batch_size: int, dim: int):
  """λ at `step` (warm-up of 1/λ, then d/(B ε²))."""
  return losses.mec_lambda_schedule(
      step, batch_size=batch_size, dim=dim, warmup_steps=model.warmup_steps,
      eps_sq=model.eps_sq, warmup_factor=model.warmup_factor)


def loss_fn(model, batch, key, step):
  del key
  v = siamese.forward(model, batch)
  b, d = v.t1.shape
  lam = lamb(model, step, b, d)
  terms = losses.mec_terms(v.t1, v.student(1), v.t2, v.student(2), lamb=lam,
                           order=model.order, log_method=model.log_method)
  return terms["loss"], {"log_det": terms["log_det"],
                         "taylor_radius": terms["taylor_radius"],
                         "mec_lambda": jnp.asarray(lam, jnp.float32)}
