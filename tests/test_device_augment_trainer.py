"""`augment_on="device"` gives the same augmentation distribution as the host.

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
  augment = jax.jit(train_inputs.make_device_augment(config, fmt))
  device = augment(jax.device_put(raw), jax.random.key(0))
  assert device[key].shape == host[key].shape
  for h, d in zip(_stats(host[key]), _stats(device[key]), strict=True):
    ks = stats.ks_2samp(h, d)
    assert ks.pvalue > 1e-3, (recipe, key, ks)
  # And not trivially: the device path really crops (per-image stats vary).
  assert np.std(_stats(device[key])[0]) > 0.05


def test_host_path_has_no_device_augment():
  config = _config("two_view")
  config.augment.augment_on = "host"
  assert train_inputs.make_device_augment(config, "two_view") is None
