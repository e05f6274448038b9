"""`augment_on="device"` gives the same augmentation distribution as the host.

Both paths get uint8 batches and normalise them in `make_device_inputs`.

For Fashion-MNIST batches of the MAE recipe (crop + flip) and of the Siamese
recipe (crop + flip on the host, colour on the device), the per-image mean
and standard deviation of the augmented, normalised images from the two
paths are compared with two-sample Kolmogorov-Smirnov tests. (The crops are
resampled bicubically on the host and bilinearly on the device, so pixels
differ; the distribution of what the model sees must not.)
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats

from mi_ssl_jax import train_inputs

pytest.importorskip("tensorflow")
from mi_ssl_jax import data  # noqa: E402

N = 2048


def _config(input_format):
  aug = dict(crop_scale=(0.2, 1.0))
  if input_format == "two_view":
    aug.update(color_jitter_strength=(0.4, 0.4, 0.0, 0.0),
               color_jitter_prob=0.8, grayscale_prob=0.0,
               blur_prob=(0.0, 0.0), solarize_prob=(0.0, 0.2))
  return ml_collections.ConfigDict(dict(
      dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
      augment=dict(augment_on="device", **aug)))


def _batches(recipe, augment_on, config):
  aug = {k: v for k, v in config.augment.to_dict().items()
         if k != "augment_on"}
  it = iter(data.make_train_iterator(
      "fashion_mnist", global_batch_size=N, image_size=28, channels=1,
      augment=data.Augmentation(recipe=recipe, augment_on=augment_on, **aug),
      seed=1, num_devices=1))
  return next(it)


def _stats(x):  # x [B, H, W, C] -> per-image mean and std
  x = np.asarray(x).reshape(len(x), -1)
  return x.mean(1), x.std(1)


@pytest.mark.parametrize("recipe,key,fmt", [("mae", "image", "single_view"),
                                            ("siamese", "view1", "two_view"),
                                            ("siamese", "view2", "two_view")])
def test_device_path_matches_host_distribution(recipe, key, fmt):
  try:
    config = _config(fmt)
    host = _batches(recipe, "host", config)
    raw = _batches(recipe, "device", config)
  except data.DatasetError as e:
    pytest.skip(str(e))
  rng = jax.random.key(0)
  device = jax.jit(train_inputs.make_device_inputs(config, fmt))(
      jax.device_put(raw), rng)
  config.augment.augment_on = "host"  # uint8 pixels: normalised on device
  host = jax.jit(train_inputs.make_device_inputs(config, fmt))(
      jax.device_put(host), rng)
  assert device[key].shape == host[key].shape
  for h, d in zip(_stats(host[key]), _stats(device[key]), strict=True):
    ks = stats.ks_2samp(h, d)
    assert ks.pvalue > 1e-3, (recipe, key, ks)
  # And not trivially: the device path really crops (per-image stats vary).
  assert np.std(_stats(device[key])[0]) > 0.05


def test_host_path_only_normalises():
  config = _config("two_view")
  config.augment.augment_on = "host"
  config.dataset = "synthetic"  # no dataset files: the stats are given
  config.augment.mean, config.augment.std = (0.3,), (0.35,)
  inputs = train_inputs.make_device_inputs(config, "two_view")
  pixels = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28, 1)
  batch = {"view1": (pixels % 256).astype(np.uint8),
           "view2": (pixels % 251).astype(np.uint8),
           "label": np.arange(2, dtype=np.int32)}
  mean, std = 0.3, 0.35
  a = jax.jit(inputs)(batch, jax.random.key(0))
  b = jax.jit(inputs)(batch, jax.random.key(1))  # no randomness on the host
  for k in ("view1", "view2"):
    want = (batch[k] / np.float32(255) - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(a[k], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a[k], b[k])
  np.testing.assert_array_equal(a["label"], batch["label"])
