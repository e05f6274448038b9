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

import dataclasses

import jax.numpy as jnp

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """ε² (the coding-rate distortion, 64 as the official d/(B ε²) λ), the
  Taylor order of the log-det, its method ("taylor" = official, "slogdet" =
  exact), and the warm-up of 1/λ (`mec_warmup_epochs` / `_steps`, scaled by
  `mec_warmup_factor`)."""

  mec_eps_sq: float = 64.0
  mec_order: int = 4
  mec_warmup_epochs: float = 10.0
  mec_warmup_factor: float = 8.0
  mec_log_method: str = "taylor"

  def __post_init__(self):
    config_lib.check_choice(self.mec_log_method, "mec_log_method",
                            ("taylor", "slogdet"))
    config_lib.check_positive(dataclasses.asdict(self), "mec_eps_sq",
                              "mec_warmup_factor")


def warmup_steps(config) -> int:
  """`mec_warmup_*` in steps (0 when unset; a tenth of the run when it
  would last the whole run: `config_lib.warmup_steps`).

  Epochs need the dataset size, which the trainer puts in
  `config.num_train_examples`; without it (e.g. `model_state.restore_model` for
  evaluation, where the schedule is unused) the warm-up is taken as 0.
  """
  try:
    return config_lib.warmup_steps(
        "mec_warmup", config, config.get("num_train_examples"),
        config.batch_size, config.get("total_steps") or 0)
  except config_lib.ConfigError:
    return 0


def configure(model, config) -> None:
  model.warmup_steps = warmup_steps(config)


def lamb(model, step, batch_size: int, dim: int):
  """λ at `step` (warm-up of 1/λ, then d/(B ε²))."""
  return losses.mec_lambda_schedule(
      step, batch_size=batch_size, dim=dim, warmup_steps=model.warmup_steps,
      eps_sq=model.hp.mec_eps_sq, warmup_factor=model.hp.mec_warmup_factor)


def objective(model, v, step):
  b, d = v.t1.shape
  lam = lamb(model, step, b, d)
  terms = losses.mec_terms(v.t1, v.student(1), v.t2, v.student(2), lamb=lam,
                           order=model.hp.mec_order,
                           log_method=model.hp.mec_log_method)
  return terms["loss"], {"log_det": terms["log_det"],
                         "taylor_radius": terms["taylor_radius"],
                         "mec_lambda": jnp.asarray(lam, jnp.float32)}


METHOD = siamese.SiameseMethod(objective, Hparams, predictor=True,
                               teacher=True, configure=configure)
