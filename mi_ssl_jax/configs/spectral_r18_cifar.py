r"""Spectral contrastive learning, ResNet-18 on CIFAR-10, 800 epochs.

Launch (from the repository root; CIFAR-10 prepared for TFDS in $TFDS_DIR):

  python -m mi_ssl_jax.main --config=configs/spectral_r18_cifar.py \
      --workdir=workdirs/spectral_r18_cifar --config.data_dir=$TFDS_DIR

Official recipe (`jhaochenz96/spectral_contrastive_learning`,
configs/spectral_resnet_mlp1000_norelu_cifar10_lr003_mu1.yaml and
models/backbones/cifar_resnet_1_mlp_norelu.py): ResNet-18 (CIFAR stem, no
zero-init residual), projector Linear(512→2048)-BN-ReLU-Linear(2048→1000)-BN,
μ = 1, SGD momentum 0.9, lr 0.03 × 512/256, weight decay 5e-4, batch 512,
800 epochs, 10 warm-up epochs + cosine to 0; SimSiam-style augmentations
(crop 0.2–1, jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, no blur at 32 px).

Expected result: about 92 % CIFAR-10 linear accuracy after 800 epochs
(HaoChen et al., NeurIPS 2021, Table 1; value not re-checked against the
PDF); not yet measured by us.

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): under 1 GiB per
chip of a v5e-8 at the recipe's batch. Another slice:

  make aot AOT_ARGS="--config=spectral_r18_cifar --topology=v4-8"
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_cifar("spectral")
  c.batch_size = 512
  c.total_epochs = 800.0
  c.model.update(dict(zero_init_residual=False, proj_hidden_dims=(2048,),
                      proj_dim=1000, proj_out_norm="bn"))
  c.augment.update(dict(crop_scale=(0.2, 1.0),
                        color_jitter_strength=(0.4, 0.4, 0.4, 0.1),
                        blur_prob=(0.0, 0.0), solarize_prob=(0.0, 0.0)))
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
