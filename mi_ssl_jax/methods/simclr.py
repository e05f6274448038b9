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

import dataclasses

from mi_ssl_jax import config_lib, losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """The InfoNCE temperature τ."""

  simclr_temperature: float = 0.1

  def __post_init__(self):
    config_lib.check_positive(dataclasses.asdict(self), "simclr_temperature")


def objective(model, v, step):
  del step
  return losses.info_nce_loss(v.z1, v.z2,
                              temperature=model.hp.simclr_temperature), {}


METHOD = siamese.SiameseMethod(objective, Hparams)
