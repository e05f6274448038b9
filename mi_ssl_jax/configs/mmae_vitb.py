r"""M-MAE ViT-B/16 on ImageNet-1K, 200 epochs (Tan et al., ICML 2024).

Recipe of the official `M-MAE/pretrain.sh` with ViT-B (docs/methods.md §3.3):
batch 1024, AdamW(0.9, 0.95), base lr 1.5e-4 (lr 6e-4), weight decay 0.05,
40 warm-up epochs, cosine, mask 0.75, λ = 0.01, μ = 1, effective λ/8 as the
released 8-GPU runs (`official_world_size=8`; set 0 for the exact gradient).

Launch (prepare TFDS `imagenet2012` in DATA first; see launch/README.md):

  # 8 GPUs, one host
  python -m mi_ssl_jax.main --config=configs/mmae_vitb.py \
      --workdir=/runs/mmae_vitb --config.data_dir=$DATA
  # Cloud TPU v4-32 (4 hosts)
  WORKDIR=gs://$BUCKET/mmae_vitb launch/tpu/run.sh \
      --config=configs/mmae_vitb.py --config.data_dir=gs://$BUCKET/tfds
  # CPU smoke run with the full ViT-B (random images, batch 8, 10 steps)
  python -m mi_ssl_jax.main --config=configs/mmae_vitb.py:runlocal \
      --workdir=/tmp/mmae_vitb_local

Diagnostics (spectra, LiDAR, α-ReQ, per-block token entropies): the
trainer's default, every 1000 steps (the first multiple of log_steps = 100
at or above 1000; about 0.8 epoch at batch 1024), on the first log line and
at the last step, on 256 evenly spaced examples of each batch of 1024
(`config.diagnostics_steps`, `config.diagnostics_examples`; 0 turns them
off). Their measured cost: docs/benchmarks.md, "Diagnostics".

Expected result (paper, Table 1; not reproduced here): linear probe 62.4%
top-1 (U-MAE 58.5, MAE 55.4), fine-tune 83.1% (U-MAE 83.0, MAE 82.9) on
ImageNet-1K val, with the CLS feature (`--cls_token`).

TPU memory (docs/scaling.md, compiled ahead of time): batch 1024 on a
v5e-8 11.3 GiB per chip of 16, on a v4-32 7.2 of 32; batch 4096 on a
v4-32 23.9 of 32 and on a v5e-32 11.3 of 16 (data parallel, bf16).
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  return common.mae_family(arg, "mmae", "B/16", reg_lambda=0.01, reg_mu=1.0)
