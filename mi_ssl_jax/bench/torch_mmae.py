r"""PyTorch reference of the M-MAE train step, for speed parity (CPU, GPU).

  python -m mi_ssl_jax.bench.torch_mmae --steps=20
  python -m mi_ssl_jax.bench.torch_mmae --steps=5 --threads=2 --json=/tmp/t.json
  python -m mi_ssl_jax.bench.torch_mmae --preset=vitb --device=cuda \
      --amp=bf16 [--compile] --json=/tmp/t.json      # the GPU comparison

The same model and step as `mi_ssl_jax.methods.mmae` with the parity
configuration of `mi_ssl_jax.bench.parity` (docs/benchmarks.md, "CPU
parity"), written as the official code is:

* `MaskedAutoencoderViT` of facebookresearch/mae `models_mae.py` (identical
  in M-MAE): timm `PatchEmbed`, fixed 2-D sin-cos position embeddings, CLS
  token, per-sample random masking by `argsort` of uniform noise + `gather`,
  timm `Block`s (pre-norm, fused qkv with bias, exact GELU, LayerNorm eps
  1e-6; timm's attention calls `F.scaled_dot_product_attention`), a decoder
  with mask tokens, the normalised-pixel MSE on masked patches;
* M-MAE's regulariser (`M-MAE/loss_func.py::uniformity_loss_TCR`, the form
  of `mi_ssl_jax.losses.mmae_regularizer`): R = −log det(I_d + (μ/d)·F̂ᵀF̂)
  on the row-normalised CLS feature of the masked input, with the encoder's
  final LayerNorm applied twice (`forward` re-applies `self.norm`);
* an online linear probe on the detached CLS feature, cross-entropy weight 1;
* `torch.optim.AdamW(betas=(0.9, 0.95))`, weight decay 0.05 on parameters
  with ndim > 1 only (timm `add_weight_decay`), as MAE's `main_pretrain.py`.

Presets: `parity` (the CPU parity configuration) and `vitb` (ViT-B/16 at
224 px, decoder 512 × 8 blocks × 16 heads, batch 256, 1000 classes: the
official M-MAE ImageNet model, `configs/mmae_vitb.py`). On a GPU, `--amp=bf16`
runs the network under `torch.autocast(bfloat16)` (the official code uses
AMP), the regulariser in float32 (as ours), and `--compile` wraps the model
in `torch.compile` (default mode): what a PyTorch user gets with one line.

Timing: one fixed synthetic batch (as `mi_ssl_jax.bench.step`), `--warmup`
untimed steps (with `--compile` they include the compilation, reported as
`compile_s`), then `--steps` timed steps (zero_grad, forward, backward,
optimizer step, `loss.item()`, which synchronises the device); prints
steps/s and images/s of the median step.

Needs the optional extra `bench` (`pip install -e '.[bench]'`: torch, timm).
The library never imports this file (nor torch).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

# The parity configuration (docs/benchmarks.md, "CPU parity").
DEFAULTS = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192,
                depth=12, num_heads=3, decoder_embed_dim=128,
                decoder_depth=2, decoder_num_heads=4, mlp_ratio=4.0,
                num_classes=10, batch_size=128, mask_ratio=0.75,
                reg_lambda=0.01, reg_mu=1.0, lr=1.5e-4 * 128 / 256,
                weight_decay=0.05)
# The official M-MAE ViT-B/16 ImageNet model (configs/mmae_vitb.py).
VITB = dict(DEFAULTS, img_size=224, patch_size=16, embed_dim=768, depth=12,
            num_heads=12, decoder_embed_dim=512, decoder_depth=8,
            decoder_num_heads=16, num_classes=1000, batch_size=256,
            lr=1.5e-4)
PRESETS = {"parity": DEFAULTS, "vitb": VITB}


def sincos_pos_embed_2d(width: int, grid_size: int) -> np.ndarray:
  """MAE `get_2d_sincos_pos_embed(width, grid, cls_token=True)`: [1+N, D]."""

  def emb_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid = np.meshgrid(np.arange(grid_size, dtype=np.float32),
                     np.arange(grid_size, dtype=np.float32))
  emb = np.concatenate([emb_1d(width // 2, grid[0]),
                        emb_1d(width // 2, grid[1])], axis=1)
  return np.concatenate([np.zeros([1, width]), emb], axis=0).astype(
      np.float32)


class MaskedAutoencoderViT(nn.Module):
  """facebookresearch/mae `models_mae.py::MaskedAutoencoderViT` + M-MAE."""

  def __init__(self, img_size, patch_size, in_chans, embed_dim, depth,
               num_heads, decoder_embed_dim, decoder_depth,
               decoder_num_heads, mlp_ratio, num_classes):
    super().__init__()
    norm_layer = partial(nn.LayerNorm, eps=1e-6)
    self.patch_size = patch_size
    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
    n = self.patch_embed.num_patches
    grid = int(n**0.5)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(
        torch.from_numpy(sincos_pos_embed_2d(embed_dim, grid))[None],
        requires_grad=False)  # [1, 1+N, D]
    self.blocks = nn.ModuleList([
        Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True,
              norm_layer=norm_layer) for _ in range(depth)])
    self.norm = norm_layer(embed_dim)
    self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.decoder_pos_embed = nn.Parameter(
        torch.from_numpy(sincos_pos_embed_2d(decoder_embed_dim, grid))[None],
        requires_grad=False)
    self.decoder_blocks = nn.ModuleList([
        Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
              norm_layer=norm_layer) for _ in range(decoder_depth)])
    self.decoder_norm = norm_layer(decoder_embed_dim)
    self.decoder_pred = nn.Linear(decoder_embed_dim,
                                  patch_size**2 * in_chans, bias=True)
    self.fc = nn.Linear(embed_dim, num_classes)  # online probe (torch init)
    self._init_weights()

  def _init_weights(self):
    """MAE `initialize_weights` (the probe keeps PyTorch's default)."""
    w = self.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
    nn.init.normal_(self.cls_token, std=0.02)
    nn.init.normal_(self.mask_token, std=0.02)
    for name, m in self.named_modules():
      if name == "fc":
        continue
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
          nn.init.constant_(m.bias, 0)
      elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)

  def patchify(self, imgs):
    """[B, C, H, W] -> [B, L, p*p*C] (MAE `patchify`)."""
    p, c = self.patch_size, imgs.shape[1]
    h = w = imgs.shape[2] // p
    x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p**2 * c)

  def random_masking(self, x, mask_ratio):
    n, length, d = x.shape  # [B, L, D]
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(
        x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore

  def forward_encoder(self, x, mask_ratio):
    x = self.patch_embed(x)
    x = x + self.pos_embed[:, 1:, :]
    x, mask, ids_restore = self.random_masking(x, mask_ratio)
    cls_token = self.cls_token + self.pos_embed[:, :1, :]
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x), mask, ids_restore

  def forward_decoder(self, x, ids_restore):
    x = self.decoder_embed(x)
    mask_tokens = self.mask_token.repeat(
        x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(
        x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    x = self.decoder_pred(self.decoder_norm(x))
    return x[:, 1:, :]

  def forward_loss(self, imgs, pred, mask):
    target = self.patchify(imgs)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # norm_pix_loss (unbiased)
    target = (target - mean) / (var + 1.0e-6)**0.5
    loss = ((pred - target)**2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()

  def forward(self, imgs, mask_ratio):
    latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
    pred = self.forward_decoder(latent, ids_restore)
    loss = self.forward_loss(imgs, pred, mask)
    cls_feats = self.norm(latent)[:, 0]  # M-MAE: the norm applied again
    return loss, cls_feats


def uniformity_loss_tcr(features, mu: float):
  """R = −log det(I_d + (μ/d)·F̂ᵀF̂), F̂ row-normalised [B, d]."""
  f = F.normalize(features, dim=1)
  d = f.shape[1]
  eye = torch.eye(d, dtype=f.dtype, device=f.device)
  return -torch.logdet(eye + (mu / d) * f.T @ f)


def make_step(cfg: dict, seed: int = 0, device: str = "cpu",
              amp: str = "none", compile_model: bool = False):
  """(step() -> loss float, model): one M-MAE train step on a fixed batch.

  `device`: "cpu" or "cuda"; `amp`: "none" or "bf16" (autocast of the
  network; the regulariser and the probe's cross-entropy in float32);
  `compile_model`: wrap the model in `torch.compile`.
  """
  torch.manual_seed(seed)
  model = MaskedAutoencoderViT(
      cfg["img_size"], cfg["patch_size"], cfg["in_chans"], cfg["embed_dim"],
      cfg["depth"], cfg["num_heads"], cfg["decoder_embed_dim"],
      cfg["decoder_depth"], cfg["decoder_num_heads"], cfg["mlp_ratio"],
      cfg["num_classes"]).to(device)
  model.train()
  decay, no_decay = [], []
  for p in model.parameters():
    if p.requires_grad:
      (decay if p.ndim > 1 else no_decay).append(p)
  opt = torch.optim.AdamW(
      [{"params": no_decay, "weight_decay": 0.0},
       {"params": decay, "weight_decay": cfg["weight_decay"]}],
      lr=cfg["lr"], betas=(0.9, 0.95))
  g = torch.Generator().manual_seed(seed)
  s = cfg["img_size"]
  imgs = torch.rand(cfg["batch_size"], cfg["in_chans"], s, s,
                    generator=g).to(device)
  labels = torch.randint(0, cfg["num_classes"], (cfg["batch_size"],),
                         generator=g).to(device)
  net = torch.compile(model) if compile_model else model
  autocast = (torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
              if amp == "bf16" else contextlib.nullcontext())

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    with autocast:
      mae, cls = net(imgs, cfg["mask_ratio"])
    cls = cls.float()
    reg = uniformity_loss_tcr(cls, cfg["reg_mu"])
    ce = F.cross_entropy(model.fc(cls.detach()), labels)
    loss = mae + cfg["reg_lambda"] * reg + ce
    loss.backward()
    opt.step()
    return loss.item()

  return step, model


def run(steps: int, warmup: int, threads: int, seed: int = 0,
        preset: str = "parity", device: str = "cpu", amp: str = "none",
        compile_model: bool = False) -> dict:
  """Times `steps` train steps; returns the result record."""
  torch.set_num_threads(threads)
  cfg = PRESETS[preset]
  step, model = make_step(cfg, seed, device, amp, compile_model)
  t0 = time.perf_counter()
  first = step()
  for _ in range(max(warmup - 1, 0)):
    step()
  warmup_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
  return {"impl": "pytorch" + (" + torch.compile" if compile_model else ""),
          "torch": torch.__version__, "preset": preset, "device": name,
          "amp": amp, "batch_size": cfg["batch_size"],
          "threads": torch.get_num_threads(), "steps": steps,
          "step_s": med, "step_s_min": min(times),
          "steps_per_s": 1.0 / med,
          "img_per_s": cfg["batch_size"] / med,
          "compile_s": warmup_s if compile_model else None,
          "first_loss": first,
          "params": sum(p.numel() for p in model.parameters()
                        if p.requires_grad)}


# Self-time kinds of the PyTorch profile, named like bench.step's op kinds.
_MATMUL_KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                   "aten::mkldnn_convolution", "aten::convolution_backward")


def profile_kinds(steps: int, threads: int, seed: int = 0) -> dict:
  """Self CPU time per step by kind: matmul/conv, fused attention, other.

  `torch.profiler` over `steps` steps after 3 warm-up steps. Fused attention
  (`scaled_dot_product_*` kernels: both attention matmuls and the softmax)
  is its own kind; in our step those matmuls count as matmul/conv and the
  softmax as other ops.
  """
  from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

  torch.set_num_threads(threads)
  step, _ = make_step(DEFAULTS, seed)
  for _ in range(3):
    step()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  kinds = {"matmul/conv": 0.0, "fused attention": 0.0, "other ops": 0.0}
  for event in prof.key_averages():
    seconds = event.self_cpu_time_total * 1e-6 / steps
    if event.key in _MATMUL_KERNELS:
      kinds["matmul/conv"] += seconds
    elif "scaled_dot_product" in event.key:
      kinds["fused attention"] += seconds
    else:  # elementwise, layout copies, autograd and optimizer overhead
      kinds["other ops"] += seconds
  return kinds


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=2,
                 help="torch.set_num_threads")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default="", help="write the result here")
  p.add_argument("--profile", action="store_true",
                 help="print self time per step by op kind and exit")
  p.add_argument("--preset", default="parity", choices=sorted(PRESETS))
  p.add_argument("--device", default="cpu", help="cpu | cuda")
  p.add_argument("--amp", default="none", choices=("none", "bf16"))
  p.add_argument("--compile", action="store_true",
                 help="torch.compile the model")
  args = p.parse_args(argv)
  if args.profile:
    kinds = profile_kinds(args.steps, args.threads, args.seed)
    total = sum(kinds.values())
    print("pytorch op kinds: " + ", ".join(
        f"{k} {1e3 * v:.1f} ms ({100 * v / total:.0f}%)"
        for k, v in kinds.items()), flush=True)
    return
  r = run(args.steps, args.warmup, args.threads, args.seed, args.preset,
          args.device, args.amp, args.compile)
  print(f"{r['impl']} {r['torch']} on {r['device']} ({r['threads']} "
        f"threads, {r['preset']}, amp {r['amp']}): {r['steps_per_s']:.3f} "
        f"steps/s, {r['img_per_s']:.1f} img/s (median "
        f"{1e3 * r['step_s']:.1f} ms, min {1e3 * r['step_s_min']:.1f} ms, "
        f"{r['steps']} steps), {r['params']} params, first loss "
        f"{r['first_loss']:.6f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  main()
