"""MMCR, maximum manifold capacity representations (Yerxa et al., NeurIPS
2023): the trainer method.

Network: ResNet + projector (the VICReg-style 3-layer MLP recipe), no
predictor, no teacher. Loss `mi_ssl_jax.losses.mmcr_loss` on the two views:
minus the nuclear norm of the centroid matrix of the row-normalised
projections, plus `config.mmcr_local` times the mean per-image nuclear norm
(0 in the ImageNet recipe and in OFSkean/FroSSL `solo/losses/mmcr.py`).

Recipe: `configs/fmnist_siamese.py:method=mmcr`, `configs/mmcr_r18_cifar.py`.
"""

from __future__ import annotations

import dataclasses

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """The weight of the local (per-image) nuclear norm term."""

  mmcr_local: float = 0.0


def objective(model, v, step):
  del step
  terms = losses.mmcr_terms(v.z1, v.z2, local_weight=model.hp.mmcr_local)
  return terms["loss"], {
      "centroid_nuclear_norm": terms["centroid_nuclear_norm"],
      "local_nuclear_norm": terms["local_nuclear_norm"]}


METHOD = siamese.SiameseMethod(objective, Hparams)
