"""Layer-wise learning-rate decay for ViT fine-tuning (MAE semantics).

MAE ``util/lr_decay.py`` (``param_groups_lrd`` / ``get_layer_id_for_vit``),
used by M-MAE's ``finetune.sh`` (layer decay 0.65 for ViT-B,
docs/methods.md §3.3):

* with L transformer blocks, ``num_layers = L + 1``;
* layer id 0: ``cls_token``, ``pos_embed`` and everything in ``patch_embed``
  (we also put ``mask_token`` / ``reg_tokens`` / ``dist_token`` here);
* layer id i + 1: everything in ``blocks.<i>``;
* layer id L + 1: everything else (final norm, ``fc_norm``, head);
* learning-rate multiplier of layer id j: ``decay ** (L + 1 − j)``, so the
  head gets 1, block i gets decay^(L − i), the embeddings decay^(L + 1).

Weight decay follows the same file: none for parameters with ndim ≤ 1 (biases,
norm scales) and for ``cls_token`` / ``pos_embed`` / ``dist_token``.

Parameter paths come from the pytree (NNX ``State`` or nested dicts), joined
with "/"; e.g. ``encoder/blocks/3/attn/qkv/kernel``. The patterns are
regular expressions, so a model that names things differently passes its own.
The multiplier is applied as a final ``optax`` stage that scales each leaf's
update; for AdamW (update = −lr·(adam + wd·θ)) this is exactly a per-group
learning rate lr·s, as MAE's parameter groups do (optax has no per-leaf
learning-rate transform, hence this small stateless stage).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

BLOCK_PATTERN = r"(?:^|/)blocks/(\d+)(?:/|$)"
EMBED_PATTERN = (r"(?:^|/)(?:cls_token|pos_embed|patch_embed|mask_token|"
                 r"reg_tokens?|dist_token)(?:/|$)")
NO_DECAY_PATTERN = r"(?:^|/)(?:cls_token|pos_embed|dist_token)(?:/|$)"


def path_str(path: tuple[Any, ...]) -> str:
  """A pytree key path as ``"a/b/0/c"``."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def num_blocks(params: Any, block_pattern: str = BLOCK_PATTERN) -> int:
  """Number of transformer blocks L found in ``params`` (max index + 1)."""
  ids = [int(m.group(1)) for path, _ in
         jax.tree_util.tree_flatten_with_path(params)[0]
         if (m := re.search(block_pattern, path_str(path)))]
  if not ids:
    raise ValueError(
        f"no parameter path matches the block pattern {block_pattern!r}; "
        f"pass block_pattern= matching the model's block names")
  return max(ids) + 1


def has_blocks(params: Any, block_pattern: str = BLOCK_PATTERN) -> bool:
  """Whether any parameter path matches ``block_pattern``."""
  return any(re.search(block_pattern, path_str(path)) for path, _ in
             jax.tree_util.tree_flatten_with_path(params)[0])


def vit_layer_id(path: str, num_layers: int,
                 block_pattern: str = BLOCK_PATTERN,
                 embed_pattern: str = EMBED_PATTERN) -> int:
  """MAE ``get_layer_id_for_vit``: 0 embeddings, i+1 block i, else L+1.

  Args:
    path: "/"-joined parameter path.
    num_layers: L + 1 (MAE's ``len(model.blocks) + 1``).
    block_pattern: regex with one group capturing the block index.
    embed_pattern: regex matching embedding parameters.
  """
  if re.search(embed_pattern, path):
    return 0
  m = re.search(block_pattern, path)
  if m:
    return int(m.group(1)) + 1
  return num_layers


def layer_decay_scales(params: Any, decay: float,
                       blocks: int | None = None,
                       block_pattern: str = BLOCK_PATTERN,
                       embed_pattern: str = EMBED_PATTERN) -> Any:
  """Pytree (like ``params``) of learning-rate multipliers decay^(L+1−id).

  Args:
    params: parameter pytree.
    decay: layer decay (0.65 for MAE/M-MAE ViT-B, 0.75 for ViT-L).
    blocks: number of blocks L (default: counted from ``params``).
    block_pattern: regex with one group capturing the block index.
    embed_pattern: regex matching embedding parameters.
  """
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"layer decay must be in (0, 1], got {decay}")
  blocks = num_blocks(params, block_pattern) if blocks is None else blocks
  num_layers = blocks + 1
  return jax.tree_util.tree_map_with_path(
      lambda path, _: float(decay ** (num_layers - vit_layer_id(
          path_str(path), num_layers, block_pattern, embed_pattern))),
      params)


def weight_decay_mask(params: Any,
                      no_decay_pattern: str = NO_DECAY_PATTERN) -> Any:
  """True where weight decay applies: ndim > 1 and not a token / pos_embed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: bool(p.ndim > 1 and not re.search(
          no_decay_pattern, path_str(path))), params)


def scale_by_layer_decay(decay: float, blocks: int | None = None,
                         block_pattern: str = BLOCK_PATTERN,
                         embed_pattern: str = EMBED_PATTERN
                         ) -> optax.GradientTransformation:
  """Multiplies each update by its layer's decay^(L+1−id) (chain it last)."""

  def scale(updates, params):
    del params
    scales = layer_decay_scales(updates, decay, blocks, block_pattern,
                                embed_pattern)
    return jax.tree.map(lambda u, s: u * s, updates, scales)

  return optax.stateless(scale)


def finetune_adamw(learning_rate: optax.ScalarOrSchedule, *,
                   weight_decay: float = 0.05, layer_decay: float = 0.65,
                   b1: float = 0.9, b2: float = 0.999,
                   blocks: int | None = None,
                   block_pattern: str = BLOCK_PATTERN,
                   embed_pattern: str = EMBED_PATTERN,
                   no_decay_pattern: str = NO_DECAY_PATTERN,
                   ) -> optax.GradientTransformation:
  """MAE fine-tuning optimizer: AdamW + layer-wise lr decay + no-decay mask.

  Defaults are MAE's ViT-B / M-MAE recipe (docs/methods.md §3.3): AdamW with
  default betas, weight decay 0.05, layer decay 0.65. ``layer_decay=1``
  leaves out the decay stage (models without transformer blocks).
  """
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                      mask=lambda p: weight_decay_mask(p, no_decay_pattern))
  if layer_decay == 1.0:
    return adamw
  return optax.chain(
      adamw,
      scale_by_layer_decay(layer_decay, blocks, block_pattern, embed_pattern))
