r"""Weighted kNN accuracy (+ spectrum diagnostics) of a pretrained checkpoint.

  python -m mi_ssl_jax.main --config=configs/knn.py \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_knn

Protocol `knn` v1 (mi_ssl_jax/evaluators/knn.py, job
mi_ssl_jax/jobs/knn.py): cosine similarity of
L2-normalised features, the k nearest training examples vote with weight
exp(s / τ); k = 20 and 200, τ = 0.07; computed on device over sharded
features. Also writes the eigenvalue spectrum, RankMe, effective rank and
matrix entropies of the evaluation features as JSON + PNG.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from mi_ssl_jax.config_lib import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = ml_collections.ConfigDict()
  c.job = "knn"
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
  c.ks = (20, 200)
  c.temperature = 0.07
  c.dataset = ""  # "" = the pretraining dataset
  c.data_dir = ""
  c.train_split = ""
  c.eval_split = ""
  c.num_classes = 0  # 0 = from the dataset
  c.batch_size = 256  # feature-extraction batch (global)
  c.query_chunk = 256  # test queries per on-device chunk
  c.max_train_examples = 0  # 0 = all
  c.max_eval_examples = 0
  c.seed = 0
  # LiDAR of the evaluation features (1000 images x 4 crops) in the
  # diagnostics; False skips it.
  c.lidar = True
  c.mesh = (("data", -1),)
  c.mesh_axis_type = "auto"
  if arg.runlocal:
    c.max_train_examples = 10000
  return c
