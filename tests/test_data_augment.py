"""Augmentation ops: TF (host) vs JAX (device) agreement, device function."""

import colorsys

import jax
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax.data import augment_jax as aj
from mi_ssl_jax.data import augment_tf as at
from mi_ssl_jax.data import make_device_augment

RNG = np.random.default_rng(0)
IMAGE = RNG.uniform(size=(12, 12, 3)).astype(np.float32)


def test_hsv_matches_colorsys():
  pixels = RNG.uniform(size=(50, 3)).astype(np.float32)
  pixels[0] = 0.5  # gray: hue 0, saturation 0
  hsv = np.asarray(jax.jit(aj.rgb_to_hsv)(pixels))
  want = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
  np.testing.assert_allclose(hsv, want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(aj.hsv_to_rgb)(hsv)), pixels,
                             atol=1e-5)


@pytest.mark.parametrize("name,arg", [
    ("adjust_brightness", 1.3), ("adjust_contrast", 0.7),
    ("adjust_saturation", 1.2), ("adjust_hue", 0.08), ("adjust_hue", -0.1)])
def test_color_ops_tf_equal_jax(name, arg):
  got_tf = getattr(at, name)(tf.constant(IMAGE), arg).numpy()
  got_jax = np.asarray(jax.jit(getattr(aj, name))(IMAGE, arg))
  np.testing.assert_allclose(got_tf, got_jax, atol=2e-5)


def test_gray_solarize_blur_tf_equal_jax():
  np.testing.assert_allclose(at.to_grayscale(tf.constant(IMAGE)).numpy(),
                             np.asarray(aj.to_grayscale(IMAGE)), atol=1e-6)
  gray = at.to_grayscale(tf.constant(IMAGE)).numpy()
  np.testing.assert_allclose(gray[..., 0], IMAGE @ [0.299, 0.587, 0.114],
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(aj.solarize(IMAGE)),
                                np.where(IMAGE < 0.5, IMAGE, 1 - IMAGE))
  np.testing.assert_array_equal(at.solarize(tf.constant(IMAGE)).numpy(),
                                np.where(IMAGE < 0.5, IMAGE, 1 - IMAGE))
  blur_tf = at.gaussian_blur(tf.constant(IMAGE), 1.3, 5).numpy()
  blur_jax = np.asarray(jax.jit(aj.gaussian_blur, static_argnums=2)(
      IMAGE, 1.3, 5))
  np.testing.assert_allclose(blur_tf, blur_jax, atol=1e-5)
  # A blur keeps the mean of a constant image and lowers the variance.
  assert blur_tf.std() < IMAGE.std()
  const = np.full((12, 12, 3), 0.3, np.float32)
  np.testing.assert_allclose(blur_tf.mean(), IMAGE.mean(), atol=0.02)
  blurred = at.gaussian_blur(tf.constant(const), 2.0, 5).numpy()
  np.testing.assert_allclose(blurred, const, atol=1e-6)
  assert aj.gaussian_kernel_size(224) == 23 == at.gaussian_kernel_size(224)


def test_random_resized_crop_shape_range_and_seed():
  image = tf.constant(RNG.integers(0, 256, (40, 30, 3)), tf.uint8)
  a = at.random_resized_crop(image, tf.constant([1, 2], tf.int64), 16)
  b = at.random_resized_crop(image, tf.constant([1, 2], tf.int64), 16)
  c = at.random_resized_crop(image, tf.constant([1, 3], tf.int64), 16)
  assert a.shape == (16, 16, 3) and a.dtype == tf.float32
  assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255.0
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.allclose(a.numpy(), c.numpy())


def _views(batch_size=8, size=12):
  rng = np.random.default_rng(1)
  return {
      "view1": rng.uniform(size=(batch_size, size, size, 3)).astype(np.float32),
      "view2": rng.uniform(size=(batch_size, size, size, 3)).astype(np.float32),
      "label": np.arange(batch_size, dtype=np.int32)}


def test_device_augment_identity_when_disabled():
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  augment = make_device_augment(mean=mean, std=std, color_jitter_prob=0.0,
                                grayscale_prob=0.0, blur_prob=(0.0, 0.0),
                                solarize_prob=(0.0, 0.0))
  batch = _views()
  out = jax.jit(augment)(batch, jax.random.key(0))
  for k in ("view1", "view2"):
    np.testing.assert_allclose(out[k], (batch[k] - mean) / np.array(std),
                               rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["label"], batch["label"])


def test_device_augment_applies_configured_ops():
  batch = _views()
  out = jax.jit(make_device_augment(
      mean=(0.0,) * 3, std=(1.0,) * 3, color_jitter_prob=0.0,
      grayscale_prob=1.0, blur_prob=(0.0, 0.0), solarize_prob=(0.0, 1.0)))(
          batch, jax.random.key(0))
  v1, v2 = np.asarray(out["view1"]), np.asarray(out["view2"])
  gray = batch["view1"] @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(v1, np.repeat(gray[..., None], 3, -1), atol=1e-6)
  gray2 = batch["view2"] @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(v2[..., 0], np.where(gray2 < 0.5, gray2,
                                                  1 - gray2), atol=1e-6)


@pytest.mark.parametrize("jitter_prob", [
    0.0, pytest.param(0.8, marks=pytest.mark.slow)])  # Jitter: +10 s compile.
def test_device_augment_sharded_equals_unsharded(jitter_prob):
  """Per-example randomness does not depend on the device layout."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  augment = jax.jit(make_device_augment(
      mean=(0.5,) * 3, std=(0.25,) * 3, color_jitter_prob=jitter_prob,
      grayscale_prob=0.5, blur_prob=(0.5, 0.5), solarize_prob=(0.5, 0.5)))
  batch = _views(batch_size=16)
  key = jax.random.key(3)
  ref = augment(batch, key)
  sharded = augment(jax.device_put(batch, sharding), key)
  assert sharded["view1"].sharding.is_equivalent_to(sharding, 4)
  for k in ("view1", "view2"):
    np.testing.assert_allclose(np.asarray(ref[k]), np.asarray(sharded[k]),
                               atol=1e-5)
    assert np.isfinite(np.asarray(ref[k])).all()
  same = np.asarray(augment(batch, key)["view1"])
  np.testing.assert_array_equal(same, np.asarray(ref["view1"]))
  other = np.asarray(augment(batch, jax.random.key(4))["view1"])
  assert not np.allclose(other, same)
  # Different examples get different randomness (not one draw per batch).
  unaugmented = (batch["view1"] - 0.5) / 0.25
  changed = np.abs(np.asarray(ref["view1"]) - unaugmented).max(axis=(1, 2, 3))
  assert len(np.unique(np.round(changed, 4))) > 8
