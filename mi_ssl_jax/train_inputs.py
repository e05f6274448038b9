"""Trainer glue to the input pipeline and the evaluators.

`train.py` gets its host batches and its evaluators from here, so the loop
stays short: deterministic synthetic batches (smoke tests, benchmarks, exact
resume tests), `mi_ssl_jax.data` pipelines (imported on first use: it loads
TensorFlow), device prefetch, and `config.evals` built with
`mi_ssl_jax.evaluators.common.from_config`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from mi_ssl_jax import config_lib
from mi_ssl_jax.data import augmentation as augmentation_lib
from mi_ssl_jax.data import fashion_mnist
from mi_ssl_jax.data.augmentation import Augmentation
from mi_ssl_jax.errors import DatasetError

ConfigError = config_lib.ConfigError


def _synthetic_batches(config: ml_collections.ConfigDict, local_batch: int,
                       input_format: str, start_step: int
                       ) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic random batches: batch `s` depends only on (seed, s, host).

  For smoke tests, benchmarks without input cost, and exact-resume tests.
  uint8 pixels like the real pipelines' (uniform levels; the second view is
  the first plus Gaussian noise of 8 levels), so the step that compiles
  for them is the one that runs on real data.
  """
  shape = (local_batch, config.image_size, config.image_size, config.channels)
  for step in itertools.count(start_step):
    rng = np.random.default_rng([config.seed, step, jax.process_index()])
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    label = rng.integers(0, config.num_classes, local_batch, dtype=np.int32)
    if input_format == "two_view":
      noise = rng.normal(0.0, 8.0, shape)
      view2 = np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
      yield {"view1": image, "view2": view2, "label": label}
    else:
      yield {"image": image, "label": label}


def _data_module():
  """`mi_ssl_jax.data`, imported on first use (it loads TensorFlow)."""
  try:
    from mi_ssl_jax import data
  except ModuleNotFoundError as e:
    if e.name != "mi_ssl_jax.data":
      raise
    raise ConfigError("config.dataset needs mi_ssl_jax.data, which is not "
                      "installed; use dataset='synthetic'") from None
  return data


def dataset_size(config: ml_collections.ConfigDict) -> int | None:
  """Training examples per epoch (`num_train_examples` overrides).

  Also checks that the dataset exists, before anything is written.

  Raises:
    ConfigError: unknown dataset or its files are missing (one line).
  """
  if config.dataset == "synthetic":
    return config.get("num_train_examples")
  data = _data_module()
  try:
    info = data.dataset_info(config.dataset, config.get("data_dir") or None)
    split = train_split(config, info)
    return (config.get("num_train_examples")
            or data.split_num_examples(config.dataset, split,
                                       config.get("data_dir") or None))
  except data.DatasetError as e:
    raise ConfigError(str(e)) from e


def train_split(config: ml_collections.ConfigDict, info: Any) -> str:
  """The split pre-training reads: `config.train_split`, else the dataset's."""
  return config.get("train_split", "") or info.train_split


