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
  model.local_weight = float(config.get("mmcr_local", 0.0))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  terms = losses.mmcr_terms(v.z1, v.z2, local_weight=model.local_weight)
  return terms["loss"], {
      "centroid_nuclear_norm": terms["centroid_nuclear_norm"],
      "local_nuclear_norm": terms["local_nuclear_norm"]}
