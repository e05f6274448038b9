"""I-VNE (Kim et al., CVPR 2023, "VNE"): the trainer method.

Network: ResNet + projector (the SimCLR-style 2-layer MLP recipe), no
predictor, no teacher. Loss `mi_ssl_jax.losses.ivne_loss`: minus the mean
cosine similarity of the two views' projections (weight `config.ivne_cos`)
minus the mean von Neumann entropy of their row-normalised covariances
(weight `config.ivne_vne`), as OFSkean/FroSSL `solo/losses/ivne.py`.

Recipe: `configs/fmnist_siamese.py:method=ivne`, `configs/ivne_r18_cifar.py`.
"""

from __future__ import annotations

import dataclasses

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Weights of the cosine term and of the von Neumann entropy term."""

  ivne_cos: float = 1.0
  ivne_vne: float = 1.0


def objective(model, v, step):
  del step
  hp = model.hp
  terms = losses.ivne_terms(v.z1, v.z2, alpha_cos=hp.ivne_cos,
                            alpha_vne=hp.ivne_vne)
  return terms["loss"], {"vn_entropy": terms["entropy"],
                         "cosine": terms["cosine"]}


METHOD = siamese.SiameseMethod(objective, Hparams)