def make_train_iter(config: ml_collections.ConfigDict, local_batch: int,
                    input_format: str, start_step: int
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Host-local training batches for `config.dataset`.

  `synthetic` is deterministic per step, so a resumed run sees exactly the
  batches of an uninterrupted one. Real datasets come from
  `mi_ssl_jax.data.make_train_iterator`: indexed sources (Fashion-MNIST
  IDX files, `folder:`) also give exactly the uninterrupted run's batches
  from `start_step` on; TFDS record sources fold `start_step` into their
  shuffle seed, so after a resume their order is fresh and reproducible,
  not a replay of the uninterrupted run's remaining batches.
  """
  if config.dataset == "synthetic":
    return _synthetic_batches(config, local_batch, input_format, start_step)
  data = _data_module()
  try:
    return iter(data.make_train_iterator(
        config.dataset, global_batch_size=config.batch_size,
        image_size=config.image_size,
        augment=augmentation(config, input_format),
        split=config.get("train_split", "") or None,
        data_dir=config.get("data_dir") or None, seed=config.seed,
        start_step=start_step, channels=config.channels))
  except data.DatasetError as e:
    raise ConfigError(str(e)) from e


def augmentation(config: ml_collections.ConfigDict, input_format: str
                 ) -> Augmentation:
  """`config.augment` as the typed spec, for the method's batch format.

  Raises:
    ConfigError: an unknown field or a bad value (one line).
  """
  try:
    return Augmentation.from_config(
        (config.get("augment") or ml_collections.ConfigDict()).to_dict(),
        "mae" if input_format == "single_view" else "siamese")
  except DatasetError as e:
    raise ConfigError(str(e)) from e


_DEFAULT_STATS = ((0.5,), (0.25,))  # synthetic data: uniform pixel levels
# The image entries of a training batch (single view, two views, multi-crop).
IMAGE_KEYS = ("image", "view1", "view2", "local_views")


def channel_stats(config: ml_collections.ConfigDict, spec: Augmentation
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel that the training images are normalised with.

  The dataset's (`mi_ssl_jax.data.channel_stats`, or `config.augment.mean`
  / `std`); synthetic data uses mean 0.5, std 0.25 without TensorFlow.
  """
  if config.dataset == "synthetic":
    mean, std = _DEFAULT_STATS
    return (tuple(spec.mean or mean * config.channels),
            tuple(spec.std or std * config.channels))
  if config.dataset == fashion_mnist.NAME:
    # Known without reading the files (no TensorFlow: the GPU study): the
    # value `mi_ssl_jax.data.channel_stats` returns for Fashion-MNIST.
    mean, std = fashion_mnist.STATS
    try:
      return augmentation_lib.channel_stats(
          mean if spec.mean is None else spec.mean,
          std if spec.std is None else spec.std, config.channels)
    except DatasetError as e:
      raise ConfigError(str(e)) from e
  data = _data_module()
  try:
    return data.channel_stats(config.dataset, config.channels,
                              config.get("data_dir") or None, spec.mean,
                              spec.std)
  except data.DatasetError as e:
    raise ConfigError(str(e)) from e


def make_device_inputs(config: ml_collections.ConfigDict, input_format: str,
                       crop_on_device: bool = False):
  """`inputs(batch, key) -> batch`, the first thing the train step does.

  Host batches cross to the device as uint8 pixels (4x fewer bytes than
  float32); this makes the model's float32 input of every image entry
  (`IMAGE_KEYS`) inside the jitted step:
  * `augment.augment_on="host"`: (x / 255 − mean) / std, the normalisation
    the host pipeline applied before (equal to it within one float32 ulp,
    `augment_jax.unit_range`);
  * `augment_on="device"`: x / 255, then the device augmentation: for
    two-view methods `augment_jax.make_device_augment` (colour jitter,
    grayscale, blur, solarize, normalise) with the config's photometric
    arguments, for single-view (MAE family) methods
    `augment_jax.crop_and_flip` (RandomResizedCrop with `crop_scale` /
    `crop_ratio`, flip) + normalise. The host pipeline then only crops and
    flips (two views) or resizes (MAE).
  float32 images (batches a test or notebook injects through `train_iter`)
  are taken as already converted, as before uint8 batches: normalised
  (host path) or in [0, 1] (device path). Pure JAX; `key` drives only the
  device augmentation. Mean and std: `channel_stats`.

  `crop_on_device` (two-view methods, `augment_on="device"`; for callers
  without a host pipeline, such as the GPU study): the views arrive whole
  (the same image as "view1" and "view2") and each is first cropped and
  flipped on the device (`augment_jax.crop_and_flip` with the config's
  `crop_scale`, `crop_ratio`, `hflip`; key folded with the view's index + 2),
  then colour-augmented as above.
  """
  from mi_ssl_jax.data import augment_jax  # noqa: PLC0415 (jax only)
  spec = augmentation(config, input_format)
  mean, std = channel_stats(config, spec)

  def pixels(k, v):  # an image entry that crossed as uint8
    return k in IMAGE_KEYS and v.dtype == np.uint8

  if spec.augment_on == "host":
    def host_inputs(batch, key):
      del key  # u8 [B, H, W, C] (or [B, K, h, w, C]) -> f32, same shape
      return {k: (augment_jax.normalize(augment_jax.unit_range(v), mean, std)
                  if pixels(k, v) else v) for k, v in batch.items()}
    return host_inputs

  if crop_on_device and (spec.augment_on != "device"
                         or input_format != "two_view"):
    raise ConfigError("crop_on_device needs a two-view method and "
                      "config.augment.augment_on='device'")
  if input_format == "two_view":
    augment = augment_jax.make_device_augment(mean=mean, std=std,
                                              **spec.photometric())
    if crop_on_device:
      augment = _cropping(augment, spec, int(config.image_size))
  else:
    size = int(config.image_size)

    def augment(batch, key):
      crops = augment_jax.crop_and_flip(batch["image"], key, size,
                                        scale=spec.crop_scale,
                                        ratio=spec.crop_ratio,
                                        hflip=spec.hflip)
      return {**batch, "image": augment_jax.normalize(crops, mean, std)}

  def device_inputs(batch, key):  # u8 pixels -> f32 [0, 1] -> augmented
    return augment({k: augment_jax.unit_range(v) if pixels(k, v) else v
                    for k, v in batch.items()}, key)

  return device_inputs


def _cropping(augment, spec: Augmentation, size: int):
  """`augment` after a device RandomResizedCrop + flip of each view."""
  from mi_ssl_jax.data import augment_jax  # noqa: PLC0415 (jax only)

  def crop_then_augment(batch, key):  # views f32 [B, H, W, C] in [0, 1]
    views = {name: augment_jax.crop_and_flip(
        batch[name], jax.random.fold_in(key, 2 + i), size,
        scale=spec.crop_scale, ratio=spec.crop_ratio, hflip=spec.hflip)
             for i, name in enumerate(("view1", "view2"))}  # [B, S, S, C]
    return augment({**batch, **views}, key)

  return crop_then_augment


def make_eval_source(config: ml_collections.ConfigDict):
  """`data_fn(dataset=, split=, batch_size=, **kw)` for the evaluators."""

  def data_fn(dataset, split=None, batch_size=256, **kwargs):
    def source():
      data = _data_module()
      return data.make_eval_iterator(
          dataset, global_batch_size=batch_size, split=split,
          image_size=kwargs.pop("image_size", config.image_size),
          channels=kwargs.pop("channels", config.channels),
          data_dir=config.get("data_dir") or None, **kwargs)
    return source

  return data_fn



def make_evaluators(config, method, codec, mesh, data_size,
                    total_steps, initial_state_fn=None
                    ) -> list[tuple[str, Any, int | None, str]]:
  """Builds `config.evals` with `mi_ssl_jax.evaluators.common.from_config`.

  `codec` is the trainer's `ModelCodec` (params/rest -> model);
  `initial_state_fn()` returns the untrained {"params", "rest"} (for the
  `random_init` baseline of entries with `baselines=(...)`).

  Each entry `config.evals.<name> = dict(type="knn", log_steps=..., ...)`
  runs every `log_steps` (or `log_epochs`, ...) and at the end of training,
  on `method.predict_fn` features of the current parameters.
  """
  if not config.get("evals"):
    return []
  from mi_ssl_jax.evaluators import common as eval_common  # imports TF

  def predict(state, batch):  # state: {"params", "rest"}
    return method.predict_fn(codec.model(state["params"], state["rest"]),
                             batch)

  def get_steps(prefix, cfg):
    return config_lib.steps(prefix, ml_collections.ConfigDict(cfg), data_size,
                            config.batch_size, total_steps, default=None)

  from mi_ssl_jax.evaluators import baselines  # noqa: PLC0415
  baseline_fns = {"raw_pixels": (
      lambda state, batch: baselines.raw_pixels_predict_fn(None, batch),
      lambda: None)}
  if initial_state_fn is not None:
    baseline_fns["random_init"] = (predict, initial_state_fn)
  try:
    return eval_common.from_config(config, predict, make_eval_source(config),
                                   mesh, get_steps, baseline_fns)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.evals: {e}") from e


def run_evaluators(evaluators, state, step: int, final: bool = False
                   ) -> dict[str, float]:
  """Runs the evaluators due at `step` (all of them if `final`)."""
  results = {}
  for _, evaluator, log_steps, prefix in evaluators:
    if final or (log_steps and step % log_steps == 0):
      for key, value in evaluator.run(
          {"params": state["params"], "rest": state["rest"]}, step):
        results[f"{prefix}{key}"] = float(value)
  return results
