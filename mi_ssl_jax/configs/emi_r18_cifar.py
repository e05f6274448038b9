r"""EMI (explicit mutual information), ResNet-18 on CIFAR-10.

Launch (from the repository root; CIFAR-10 prepared for TFDS in $TFDS_DIR):

  python -m mi_ssl_jax.main --config=configs/emi_r18_cifar.py \
      --workdir=workdirs/emi_r18_cifar --config.data_dir=$TFDS_DIR

EMI has no official code and its recipe could not be read (docs/methods.md §7).
The loss is our reconstruction (mi_ssl_jax/losses/emi.py): −½[I(S1; sg T2)
+ I(S2; sg T1)] with I = ½[log det C₁ + log det C₂ − log det C_joint] of
batch-normalised embeddings, ridge 1e-3, exact Cholesky log-dets
(`emi_method="taylor"` for the paper's Taylor / eigenvalue-tracking form).
The hyper-parameters are OURS, chosen to match the other CIFAR recipes here:
ResNet-18 (CIFAR stem) + projector 2048-2048-2048 + predictor 512 (the
Matrix-SSL network), EMA teacher 0.99 → 1, batch 256, 1000 epochs, SGD
momentum 0.9, lr 0.5 × 256/256, weight decay 1e-5 (solo-learn's SimSiam
CIFAR optimiser), 10 warm-up epochs + cosine, solo-learn's asymmetric
CIFAR augmentations.

Expected result: not yet measured by us (the paper reports EMI as
"competitive" on CIFAR-10 without a number we could retrieve; its headline
is 81.1 % linear accuracy on ImageNet-100, docs/methods.md §7.3).

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): under 1 GiB per
chip of a v5e-8 at the recipe's batch. Another slice:

  make aot AOT_ARGS="--config=emi_r18_cifar --topology=v4-8"
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_cifar("emi")
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
