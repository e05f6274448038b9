r"""Weights in and out: PyTorch checkpoints (MAE, timm, torchvision) <-> ours.

Import (``config.init_from = "<format>:<file>"``; a plain path is still
another run of this library):

* ``mae:<file>``: a facebookresearch/mae pre-training checkpoint
  (``models_mae.py`` ``MaskedAutoencoderViT``: ``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.N.*``, ``norm``, then ``decoder_embed``,
  ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N.*``,
  ``decoder_norm``, ``decoder_pred``; the released encoder-only files too),
  ``.pth`` (its ``model`` entry) or ``.safetensors``;
* ``timm:<file>`` (alias ``torchvision:``): a timm ``VisionTransformer``
  (``vit_base_patch16_224`` names) or a timm / torchvision ResNet
  (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``).

Pre-training (`mi_ssl_jax.train`) puts the converted arrays into every part
of the run's model that has their names (:func:`place`): an MAE checkpoint
into ``MaskedAutoencoder``, a timm ViT into its encoder, a ResNet into the
student backbone and the EMA teacher (with the BatchNorm running statistics,
which live in the model's non-parameter state). The evaluation jobs
(fine-tuning, linear probe, kNN) build the bare backbone from the file
(`mi_ssl_jax.jobs.weights.load_imported`). Export (``python -m
mi_ssl_jax.jobs.weights export``)
writes a run's ViT or ResNet backbone with timm / torchvision names, or its
whole MAE with the official names, as ``.safetensors``.

Layouts (PyTorch -> ours): ``nn.Linear.weight`` [out, in] -> ``kernel``
[in, out]; ``nn.Conv2d.weight`` OIHW -> HWIO; ``LayerNorm``/``BatchNorm``
``weight`` -> ``scale``; ``running_mean``/``running_var`` -> ``mean``/``var``
(``num_batches_tracked`` is dropped). The qkv projection is fused in both
(timm ``Attention.qkv``: output order q, k, v, then heads, then head dims;
`models.vit.Attention`), so it is transposed, not split. Our MAE encoder and
decoder use fixed 2-D sin-cos position tables (`models.vit.sincos_pos_embed_2d`,
MAE ``util/pos_embed.py``), not parameters: an imported ``pos_embed`` /
``decoder_pos_embed`` must equal that table (float32 roundoff, 1e-6) unless
the model learns its table (``VisionTransformer(pos_embed="learn")``).
docs/interop.md has the commands and what the tests prove.

The library never imports torch: ``.safetensors`` files are read and written
with ``safetensors.numpy``; a ``.pth`` file is converted by ``python -m
mi_ssl_jax.interop convert`` in its own process (torch and XLA in one process
can crash), which needs ``pip install 'mi_ssl_jax[interop]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from mi_ssl_jax.errors import UserError

FORMATS = ("mae", "timm", "torchvision")
INSTALL = "pip install 'mi_ssl_jax[interop]'"
# |imported - ours| allowed for a fixed sin-cos table (float32 roundoff).
TABLE_ATOL = 1e-6
_TABLES = ("pos_embed", "decoder_pos_embed")
_TOKENS = ("cls_token", "mask_token") + _TABLES
_DECODER = ("decoder_embed", "mask_token", "decoder_pos_embed",
            "decoder_blocks", "decoder_norm", "decoder_pred")
_LAYER_NORMS = ("norm", "norm1", "norm2", "decoder_norm")
_TIMM_SIZES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large",
               "H": "huge"}


class InteropError(UserError, ValueError):
  """A checkpoint that cannot be converted; the message says what to do."""


def parse_spec(init_from: str) -> tuple[str | None, str]:
  """``"mae:/p.pth"`` -> ``("mae", "/p.pth")``; a run directory -> (None, it).

  ``gs://...`` and other URLs are run directories (their scheme is not a
  format name).
  """
  fmt, sep, path = str(init_from).partition(":")
  if sep and fmt in FORMATS and not path.startswith("//"):
    return fmt, path
  return None, str(init_from)


# ----------------------------------------------------------------- files


def _unwrap(state: Mapping[str, Any]) -> dict[str, Any]:
  """The state dict inside a training checkpoint (``{"model": ...}``)."""
  for key in ("model", "state_dict", "module"):
    if key in state and isinstance(state[key], Mapping):
      return dict(state[key])
  return dict(state)


def convert_pth(src: str, dst: str) -> None:
  """A ``.pth`` state dict -> ``.safetensors`` (float32), with torch.

  Runs in a process without XLA (`read_state` starts one). Reads with
  ``torch.load(weights_only=True)`` (no code from the file runs), allowing
  the ``argparse.Namespace`` that MAE training checkpoints carry.
  """
  import argparse as _argparse  # noqa: PLC0415

  import torch  # noqa: PLC0415
  from safetensors.torch import save_file  # noqa: PLC0415
  with torch.serialization.safe_globals([_argparse.Namespace]):
    state = torch.load(src, map_location="cpu", weights_only=True)
  tensors = {k: (v.float() if v.is_floating_point() else v).contiguous()
             for k, v in _unwrap(state).items() if torch.is_tensor(v)}
  save_file(tensors, dst, metadata={"format": "pt"})


def read_state(path: str) -> dict[str, np.ndarray]:
  """The arrays of a ``.safetensors`` or ``.pth`` file, by PyTorch name.

  Raises:
    InteropError: missing file, unknown suffix, torch absent for ``.pth``.
  """
  if not os.path.isfile(path):
    raise InteropError(f"{path!r} is not a file; give the checkpoint file, "
                       "e.g. mae:/ckpt/mae_pretrain_vit_base.pth")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # noqa: PLC0415
    try:
      return _unwrap(load_file(path))
    except Exception as e:  # noqa: BLE001
      raise InteropError(f"cannot read {path!r} as safetensors "
                         f"({' '.join(str(e).split())[:160]})") from None
  if not path.endswith((".pth", ".pt", ".bin")):
    raise InteropError(f"{path!r}: name a .safetensors or .pth file")
  if importlib.util.find_spec("torch") is None:
    raise InteropError(f"reading {os.path.basename(path)} needs PyTorch: "
                       f"{INSTALL} (or convert it to .safetensors elsewhere)")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "state.safetensors")
    done = subprocess.run(
        [sys.executable, "-m", "mi_ssl_jax.interop", "convert", f"--in={path}",
         f"--out={out}"], capture_output=True, text=True, check=False)
    if done.returncode:
      last = (done.stderr.strip().splitlines() or ["no message"])[-1]
      raise InteropError(f"cannot read {path!r} with torch ({last[:200]})")
    return read_state(out)


def write_state(tensors: Mapping[str, np.ndarray], path: str,
                metadata: Mapping[str, str] | None = None) -> None:
  """Writes float32 arrays as ``.safetensors`` (what timm's loader reads),
  with string ``metadata`` in the header (timm ignores it)."""
  from safetensors.numpy import save_file  # noqa: PLC0415
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
            metadata={"format": "pt", **(metadata or {})})


# The header entry of our ViT exports that records the head count, which
# the arrays do not determine (a standard size's comes from its name).
NUM_HEADS_KEY = "mi_ssl_jax.vit_num_heads"


def read_metadata(path: str) -> dict[str, str]:
  """The string metadata of a ``.safetensors`` header ({} otherwise)."""
  if not path.endswith(".safetensors") or not os.path.isfile(path):
    return {}
  from safetensors import safe_open  # noqa: PLC0415
  with safe_open(path, framework="np") as f:
    return dict(f.metadata() or {})


def export_metadata(module: Any) -> dict[str, str]:
  """Header entries of an exported module: a ViT's (or MAE encoder's) head
  count under `NUM_HEADS_KEY`, so that any size comes back in the jobs."""
  encoder = getattr(module, "encoder", module)
  heads = getattr(encoder, "num_heads", None)
  return {NUM_HEADS_KEY: str(int(heads))} if heads else {}


# ---------------------------------------------------------- name mapping


def _vit_leaf_to_ours(mod: str, leaf: str, arr: np.ndarray, name: str
                      ) -> tuple[str, np.ndarray]:
  last = mod.rpartition(".")[2]
  if mod == "patch_embed.proj":  # Conv2d OIHW -> HWIO
    return ("patch_embed/" + {"weight": "kernel", "bias": "bias"}[leaf],
            arr.transpose(2, 3, 1, 0) if leaf == "weight" else arr)
  if last in _LAYER_NORMS:
    return mod.replace(".", "/") + "/" + {"weight": "scale",
                                          "bias": "bias"}[leaf], arr
  if leaf == "weight" and arr.ndim == 2:  # nn.Linear [out, in] -> [in, out]
    return mod.replace(".", "/") + "/kernel", arr.T
  if leaf == "bias" and arr.ndim == 1:
    return mod.replace(".", "/") + "/bias", arr
  raise KeyError(name)


def vit_from_torch(state: Mapping[str, np.ndarray], *, mae: bool
                   ) -> dict[str, np.ndarray]:
  """timm ViT / MAE names -> our flat keys (``"blocks/0/attn/qkv/kernel"``).

  With ``mae=True`` the keys are those of `models.MaskedAutoencoder`
  (encoder under ``encoder/``); otherwise of `models.VisionTransformer`.

  Raises:
    InteropError: a key that is neither (e.g. timm's ``fc_norm`` or
      ``ls1.gamma``: a ViT layout this library does not have).
  """
  out = {}
  for name, arr in state.items():
    arr = np.asarray(arr)
    try:
      if name in _TOKENS:
        key = name
      else:
        mod, _, leaf = name.rpartition(".")
        key, arr = _vit_leaf_to_ours(mod, leaf, arr, name)
    except KeyError:
      raise InteropError(
          f"checkpoint key {name!r} {tuple(arr.shape)} has no counterpart in "
          "this library's ViT (pre-norm blocks with fused qkv, CLS token, "
          "final norm, optional head)") from None
    if mae and not name.startswith(_DECODER):
      key = "encoder/" + key
    out[key] = np.ascontiguousarray(arr)
  return out


def vit_to_torch(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `vit_from_torch` (either layout): our keys -> PyTorch names.

  Position tables under ``pos_embed`` / ``decoder_pos_embed`` pass through.
  """
  out = {}
  for key, arr in flat.items():
    arr = np.asarray(arr)
    key = key.removeprefix("encoder/")
    if key in _TOKENS:
      out[key] = arr
      continue
    mod, _, leaf = key.rpartition("/")
    mod = mod.replace("/", ".")
    if mod == "patch_embed":
      out["patch_embed.proj." + {"kernel": "weight", "bias": "bias"}[leaf]] = (
          arr.transpose(3, 2, 0, 1) if leaf == "kernel" else arr)
    elif leaf == "kernel":
      out[mod + ".weight"] = arr.T
    elif leaf == "scale":
      out[mod + ".weight"] = arr
    elif leaf == "bias":
      out[mod + ".bias"] = arr
    else:
      raise ValueError(f"internal: unmapped ViT key {key!r}")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


