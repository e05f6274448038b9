r"""End-to-end fine-tuning of a pretrained checkpoint (protocol mae_finetune).

  python -m mi_ssl_jax.main --config=configs/finetune.py \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_finetune
  # a short CPU run on Fashion-MNIST:
  python -m mi_ssl_jax.main --config=configs/finetune.py:runlocal \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_finetune

Protocol `mae_finetune` v1 (job mi_ssl_jax/jobs/finetune.py, recipe
mi_ssl_jax/finetune/; MAE ViT-B / M-MAE finetune.sh): AdamW,
lr 5e-4·B/256 with B = 2048, weight decay 0.05, layer decay 0.65, drop
path 0.1, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, 100 epochs with 5
warm-up epochs, cosine to 1e-6. RandAugment and random
erasing are not implemented (recorded in the result). Rerunning the command
resumes from <workdir>/checkpoints. `--config.overrides.<field>=...` changes
the recipe; changes are recorded as "overrides" in the result JSON.

TPU memory (docs/scaling.md, compiled ahead of time): the ViT-B
fine-tuning step at batch 2048 on a v4-32 14.9 GiB per chip of 32.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from mi_ssl_jax.config_lib import parse_arg
from mi_ssl_jax.configs.common import LOCK_STALE_SECONDS

# Recipe fields a command line may change (None = the protocol's value).
OVERRIDABLE = dict(base_lr=float, batch_size=int, epochs=float,
                   warmup_epochs=float, min_lr=float, weight_decay=float,
                   layer_decay=float, drop_path_rate=float, mixup_alpha=float,
                   cutmix_alpha=float, mix_prob=float, switch_prob=float,
                   label_smoothing=float)


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = ml_collections.ConfigDict()
  c.job = "finetune"
  c.init_from = ""  # pretraining workdir (required)
  c.overrides = ml_collections.ConfigDict(
      {k: placeholder(t) for k, t in OVERRIDABLE.items()})
  c.dataset = ""  # "" = the pretraining dataset
  c.data_dir = ""
  c.train_split = ""
  c.eval_split = ""
  c.num_classes = 0  # 0 = from the dataset
  c.batch_size = 256  # evaluation batch (global)
  c.max_train_examples = 0  # 0 = all (sets the epoch length)
  c.max_eval_examples = 0
  c.log_steps = 100
  c.ckpt_steps = 1000
  c.seed = 0
  c.mesh = (("data", -1),)
  c.mesh_axis_type = "auto"
  # The run directory's lock (configs/common.py: lock_stale_seconds).
  c.lock_stale_seconds = LOCK_STALE_SECONDS
  if arg.runlocal:
    c.overrides.batch_size = 128
    c.overrides.epochs = 2.0
    c.overrides.warmup_epochs = 0.2
    c.overrides.base_lr = 2e-3
    c.log_steps = 20
  return c
