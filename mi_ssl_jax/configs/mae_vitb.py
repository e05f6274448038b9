r"""MAE ViT-B/16 on ImageNet-1K, 200 epochs: the baseline of U-MAE / M-MAE.

Same recipe as `configs/umae_vitb.py` without a regulariser (the U-MAE and
M-MAE code with `--reg none`): batch 1024, AdamW(0.9, 0.95), base lr 1.5e-4,
weight decay 0.05, 40 warm-up epochs, cosine, mask 0.75, normalised pixels.
(MAE's own paper trains 800-1600 epochs at batch 4096.)

Launch (TFDS `imagenet2012` prepared in DATA; see launch/README.md):

  python -m mi_ssl_jax.main --config=configs/mae_vitb.py \
      --workdir=/runs/mae_vitb --config.data_dir=$DATA

Diagnostics (spectra, LiDAR, α-ReQ, per-block token entropies): the
trainer's default, every 1000 steps (the first multiple of log_steps = 100
at or above 1000; about 0.8 epoch at batch 1024), on the first log line and
at the last step, on 256 evenly spaced examples of each batch of 1024
(`config.diagnostics_steps`, `config.diagnostics_examples`; 0 turns them
off). Their measured cost: docs/benchmarks.md, "Diagnostics".

Expected result (200 epochs, as quoted in the U-MAE/M-MAE papers; the
linear-probe value is unverified, docs/methods.md §3.4): linear probe 55.4%
top-1, fine-tune 82.9% on ImageNet-1K val.

TPU memory (docs/scaling.md, compiled ahead of time): batch 1024 on a
v4-32 7.2 GiB per chip of 32 (data parallel, bf16).
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  return common.mae_family(arg, "mae", "B/16")