_BN_TO_OURS = {"weight": "scale", "bias": "bias", "running_mean": "mean",
               "running_var": "var"}
_BN_TO_TORCH = {v: k for k, v in _BN_TO_OURS.items()}


def resnet_stages(state: Mapping[str, Any]) -> tuple[int, ...]:
  """Blocks per stage of a torchvision ResNet state dict (``layer1`` ...)."""
  counts = {}
  for name in state:
    m = re.match(r"layer(\d+)\.(\d+)\.", name)
    if m:
      s, j = int(m.group(1)), int(m.group(2))
      counts[s] = max(counts.get(s, 0), j + 1)
  return tuple(counts[s] for s in sorted(counts))


def resnet_from_torch(state: Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
  """torchvision / timm ResNet names -> our flat `models.ResNet` keys.

  ``layer{s}.{j}`` is our ``blocks/{i}`` with i counting blocks over the
  stages; BatchNorm statistics become ``.../mean`` and ``.../var``.
  """
  stages = resnet_stages(state)
  starts = np.cumsum((0,) + stages)
  out = {}
  for name, arr in state.items():
    arr = np.asarray(arr)
    if name.endswith("num_batches_tracked"):
      continue
    parts = name.split(".")
    if parts[0].startswith("layer") and parts[0][5:].isdigit():
      idx = int(starts[int(parts[0][5:]) - 1] + int(parts[1]))
      parts = ["blocks", str(idx)] + parts[2:]
    mod, leaf = parts[:-1], parts[-1]
    is_bn = mod[-1].startswith("bn") or mod[-2:-1] == ["downsample"] and (
        mod[-1] == "1")
    if leaf == "weight" and arr.ndim == 4:
      key, arr = "/".join(mod) + "/kernel", arr.transpose(2, 3, 1, 0)
    elif mod == ["fc"] and leaf in ("weight", "bias"):
      key, arr = "fc/" + ("kernel" if leaf == "weight" else "bias"), (
          arr.T if leaf == "weight" else arr)
    elif is_bn and leaf in _BN_TO_OURS:
      key = "/".join(mod) + "/" + _BN_TO_OURS[leaf]
    else:
      raise InteropError(
          f"checkpoint key {name!r} {tuple(arr.shape)} has no counterpart in "
          "this library's ResNet (torchvision layout: conv1, bn1, layerN, "
          "fc)")
    out[key] = np.ascontiguousarray(arr)
  return out


def resnet_to_torch(flat: Mapping[str, np.ndarray],
                    stage_ends: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Inverse of `resnet_from_torch`; ``stage_ends`` as `ResNet.stage_ends`."""
  starts = (0,) + tuple(e + 1 for e in stage_ends[:-1])
  out = {}
  for key, arr in flat.items():
    arr = np.asarray(arr)
    parts = key.split("/")
    if parts[0] == "blocks":
      i = int(parts[1])
      s = max(k for k, st in enumerate(starts) if st <= i)
      parts = [f"layer{s + 1}", str(i - starts[s])] + parts[2:]
    mod, leaf = parts[:-1], parts[-1]
    if leaf == "kernel":
      name = ".".join(mod) + ".weight"
      arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
    else:
      name = ".".join(mod) + "." + _BN_TO_TORCH.get(leaf, leaf)
    out[name] = np.ascontiguousarray(arr)
  return out


def from_torch(state: Mapping[str, np.ndarray], fmt: str
               ) -> tuple[str, dict[str, np.ndarray]]:
  """(kind, our flat arrays) of a PyTorch state dict in format ``fmt``.

  kind: ``"mae"`` (MaskedAutoencoder keys), ``"vit"`` (VisionTransformer)
  or ``"resnet"`` (ResNet; running statistics included).
  """
  if "patch_embed.proj.weight" in state:
    kind = "mae" if fmt == "mae" else "vit"
    return kind, vit_from_torch(state, mae=kind == "mae")
  if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
    if fmt == "mae":
      raise InteropError("a ResNet checkpoint is not an MAE one; write "
                         "timm:<file> for timm / torchvision ResNets")
    return "resnet", resnet_from_torch(state)
  raise InteropError(
      f"the checkpoint is neither a ViT (patch_embed.proj.weight) nor a "
      f"ResNet (conv1.weight, layer1.0.conv1.weight); its first keys: "
      f"{sorted(state)[:4]}")


# --------------------------------------------------------------- placing


def flatten(tree: Any) -> dict[str, Any]:
  """A nested dict -> ``{"a/0/b": leaf}`` (list indices as digits)."""
  import jax  # noqa: PLC0415
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(p, "key", getattr(p, "idx", p)))
                   for p in path): leaf for path, leaf in leaves}


def _table_error(source: str, key: str, got, want) -> InteropError:
  if got.shape != want.shape:
    return InteropError(
        f"{source}: {key!r} has shape {tuple(got.shape)}, the model's fixed "
        f"table {tuple(want.shape)}: a different image or patch size; set "
        "the run's image_size (and model.patch_size) to the checkpoint's")
  diff = float(np.max(np.abs(got.astype(np.float64) - want)))
  return InteropError(
      f"{source}: {key!r} is not the fixed 2-D sin-cos table of this model "
      f"(max |difference| {diff:.3g} > {TABLE_ATOL}): a learned position "
      "table, which MaskedAutoencoder does not have; fine-tune or probe it "
      "with the evaluation jobs (they build a ViT with a learned table)")


def place(imported: Mapping[str, np.ndarray], trees: Mapping[str, Any], *,
          image_size: int, source: str) -> tuple[dict[str, Any], list[str]]:
  """Puts converted arrays into every part of a model that has their keys.

  Args:
    imported: our flat keys -> arrays (`from_torch`).
    trees: named pytrees of the model's arrays, e.g. ``{"params": ...,
      "rest": ...}`` (jax arrays, with shardings, or ShapeDtypeStructs).
    image_size: the model's input side (checks the fixed position tables).
    source: how the error messages name the checkpoint.

  Returns:
    (the trees with the imported values as jax arrays of the model's
    sharding and dtype, the model parts (key prefixes) that received them).
    A top-level part of the checkpoint's layout that the file lacks
    entirely (the MAE decoder, a classification head) keeps its values.

  Raises:
    InteropError: no part of the model has the keys, a shape differs (the
      message names the key and both shapes), a fixed table differs.
  """
  import jax  # noqa: PLC0415

  from mi_ssl_jax.models import vit  # noqa: PLC0415
  flat = {name: flatten(t) for name, t in trees.items()}
  where = {k: name for name, f in flat.items() for k in f}
  keys = [k for k in imported if k.rpartition("/")[2] not in _TABLES]
  anchor = next((k for k in keys if k.endswith("patch_embed/kernel")),
                keys[0])
  prefixes = sorted({k[:len(k) - len(anchor)] for k in where
                     if k == anchor or k.endswith("/" + anchor)})
  best, best_missing = None, None
  matched = []
  for pfx in prefixes:
    missing = [k for k in keys if pfx + k not in where]
    if not missing:
      matched.append(pfx)
    elif best_missing is None or len(missing) < len(best_missing):
      best, best_missing = pfx, missing
  if not matched:
    if best is None:
      raise InteropError(
          f"{source}: the model has no part with the checkpoint's keys (such "
          f"as {anchor!r}); import a {_kind_name(imported)} checkpoint into a "
          "method whose model has one")
    raise InteropError(
        f"{source}: the checkpoint has {best_missing[0]!r}, which the model "
        f"(at {best or '/'!r}) lacks ({len(best_missing)} such keys): a "
        "different depth or variant; set config.model to the checkpoint's")
  updates = {}
  for pfx in matched:
    own = [k[len(pfx):] for k in where if k.startswith(pfx)]
    groups = {k.split("/")[0] for k in imported}
    left = [k for k in own if k not in imported and k.split("/")[0] in groups]
    if left:
      raise InteropError(
          f"{source}: the model has {pfx + left[0]!r}, which the checkpoint "
          f"lacks ({len(left)} such keys): a different depth or variant; "
          "set config.model to the checkpoint's")
    for k, arr in imported.items():
      target = pfx + k
      if target not in where:  # a fixed table of the model
        width = arr.shape[-1]
        enc = pfx + ("encoder/" if pfx + "encoder/patch_embed/kernel" in where
                     else "")
        patch = flat_shape(where, flat, enc + "patch_embed/kernel")
        grid = image_size // patch if patch else 0
        want = vit.sincos_pos_embed_2d(width, grid, True)[None]
        if arr.shape != want.shape or np.max(np.abs(
            arr.astype(np.float64) - want)) > TABLE_ATOL:
          raise _table_error(source, k, arr, want)
        continue
      leaf = flat[where[target]][target]
      if tuple(arr.shape) != tuple(leaf.shape):
        raise InteropError(
            f"{source}: {k!r} has shape {tuple(arr.shape)} in the checkpoint "
            f"and {tuple(leaf.shape)} in the model (at {target!r}): a "
            "different variant, patch or image size; set config.model / "
            "image_size to the checkpoint's")
      updates[target] = _to_device(arr, leaf, jax)
  out = {}
  for name, tree in trees.items():
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    names = list(flat[name])
    out[name] = jax.tree_util.tree_unflatten(
        treedef, [updates.get(n, leaf) for n, leaf in zip(names, leaves,
                                                           strict=True)])
  return out, matched


def flat_shape(where, flat, key) -> int:
  """The patch size of the patch-embedding kernel at ``key`` (0 if none)."""
  if key not in where:
    return 0
  return int(flat[where[key]][key].shape[0])


def _kind_name(imported: Mapping[str, Any]) -> str:
  if any(k.startswith("encoder/") for k in imported):
    return "MAE"
  return "ViT" if "patch_embed/kernel" in imported else "ResNet"


def _to_device(arr: np.ndarray, like: Any, jax) -> Any:
  """``arr`` as a jax array with the dtype and sharding of ``like``."""
  arr = np.asarray(arr, dtype=like.dtype)
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return jax.numpy.asarray(arr)
  return jax.make_array_from_callback(arr.shape, sharding,
                                      lambda idx: arr[idx])


def import_into(init_from: str, trees: Mapping[str, Any], *,
                image_size: int) -> dict[str, Any]:
  """``trees`` (``{"params": ..., "rest": ...}`` of a pre-training run)
  with the weights of ``init_from`` = ``"<format>:<file>"`` put in place."""
  from absl import logging  # noqa: PLC0415
  fmt, path = parse_spec(init_from)
  kind, imported = from_torch(read_state(path), fmt)
  out, parts = place(imported, trees, image_size=image_size,
                     source=f"config.init_from={init_from!r}")
  logging.info("Imported %d arrays of a %s checkpoint (%s) into %s",
               len(imported), kind, path, ", ".join(p or "/" for p in parts))
  return out


# ---------------------------------------------------------------- export


def module_arrays(module: Any) -> dict[str, np.ndarray]:
  """Parameters and BatchNorm statistics of an NNX module, flat, numpy."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
  return {k: np.asarray(jax.device_get(v), np.float32)
          for k, v in flatten(nnx.to_pure_dict(state)).items()}


def export_module(module: Any, fmt: str = "timm") -> dict[str, np.ndarray]:
  """PyTorch-named arrays of a ViT, MAE or ResNet module.

  ``fmt="timm"``: a `VisionTransformer` (timm names; a fixed sin-cos table
  is written as timm's ``pos_embed``) or `ResNet` (torchvision names, which
  timm's ResNets share); an MAE exports its encoder. ``fmt="mae"``: a
  `MaskedAutoencoder` with facebookresearch/mae's names, both tables
  included.
  """
  from mi_ssl_jax import models  # noqa: PLC0415
  if isinstance(module, models.ResNet):
    if fmt == "mae":
      raise InteropError("--format=mae needs an MAE; a ResNet exports with "
                         "--format=timm (torchvision names)")
    return resnet_to_torch(module_arrays(module), module.stage_ends)
  if isinstance(module, models.MaskedAutoencoder):
    if fmt != "mae":
      return export_module(module.encoder, fmt)
    flat = module_arrays(module)
    flat["encoder/pos_embed"] = np.asarray(
        module.encoder.position_embedding(), np.float32)
    flat["decoder_pos_embed"] = models.sincos_pos_embed_2d(
        module.decoder_width, module.encoder.grid_size, True)[None]
    return vit_to_torch(flat)
  if isinstance(module, models.VisionTransformer):
    if fmt == "mae":
      raise InteropError("--format=mae needs an MAE (encoder and decoder); "
                         "this model is a ViT: use --format=timm")
    flat = module_arrays(module)
    flat["pos_embed"] = np.asarray(module.position_embedding(), np.float32)
    return vit_to_torch(flat)
  raise InteropError(f"cannot export a {type(module).__name__}: only ViT, "
                     "MAE and ResNet models have PyTorch layouts here")


def timm_name(module: Any) -> str:
  """The timm architecture with this module's layout (for the hint)."""
  from mi_ssl_jax import models  # noqa: PLC0415
  if isinstance(module, models.MaskedAutoencoder):
    module = module.encoder
  if isinstance(module, models.ResNet):
    return f"resnet{_resnet_depth(module)}"
  size = next((s for s, v in models.VIT_VARIANTS.items()
               if (v["width"], v["depth"]) == (module.width, module.depth)),
              "?")
  return (f"vit_{_TIMM_SIZES.get(size, size)}_patch{module.patch_size}_"
          f"{module.img_size}")


def _resnet_depth(module: Any) -> int:
  from mi_ssl_jax import models  # noqa: PLC0415
  counts = np.diff((-1,) + tuple(module.stage_ends))
  kind = type(module.blocks[0]).__name__
  block = "bottleneck" if kind == "Bottleneck" else "basic"
  return next(d for d, (b, s) in models.RESNET_LAYOUTS.items()
              if b == block and s == tuple(int(c) for c in counts))


def main(argv: list[str] | None = None) -> int:
  """``convert`` a ``.pth`` to safetensors (the process `read_state` runs;
  users call ``python -m mi_ssl_jax.jobs.weights``, which also exports)."""
  parser = argparse.ArgumentParser(prog="python -m mi_ssl_jax.interop")
  sub = parser.add_subparsers(dest="command", required=True)
  cv = sub.add_parser("convert", help=".pth -> .safetensors (needs torch)")
  cv.add_argument("--in", dest="src", required=True)
  cv.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  try:
    if importlib.util.find_spec("torch") is None:
      raise InteropError(f"convert needs PyTorch: {INSTALL}")
    if not os.path.isfile(args.src):
      raise InteropError(f"--in={args.src!r} is not a file")
    convert_pth(args.src, args.out)
  except UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
