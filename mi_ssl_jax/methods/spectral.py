"""Spectral contrastive learning (HaoChen et al., NeurIPS 2021): the trainer
method.

`jhaochenz96/spectral_contrastive_learning`: ResNet + projector
(Linear-BN-ReLU, Linear-BN; "mlp..._norelu"), no predictor, no teacher;
`losses.spectral_contrastive_loss` with each embedding clamped to norm
≤ sqrt(μ):

    L = [−2·mean_i z1_iᵀz2_i + mean_{i≠j} (z1_iᵀz2_j)²] / μ

μ = `config.spectral_mu` (1 on CIFAR-10, 10 on ImageNet). The official code
uses each GPU's batch; here the global batch (device-count independent).

Recipe: `configs/spectral_r18_cifar.py`; offline:
`configs/fmnist_siamese.py:method=spectral`.
"""

from __future__ import annotations

import dataclasses

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """μ, the weight of the repulsive term."""

  spectral_mu: float = 1.0


def objective(model, v, step):
  del step
  return losses.spectral_contrastive_loss(v.z1, v.z2,
                                          mu=model.hp.spectral_mu), {}


METHOD = siamese.SiameseMethod(objective, Hparams)
