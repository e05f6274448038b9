"""VICReg (Bardes, Ponce, LeCun; ICLR 2022): the trainer method.

`facebookresearch/vicreg`: ResNet + expander (Linear-BN-ReLU ×2, Linear),
no predictor, no teacher; `losses.vicreg_loss` over the global batch:

    L = λ·MSE(Z1, Z2) + μ·[v(Z1) + v(Z2)]/2 + ν·[c(Z1) + c(Z2)]

with λ, μ, ν = `config.vicreg_sim`, `vicreg_std`, `vicreg_cov` (25, 25, 1).

Recipe: `configs/vicreg_r18_cifar.py`; offline:
`configs/fmnist_siamese.py:method=vicreg`.
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
  model.sim_coeff = float(config.get("vicreg_sim", 25.0))
  model.std_coeff = float(config.get("vicreg_std", 25.0))
  model.cov_coeff = float(config.get("vicreg_cov", 1.0))
  return model


def loss_fn(model, batch, key, step):
  del key, step
  v = siamese.forward(model, batch)
  loss = losses.vicreg_loss(v.z1, v.z2, sim_coeff=model.sim_coeff,
                            std_coeff=model.std_coeff,
                            cov_coeff=model.cov_coeff)
  return loss, {}
