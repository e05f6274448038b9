r"""MMCR (Yerxa et al., NeurIPS 2023)
on CIFAR-10: ResNet-18 (CIFAR stem), solo-learn style.

  python -m mi_ssl_jax.main --config=configs/mmcr_r18_cifar.py \
      --workdir=workdirs/mmcr_cifar \
      --config.data_dir=~/tensorflow_datasets

Batch 256, 1000 epochs, 10 warm-up epochs + cosine, LARS (base lr 0.3,
weight decay 1e-4, trust 0.02), solo-learn's asymmetric CIFAR augmentations
(configs/common.py `siamese_cifar`). Modelled on the MMCR method of
the OFSkean/FroSSL fork;
its exact CIFAR hyper-parameters were not verified, so this recipe is our
choice. Expected result: none published for this recipe; not yet measured by us
(Fashion-MNIST numbers of the method: docs/results.md).

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): under 1 GiB per
chip of a v5e-8 at the recipe's batch. Another slice:

  make aot AOT_ARGS="--config=mmcr_r18_cifar --topology=v4-8"
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_cifar("mmcr")
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
