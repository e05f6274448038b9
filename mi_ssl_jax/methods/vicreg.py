"""VICReg (Bardes, Ponce, LeCun; ICLR 2022): the trainer method.

`facebookresearch/vicreg`: ResNet + expander (Linear-BN-ReLU ×2, Linear),
no predictor, no teacher; `losses.vicreg_loss` over the global batch:

    L = λ·MSE(Z1, Z2) + μ·[v(Z1) + v(Z2)]/2 + ν·[c(Z1) + c(Z2)]

with λ, μ, ν = `config.vicreg_sim`, `vicreg_std`, `vicreg_cov` (25, 25, 1).

Recipe: `configs/vicreg_r18_cifar.py`; offline:
`configs/fmnist_siamese.py:method=vicreg`.
"""

from __future__ import annotations

import dataclasses

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Invariance, variance and covariance weights (VICReg's 25 / 25 / 1)."""

  vicreg_sim: float = 25.0
  vicreg_std: float = 25.0
  vicreg_cov: float = 1.0


def objective(model, v, step):
  del step
  hp = model.hp
  return losses.vicreg_loss(v.z1, v.z2, sim_coeff=hp.vicreg_sim,
                            std_coeff=hp.vicreg_std,
                            cov_coeff=hp.vicreg_cov), {}


METHOD = siamese.SiameseMethod(objective, Hparams)
