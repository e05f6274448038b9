r"""VICReg, ResNet-18 on CIFAR-10, 1000 epochs (solo-learn recipe).

Launch (from the repository root; CIFAR-10 prepared for TFDS in $TFDS_DIR):

  python -m mi_ssl_jax.main --config=configs/vicreg_r18_cifar.py \
      --workdir=workdirs/vicreg_r18_cifar --config.data_dir=$TFDS_DIR

`vturrisi/solo-learn` scripts/pretrain/cifar/vicreg.yaml: ResNet-18 (CIFAR
stem), projector 2048-2048-2048, coefficients 25 / 25 / 1, LARS (trust
0.02) lr 0.3 × 256/256, weight decay 1e-4, batch 256, 1000 epochs, 10
warm-up epochs + cosine; augmentations: crop 0.2–1, jitter 0.4/0.4/0.2/0.1
p 0.8, grayscale 0.2, no blur, solarize 0.1 on both views.

Expected result: 92.07 % CIFAR-10 linear top-1 (solo-learn README, online
linear probe, 1000 epochs); not yet measured by us.

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): under 1 GiB per
chip of a v5e-8 at the recipe's batch. Another slice:

  make aot AOT_ARGS="--config=vicreg_r18_cifar --topology=v4-8"
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_cifar("vicreg")
  c.augment.update(dict(crop_scale=(0.2, 1.0), solarize_prob=(0.1, 0.1)))
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
