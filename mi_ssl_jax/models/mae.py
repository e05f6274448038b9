"""Masked autoencoder (He et al. 2022) as in facebookresearch/mae and M-MAE.

``MaskedAutoencoder`` = a :class:`VisionTransformer` encoder with fixed 2-D
sin-cos position embeddings + a light decoder (default 512 wide, 8 blocks,
16 heads) that predicts the ``p*p*C`` pixels of every patch. Follows
``models_mae.py`` of facebookresearch/mae (identical in M-MAE and U-MAE):

* per-sample random masking by ``argsort`` of uniform noise, keeping a static
  ``int(L * (1 - mask_ratio))`` patches (:func:`random_masking`);
* mask convention: ``mask[b, l] = 1`` for a masked (removed) patch, 0 kept;
* MAE initialisation: Xavier-uniform linears (patch projection as a flattened
  linear), zero biases, CLS and mask tokens N(0, 0.02^2).

The CLS feature returned for M-MAE/U-MAE regularisers is, by default, the
official code's: ``forward_encoder`` applies the final LayerNorm and
``forward`` applies the same LayerNorm *again* before taking token 0
(``cls_double_norm=True``). ``cls_double_norm=False`` gives the single-norm
CLS that the papers describe.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mi_ssl_jax.models import rng
from mi_ssl_jax.models import vit as vit_lib


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C], MAE's order (row, col, chan).

  Equals MAE's ``patchify`` (``nchpwq->nhwpqc``) applied to the NCHW image.
  """
  b, h, w, _ = images.shape
  if h % patch_size or w % patch_size:
    raise ValueError(f"image size {h}x{w} is not a multiple of the patch size "
                     f"{patch_size}.")
  return rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)",
                   p=patch_size, q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int,
               channels: int = 3) -> jax.Array:
  """Inverse of :func:`patchify` for square images: [B, L, p*p*C] -> NHWC."""
  b, n, _ = patches.shape
  side = int(round(n**0.5))
  if side * side != n:
    raise ValueError(f"unpatchify needs a square number of patches, got {n}.")
  return rearrange(patches, "b (h w) (p q c) -> b (h p) (w q) c", h=side,
                   p=patch_size, q=patch_size, c=channels)


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Static number of visible patches, MAE's ``int(L * (1 - mask_ratio))``."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
  return int(num_patches * (1 - mask_ratio))


