"""FroSSL (Skean et al., ECCV 2024): the trainer method.

Network: ResNet + projector (the VICReg-style 3-layer MLP recipe), no
predictor, no teacher. Loss `mi_ssl_jax.losses.frossl_loss` on the two
views' projections: per view the log squared Frobenius norm of the
trace-normalised covariance of the column-normalised embeddings (−H₂, a
Rényi-2 matrix entropy without an eigendecomposition) plus the invariance
MSE to the views' mean, weighted by `config.frossl_invariance` (official
code: OFSkean/FroSSL `solo/losses/frossl.py`, `multiview_frossl_loss_func`).

Recipe: `configs/fmnist_siamese.py:method=frossl`,
`configs/frossl_r18_cifar.py`.
"""

from __future__ import annotations

import dataclasses

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """The weight of the invariance (MSE) term."""

  frossl_invariance: float = 1.0


def objective(model, v, step):
  del step
  terms = losses.frossl_terms(v.z1, v.z2,
                              invariance_weight=model.hp.frossl_invariance)
  return terms["loss"], {"renyi2_entropy": terms["entropy"],
                         "invariance": terms["invariance"]}


METHOD = siamese.SiameseMethod(objective, Hparams)
