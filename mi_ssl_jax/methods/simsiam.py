"""SimSiam (Chen & He, CVPR 2021): the trainer method.

`facebookresearch/simsiam`: ResNet + 3-layer projector (last BN affine-free)
+ 2-layer predictor (bottleneck 512), no teacher; with D(p, z) =
−cos(p, sg(z)) (`losses.negative_cosine_loss`):

    L = ½ D(p1, z2) + ½ D(p2, z1)

Config: the shared Siamese fields only. Recipe:
`configs/simsiam_r18_cifar.py`; offline: `configs/fmnist_siamese.py:
method=simsiam`. (The official fixed predictor learning rate is not
reproduced: one schedule for all parameters.)
"""

from __future__ import annotations

from mi_ssl_jax import losses
from mi_ssl_jax.methods import _siamese as siamese


def objective(model, v, step):
  del model, step
  loss = 0.5 * (losses.negative_cosine_loss(v.student(1), v.z2)
                + losses.negative_cosine_loss(v.student(2), v.z1))
  return loss, {"cosine": -loss}


METHOD = siamese.SiameseMethod(objective, predictor=True)
