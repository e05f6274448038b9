r"""Quick start: M-MAE with a tiny ViT on Fashion-MNIST, on a laptop CPU.

  make quickstart
  # or, in an installed environment, from the repository root:
  python -m mi_ssl_jax.main --config=configs/quickstart.py \
      --workdir=workdirs/quickstart

Trains M-MAE (MAE + λ·(−log det(I + (μ/d)·F̂ᵀF̂)) on the CLS features,
`mi_ssl_jax/methods/mmae.py`) on the 60k Fashion-MNIST training images
(offline: Debian package `dataset-fashion-mnist`), then prints the weighted
kNN accuracy (k = 20, cosine, τ = 0.07) of the CLS features on the 10k test
images, e.g. `knn/top1_k20 = ...`. Rerunning the command resumes (and, once
finished, only re-evaluates). Logs: `tensorboard --logdir workdirs/`.

Config args: `epochs=1` (default) sets the length; `tiny` is the 2-step
smoke test. Measured wall time and accuracy: docs/benchmarks.md ("Trainer").
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, epochs=1.0, tiny=False)
  c = common.mae_family(None, "mmae", "Ti/4", reg_lambda=0.01, reg_mu=1.0)
  c.dataset = "fashion_mnist"
  c.image_size, c.channels, c.num_classes = 28, 1, 10
  c.model.update(dict(width=96, depth=4, num_heads=4, mlp_dim=192,
                      decoder_width=64, decoder_depth=1, decoder_heads=4))
  c.dtype = "float32"
  c.batch_size = 256
  c.total_epochs = arg.epochs
  c.warmup_epochs = 0.5
  c.base_lr = 1e-3  # short run: larger than the ImageNet 1.5e-4
  c.augment = ml_collections.ConfigDict(dict(crop_scale=(0.5, 1.0)))
  c.official_world_size = 0  # exact gradient of λ·R
  c.log_steps = 50
  c.ckpt_epochs = None
  c.ckpt_steps = 200
  c.keep_ckpt_epochs = None
  c.evals = ml_collections.ConfigDict(dict(knn=dict(
      type="knn", num_classes=10, ks=(20,), temperature=0.07,
      batch_size=1000,
      train_data=dict(dataset="fashion_mnist", split="train"),
      test_data=dict(dataset="fashion_mnist", split="test"))))
  if arg.tiny:  # tests: a 1-block ViT, 2 steps, no evaluation
    c.model.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64,
                        decoder_width=32, decoder_depth=1, decoder_heads=2))
    c.batch_size = 16
    c.total_epochs = None
    c.total_steps = 2
    c.warmup_epochs = None
    c.log_steps = 1
    c.evals = ml_collections.ConfigDict()
  return c
