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

from mi_ssl_jax import losses
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


def init(config, rngs):
  model = siamese.build(config, rngs, predictor=False, teacher=False)
  model.invariance_weight = float(config.get("frossl_invariance", 1.0))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  terms = losses.frossl_terms(v.z1, v.z2,
                              invariance_weight=model.invariance_weight)
  return terms["loss"], {"renyi2_entropy": terms["entropy"],
                         "invariance": terms["invariance"]}
