"""The PyTorch side of tests/test_interop_torch.py (run in its own process).

  python tests/interop_torch_ref.py --dir=D --vit=vit_base_patch16_224 \
      --resnet=resnet50 --mae=768,12,12,512,8,16

Reads what the JAX side wrote into D (``ours_vit/resnet/mae.safetensors``,
``inputs.npz``: NHWC images, MAE ``ids_restore``) and writes ``torch.npz``:

* forward outputs of timm (``timm.create_model(name, pretrained=True,
  num_classes=0, pretrained_cfg_overlay=dict(file=...))``), torchvision
  (``load_state_dict(strict=True)``) and a reference MAE on our files;
* ``timm_vit/resnet.safetensors`` and ``ref_mae.safetensors``: models with
  random weights (random BatchNorm statistics, LayerNorm affines), with
  their outputs (``rev_*``), for the import direction.

The reference MAE is facebookresearch/mae ``models_mae.py``
(``MaskedAutoencoderViT.forward_encoder`` / ``forward_decoder``) assembled
from timm ``Block`` modules as that file does, with the masking given by
``ids_restore`` instead of drawn (``random_masking`` with
``ids_shuffle = argsort(ids_restore)``).
"""

import argparse
import functools
import os

import numpy as np
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn


class RefMAE(nn.Module):
  """models_mae.MaskedAutoencoderViT (norm_pix_loss aside), fixed masking."""

  def __init__(self, img, patch, chans, dim, depth, heads, ddim, ddepth,
               dheads):
    super().__init__()
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    self.patch_embed = PatchEmbed(img, patch, chans, dim)
    n = self.patch_embed.num_patches
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim),
                                  requires_grad=False)
    self.blocks = nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True,
                                       norm_layer=norm) for _ in range(depth)])
    self.norm = norm(dim)
    self.decoder_embed = nn.Linear(dim, ddim, bias=True)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
    self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, ddim),
                                          requires_grad=False)
    self.decoder_blocks = nn.ModuleList([
        Block(ddim, dheads, 4.0, qkv_bias=True, norm_layer=norm)
        for _ in range(ddepth)])
    self.decoder_norm = norm(ddim)
    self.decoder_pred = nn.Linear(ddim, patch**2 * chans, bias=True)

  def forward_encoder(self, x, ids_restore, len_keep):
    x = self.patch_embed(x)
    x = x + self.pos_embed[:, 1:, :]
    b, _, d = x.shape
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, d))
    cls = self.cls_token + self.pos_embed[:, :1, :]
    x = torch.cat((cls.expand(b, -1, -1), x), dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)

  def forward_decoder(self, x, ids_restore):
    x = self.decoder_embed(x)
    mask_tokens = self.mask_token.repeat(
        x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(
        x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    x = self.decoder_pred(self.decoder_norm(x))
    return x[:, 1:, :]


def randomize(model, seed):
  """Random LayerNorm / BatchNorm affines and statistics, biases too."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith("num_batches_tracked") or "pos_embed" in name and (
          isinstance(model, RefMAE)):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(0.1 * torch.randn(t.shape, generator=g))
  return model.eval()


def save(model, path):
  save_file({k: v.contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}, path)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dir", required=True)
  p.add_argument("--vit", required=True)
  p.add_argument("--resnet", required=True)
  p.add_argument("--mae", required=True)  # dim,depth,heads,ddim,ddepth,dheads
  args = p.parse_args()
  torch.set_num_threads(2)
  d = args.dir
  inputs = np.load(os.path.join(d, "inputs.npz"))
  x = torch.from_numpy(inputs["images"]).permute(0, 3, 1, 2).contiguous()
  ids_restore = torch.from_numpy(inputs["ids_restore"]).long()
  out = {}
  with torch.no_grad():
    # Ours -> timm / torchvision / reference MAE.
    vit_file = os.path.join(d, "ours_vit.safetensors")
    vit = timm.create_model(args.vit, pretrained=True, num_classes=0,
                            pretrained_cfg_overlay=dict(file=vit_file))
    vit.eval()
    out["vit_tokens"] = vit.forward_features(x)
    resnet_file = os.path.join(d, "ours_resnet.safetensors")
    res = timm.create_model(args.resnet, pretrained=True, num_classes=0,
                            pretrained_cfg_overlay=dict(file=resnet_file))
    out["resnet_feats"] = res.eval()(x)
    tv = getattr(torchvision.models, args.resnet)()
    tv.fc = nn.Identity()
    tv.load_state_dict(load_file(resnet_file), strict=True)
    out["tv_feats"] = tv.eval()(x)
    dim, depth, heads, ddim, ddepth, dheads = map(int, args.mae.split(","))
    img, patch = x.shape[-1], vit.patch_embed.patch_size[0]
    ref = RefMAE(img, patch, 3, dim, depth, heads, ddim, ddepth, dheads)
    ref.load_state_dict(load_file(os.path.join(d, "ours_mae.safetensors")),
                        strict=True)
    ref.eval()
    len_keep = int(inputs["len_keep"])
    latent = ref.forward_encoder(x, ids_restore, len_keep)
    out["mae_latent"] = latent
    out["mae_pred"] = ref.forward_decoder(latent, ids_restore)
    # timm / reference models with random weights -> files (for ours).
    vit = randomize(timm.create_model(args.vit, num_classes=0), 1)
    save(vit, os.path.join(d, "timm_vit.safetensors"))
    out["rev_vit_tokens"] = vit.forward_features(x)
    res = randomize(timm.create_model(args.resnet, num_classes=0), 2)
    save(res, os.path.join(d, "timm_resnet.safetensors"))
    out["rev_resnet_feats"] = res(x)
    ref = randomize(ref, 3)
    save(ref, os.path.join(d, "ref_mae.safetensors"))
    latent = ref.forward_encoder(x, ids_restore, len_keep)
    out["rev_mae_latent"] = latent
    out["rev_mae_pred"] = ref.forward_decoder(latent, ids_restore)
  np.savez(os.path.join(d, "torch.npz"),
           **{k: v.numpy() for k, v in out.items()})


if __name__ == "__main__":
  main()
