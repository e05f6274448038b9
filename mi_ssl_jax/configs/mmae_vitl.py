r"""M-MAE ViT-L/16 on ImageNet-1K, 200 epochs (Tan et al., ICML 2024).

The official `M-MAE/pretrain.sh` (ViT-L): batch 1024 (128 × 8 GPUs), AdamW
(0.9, 0.95), base lr 1.5e-4, weight decay 0.05, 40 warm-up epochs, cosine,
mask 0.75, `--reg TCR --lamb 1e-2 --uniformity_mu 3`; effective λ/8 as the
released runs (`official_world_size=8`; 0 for the exact gradient).

Launch (TFDS `imagenet2012` prepared in DATA; see launch/README.md):

  python -m mi_ssl_jax.main --config=configs/mmae_vitl.py \
      --workdir=/runs/mmae_vitl --config.data_dir=$DATA
  # 16 GiB chips (v5e): recompute the blocks in the backward pass
  python -m mi_ssl_jax.main --config=configs/mmae_vitl.py \
      --workdir=/runs/mmae_vitl --config.data_dir=$DATA \
      --config.model.remat=full

Memory (docs/scaling.md, compiled ahead of time for a v5e-8 at batch 1024,
128 per chip): data parallel 14.7 GiB per chip of 16 only because XLA
rematerialises on its own (16.4 GiB as written: does not fit; as written
data parallelism holds 104 per chip); `param_sharding=fsdp` over the 8
chips also 14.7 GiB only through XLA's rematerialisation (15.0 GiB as
written: the parameters and optimizer state shrink from 3.7 to 0.5 GiB per
chip, but the step's temporaries grow as much: activations, not
parameters, fill the chip; as written FSDP holds 112 per chip);
`model.remat=full` 6.4 GiB as written (9.6 GiB left; up to 584 per chip)
for 22 % more FLOPs per step;
`model.scan_blocks=True` with `model.remat=dots_no_batch` (keep the weight
matmuls' outputs, recompute the rest) 13.8 GiB (2.2 GiB left) for 0.7 %
more. On 32 GiB chips (v4, v6e) the defaults fit (12.2 GiB on a v4-32).

Diagnostics (spectra, LiDAR, α-ReQ, per-block token entropies): the
trainer's default, every 1000 steps (the first multiple of log_steps = 100
at or above 1000; about 0.8 epoch at batch 1024), on the first log line and
at the last step, on 256 evenly spaced examples of each batch of 1024
(`config.diagnostics_steps`, `config.diagnostics_examples`; 0 turns them
off). Their measured cost: docs/benchmarks.md, "Diagnostics".

Expected result (paper): fine-tune 84.3% top-1 (MAE 83.3); linear probe
U-MAE + 0.2 points (≈ 66.0%, docs/methods.md §3.4; the exact value is
unverified).
"""

from mi_ssl_jax.configs import common


def get_config(arg=None):
  return common.mae_family(arg, "mmae", "L/16", reg_lambda=0.01, reg_mu=3.0)
