"""BYOL (Grill et al., NeurIPS 2020): the trainer method.

`deepmind-research/byol`: ResNet + projector (4096 → 256) and predictor (same
MLP) on the online network; EMA target network (backbone + projector) with
τ from `config.ema_momentum` to 1 (cosine). Per pair the loss is
2 − 2 cos(q, sg(z′)) = 2 + 2·`losses.negative_cosine_loss`(q, z′), summed
over both view assignments as the paper's L + L̃:

    L = [2 − 2 cos(p1, t2)] + [2 − 2 cos(p2, t1)]

Config: the shared Siamese fields. Recipe: `configs/byol_r18_cifar.py`;
offline: `configs/fmnist_siamese.py:method=byol`.
"""

from __future__ import annotations

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


def objective(model, v, step):
  del model, step
  nc_12 = losses.negative_cosine_loss(v.student(1), v.t2)
  nc_21 = losses.negative_cosine_loss(v.student(2), v.t1)
  loss = (2.0 + 2.0 * nc_12) + (2.0 + 2.0 * nc_21)
  return loss, {"cosine": -0.5 * (nc_12 + nc_21)}


METHOD = siamese.SiameseMethod(objective, predictor=True, teacher=True)
