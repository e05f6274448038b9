"""I-VNE (Kim et al., CVPR 2023, "VNE"): the trainer method.

Network: ResNet + projector (the SimCLR-style 2-layer MLP recipe), no
predictor, no teacher. Loss `mi_ssl_jax.losses.ivne_loss`: minus the mean
cosine similarity of the two views' projections (weight `config.ivne_cos`)
minus the mean von Neumann entropy of their row-normalised covariances
(weight `config.ivne_vne`), as OFSkean/FroSSL `solo/losses/ivne.py`.

Recipe: `configs/fmnist_siamese.py:method=ivne`, `configs/ivne_r18_cifar.py`.
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
  model.alpha_cos = float(config.get("ivne_cos", 1.0))
  model.alpha_vne = float(config.get("ivne_vne", 1.0))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  terms = losses.ivne_terms(v.z1, v.z2, alpha_cos=model.alpha_cos,
                            alpha_vne=model.alpha_vne)
  return terms["loss"], {"vn_entropy": terms["entropy"],
                         "cosine": terms["cosine"]}
