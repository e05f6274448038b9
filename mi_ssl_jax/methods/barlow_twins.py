"""Barlow Twins (Zbontar et al., ICML 2021): the trainer method.

`facebookresearch/barlowtwins/main.py`: ResNet + projector (Linear-BN-ReLU
×2, Linear, no biases), no predictor, no teacher; with C the
cross-correlation of the affine-free batch-normalised projections over the
global batch (`losses.barlow_twins_loss`):

    L = s · [Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²]

λ = `config.bt_lambda` (0.0051); s = `config.bt_scale_loss` (1 in the
official code; solo-learn's CIFAR recipe uses 0.1).

Recipe: `configs/barlow_twins_r18_cifar.py`; offline:
`configs/fmnist_siamese.py:method=barlow_twins`.
"""

from __future__ import annotations

import dataclasses

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """λ (off-diagonal weight) and the loss scale s."""

  bt_lambda: float = 0.0051
  bt_scale_loss: float = 1.0


def objective(model, v, step):
  del step
  hp = model.hp
  return hp.bt_scale_loss * losses.barlow_twins_loss(
      v.z1, v.z2, lambd=hp.bt_lambda), {}


METHOD = siamese.SiameseMethod(objective, Hparams)
