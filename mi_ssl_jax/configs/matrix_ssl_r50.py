r"""Matrix-SSL, ResNet-50 on ImageNet-1K, 100 epochs (docs/methods.md §2.2–2.3).

Launch (from the repository root; ImageNet prepared for TFDS in $TFDS_DIR):

  python -m mi_ssl_jax.main --config=configs/matrix_ssl_r50.py \
      --workdir=workdirs/matrix_ssl_r50 --config.data_dir=$TFDS_DIR

Recipe of the official README's best 100-epoch command
(`yifanzhang-pro/Matrix-SSL`, docs/methods.md §2.2–2.3): global batch 1024, SGD
momentum 0.9, lr 0.5 × 1024/256 = 2.0, weight decay 1e-5, 10 warm-up epochs
then cosine to 0 (per step), EMA teacher 0.996 → 1 (cosine), λ = μ = γ = 1,
Taylor order 4, fp32, MoCo v3 asymmetric augmentations; ResNet-50
(zero-init residual) + projector 2048-2048-2048 (last BN affine-free) +
predictor 2048-512-2048. Differences from the official code: the
backbone and heads compute in bfloat16 (`compute_dtype`; BatchNorm
statistics and the loss in float32; official: float32 throughout,
`--config.compute_dtype=float32` matches it); weight decay
skips biases/BN parameters (official: all parameters); the last projector
bias is trainable (official: frozen; the affine-free BN after it cancels it).

Diagnostics (spectra, LiDAR, α-ReQ, DiME, view MI, per-stage token
entropies): the trainer's default, every 1000 steps (the first multiple of
log_steps = 100 at or above 1000; about 0.8 epoch at batch 1024), on the
first log line and at the last step, on 256 evenly spaced examples of each
batch of 1024 (`config.diagnostics_steps`, `config.diagnostics_examples`;
0 turns them off). Their measured cost: docs/benchmarks.md, "Diagnostics".

Expected result: 71.1 % ImageNet linear-probe top-1 after 100 epochs (paper,
Table 1, as quoted in docs/methods.md §2.5); not yet measured by us.

Config args: `runlocal` (random images, batch 16, 10 steps), `tiny` (also a
tiny model, 2 steps; tests).

TPU memory (docs/scaling.md, compiled ahead of time): batch 1024 on a
v4-32 5.9 GiB per chip of 32 (data parallel, bf16; 10.8 in float32).
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, tiny=False)
  c = common.siamese_family("matrix_ssl")
  return common.siamese_shrink(c, arg.runlocal, arg.tiny)
