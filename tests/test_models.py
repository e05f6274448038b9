"""Tests for the ViT and MAE models (mi_ssl_jax.models.vit / .mae)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax import models
from mi_ssl_jax.models.param_count import count_params

pytestmark = pytest.mark.usefixtures("fast_compile")


# Tiny settings shared by the concrete (non-abstract) forwards.
TINY = dict(width=32, depth=2, mlp_dim=128, num_heads=4)
TINY_DEC = dict(decoder_width=32, decoder_depth=1, decoder_heads=4)


@nnx.jit(static_argnames=("mask_ratio",))
def mae_fwd(model, x, key, mask_ratio=None):
  return model(x, key=key, mask_ratio=mask_ratio)


@nnx.jit
def mae_features(model, x):
  return model.features(x)


@nnx.jit
def vit_fwd(model, x, key=None):
  return model(x, key=key)


def tiny_mae(**kw):
  args = dict(img_size=16, in_channels=3, **TINY, **TINY_DEC,
              rngs=nnx.Rngs(0))
  args.update(kw)
  return models.MaskedAutoencoder("mu/4", **args)


# ------------------------------------------------------------------ variants
def test_decode_variant():
  assert models.decode_variant("B/16") == dict(
      width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)
  assert models.decode_variant("H/14") == dict(
      width=1280, depth=32, mlp_dim=5120, num_heads=16, patch_size=14)
  assert models.decode_variant("Ti/4")["patch_size"] == 4
  assert "patch_size" not in models.decode_variant("S")
  with pytest.raises(ValueError, match="unknown ViT size"):
    models.decode_variant("X/16")
  with pytest.raises(ValueError, match="bad patch size"):
    models.decode_variant("B/x")


# ---------------------------------------------------------- parameter counts
def test_vit_b16_param_count_timm():
  # timm `vit_base_patch16_224(num_classes=0)`: 85,798,656 parameters
  # (86,567,656 with its 1000-class head, the number timm reports; the head
  # is 768*1000 + 1000 = 769,000). Learned [1, 197, 768] pos-embed, CLS.
  n = count_params(lambda r: models.VisionTransformer("B/16", rngs=r))
  assert n == 85_798_656
  assert n + 768 * 1000 + 1000 == 86_567_656


def test_mae_vit_b_and_l_param_counts():
  # facebookresearch/mae `mae_vit_base_patch16` / `mae_vit_large_patch16`
  # (decoder 512 x 8 x 16 heads): sum(p.numel()) = 111,907,840 and
  # 329,541,888. Those totals include the two fixed sin-cos pos-embed
  # tensors (nn.Parameter with requires_grad=False, [1, 197, D] and
  # [1, 197, 512]); here they are constants, so trainable = total - fixed.
  fixed_b = 197 * 768 + 197 * 512
  fixed_l = 197 * 1024 + 197 * 512
  n_b = count_params(lambda r: models.MaskedAutoencoder("B/16", rngs=r))
  n_l = count_params(lambda r: models.MaskedAutoencoder("L/16", rngs=r))
  assert n_b + fixed_b == 111_907_840
  assert n_l + fixed_l == 329_541_888
  assert (n_b, n_l) == (111_655_680, 329_239_296)


# ---------------------------------------------------------- shapes, variants
@pytest.mark.parametrize("size", ["mu", "Ti", "S", "M", "B", "L", "H"])
def test_vit_and_mae_shapes_every_variant_abstract(size):
  # Real widths/heads/MLP sizes traced abstractly (jax.eval_shape: no FLOPs,
  # no memory) on 32 px images with 8 px patches; depth 1 (depth only
  # repeats the same block).
  cfg = models.decode_variant(size)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

  def vit_fwd(x):
    return models.VisionTransformer(f"{size}/8", img_size=32, depth=1,
                                    rngs=nnx.Rngs(0))(x)

  def mae_fwd(x):
    m = models.MaskedAutoencoder(f"{size}/8", img_size=32, depth=1,
                                 decoder_depth=1, rngs=nnx.Rngs(0))
    return m(x, key=jax.random.key(0))

  assert jax.eval_shape(vit_fwd, x).shape == (2, cfg["width"])
  out = jax.eval_shape(mae_fwd, x)
  assert out.pred.shape == (2, 16, 8 * 8 * 3)
  assert out.mask.shape == (2, 16)
  assert out.cls.shape == (2, cfg["width"])


@pytest.mark.parametrize("pool,pos", [("cls", "learn"), ("gap", "sincos2d")])
def test_vit_small_image_forward(pool, pos):
  model = models.VisionTransformer(
      "Ti/4", img_size=28, in_channels=1, num_classes=10, pool=pool,
      pos_embed=pos, **TINY, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
  logits = vit_fwd(model, x)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert model.encode(x).shape == (3, 1 + 49, 32)
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((3, 1, 28, 28)))


# ------------------------------------------------------------------- masking
def test_random_masking_counts_and_distinct_sets():
  b, length, d, ratio = 16, 49, 4, 0.75
  keep = models.num_kept(length, ratio)
  assert keep == int(length * (1 - ratio)) == 12
  x = jax.random.normal(jax.random.key(0), (b, length, d))
  x_kept, mask, ids_restore = models.random_masking(
      x, jax.random.key(1), keep)
  assert x_kept.shape == (b, keep, d)
  np.testing.assert_array_equal(mask.sum(1), np.full(b, length - keep))
  # Kept tokens are exactly the tokens where mask == 0, in shuffled order.
  for i in range(b):
    visible = np.asarray(x[i])[np.asarray(mask[i]) == 0]
    assert sorted(map(tuple, visible.round(6))) == sorted(
        map(tuple, np.asarray(x_kept[i]).round(6)))
  # ids_restore is a permutation; mask sets differ between samples.
  np.testing.assert_array_equal(np.sort(ids_restore, 1),
                                np.tile(np.arange(length), (b, 1)))
  sets = {tuple(np.flatnonzero(np.asarray(m) == 0)) for m in mask}
  assert len(sets) == b


def test_mae_forward_mask_and_key_handling():
  model = tiny_mae(mask_ratio=0.75)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  out = mae_fwd(model, x, jax.random.key(3))
  assert out.pred.shape == (4, 16, 48) and out.cls.shape == (4, 32)
  np.testing.assert_array_equal(out.mask.sum(1), np.full(4, 16 - 4))
  again = mae_fwd(model, x, jax.random.key(3))
  np.testing.assert_array_equal(out.mask, again.mask)  # key-determined
  other = mae_fwd(model, x, jax.random.key(4))
  assert not np.array_equal(out.mask, other.mask)
  # Per-call ratio override keeps int(L * (1 - r)) patches.
  half = mae_fwd(model, x, jax.random.key(3), mask_ratio=0.5)
  np.testing.assert_array_equal(half.mask.sum(1), np.full(4, 8))


def test_mae_cls_single_and_double_norm_match_features():
  # With mask_ratio 0 every patch is kept (only shuffled, and attention is
  # permutation-equivariant), so the masked encoder's CLS equals the
  # deterministic feature, norm(x)[:, 0]; the official double norm applies
  # the same LayerNorm once more (non-trivial for a non-uniform scale).
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  single = tiny_mae(cls_double_norm=False)
  double = tiny_mae(cls_double_norm=True)
  scale = jax.random.uniform(jax.random.key(7), (32,), minval=0.5, maxval=2)
  bias = jax.random.normal(jax.random.key(8), (32,))
  for m in (single, double):
    m.encoder.norm.scale.set_value(scale)
    m.encoder.norm.bias.set_value(bias)
  feats = mae_features(single, x)  # [B, D]
  out1 = mae_fwd(single, x, jax.random.key(1), mask_ratio=0.0)
  out2 = mae_fwd(double, x, jax.random.key(1), mask_ratio=0.0)
  np.testing.assert_allclose(out1.cls, feats, atol=1e-5)
  np.testing.assert_allclose(out2.cls, double.encoder.norm(feats), atol=1e-5)
  assert not np.allclose(out1.cls, out2.cls, atol=1e-3)


# ------------------------------------------------------- patchify, pos-embed
def test_patchify_roundtrip_and_mae_order():
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
  p = models.patchify(x, 4)
  assert p.shape == (2, 9, 48)
  np.testing.assert_array_equal(models.unpatchify(p, 4, 3), x)
  # MAE's patchify on NCHW: reshape (N,C,h,p,w,q) -> 'nchpwq->nhwpqc'.
  nchw = np.asarray(x).transpose(0, 3, 1, 2).reshape(2, 3, 3, 4, 3, 4)
  ref = np.einsum("nchpwq->nhwpqc", nchw).reshape(2, 9, 48)
  np.testing.assert_array_equal(p, ref)


def test_sincos_pos_embed_matches_mae_formula():
  d, g = 16, 3
  emb = models.sincos_pos_embed_2d(d, g)
  assert emb.shape == (1 + g * g, d)
  np.testing.assert_array_equal(emb[0], 0)  # CLS row
  omega = 1.0 / 10000 ** (np.arange(d // 4) / (d // 4))
  i, j = 2, 1  # row (h), column (w) of patch 1 + i*g + j
  row = emb[1 + i * g + j]
  # MAE: first half from grid[0] = w coordinate, second from h.
  np.testing.assert_allclose(row[: d // 4], np.sin(j * omega), rtol=1e-6)
  np.testing.assert_allclose(row[d // 4: d // 2], np.cos(j * omega),
                             rtol=1e-6)
  np.testing.assert_allclose(row[d // 2: 3 * d // 4], np.sin(i * omega),
                             rtol=1e-6)


def test_mae_initialisation():
  model = tiny_mae()
  kernel = np.asarray(model.encoder.patch_embed.kernel.get_value())
  fan_in, fan_out = 4 * 4 * 3, 32  # flattened-linear view, as in MAE
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  assert np.abs(kernel).max() <= limit
  assert abs(kernel.std() - limit / np.sqrt(3)) < 0.1 * limit
  np.testing.assert_array_equal(model.encoder.patch_embed.bias.get_value(), 0)
  qkv = np.asarray(model.encoder.blocks[0].attn.qkv.kernel.get_value())
  assert np.abs(qkv).max() <= np.sqrt(6.0 / (32 + 96))
  tokens = np.concatenate([
      np.ravel(model.encoder.cls_token.get_value()),
      np.ravel(model.mask_token.get_value())])
  assert 0.01 < tokens.std() < 0.03


# -------------------------------------------------------- dtype, stochastic
def test_bf16_forward_finite_and_close_to_float32():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  f32 = tiny_mae()
  bf16 = tiny_mae(dtype=jnp.bfloat16)  # same seed -> same float32 params
  out32 = mae_fwd(f32, x, jax.random.key(1))
  out16 = mae_fwd(bf16, x, jax.random.key(1))
  for a, b in [(out32.pred, out16.pred), (out32.cls, out16.cls)]:
    assert b.dtype == jnp.float32 and np.isfinite(b).all()
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert rel < 3e-2, rel
  leaves = jax.tree.leaves(nnx.state(bf16, nnx.Param))
  assert all(v.dtype == jnp.float32 for v in leaves)


def test_drop_path_uses_call_time_key_only():
  model = models.VisionTransformer("mu/4", img_size=16, drop_path_rate=0.5,
                                   **TINY, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  det = vit_fwd(model, x)
  np.testing.assert_array_equal(det, vit_fwd(model, x, None))
  a = vit_fwd(model, x, jax.random.key(1))
  np.testing.assert_array_equal(a, vit_fwd(model, x, jax.random.key(1)))
  assert not np.allclose(a, det)
  assert not np.allclose(a, vit_fwd(model, x, jax.random.key(2)))
  assert not nnx.state(model, nnx.RngState)  # no RNG state kept


def test_remat_gives_same_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  # A random linear read-out (sum of squares of a LayerNorm output would be
  # ~constant, with gradients that are pure rounding noise).
  readout = jax.random.normal(jax.random.key(1), (2, 32))

  def grads(remat):
    model = models.VisionTransformer("mu/4", img_size=16, remat=remat,
                                     **TINY, rngs=nnx.Rngs(0))
    return nnx.jit(nnx.grad(lambda m: (m(x) * readout).sum()))(model)

  g0, g1 = grads(False), grads(True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-5 * float(np.abs(b).max())), g0, g1)
