"""Fine-tuning blocks (layer-wise lr decay, mixup/cutmix) and the MAE family's
online probe."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mi_ssl_jax.finetune import layer_decay, mixup


def _vit_params(depth=3, d=4):
  z = lambda *s: jnp.ones(s)
  block = lambda: {"attn": {"qkv": {"kernel": z(d, 3 * d), "bias": z(3 * d)}},
                   "norm1": {"scale": z(d), "bias": z(d)}}
  return {
      "cls_token": z(1, 1, d), "pos_embed": z(1, 5, d),
      "patch_embed": {"proj": {"kernel": z(2, 2, 3, d), "bias": z(d)}},
      "blocks": {i: block() for i in range(depth)},
      "norm": {"scale": z(d), "bias": z(d)},
      "head": {"kernel": z(d, 10), "bias": z(10)},
  }


def test_layer_decay_multipliers_follow_mae():
  params = _vit_params(depth=3)
  s = layer_decay.layer_decay_scales(params, 0.5)
  # L = 3 blocks: embeddings decay^(L+1), block i decay^(L-i), rest 1.
  assert s["cls_token"] == s["pos_embed"] == 0.5 ** 4
  assert s["patch_embed"]["proj"]["kernel"] == 0.5 ** 4
  for i in range(3):
    assert s["blocks"][i]["attn"]["qkv"]["kernel"] == 0.5 ** (3 - i)
    assert s["blocks"][i]["norm1"]["bias"] == 0.5 ** (3 - i)
  assert s["norm"]["scale"] == s["head"]["kernel"] == 1.0
  m = layer_decay.weight_decay_mask(params)
  assert not m["cls_token"] and not m["pos_embed"]
  assert not m["head"]["bias"] and not m["blocks"][0]["norm1"]["scale"]
  assert m["head"]["kernel"] and m["patch_embed"]["proj"]["kernel"]
  assert m["blocks"][2]["attn"]["qkv"]["kernel"]
  with pytest.raises(ValueError, match="block pattern"):
    layer_decay.num_blocks({"w": jnp.ones(2)})
  assert layer_decay.has_blocks(params)
  assert not layer_decay.has_blocks({"fc": {"kernel": jnp.ones((2, 2))}})


def test_finetune_adamw_scales_updates_per_layer_on_nnx_model():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(4, 4, rngs=rngs)

  class ViT(nnx.Module):
    def __init__(self, rngs):
      self.cls_token = nnx.Param(jnp.ones((1, 1, 4)))
      self.blocks = nnx.List([Block(rngs) for _ in range(2)])
      self.head = nnx.Linear(4, 3, rngs=rngs)

  def updates_of(tx):
    model = ViT(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return upd

  plain = updates_of(optax.adamw(1e-2, weight_decay=0.0))
  decayed = updates_of(layer_decay.finetune_adamw(
      1e-2, weight_decay=0.0, layer_decay=0.5))
  ratio = jax.tree.map(lambda a, b: float(jnp.mean(a / b)), decayed, plain)
  assert ratio["cls_token"] == pytest.approx(0.5 ** 3)
  assert ratio["blocks"][0]["fc"]["kernel"] == pytest.approx(0.5 ** 2)
  assert ratio["blocks"][1]["fc"]["kernel"] == pytest.approx(0.5)
  assert ratio["head"]["kernel"] == pytest.approx(1.0)


def test_mixup_cutmix_pixels_and_targets_agree():
  b, c, eps = 6, 5, 0.1
  images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None,
                                                              None],
                            (b, 8, 8, 1))
  labels = jnp.arange(b) % c
  smooth = mixup.smooth_labels(labels, c, eps)
  assert float(smooth[0, 0]) == pytest.approx(1 - eps + eps / c)
  assert float(smooth[0, 1]) == pytest.approx(eps / c)
  fn = jax.jit(lambda m: mixup.apply_mix(images, labels, m, num_classes=c,
                                         label_smoothing=eps))
  kinds = set()
  for seed, (mix, cut) in enumerate([(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)] * 3):
    m = mixup.sample_mix(np.random.default_rng([seed, 7]), 8, 8,
                         mixup_alpha=mix, cutmix_alpha=cut)
    kinds.add("cutmix" if m["box"][1] > m["box"][0] else "mixup")
    out, targets = fn(m)
    lam = float(m["lam"])
    assert 0.0 <= lam <= 1.0
    # Row i mixes image i with image b-1-i: its mean pixel must be
    # lam*i + (1-lam)*(b-1-i), for Mixup and for CutMix (corrected lam).
    want = lam * np.arange(b) + (1 - lam) * np.arange(b)[::-1]
    np.testing.assert_allclose(np.asarray(out).mean(axis=(1, 2, 3)), want,
                               atol=1e-5)
    np.testing.assert_allclose(targets, lam * smooth + (1 - lam) * smooth[::-1],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, atol=1e-6)
  assert kinds == {"cutmix", "mixup"}
  # prob = 0: untouched images, lam = 1, smoothed one-hot targets.
  m = mixup.sample_mix(np.random.default_rng(0), 8, 8, prob=0.0)
  out, targets = fn(m)
  assert float(m["lam"]) == 1.0
  np.testing.assert_array_equal(out, images)
  np.testing.assert_allclose(targets, smooth, atol=1e-7)
  logits = jax.random.normal(jax.random.key(1), (b, c))
  hard = mixup.soft_target_cross_entropy(logits, jax.nn.one_hot(labels, c))
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  assert float(hard) == pytest.approx(float(ref), rel=1e-6)


def _mae_family(online_probe=True):
  """A 1-block MAE (the tiny Fashion-MNIST recipe) and one labelled batch."""
  from mi_ssl_jax import methods, model_state  # noqa: PLC0415
  from mi_ssl_jax.configs import fmnist_mae  # noqa: PLC0415
  config = model_state.method_config(
      fmnist_mae.fmnist_mae("mae", 1.0, tiny=True), 2, platform="cpu")
  with config.unlocked():
    config.online_probe = online_probe
  method = methods.get_method("mae")
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 28, 28, 1)),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  return method, method.init(config, nnx.Rngs(0)), batch


def test_mae_online_probe_stops_gradient_masks_padding_and_learns():
  """The online probe of methods/mae.py (CE of a linear head on
  stop_gradient(CLS), added to the loss) never changes the encoder, ignores
  padding rows (label -1) and learns."""
  key = jax.random.key(3)
  method, model, batch = _mae_family()
  _, plain, _ = _mae_family(online_probe=False)  # same encoder/decoder init
  grad_of = lambda m: nnx.grad(
      lambda m: method.loss_fn(m, batch, key, 0)[0])(m)["mae"]
  for a, b in zip(jax.tree.leaves(grad_of(model)),
                  jax.tree.leaves(grad_of(plain)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  # Padding rows (label -1) drop out of the probe's loss exactly.
  padded = {**batch, "label": batch["label"].at[10:].set(-1)}
  _, metrics = method.loss_fn(model, padded, key, 0)
  logits = model.probe(model.mae(batch["image"], key=key).cls)  # [16, 10]
  want = optax.softmax_cross_entropy_with_integer_labels(
      logits[:10], batch["label"][:10]).mean()
  assert float(metrics["probe_ce"]) == pytest.approx(float(want), rel=1e-5)
  # Trained alone (fixed encoder, fixed masks), it fits the batch.
  probe_only = nnx.All(nnx.Param, nnx.PathContains("probe"))
  opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=probe_only)

  @nnx.jit
  def step(model, opt):
    (_, metrics), grads = nnx.value_and_grad(
        lambda m: method.loss_fn(m, batch, key, 0), has_aux=True,
        argnums=nnx.DiffState(0, probe_only))(model)
    opt.update(model, grads)
    return metrics

  first = step(model, opt)
  for _ in range(40):
    last = step(model, opt)
  assert float(last["probe_ce"]) < 0.5 * float(first["probe_ce"])
  assert float(last["probe_acc"]) > float(first["probe_acc"])
