"""The training augmentation as one typed value (`config.augment`).

`Augmentation` is what `make_train_iterator` does to each example on the
host and what `augment_jax.make_device_augment` / `crop_and_flip` do on the
device with `augment_on="device"`: both read the same fields, so the two
paths cannot drift apart. Plain Python (no TensorFlow, no JAX): the trainer
builds it from `config.augment`, where an unknown key is a one-line error
instead of a silently ignored setting.

Recipes (defaults; sources: docs/methods.md §2 "Augmentations", §3):
  * "mae": RandomResizedCrop(S, scale 0.2–1, ratio 3/4–4/3, bicubic),
    horizontal flip, normalise (MAE / M-MAE `main_pretrain.py`).
  * "siamese": per view RandomResizedCrop, ColorJitter(0.4, 0.4, 0.2, 0.1)
    p 0.8, grayscale p 0.2, Gaussian blur p (1.0, 0.1) with σ in 0.1–2,
    solarize p (0.0, 0.2), flip, normalise: the asymmetric BYOL / MoCo v3
    recipe of Matrix-SSL, MEC, BYOL and Barlow Twins; optional multi-crop
    local views (`num_local_crops`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mi_ssl_jax.errors import DatasetError

RECIPES = ("mae", "siamese")
# ITU-R BT.601 luma weights of (R, G, B) (PIL `convert("L")`, torchvision
# `rgb_to_grayscale`): the grayscale of both augmentation paths and of the
# statistics of a colour dataset read as 1 channel.
LUMA = (0.299, 0.587, 0.114)
WHERE = ("host", "device")
# The arguments of `augment_jax.make_device_augment` (the colour ops).
PHOTOMETRIC = ("color_jitter_strength", "color_jitter_prob", "grayscale_prob",
               "blur_prob", "blur_sigma", "solarize_prob", "local_blur_prob")
_TUPLES = ("crop_scale", "crop_ratio", "color_jitter_strength", "blur_prob",
           "blur_sigma", "solarize_prob", "local_crop_scale", "mean", "std")


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What training does to each example (see the module docstring).

  Attributes:
    recipe: "mae" (one view) or "siamese" (two views, + local crops).
    augment_on: "host" (all ops in tf.data) or "device" (the host crops and
      flips two-view batches, or only resizes MAE images; the jitted step
      does the rest).
    crop_scale: RandomResizedCrop area range.
    crop_ratio: RandomResizedCrop aspect-ratio range.
    interpolation: resize method ("bicubic" or "bilinear").
    hflip: random horizontal flip.
    color_jitter_strength: (brightness, contrast, saturation, hue).
    color_jitter_prob: probability of colour jitter per view.
    grayscale_prob: probability of grayscale per view.
    blur_prob: (view1, view2) Gaussian-blur probabilities.
    blur_sigma: blur σ range in pixels.
    solarize_prob: (view1, view2) solarize probabilities.
    num_local_crops: number K of extra small crops (multi-crop, SwAV/DINO).
    local_crop_size: side of local crops (default image_size · 96 / 224).
    local_crop_scale: RandomResizedCrop area range of local crops.
    local_blur_prob: blur probability of local crops (no solarize).
    mean: per-channel mean in [0, 1] (default: the dataset's).
    std: per-channel std in [0, 1] (default: the dataset's).
  """

  recipe: str = "mae"
  augment_on: str = "host"
  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  interpolation: str = "bicubic"
  hflip: bool = True
  color_jitter_strength: tuple[float, float, float, float] = (
      0.4, 0.4, 0.2, 0.1)
  color_jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: tuple[float, float] = (1.0, 0.1)
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: tuple[float, float] = (0.0, 0.2)
  num_local_crops: int = 0
  local_crop_size: int | None = None
  local_crop_scale: tuple[float, float] = (0.05, 0.2)
  local_blur_prob: float = 0.5
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  def __post_init__(self):
    for name in _TUPLES:  # lists from a config become tuples (hashable)
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(float(v) for v in value))
    if self.recipe not in RECIPES:
      raise DatasetError(
          f"unknown augmentation recipe {self.recipe!r}; use one of "
          f"{RECIPES}")
    if self.augment_on not in WHERE:
      raise DatasetError(
          f"config.augment.augment_on must be 'host' or 'device', got "
          f"{self.augment_on!r}")
    if self.num_local_crops and self.recipe != "siamese":
      raise DatasetError(
          "config.augment.num_local_crops (multi-crop) needs two-view "
          "(Siamese) methods")
    low, high = self.crop_scale
    if not 0 < low <= high <= 1:
      raise DatasetError(
          f"config.augment.crop_scale must satisfy 0 < low <= high <= 1, got "
          f"{self.crop_scale}")

  @classmethod
  def from_config(cls, augment: Mapping[str, Any] | None,
                  recipe: str) -> Augmentation:
    """The spec of `config.augment` (a mapping of field → value) for `recipe`.

    None values mean the default. Raises DatasetError for a key that is
    not a field (with the list of fields) or a bad value.
    """
    fields = {f.name for f in dataclasses.fields(cls)} - {"recipe"}
    values = {k: v for k, v in dict(augment or {}).items() if v is not None}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise DatasetError(
          f"config.augment has no field {', '.join(unknown)}; the fields are "
          f"{', '.join(sorted(fields))}")
    return cls(recipe=recipe, **values)

  def photometric(self) -> dict[str, Any]:
    """The colour-op arguments (`augment_jax.make_device_augment`)."""
    return {name: getattr(self, name) for name in PHOTOMETRIC}

  def local_size(self, image_size: int) -> int:
    """Side of the multi-crop local views for global views of `image_size`."""
    return self.local_crop_size or max(8, image_size * 96 // 224)


def channel_stats(mean: Sequence[float], std: Sequence[float],
                  channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) of `channels` channels from a dataset's per-channel ones.

  One-channel statistics are repeated for 3 channels (grayscale read as
  RGB); 3-channel ones become their luma-weighted sum for 1 channel
  (Σ_c LUMA_c·mean_c, likewise for std).

  Raises:
    DatasetError: channels not 1 or 3, or statistics of another length.
  """
  if channels not in (1, 3):
    raise DatasetError(f"channels must be 1 or 3, got {channels}")
  mean, std = tuple(mean), tuple(std)
  if len(mean) == 1 and channels == 3:
    mean, std = mean * 3, std * 3
  if len(mean) == 3 and channels == 1:
    mean = (float(sum(w * m for w, m in zip(LUMA, mean, strict=True))),)
    std = (float(sum(w * s for w, s in zip(LUMA, std, strict=True))),)
  if len(mean) != channels or len(std) != channels:
    raise DatasetError(f"mean/std need {channels} values, got {mean} / {std}")
  return mean, std
