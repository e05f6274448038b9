r"""Barlow Twins, ResNet-18 on CIFAR-10, 1000 epochs (solo-learn recipe).

Launch (from the repository root; CIFAR-10 prepared for TFDS in $TFDS_DIR):

  python -m mi_ssl_jax.main --config=configs/barlow_twins_r18_cifar.py \
      --workdir=workdirs/barlow_twins_r18_cifar --config.data_dir=$TFDS_DIR

`vturrisi/solo-learn` scripts/pretrain/cifar/barlow.yaml: ResNet-18 (CIFAR
stem), projector 2048-2048-2048, λ = 0.0051, loss scale 0.1, LARS (trust
0.02) lr 0.3 × 256/256, weight decay 1e-4, batch 256, 1000 epochs, 10
warm-up epochs + cosine, asymmetric augmentations.

Expected result: 92.10 % CIFAR-10 linear top-1 (solo-learn README, online
linear probe, 1000 epochs); not yet measured by us.

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): under 1 GiB per
chip of a v5e-8 at the recipe's batch. Another slice:

  make aot AOT_ARGS="--config=barlow_twins_r18_cifar --topology=v4-8"
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_cifar("barlow_twins")
  c.bt_scale_loss = 0.1
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
