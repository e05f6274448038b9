r"""MEC (maximum entropy coding), ResNet-50 on ImageNet-1K, 100 epochs
(docs/methods.md §5).

Launch (from the repository root; ImageNet prepared for TFDS in $TFDS_DIR):

  python -m mi_ssl_jax.main --config=configs/mec_r50.py \
      --workdir=workdirs/mec_r50 --config.data_dir=$TFDS_DIR

Recipe of `xinliu20/MEC` (docs/methods.md §5; same network and optimiser as
Matrix-SSL, §2.3): global batch 1024, SGD momentum 0.9, lr 0.5 × 1024/256,
weight decay 1e-5, 10 warm-up epochs + cosine, EMA teacher 0.996 → 1,
ε² = 64 so λ = d/(B ε²) = 2048/(1024·64) = 1/32, Taylor order 4, and the
official warm-up of 1/λ from 8/λ to 1/λ over the first 10 epochs
(`mec_warmup_epochs`), then constant. Differences from the official code:
weight decay skips biases/BN parameters (official: all parameters); the
last projector bias is trainable (official: frozen; cancelled by the
affine-free BN after it).

Diagnostics (spectra, LiDAR, α-ReQ, DiME, view MI, per-stage token
entropies): the trainer's default, every 1000 steps (the first multiple of
log_steps = 100 at or above 1000; about 0.8 epoch at batch 1024), on the
first log line and at the last step, on 256 evenly spaced examples of each
batch of 1024 (`config.diagnostics_steps`, `config.diagnostics_examples`;
0 turns them off). Their measured cost: docs/benchmarks.md, "Diagnostics".

Expected result: 70.6 % ImageNet linear-probe top-1 after 100 epochs (MEC
paper via Matrix-SSL's Table 1; the MEC README reports 70.8 % for its
released checkpoint; docs/methods.md §5); not yet measured by us.

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): batch 1024 on a
v4-32 5.9 GiB per chip of 32 (data parallel, bf16).
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_family("mec")
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
