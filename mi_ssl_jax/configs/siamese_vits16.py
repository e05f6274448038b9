r"""Any Siamese method (or LeJEPA) with a ViT-S/16 on ImageNet-1K, MoCo v3's
ViT schedule.

Launch (from the repository root; ImageNet prepared for TFDS in $TFDS_DIR;
`method=` is any of matrix_ssl, mec, emi, simsiam, byol, barlow_twins,
vicreg, simclr, spectral, frossl, ivne, mmcr, lejepa):

  python -m mi_ssl_jax.main --config=configs/siamese_vits16.py:method=byol \
      --workdir=workdirs/byol_vits16 --config.data_dir=$TFDS_DIR

The schedule of MoCo v3 for ViTs (Chen, Xie, He 2021, "An Empirical Study
of Training Self-Supervised Vision Transformers", arXiv 2104.02057; its
implementation details and `facebookresearch/moco-v3` CONFIG.md, "ViT
Models": "All ViT models are pre-trained for 300 epochs with AdamW",
`--optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --epochs=300
--warmup-epochs=40 --stop-grad-conv1 --moco-m-cos`, released models at
batch 4096):
* ViT-S/16 as MoCo v3's `vits.py` `vit_small`: width 384, 12 blocks and
  12 heads (`models.VIT_VARIANTS["S"]` has DeiT's 6: overridden), CLS-token
  feature, a fixed 2-D sin-cos position table (`pos_embed="sincos2d"`,
  MAE's table; MoCo v3's `build_2d_sincos_position_embedding` orders the
  sin/cos halves differently, the same kind of table), no drop path;
* batch 4096, 300 epochs, 40 warm-up epochs then cosine to 0, AdamW
  (β 0.9/0.999) with lr 1.5e-4 × batch/256 = 2.4e-3 and weight decay 0.1
  (`common.VIT_ADAMW`; not on biases and norms here, on everything in
  MoCo v3);
* the random patch projection kept frozen (`--stop-grad-conv1`, the
  paper's §4.2 stability trick): `config.model.freeze_patch_embed=True`;
* teacher methods: EMA momentum 0.99 → 1 on a cosine (`--moco-m-cos`, the
  default `--moco-m=0.99`);
* MoCo v3's asymmetric BYOL augmentations (the Siamese recipe's, crop
  scale 0.08–1 as MoCo v3's ViT `--crop-min` default) and bfloat16
  compute.
Each method keeps its own objective and head recipe
(`common.SIAMESE_HEADS`); MoCo v3's contrastive loss itself is not a method
here. LeJEPA keeps its README optimiser (AdamW lr 5e-4, weight decay 0.05,
cosine to lr/1000; `common.SIAMESE_OPTIMIZERS["lejepa"]`) and λ = 0.05 on
the two global views (no local crops: `methods/lejepa.py`).

Expected result: not measured by us. MoCo v3 reports 73.2 % ImageNet
linear top-1 for its own objective with this backbone and schedule
(CONFIG.md); other objectives need not match it.

Memory (docs/scaling.md, "Siamese methods on a ViT-S/16"; AOT compiles,
`make aot`): at batch 4096 on a v4-32 (256 images per chip, 32 GiB chips)
the plain program compiles only because XLA:TPU rematerialises on its own
(its peak as written: 37.0 GiB per chip for Matrix-SSL, 36.8 for LeJEPA).
Add `--config.model.remat=dots_no_batch` to choose the recomputation: both
then fit as written (Matrix-SSL 12.5 GiB per chip, LeJEPA 11.2), for 2.0 and
2.6 % more FLOPs per step.
On 16 GiB chips run about half the images per chip, or `model.remat=full`.

Config args: `method=<name>` (default byol), `variant=` (default "S/16";
"B/16" is MoCo v3's other ViT), `runlocal` (random images, batch 16, 10
steps), `tiny` (a 1-block ViT on 16-px images, 2 steps; tests).
"""

from mi_ssl_jax.config_lib import ConfigError
from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, method="byol", variant="S/16", runlocal=False,
                         tiny=False)
  if arg.method not in common.SIAMESE_OPTIMIZERS:
    raise ConfigError(
        f"config arg method={arg.method!r}: use one of "
        f"{', '.join(sorted(common.SIAMESE_OPTIMIZERS))}")
  c = common.siamese_family(arg.method)
  heads = {"S": 12}.get(arg.variant.partition("/")[0])  # MoCo v3 vit_small
  common.siamese_vit(c, arg.variant, freeze_patch_embed=True,
                     vit_num_heads=heads)
  c.model.pos_embed = "sincos2d"
  c.batch_size = 4096
  c.total_epochs = 300.0
  c.warmup_epochs = 40.0
  c.update(common.SIAMESE_OPTIMIZERS["lejepa"] if arg.method == "lejepa"
           else common.VIT_ADAMW)
  c.ema_momentum = 0.99
  c.augment.crop_scale = (0.08, 1.0)
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
