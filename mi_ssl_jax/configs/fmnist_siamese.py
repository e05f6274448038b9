r"""Every Siamese method on the offline Fashion-MNIST, sized for a CPU.

Launch (from the repository root; `method=` is any of matrix_ssl, mec, emi,
simsiam, byol, barlow_twins, vicreg, simclr, spectral, frossl, ivne,
mmcr, lejepa):

  python -m mi_ssl_jax.main --config=configs/fmnist_siamese.py:method=byol \
      --workdir=workdirs/fmnist_byol
  python -m mi_ssl_jax.main \
      --config=configs/fmnist_siamese.py:method=byol,vit \
      --workdir=workdirs/fmnist_byol_vit

Reads the Fashion-MNIST IDX files (Debian package `dataset-fashion-mnist`; no
network). ResNet-18 (CIFAR stem, width 16: 0.7 M parameters) on 28×28
grayscale two-view crops (scale 0.5–1, brightness/contrast jitter, no blur,
solarize 0 / 0.2), global batch 256, `epochs=5` by default, 1 warm-up
epoch + cosine, each method's CIFAR optimiser (configs/common.py
SIAMESE_OPTIMIZERS) and loss settings, heads scaled down (256–512 wide),
EMA teacher 0.99 → 1. Ends with a weighted kNN accuracy (k = 20) of the
backbone features on the test split (needs mi_ssl_jax.evaluators).

Expected result: not measured by us at this default budget (5 epochs, width
16). The Fashion-MNIST study (`make study`, docs/results.md) runs every
method of this recipe at 0.5 epoch with width 8 (`--config.total_epochs=0.5
--config.warmup_epochs=0.05 --config.model.width=8`), 3 seeds, with the
kNN and linear-probe accuracies and the baselines there.

ViT backbone (`vit`; LeJEPA's default, `resnet` switches it back): the
MAE family's Fashion-MNIST encoder (`configs/fmnist_mae.py`: width 96, 4
blocks, 4 heads, MLP 192, patch 7 on 28×28: 16 patches; 96-d CLS feature)
under the same two-view augmentations and heads, trained with MoCo v3's
AdamW (betas 0.9/0.999, weight decay 0.1; `common.VIT_ADAMW`) at the MAE
family's Fashion-MNIST learning rate 1e-3 × batch/256 (short runs; MoCo v3's
1.5e-4 is for 300 ImageNet epochs). LeJEPA keeps its own optimiser
(`common.SIAMESE_OPTIMIZERS["lejepa"]`, its README's AdamW 5e-4, weight
decay 0.05). Not measured by us at this budget; the study (`make study`)
runs LeJEPA with it.

Config args: `method=<name>` (default byol), `epochs=<float>`, `vit` / `resnet`
(the backbone; default ResNet, ViT for lejepa), `runlocal` (random images,
batch 16, 10 steps), `tiny` (Fashion-MNIST at 16 px, a tiny model, 2 steps;
tests).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from mi_ssl_jax.config_lib import ConfigError
from mi_ssl_jax.configs import common

# Projector / predictor sizes for the 128-d features of the width-16 ResNet.
_HEADS = {
    "matrix_ssl": dict(proj_hidden_dims=(256, 256), proj_dim=256,
                       pred_hidden_dims=(64,)),
    "byol": dict(proj_hidden_dims=(512,), proj_dim=128,
                 pred_hidden_dims=(512,)),
    "barlow_twins": dict(proj_hidden_dims=(512, 512), proj_dim=512),
    "simclr": dict(proj_hidden_dims=(512,), proj_dim=128),
    "spectral": dict(proj_hidden_dims=(512,), proj_dim=256,
                     proj_out_norm="bn"),
}
for _name in ("mec", "emi", "simsiam"):
  _HEADS[_name] = _HEADS["matrix_ssl"]
_HEADS["vicreg"] = _HEADS["barlow_twins"]
_HEADS["frossl"] = _HEADS["barlow_twins"]
_HEADS["mmcr"] = _HEADS["barlow_twins"]
_HEADS["ivne"] = _HEADS["simclr"]
# LeJEPA's projector (lightly's 2048-2048-64) scaled down like the others.
_HEADS["lejepa"] = dict(proj_hidden_dims=(512, 512), proj_dim=64)
# The ViT of configs/fmnist_mae.py (patch 7: 16 patches of 28×28).
VIT = dict(vit_width=96, vit_depth=4, vit_num_heads=4, vit_mlp_dim=192,
           patch_size=7)


def get_config(arg=None):
  arg = common.parse_arg(arg, method="byol", epochs=5.0, runlocal=False,
                         tiny=False, vit=False, resnet=False)
  if arg.method not in common.SIAMESE_OPTIMIZERS:
    raise ConfigError(
        f"config arg method={arg.method!r}: use one of "
        f"{', '.join(sorted(common.SIAMESE_OPTIMIZERS))}")
  c = common.siamese_family(arg.method)
  c.dataset = "fashion_mnist"
  c.image_size, c.channels, c.num_classes = 28, 1, 10
  c.batch_size = 256
  c.total_epochs = arg.epochs
  c.warmup_epochs = 1.0
  c.update(common.SIAMESE_OPTIMIZERS[arg.method])
  c.ema_momentum = 0.99
  c.model.update(dict(depth=18, stem="cifar", width=16, **_HEADS[arg.method]))
  c.compute_dtype = "float32"  # a CPU recipe (bf16 is slower on CPUs)
  if arg.vit and arg.resnet:
    raise ConfigError("config args vit and resnet exclude each other")
  if arg.vit or (arg.method == "lejepa" and not arg.resnet):
    common.siamese_vit(c, "Ti", **VIT)
    if arg.method != "lejepa":
      c.update(common.VIT_ADAMW)
      c.base_lr = 1e-3  # configs/fmnist_mae.py's short-run lr
  elif arg.method == "lejepa":
    c.weight_decay = 5e-4  # LeJEPA's README value for ResNets
  if arg.method == "spectral":
    c.model.zero_init_residual = False
  if arg.method == "simclr":
    c.simclr_temperature = 0.2
  if arg.method == "mec":
    c.mec_warmup_epochs = 1.0
  # Crop scale 0.5-1: chosen over 0.2-1 on a validation split (mean
  # validation kNN of the 12 methods, docs/results_tuning.md).
  c.augment = ml_collections.ConfigDict(dict(
      augment_on="host",  # or "device": see train_inputs.make_device_inputs
      crop_scale=(0.5, 1.0), color_jitter_strength=(0.4, 0.4, 0.0, 0.0),
      color_jitter_prob=0.8, grayscale_prob=0.0, blur_prob=(0.0, 0.0),
      solarize_prob=(0.0, 0.2)))
  c.log_steps = 50
  c.ckpt_epochs = None
  c.ckpt_steps = 500
  c.keep_ckpt_epochs = None
  c.evals = ml_collections.ConfigDict(dict(knn=dict(
      type="knn", num_classes=10, ks=(20,), temperature=0.07,
      log_steps=placeholder(int),
      batch_size=1000,
      train_data=dict(dataset="fashion_mnist", split="train"),
      test_data=dict(dataset="fashion_mnist", split="test"))))
  c = common.siamese_shrink(c, arg.runlocal, arg.tiny)
  if arg.tiny:  # the real Fashion-MNIST pipeline, tiny images and model
    c.dataset = "fashion_mnist"
    c.num_train_examples = None
  return c
