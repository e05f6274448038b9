"""LeJEPA (Balestriero & LeCun 2025, arXiv 2511.08544): the trainer method.

One network, no predictor, no teacher, no stop-gradient: backbone (a ViT by
default in its recipes; any `config.model.backbone`) + projector, applied to
each view. With z_v the projector outputs of the views ([N, K] each):

    L = (1 − λ)·mean_{v,n,k}(c_{n,k} − z_{v,n,k})² + λ·SIGReg({z_v})
    c = mean of the global views' z

(`mi_ssl_jax.losses.lejepa_terms`; formula, sources and defaults in
`mi_ssl_jax/losses/lejepa.py`). SIGReg's random directions come from the
step's PRNG key (the same on every device, new each step). λ =
`config.lejepa_lambda` = 0.05 (lightly 1.6.0 `LeJEPALoss`, stated there as
the reference implementation's value).

Views: the two global views of the Siamese pipeline. The official recipe
adds 6 local crops (README "GOTO hyperparameters": 2 global views at
scale 0.3–1, 6 local views of 98 px at scale 0.05–0.3); the data pipeline
can make local crops (`config.augment.num_local_crops`), but no Siamese
method consumes them yet and our ViT has one fixed input size (a
learned position table), so this method uses the global views only
(`losses.lejepa_terms` takes local views for later use).

Projector: `models.HEAD_RECIPES["lejepa"]`, lightly's
`LeJEPAProjectionHead` (Linear-BN-ReLU ×2 of width 2048, Linear to 64).

Config fields: `lejepa_lambda`, `sigreg_slices`, `sigreg_knots`,
`sigreg_t_max`, plus the shared Siamese fields (`methods/_siamese.py`).
Recipes: `configs/fmnist_siamese.py:method=lejepa` (a tiny ViT on
Fashion-MNIST) and `configs/siamese_vits16.py:method=lejepa` (ViT-S/16,
ImageNet-1K).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.losses import lejepa as lejepa_losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """λ (the SIGReg weight; 1 − λ weighs the prediction term), and SIGReg's
  number of random directions, quadrature knots and range [0, t_max]."""

  lejepa_lambda: float = lejepa_losses.LEJEPA_LAMBDA
  sigreg_slices: int = lejepa_losses.SIGREG_SLICES
  sigreg_knots: int = lejepa_losses.SIGREG_KNOTS
  sigreg_t_max: float = lejepa_losses.SIGREG_T_MAX

  def __post_init__(self):
    if not 0.0 <= self.lejepa_lambda <= 1.0:
      raise config_lib.ConfigError(
          f"config.lejepa_lambda must be in [0, 1], got {self.lejepa_lambda}")
    if self.sigreg_slices < 1 or self.sigreg_knots < 2:
      raise config_lib.ConfigError(
          f"config.sigreg_slices must be >= 1 and config.sigreg_knots >= 2, "
          f"got {self.sigreg_slices} and {self.sigreg_knots}")
    config_lib.check_positive(dataclasses.asdict(self), "sigreg_t_max")


def objective(model, v, step, key):
  del step
  hp = model.hp
  z = jnp.stack([v.z1, v.z2])  # [2, N, K]: the global views
  terms = losses.lejepa_terms(z, key, lamb=hp.lejepa_lambda,
                              num_slices=hp.sigreg_slices,
                              knots=hp.sigreg_knots, t_max=hp.sigreg_t_max)
  return terms["loss"], {"invariance": terms["invariance"],
                         "sigreg": terms["sigreg"]}


METHOD = siamese.SiameseMethod(objective, Hparams, uses_key=True)
