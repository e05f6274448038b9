r"""Linear probe of a pretrained checkpoint, with a named protocol.

  python -m mi_ssl_jax.main --config=configs/linear_probe.py \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_linear

  # the SimCLR protocol, or a quick CPU run on Fashion-MNIST:
  python -m mi_ssl_jax.main \
      --config=configs/linear_probe.py:protocol=simclr_linear \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_linear
  python -m mi_ssl_jax.main --config=configs/linear_probe.py:runlocal \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_linear

Protocols (mi_ssl_jax/evaluators/linear.py): `mae_linear` (affine-free BN +
linear head, LARS, 10 warm-up epochs + cosine, 90 epochs, B = 8192) and
`simclr_linear` (linear head, SGD + Nesterov, cosine, 90 epochs, B = 4096).
`--config.overrides.epochs=...` etc. change the recipe; every change is
recorded in the result JSON. The dataset, image size and model come from the
pretraining run's config.json unless set here.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from mi_ssl_jax.config_lib import parse_arg
from mi_ssl_jax.configs.common import LOCK_STALE_SECONDS

# Recipe fields a command line may change (None = the protocol's value).
OVERRIDABLE = dict(epochs=int, batch_size=int, base_lr=float,
                   warmup_epochs=float, weight_decay=float, momentum=float,
                   batch_norm=bool)


def get_config(arg=None):
  arg = parse_arg(arg, protocol="mae_linear", runlocal=False)
  c = ml_collections.ConfigDict()
  c.job = "linear_probe"
  c.init_from = ""  # pretraining workdir (required unless a baseline)
  # "" (the checkpoint), or a baseline with the same protocol:
  # "raw_pixels" (the input pixels; init_from optional) or "random_init" (the
  # run's model at initialisation with config.seed; no checkpoint read).
  c.baseline = ""
  # random_init of a BatchNorm network: its BN statistics recomputed on
  # this many full batches of training images first (0: initial ones).
  c.random_init_bn_batches = 10
  # Fields of the pretraining config changed before the model is built, e.g.
  # the MAE family's readout: --config.pretrained_overrides.feature_pool=gap.
  c.pretrained_overrides = ml_collections.ConfigDict(
      dict(feature_pool=placeholder(str)))
  c.protocol = arg.protocol
  # Recipe changes relative to the protocol (epochs, batch_size, base_lr,
  # warmup_epochs, weight_decay, ...); recorded as "overrides".
  c.overrides = ml_collections.ConfigDict(
      {k: placeholder(t) for k, t in OVERRIDABLE.items()})
  c.dataset = ""  # "" = the pretraining dataset
  c.data_dir = ""
  c.train_split = ""  # "" = the dataset's training split
  c.eval_split = ""  # "" = the dataset's evaluation split
  c.num_classes = 0  # 0 = from the dataset
  c.batch_size = 256  # feature-extraction batch (global)
  c.max_train_examples = 0  # 0 = all
  c.max_eval_examples = 0
  c.seed = 0
  c.mesh = (("data", -1),)
  c.mesh_axis_type = "auto"
  # The run directory's lock (configs/common.py: lock_stale_seconds).
  c.lock_stale_seconds = LOCK_STALE_SECONDS
  if arg.runlocal:
    # A few minutes on a laptop CPU: fewer epochs, smaller probe batch.
    c.overrides.epochs = 10
    c.overrides.batch_size = 256
    if arg.protocol == "mae_linear":
      # LARS moves W by lr·0.001·‖W‖ per step: ~400 steps need a larger lr.
      c.overrides.warmup_epochs = 1.0
      c.overrides.base_lr = 8.0
    c.max_train_examples = 10000
  return c
