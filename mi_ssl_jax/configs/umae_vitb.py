r"""U-MAE ViT-B/16 on ImageNet-1K, 200 epochs (Zhang et al., NeurIPS 2022).

Official `U-MAE/pretrain.sh`: batch 1024 (128 × 8 GPUs), AdamW(0.9, 0.95),
base lr 1.5e-4, weight decay 0.05, 40 warm-up epochs (the README says 20),
cosine, mask 0.75, uniformity weight λ = 0.01 on the CLS features; effective
λ/8 as the released runs (`official_world_size=8`; 0 for the exact gradient).

Launch (TFDS `imagenet2012` prepared in DATA; see launch/README.md):

  python -m mi_ssl_jax.main --config=configs/umae_vitb.py \
      --workdir=/runs/umae_vitb --config.data_dir=$DATA

Diagnostics (spectra, LiDAR, α-ReQ, per-block token entropies): the
trainer's default, every 1000 steps (the first multiple of log_steps = 100
at or above 1000; about 0.8 epoch at batch 1024), on the first log line and
at the last step, on 256 evenly spaced examples of each batch of 1024
(`config.diagnostics_steps`, `config.diagnostics_examples`; 0 turns them
off). Their measured cost: docs/benchmarks.md, "Diagnostics".

Expected result (as reported in the M-MAE paper, 200 epochs): linear probe
58.5% top-1, fine-tune 83.0% on ImageNet-1K val.

TPU memory (docs/scaling.md, compiled ahead of time): batch 1024 on a
v4-32 7.1 GiB per chip of 32 (data parallel, bf16).
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  return common.mae_family(arg, "umae", "B/16", reg_lambda=0.01)