def random_masking(x: jax.Array, key: jax.Array, len_keep: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-sample random masking by argsort of uniform noise (MAE).

  Args:
    x: tokens [B, L, D].
    key: PRNG key for the noise.
    len_keep: static number of tokens to keep.

  Returns:
    ``(x_kept [B, len_keep, D], mask [B, L] float32 with 1 = removed,
    ids_restore [B, L] int32)``.
  """
  b, length, _ = x.shape
  noise = rng.uniform(key, (b, length))  # [B, L]
  ids_shuffle = jnp.argsort(noise, axis=1)  # ascending: small = keep
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :len_keep]  # [B, K]
  x_kept = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  mask = (jnp.arange(length)[None, :] >= len_keep).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(mask, (b, length)),
                             ids_restore, axis=1)  # [B, L]
  return x_kept, mask, ids_restore.astype(jnp.int32)


FEATURE_POOLS = ("cls", "gap", "cls+gap", "tokens")


class MAEOutput(NamedTuple):
  """What :meth:`MaskedAutoencoder.__call__` returns (float32)."""
  pred: jax.Array  # [B, L, p*p*C] predicted pixels for every patch.
  mask: jax.Array  # [B, L] 1 = masked (loss on these), 0 = visible.
  cls: jax.Array  # [B, D] CLS feature of the masked encoder.


class MaskedAutoencoder(nnx.Module):
  """MAE: ViT encoder on visible patches + transformer decoder (pixels).

  Args:
    variant: encoder ViT variant, e.g. ``"B/16"``, ``"L/16"``, ``"Ti/4"``.
    img_size: square input side.
    in_channels: image channels C.
    mask_ratio: default fraction of masked patches (0.75).
    decoder_width, decoder_depth, decoder_heads: decoder sizes (512, 8, 16).
    decoder_mlp_dim: decoder MLP width (default 4 * decoder_width).
    cls_double_norm: True (default, official code) applies the encoder's
      final LayerNorm twice to the returned CLS feature; False once.
    drop_path_rate: encoder stochastic depth (0 in MAE pre-training).
    remat: rematerialise blocks in the backward pass (`vit.REMAT_POLICIES`).
    scan_blocks: run encoder and decoder blocks as scans (`vit.apply_blocks`).
    attention, attention_seq_multiple: how encoder and decoder compute
      attention (`vit.Attention`).
    dtype, param_dtype: compute and parameter dtypes.
    width, depth, mlp_dim, num_heads, patch_size: encoder overrides.
    rngs: used only at construction.
  """

  def __init__(self, variant: str = "B/16", *, img_size: int = 224,
               in_channels: int = 3, mask_ratio: float = 0.75,
               decoder_width: int = 512, decoder_depth: int = 8,
               decoder_heads: int = 16, decoder_mlp_dim: int | None = None,
               cls_double_norm: bool = True, drop_path_rate: float = 0.0,
               remat: bool | str = False, scan_blocks: bool = False,
               attention: str = "xla",
               attention_seq_multiple: int = 64, dtype=jnp.float32,
               param_dtype=jnp.float32, width: int | None = None,
               depth: int | None = None, mlp_dim: int | None = None,
               num_heads: int | None = None, patch_size: int | None = None,
               rngs: nnx.Rngs):
    num_kept(1, mask_ratio)  # validates the ratio early.
    self.encoder = vit_lib.VisionTransformer(
        variant, img_size=img_size, in_channels=in_channels, pool="cls",
        pos_embed="sincos2d", drop_path_rate=drop_path_rate, remat=remat,
        scan_blocks=scan_blocks,
        attention=attention, attention_seq_multiple=attention_seq_multiple,
        dtype=dtype, param_dtype=param_dtype, width=width, depth=depth,
        mlp_dim=mlp_dim, num_heads=num_heads, patch_size=patch_size,
        rngs=rngs)
    enc = self.encoder
    self.mask_ratio = float(mask_ratio)
    self.cls_double_norm = cls_double_norm
    self.patch_size, self.in_channels = enc.patch_size, in_channels
    self.num_patches = enc.num_patches
    self.decoder_width = decoder_width
    self.remat, self.dtype = enc.remat, dtype
    self.scan_blocks = bool(scan_blocks)
    lin = dict(kernel_init=vit_lib.xavier_uniform,
               bias_init=jax.nn.initializers.zeros, dtype=dtype,
               param_dtype=param_dtype, rngs=rngs)
    self.decoder_embed = nnx.Linear(enc.width, decoder_width, **lin)
    self.mask_token = nnx.Param(vit_lib.token_init(
        rngs.params(), (1, 1, decoder_width), param_dtype))
    self.decoder_blocks = vit_lib.make_blocks(
        decoder_width, decoder_depth, decoder_mlp_dim or 4 * decoder_width,
        decoder_heads, drop_path_rate=0.0, dtype=dtype,
        param_dtype=param_dtype, attention=attention,
        attention_seq_multiple=attention_seq_multiple, rngs=rngs)
    self.decoder_norm = vit_lib.LayerNorm(
        decoder_width, epsilon=vit_lib.LN_EPS, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)
    self.decoder_pred = nnx.Linear(
        decoder_width, self.patch_size**2 * in_channels, **lin)

  def encode_masked(self, images: jax.Array, key: jax.Array,
                    mask_ratio: float | None = None, drop_key=None
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MAE ``forward_encoder``: [B,H,W,C] -> latent [B, 1+K, D] (normed),
    mask [B, L], ids_restore [B, L]."""
    ratio = self.mask_ratio if mask_ratio is None else mask_ratio
    enc = self.encoder
    x = enc.embed_patches(images)  # [B, L, D]
    x, mask, ids_restore = random_masking(
        x, key, num_kept(self.num_patches, ratio))  # [B, K, D]
    x = jnp.concatenate([enc.cls_with_pos(x.shape[0]), x], axis=1)
    return enc.run_blocks(x, drop_key), mask, ids_restore

  def decode(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """MAE ``forward_decoder``: latent [B, 1+K, D] -> pixels [B, L, p*p*C]."""
    x = vit_lib.token_linear(self.decoder_embed, latent)  # [B, 1+K, Dd]
    b, length = ids_restore.shape
    n_mask = length + 1 - x.shape[1]
    mask_tokens = jnp.broadcast_to(
        self.mask_token.get_value().astype(x.dtype),
        (b, n_mask, self.decoder_width))
    x_ = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)  # [B, L, Dd]
    x_ = jnp.take_along_axis(x_, ids_restore[:, :, None], axis=1)  # unshuffle
    x = jnp.concatenate([x[:, :1], x_], axis=1)  # [B, 1+L, Dd]
    pos = vit_lib.sincos_pos_embed_2d(
        self.decoder_width, self.encoder.grid_size, True)
    x = x + jnp.asarray(pos, x.dtype)[None]
    x = vit_lib.apply_blocks(self.decoder_blocks, x, None, self.remat,
                             self.scan_blocks)
    x = vit_lib.token_linear(self.decoder_pred, self.decoder_norm(x))
    return x[:, 1:]  # drop CLS: [B, L, p*p*C]

  def __call__(self, images: jax.Array, *, key: jax.Array,
               mask_ratio: float | None = None) -> MAEOutput:
    """Masked forward for pre-training.

    Args:
      images: float [B, H, W, C].
      key: PRNG key; ``fold_in(key, 0)`` draws the mask, ``fold_in(key, 1)``
        the encoder's drop path.
      mask_ratio: overrides the constructor's ratio (static).

    Returns:
      :class:`MAEOutput` (pred, mask, cls), all float32. ``cls`` is
      ``norm(norm(x))[:, 0]`` with ``cls_double_norm`` (official code) and
      ``norm(x)[:, 0]`` otherwise.
    """
    latent, mask, ids_restore = self.encode_masked(
        images, rng.fold_in(key, 0), mask_ratio,
        drop_key=rng.fold_in(key, 1))
    pred = self.decode(latent, ids_restore)
    cls = self.encoder.norm(latent) if self.cls_double_norm else latent
    return MAEOutput(pred.astype(jnp.float32), mask,
                     cls[:, 0].astype(jnp.float32))

  def features(self, images: jax.Array, pool: str = "cls") -> jax.Array:
    """Deterministic evaluation features of all patches (no masking).

    Args:
      images: float [B, H, W, C].
      pool: ``"cls"`` (default): the CLS token of the final norm, MAE/M-MAE's
        linear-probe feature (``--cls_token``), [B, D]; ``"gap"``: the mean
        of the patch tokens after the final norm (MAE ``global_pool``),
        [B, D]; ``"cls+gap"``: both concatenated, [B, 2D]; ``"tokens"``: all
        patch tokens after the final norm, flattened in patch order,
        [B, N·D] (keeps the spatial layout).

    Returns:
      float32 features.
    """
    tokens = self.encoder.encode(images)  # [B, 1+N, D]
    if pool == "cls":
      feats = tokens[:, 0]
    elif pool == "gap":
      feats = tokens[:, 1:].mean(1)
    elif pool == "cls+gap":
      feats = jnp.concatenate([tokens[:, 0], tokens[:, 1:].mean(1)], -1)
    elif pool == "tokens":
      feats = tokens[:, 1:].reshape(tokens.shape[0], -1)
    else:
      raise ValueError(f"unknown feature pool {pool!r}; use one of "
                       f"{', '.join(FEATURE_POOLS)}")
    return feats.astype(jnp.float32)

  def patchify(self, images: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, L, p*p*C] with this model's patch size."""
    return patchify(images, self.patch_size)

  def unpatchify(self, patches: jax.Array) -> jax.Array:
    """[B, L, p*p*C] -> [B, H, W, C] with this model's patch size."""
    return unpatchify(patches, self.patch_size, self.in_channels)
