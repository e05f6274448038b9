"""Host batches cross to the device as uint8 and are normalised there.

`make_train_iterator` yields uint8 pixels (a quarter of the float32 bytes)
and the train step's first op, `train_inputs.make_device_inputs`, makes the
model input. Each path is compared with the pipeline's float32 output (the
normalisation on the host, as before uint8 batches), same seed, same
batches:

* host augmentation, MAE recipe and Siamese recipe without colour ops:
  the same pixels, x / 255 and (x − mean) / std on the device instead of
  in TensorFlow. XLA turns the division by a constant into a multiplication
  by its reciprocal, so values may differ in the last float32 bit;
  tolerance 2e-6 absolute (measured: 78 % of the values differ, by at most
  4.8e-7, on values up to 2.64 in magnitude);
* host colour augmentation (Siamese recipe): the float views are rounded to
  uint8 levels on the host, within half a level: 0.5 / 255 / std (measured:
  8.75e-3 = 0.5 / 255 / 0.224, the bound);
* device augmentation (MAE crop + flip, Siamese colour ops): the device
  path of uint8 pixels against the same device path fed the pipeline's
  float32 [0, 1] views, same key; tolerance 1e-5 (measured: at most
  6.0e-7 for the MAE crops, 2.9e-6 after the Siamese colour ops).

No `fast_compile` here: the test must compile the step's normalisation
as production does.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from mi_ssl_jax import train_inputs

tf = pytest.importorskip("tensorflow")
from mi_ssl_jax import data  # noqa: E402

SIZE = 16
SIAMESE = dict(color_jitter_strength=(0.4, 0.4, 0.2, 0.1),
               color_jitter_prob=1.0, grayscale_prob=0.2,
               blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """12 RGB PNGs of varied sizes (crops are resampled)."""
  root = tmp_path_factory.mktemp("rgb")
  rng = np.random.default_rng(0)
  for i in range(12):
    h, w = rng.integers(18, 40, size=2)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    tf.io.write_file(str(root / f"{i}.png"), tf.io.encode_png(image))
  return f"folder:{root}"


def _batch(name, recipe, augment_on, output, channels=3):
  augment = data.Augmentation(recipe=recipe, augment_on=augment_on,
                              **(SIAMESE if recipe == "siamese" else {}))
  it = data.make_train_iterator(
      name, global_batch_size=8, image_size=SIZE, augment=augment, seed=3,
      channels=channels, output=output, process_index=0, process_count=1,
      num_devices=8)
  return next(iter(it))


def _inputs(name, recipe, augment_on, channels=3):
  fmt = "single_view" if recipe == "mae" else "two_view"
  aug = dict(augment_on=augment_on,
             **(SIAMESE if recipe == "siamese" else {}))
  config = ml_collections.ConfigDict(dict(
      dataset=name, data_dir="", image_size=SIZE, channels=channels,
      augment=aug))
  return jax.jit(train_inputs.make_device_inputs(config, fmt))


def _views(recipe):
  return ("image",) if recipe == "mae" else ("view1", "view2")


@pytest.mark.parametrize("recipe", ["mae", "siamese"])
def test_host_augmentation_equals_the_float_path(folder, recipe):
  pixels = _batch(folder, recipe, "host", "uint8")
  floats = _batch(folder, recipe, "host", "float32")
  mean, std = data.channel_stats(folder)
  key = jax.random.key(0)
  got = _inputs(folder, recipe, "host")(pixels, key)
  for k in _views(recipe):
    assert pixels[k].dtype == np.uint8 and floats[k].dtype == np.float32
    assert pixels[k].nbytes * 4 == floats[k].nbytes
    assert got[k].dtype == np.float32
    diff = np.abs(np.asarray(got[k]) - floats[k])
    # Colour ops change values off the uint8 levels: rounded on the host.
    atol = 0.5 / 255 / min(std) + 2e-6 if recipe == "siamese" else 2e-6
    assert diff.max() <= atol, (k, diff.max())
    if recipe == "siamese":
      # Every value is the float32 one rounded to its nearest level.
      level = np.round((floats[k] * np.float32(std) + np.float32(mean))
                       * 255)
      np.testing.assert_allclose(pixels[k], np.clip(level, 0, 255), atol=1)
  np.testing.assert_array_equal(got["label"], floats["label"])


def test_crops_without_colour_ops_are_the_same_pixels(folder):
  pixels = _batch(folder, "mae", "host", "uint8")
  floats = _batch(folder, "mae", "host", "float32")
  mean, std = data.channel_stats(folder)
  levels = (floats["image"] * np.float32(std) + np.float32(mean)) * 255
  np.testing.assert_allclose(levels, pixels["image"], atol=1e-3)


@pytest.mark.parametrize("recipe", ["mae", "siamese"])
def test_device_augmentation_equals_the_float_path(folder, recipe):
  pixels = _batch(folder, recipe, "device", "uint8")
  unit = _batch(folder, recipe, "device", "float32")  # [0, 1]
  for k in _views(recipe):
    np.testing.assert_array_equal(
        pixels[k], np.round(unit[k] * 255).astype(np.uint8))
  inputs = _inputs(folder, recipe, "device")
  for step in range(2):
    key = jax.random.fold_in(jax.random.key(1), step)
    got, want = inputs(pixels, key), inputs(unit, key)
    for k in _views(recipe):
      assert got[k].dtype == np.float32 and got[k].shape == want[k].shape
      np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5)


def test_rgb_read_as_grey_is_rounded_luma(folder):
  pixels = _batch(folder, "mae", "host", "uint8", channels=1)
  floats = _batch(folder, "mae", "host", "float32", channels=1)
  mean, std = data.channel_stats(folder, channels=1)
  got = _inputs(folder, "mae", "host", channels=1)(pixels, jax.random.key(0))
  assert pixels["image"].shape == (8, SIZE, SIZE, 1)
  diff = np.abs(np.asarray(got["image"]) - floats["image"])
  assert diff.max() <= 0.5 / 255 / std[0] + 2e-6


def test_synthetic_batches_are_pixels_normalised_on_device():
  config = ml_collections.ConfigDict(dict(
      dataset="synthetic", image_size=8, channels=3, num_classes=10, seed=0,
      augment=dict(augment_on="host")))
  batch = next(train_inputs.make_train_iter(config, 4, "two_view", 0))
  assert batch["view1"].dtype == batch["view2"].dtype == np.uint8
  out = jax.jit(train_inputs.make_device_inputs(config, "two_view"))(
      batch, jax.random.key(0))
  want = (batch["view1"] / np.float32(255) - np.float32(0.5)) / np.float32(
      0.25)
  np.testing.assert_allclose(out["view1"], want, rtol=0, atol=2e-6)
  # Injected float32 batches (tests, notebooks) pass unchanged.
  floats = {**batch, "view1": want, "view2": want}
  out = jax.jit(train_inputs.make_device_inputs(config, "two_view"))(
      floats, jax.random.key(0))
  np.testing.assert_array_equal(out["view1"], want)
