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
  model.lambd = float(config.get("bt_lambda", 0.0051))
  model.scale_loss = float(config.get("bt_scale_loss", 1.0))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  loss = model.scale_loss * losses.barlow_twins_loss(v.z1, v.z2,
                                                     lambd=model.lambd)
  return loss, {}
