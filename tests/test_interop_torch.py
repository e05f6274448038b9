"""Forward parity with timm, torchvision and the official MAE code, both ways.

Ours -> PyTorch: our ViT, ResNet and MAE with random weights are exported
(mi_ssl_jax/interop.py), loaded by timm (`pretrained_cfg_overlay`),
torchvision (`load_state_dict(strict=True)`) and a reference MAE assembled
from timm blocks as facebookresearch/mae `models_mae.py`
(tests/interop_torch_ref.py), and their outputs on the same images compared.
PyTorch -> ours: random timm models (and the reference MAE) are written by
torch, imported here, and give the same outputs; exporting them again gives
the same arrays bit for bit.

float32 on CPU. Tolerance: |ours - torch| <= 1e-5 + 1e-5·|torch| elementwise
(`np.testing.assert_allclose(rtol=1e-5, atol=1e-5)`). PyTorch runs in its own
process (torch and XLA in one process can crash); the tests skip without the
interop extra (torch, timm), as in CI.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax import interop, models
from tests.test_interop import randomize

ROOT = Path(__file__).resolve().parents[1]
RTOL = ATOL = 1e-5

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "timm",
                                                   "torchvision")),
    reason="needs the interop extra (torch, timm, torchvision)")

# (timm ViT, its variant, ResNet depth, MAE decoder width/depth/heads)
SMALL = ("vit_tiny_patch16_224", "Ti/16", 18, (128, 2, 4))
LARGE = ("vit_base_patch16_224", "B/16", 50, (512, 8, 16))


@pytest.mark.parametrize("setup", [
    SMALL, pytest.param(LARGE, marks=pytest.mark.slow)],
    ids=["ViT-Ti+R18", "ViT-B+R50"])
def test_forward_parity_both_ways(tmp_path, setup):
  vit_name, variant, depth, (dw, dd, dh) = setup
  d = str(tmp_path)
  images = np.asarray(jax.random.normal(jax.random.key(0), (2, 224, 224, 3)),
                      np.float32)
  # Ours -> files.
  vit = randomize(models.VisionTransformer(variant, img_size=224,
                                           pos_embed="learn",
                                           rngs=nnx.Rngs(0)), 10)
  resnet = randomize(models.ResNet(depth, rngs=nnx.Rngs(0)), 11)
  mae = randomize(models.MaskedAutoencoder(
      variant, img_size=224, decoder_width=dw, decoder_depth=dd,
      decoder_heads=dh, rngs=nnx.Rngs(0)), 12)
  interop.write_state(interop.export_module(vit),
                      os.path.join(d, "ours_vit.safetensors"))
  interop.write_state(interop.export_module(resnet),
                      os.path.join(d, "ours_resnet.safetensors"))
  interop.write_state(interop.export_module(mae, "mae"),
                      os.path.join(d, "ours_mae.safetensors"))
  latent, _, ids_restore = mae.encode_masked(images, jax.random.key(1))
  np.savez(os.path.join(d, "inputs.npz"), images=images,
           ids_restore=np.asarray(ids_restore),
           len_keep=models.num_kept(mae.num_patches, mae.mask_ratio))
  enc = mae.encoder
  subprocess.run(
      [sys.executable, str(ROOT / "tests" / "interop_torch_ref.py"),
       f"--dir={d}", f"--vit={vit_name}", f"--resnet=resnet{depth}",
       f"--mae={enc.width},{enc.depth},{enc.num_heads},{dw},{dd},{dh}"],
      check=True, cwd=ROOT)
  ref = np.load(os.path.join(d, "torch.npz"))
  close = lambda a, b: np.testing.assert_allclose(
      np.asarray(a), b, rtol=RTOL, atol=ATOL)
  close(vit.encode(images), ref["vit_tokens"])
  ours = resnet(images, train=False)
  close(ours, ref["resnet_feats"])
  close(ours, ref["tv_feats"])
  close(latent, ref["mae_latent"])
  close(mae.decode(latent, ids_restore), ref["mae_pred"])
  # Files written by torch -> ours, and back to identical arrays.
  for name, fmt in (("timm_vit", "timm"), ("timm_resnet", "timm"),
                    ("ref_mae", "mae")):
    state = interop.read_state(os.path.join(d, f"{name}.safetensors"))
    kind, imported = interop.from_torch(state, fmt)
    target = {"timm_vit": vit, "timm_resnet": resnet, "ref_mae": mae}[name]
    graphdef, variables = nnx.split(target)
    trees, parts = interop.place(
        imported, {"m": nnx.to_pure_dict(variables)}, image_size=224,
        source=name)
    assert parts == [""]
    nnx.replace_by_pure_dict(variables, trees["m"])
    model = nnx.merge(graphdef, variables)
    if name == "timm_vit":
      close(model.encode(images), ref["rev_vit_tokens"])
    elif name == "timm_resnet":
      close(model(images, train=False), ref["rev_resnet_feats"])
    else:
      latent, _, _ = model.encode_masked(images, jax.random.key(1))
      close(latent, ref["rev_mae_latent"])
      close(model.decode(latent, ids_restore), ref["rev_mae_pred"])
    again = interop.export_module(model, fmt)
    assert sorted(again) == sorted(state)
    for k in state:
      np.testing.assert_array_equal(again[k], state[k], err_msg=k)
