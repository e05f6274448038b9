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
  model.mu = float(config.get("spectral_mu", 1.0))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  return losses.spectral_contrastive_loss(v.z1, v.z2, mu=model.mu), {}
