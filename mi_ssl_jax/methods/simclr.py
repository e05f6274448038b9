"""SimCLR (Chen et al., ICML 2020): the trainer method.

ResNet + projector, no predictor, no teacher; NT-Xent over the 2B embeddings
of the global batch (`losses.info_nce_loss`), each view's positive being the
other view of the same image and the other 2B − 2 embeddings negatives:

    L = mean_i −log(exp(s_{i,p(i)}/τ) / Σ_{j≠i} exp(s_ij/τ))

τ = `config.simclr_temperature` (0.1 ImageNet; solo-learn CIFAR: 0.2).

Recipe: `configs/simclr_r18_cifar.py`; offline:
`configs/fmnist_siamese.py:method=simclr`.
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
  model.temperature = float(config.get("simclr_temperature", 0.1))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  loss = losses.info_nce_loss(v.z1, v.z2, temperature=model.temperature)
  return loss, {}
