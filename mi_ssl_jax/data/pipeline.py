"""Per-process tf.data input pipelines and conversion to global jax.Arrays.

Each process reads its own disjoint share of the split (`sources.py`), batches
`global_batch_size // process_count` examples and yields HOST-LOCAL numpy
dicts; `to_global_arrays` assembles them into global arrays sharded on the
data axis with `jax.make_array_from_process_local_data` (docs/design.md §8.5).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf

from mi_ssl_jax import sharding as sharding_lib
from mi_ssl_jax.data import augment_tf as aug
from mi_ssl_jax.data import augmentation
from mi_ssl_jax.data.augmentation import Augmentation
from mi_ssl_jax.data.sources import (
  DatasetError,
  DatasetInfo,
  dataset_info,
  has_random_access,
  process_split,
)


@functools.cache
def hide_gpus_from_tf() -> None:
  """Keeps TF off accelerators so it does not take JAX's memory."""
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):  # TF already initialised, or no TPU type.
    pass


def _seed(*values: int) -> int:
  """A 31-bit integer seed derived from `values` (order-sensitive)."""
  return int(np.random.SeedSequence([int(v) for v in values])
             .generate_state(1)[0] & 0x7FFFFFFF)


def _process(process_index, process_count):
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return index, count


def local_batch_size(global_batch_size: int, *,
                     process_count: int | None = None,
                     num_devices: int | None = None) -> int:
  """global_batch_size // process_count, after checking divisibility.

  Raises:
    DatasetError: global batch not divisible by the device or process count.
  """
  count = jax.process_count() if process_count is None else process_count
  devices = jax.device_count() if num_devices is None else num_devices
  if global_batch_size <= 0 or global_batch_size % devices:
    raise DatasetError(
        f"global batch size {global_batch_size} is not divisible by the "
        f"{devices} devices; use a multiple of {devices}")
  if global_batch_size % count:
    raise DatasetError(
        f"global batch size {global_batch_size} is not divisible by the "
        f"{count} processes; use a multiple of {count}")
  return global_batch_size // count


def _channels_and_stats(info: DatasetInfo, channels: int, mean, std):
  return augmentation.channel_stats(info.mean if mean is None else mean,
                                    info.std if std is None else std,
                                    channels)


def channel_stats(dataset: str, channels: int = 3, data_dir: str | None = None,
                  mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None):
  """(mean, std) tuples of length `channels` that the pipelines normalise with.

  Defaults are the dataset's statistics (ImageNet's for folders and unknown
  TFDS builders), repeated for grayscale data read as 3 channels. The
  consumer of uint8 training batches normalises them on the device with
  these, `augment_jax.normalize(augment_jax.unit_range(x), mean, std)`, and
  passes them to `make_device_augment` when augmenting on device.
  """
  return _channels_and_stats(dataset_info(dataset, data_dir), channels, mean,
                             std)


def _check_size(info: DatasetInfo, image_size: int, allow_upscale: bool):
  if info.image_shape is None or allow_upscale:
    return
  side = min(info.image_shape[:2])
  if image_size > side:
    raise DatasetError(
        f"{info.name} images are {info.image_shape[0]}x{info.image_shape[1]}, "
        f"smaller than the crop {image_size}; use image_size <= {side} or pass "
        "allow_upscale=True to upsample (as MEC does for CIFAR at 224)")


def _to_float(image, channels: int):
  """uint8 [H, W, c] -> float32 [H, W, channels] in [0, 1]."""
  image = tf.cast(image, tf.float32) / 255.0
  have = image.shape[-1]
  if have == 1 and channels == 3:
    image = tf.repeat(image, 3, axis=-1)
  elif have == 3 and channels == 1:
    image = aug.to_grayscale(image)[..., :1]
  elif have not in (1, 3):
    # RGBA or other layouts: keep the first channels.
    image = image[..., :3] if channels == 3 else aug.to_grayscale(
        image[..., :3])[..., :1]
  return image


def _normalize(image, mean, std):
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _pixels(image, channels: int):
  """A resampled image (float, values in [0, 255]) -> uint8 [H, W, channels].

  Rounded to integer levels as before; grey repeated to 3 channels and RGBA
  cut to RGB exactly; RGB read as 1 channel becomes the ITU-R 601 luma
  rounded to an integer level (as PIL's convert("L")).
  """
  image = tf.cast(tf.round(image), tf.uint8)
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return tf.repeat(image, 3, axis=-1)
  if channels == 3:  # RGBA or other layouts: keep the first channels
    return image[..., :3]
  gray = aug.to_grayscale(tf.cast(image[..., :3], tf.float32))[..., :1]
  return tf.cast(tf.round(gray), tf.uint8)


def _quantize(image):
  """float [H, W, C] in [0, 1] -> uint8 levels round(255 x) (at most half a
  level, 0.5 / 255, from the float image)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0),
                 tf.uint8)


OUTPUTS = ("uint8", "float32")


class _NumpyBatches(Iterable):
  """Re-iterable numpy view of a batched tf.data.Dataset.

  Translates TF runtime errors (corrupt images) into one-line DatasetErrors.
  """

  def __init__(self, ds: tf.data.Dataset, name: str,
               num_batches: int | None = None):
    self.dataset = ds
    self.name = name
    self.num_batches = num_batches

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("training iterators are infinite")
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    it = iter(self.dataset.as_numpy_iterator())
    while True:
      try:
        batch = next(it)
      except StopIteration:
        return
      except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise _translate_error(e, self.name) from None
      yield batch


def _translate_error(e: Exception, name: str) -> DatasetError:
  text = str(getattr(e, "message", e))
  m = re.search(r"corrupt image file:\]? \[?([^\]\n]+)", text)
  if m:
    return DatasetError(f"corrupt image file {m.group(1).strip()} in {name}; "
                        "delete or re-encode it")
  first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
  if isinstance(e, tf.errors.NotFoundError):
    return DatasetError(f"missing file while reading {name}: {first}")
  return DatasetError(f"cannot decode an image of {name} ({first[:200]}); "
                      "the file is corrupt: re-download or re-encode it")


def _no_autograph(fn):
  # The ops use no Python control flow on tensors; skipping AutoGraph's
  # source conversion makes building a two-view pipeline ~4x faster.
  return tf.autograph.experimental.do_not_convert(fn)


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options)


def _training_stream(dataset: str, split: str, data_dir: str | None,
                     seed: int, start_step: int, global_batch: int,
                     index: int, count: int, shuffle_buffer: int | None):
  """This process's training stream: (position, raw element) pairs.

  Indexed sources (in-memory, folders: `ProcessSplit.indexed`) follow one
  global order that does not depend on the number of processes: epoch e is
  the stateless permutation `stateless_shuffle(range(n), seed=[s, e])` of the
  whole split, cut into global batches of `global_batch`, and process p
  takes rows [p·b, (p+1)·b) of each (b = global_batch / count). Positions are
  global (step × global_batch + row), so the per-example augmentation seeds,
  and with them the global batches, are the same for 1 process or many, and
  a run resumed at `start_step` sees exactly the elements an uninterrupted
  run would have (whole epochs are skipped arithmetically, then the rest).
  Each process still reads a disjoint share of every batch and epoch; every
  process holds the split's index (in-memory images or file names).

  Other sources (TFDS records, no random access): each process reads its own
  disjoint part of the split (`process_split`), shuffled with a buffer and a
  seed that also depends on the resume position, and positions count this
  process's examples: the order after a resume is fresh and reproducible,
  but not the uninterrupted one, and it depends on the process count.

  Returns:
    (tf.data.Dataset of (int64 position, raw element), ProcessSplit,
    augmentation stream seed).
  """
  local = global_batch // count
  # Random access: every process holds the whole split (global order).
  whole = has_random_access(dataset, data_dir)
  part = process_split(dataset, split, data_dir=data_dir,
                       process_index=0 if whole else index,
                       process_count=1 if whole else count,
                       file_shuffle_seed=_seed(seed, start_step, index, 0),
                       exact_counts=False)
  if not part.indexed:
    buffer = part.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
    ds = part.dataset.shuffle(
        buffer, seed=_seed(seed, start_step * local, index, 0),
        reshuffle_each_iteration=True).repeat()
    return ds.enumerate(start=start_step * local), part, _seed(seed, index, 1)

  n = part.num_examples
  if n <= 0:
    raise DatasetError("the training split of this process is empty")
  base = _seed(seed, 0, 0)
  position = int(start_step) * global_batch
  first_epoch, offset = divmod(position, n)

  def epoch(e):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64),
        seed=tf.stack([tf.constant(base, tf.int64), e]))
    return tf.data.Dataset.from_tensor_slices(order)

  ds = (tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
        .skip(offset).enumerate(start=position))
  if count > 1:
    rows = slice(index * local, (index + 1) * local)
    ds = (ds.batch(global_batch, drop_remainder=True)
          .map(lambda i, x: (i[rows], x[rows])).unbatch())
  return ds, part, _seed(seed, 0, 1)


def _example_fn(spec: Augmentation, part, aug_stream: int, image_size: int,
                channels: int, mean, std, output: str):
  """`(position i, raw record) -> example dict` of the training stream.

  Every view's seeds come from (aug_stream, i), so an example's
  augmentation depends only on its position in the global stream. With
  `output="uint8"` every view is uint8 pixels (host colour augmentation
  rounded to levels at the end); with "float32" the views are what they
  were before uint8 batches: normalised, or in [0, 1] for the device path.
  """
  host_color = spec.augment_on == "host"
  n_views = 1 if spec.recipe == "mae" else 2
  as_float = output == "float32"

  def view(image, seed, size, scale, blur, solar):
    seeds = aug.split_seed(seed, 3)
    if spec.recipe == "mae" and not host_color:
      # Device MAE path: the whole image at the model's size; the train
      # step crops, flips and normalises (augment_jax.crop_and_flip).
      x = aug.resize_center_crop(image, size, size, spec.interpolation)
      return (_to_float(tf.cast(tf.round(x), tf.uint8), channels) if as_float
              else _pixels(x, channels))
    x = aug.random_resized_crop(image, seeds[0], size, scale,
                                spec.crop_ratio, spec.interpolation)
    x = (_to_float(tf.cast(tf.round(x), tf.uint8), channels) if as_float
         else _pixels(x, channels))
    if spec.recipe == "siamese" and host_color:
      x = aug.color_augment(
          _to_float(x, channels) if x.dtype == tf.uint8 else x, seeds[1],
          color_jitter_strength=spec.color_jitter_strength,
          color_jitter_prob=spec.color_jitter_prob,
          grayscale_prob=spec.grayscale_prob, blur_prob=blur,
          blur_sigma=spec.blur_sigma, solarize_prob=solar)
    if spec.hflip:
      x = aug.random_flip(x, seeds[2])
    if not as_float:
      return x if x.dtype == tf.uint8 else _quantize(x)
    if host_color or spec.recipe == "mae":
      x = _normalize(x, mean, std)
    return x

  def example(i, raw):
    decoded = part.decode(raw)
    image, label = decoded["image"], decoded["label"]
    seeds = aug.split_seed(tf.stack([tf.constant(aug_stream, tf.int64), i]),
                           n_views + max(spec.num_local_crops, 1))
    out = {"label": tf.cast(label, tf.int32)}
    if spec.recipe == "mae":
      out["image"] = view(image, seeds[0], image_size, spec.crop_scale, 0.0,
                          0.0)
      return out
    for v in range(2):
      out[f"view{v + 1}"] = view(image, seeds[v], image_size, spec.crop_scale,
                                 spec.blur_prob[v], spec.solarize_prob[v])
    if spec.num_local_crops:
      local = spec.local_size(image_size)
      out["local_views"] = tf.stack([
          view(image, seeds[2 + k], local, spec.local_crop_scale,
               spec.local_blur_prob, 0.0)
          for k in range(spec.num_local_crops)])
    return out

  return example


def make_train_iterator(
    dataset: str,
    *,
    global_batch_size: int,
    image_size: int,
    augment: Augmentation | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    start_step: int = 0,
    channels: int = 3,
    allow_upscale: bool = False,
    shuffle_buffer: int | None = None,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    num_devices: int | None = None,
    output: str = "uint8",
) -> _NumpyBatches:
  """Infinite, shuffled, augmented training batches for this process.

  Batches (host-local numpy, b = global_batch_size // process_count):
    recipe "mae":     {"image": u8 [b, S, S, C], "label": i32 [b]}
    recipe "siamese": {"view1": u8 [b, S, S, C], "view2": u8 [b, S, S, C],
                       "label": i32 [b]}  (+ "local_views" u8 [b, K, s, s, C]
                       when num_local_crops = K > 0)
  Images are uint8 pixels (4x fewer bytes to the device than float32): the
  consumer normalises them on the device, (x / 255 − mean) / std with
  `channel_stats` (the trainer: `train_inputs.make_device_inputs`, the
  first thing its jitted step does). `output="float32"` yields the images
  normalised on the host instead (f32, as before uint8 batches; the device
  path's views then stay in [0, 1]). Labels are -1 for unlabelled folder
  images. `drop_remainder` is used, and the data repeats forever (epochs
  follow each other, reshuffled).

  What is done to each example is `augment` (`Augmentation`: the MAE or the
  asymmetric Siamese recipe, see `mi_ssl_jax.data.augmentation`). With
  `augment_on="device"` the host only crops and flips (recipe "siamese"; the
  trainer applies `augment_jax.make_device_augment(**augment.photometric())`
  inside its jitted step), or yields the whole image resized to S (recipe
  "mae"; the step applies `augment_jax.crop_and_flip` and the
  normalisation). With host colour augmentation (recipe "siamese",
  `augment_on="host"`) the uint8 views are the float result rounded to
  levels, within half a level (0.5 / 255) of the float32 output; every
  other uint8 view is exactly the float32 output's pixels.

  Determinism: the same arguments give the same batches, and every example's
  augmentation seed is a function of (seed, its position in the stream).
  For in-memory and folder sources (Fashion-MNIST, `folder:`) each epoch is
  a stateless permutation of the whole split and process p takes its rows of
  every global batch, so the global batches do not depend on the number of
  processes, and those from `start_step` on are exactly the ones an
  uninterrupted run sees from that step (bit-exact resume). TFDS sources
  (sequential records) are read as per-process parts and fold `start_step`
  into the shuffle seed instead: a resumed run sees a fresh, reproducible
  order (see `_training_stream`).

  Args:
    dataset: `fashion_mnist`, `tfds:<builder>`, `imagenet100`, `folder:<path>`.
    global_batch_size: batch over all processes; divisible by the devices.
    image_size: output side S (e.g. 28, 32, 64, 96, 224).
    augment: the augmentation (default `Augmentation()`: the MAE recipe).
    split: split to read (default: the dataset's training split).
    data_dir: TFDS data dir; also searched for Fashion-MNIST IDX files.
    seed: base seed of shuffling and augmentation.
    start_step: training step to start at (resume).
    channels: channels the model wants (1 or 3); grayscale -> 3 by repeat.
    allow_upscale: allow image_size larger than a fixed-size source's images.
    shuffle_buffer: tf.data shuffle buffer (default: full split for in-memory
      and folder sources, 10_000 encoded examples for TFDS).
    prefetch: batches to prefetch on the host.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).
    num_devices: devices the batch is sharded over (default jax.device_count()).
    output: "uint8" (pixels, normalised by the consumer on the device) or
      "float32" (normalised on the host).

  Returns:
    An iterable of numpy batch dicts (each `iter()` restarts from start_step).

  Raises:
    DatasetError: unknown dataset, missing files, batch not divisible by the
      devices, crop larger than fixed-size images. Corrupt images raise
      DatasetError during iteration.
  """
  hide_gpus_from_tf()
  spec = Augmentation() if augment is None else augment
  if image_size <= 0:
    raise DatasetError(f"need image_size > 0, got {image_size}")
  if output not in OUTPUTS:
    raise DatasetError(f"output must be one of {OUTPUTS}, got {output!r}")
  index, count = _process(process_index, process_count)
  batch = local_batch_size(global_batch_size, process_count=count,
                           num_devices=num_devices)
  info = dataset_info(dataset, data_dir)
  _check_size(info, image_size, allow_upscale)
  mean, std = _channels_and_stats(info, channels, spec.mean, spec.std)
  split = info.train_split if split is None else split
  # Per-example augmentation seeds: [aug_stream, position in the stream].
  ds, part, aug_stream = _training_stream(
      dataset, split, data_dir, seed, start_step, batch * count, index, count,
      shuffle_buffer)
  example = _example_fn(spec, part, aug_stream, image_size, channels, mean,
                        std, output)
  ds = ds.map(_no_autograph(example), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)
  ds = _options(ds.prefetch(prefetch if prefetch else tf.data.AUTOTUNE))
  return _NumpyBatches(ds, dataset)


def make_eval_iterator(
    dataset: str,
    *,
    global_batch_size: int,
    image_size: int,
    split: str | None = None,
    data_dir: str | None = None,
    channels: int = 3,
    crop_fraction: float | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    allow_upscale: bool = False,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    num_devices: int | None = None,
) -> _NumpyBatches:
  """Finite evaluation batches, padded and masked (big_vision scheme).

  Every process yields the same number of batches, `len(iterator)` =
  ceil(max per-process examples / local batch); padding examples have
  image 0, label -1 and "_mask" False. Batches:
    {"image": f32 [b, S, S, C], "label": i32 [b], "_mask": bool [b]}
  Preprocessing: resize the shorter side to round(S / crop_fraction) (bicubic)
  and centre-crop S (crop_fraction default 0.875 for S >= 128, else 1.0:
  small images are only resized), then normalise.

  Args:
    dataset: dataset name (see `make_train_iterator`).
    global_batch_size: batch over all processes; divisible by the devices.
    image_size: output side S.
    split: split (default: the dataset's usual evaluation split).
    data_dir: TFDS data dir.
    channels: channels the model wants (1 or 3).
    crop_fraction: centre-crop fraction (ImageNet: 0.875 = 224/256).
    interpolation: resize method.
    mean: per-channel mean in [0, 1] (default: the dataset's).
    std: per-channel std in [0, 1] (default: the dataset's).
    allow_upscale: allow image_size larger than fixed-size images.
    prefetch: batches to prefetch.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).
    num_devices: devices (default jax.device_count()).

  Returns:
    A re-iterable of numpy batch dicts with `len()`; `.num_examples` is the
    number of real examples over all processes.
  """
  hide_gpus_from_tf()
  index, count = _process(process_index, process_count)
  batch = local_batch_size(global_batch_size, process_count=count,
                           num_devices=num_devices)
  info = dataset_info(dataset, data_dir)
  _check_size(info, image_size, allow_upscale)
  mean, std = _channels_and_stats(info, channels, mean, std)
  split = info.eval_split if split is None else split
  part = process_split(dataset, split, data_dir=data_dir, process_index=index,
                       process_count=count, exact_counts=True)
  if crop_fraction is None:
    crop_fraction = 0.875 if image_size >= 128 else 1.0
  resize_size = int(round(image_size / crop_fraction))
  same_size = (info.image_shape is not None and crop_fraction == 1.0 and
               tuple(info.image_shape[:2]) == (image_size, image_size))

  def preprocess(raw):
    example = part.decode(raw)
    image = example["image"]
    if not same_size:
      image = aug.resize_center_crop(image, image_size, resize_size,
                                     interpolation)
      image = tf.cast(tf.round(image), tf.uint8)
    image = _normalize(_to_float(image, channels), mean, std)
    return {"image": image, "label": tf.cast(example["label"], tf.int32),
            "_mask": tf.constant(True)}

  num_batches = -(-max(part.num_examples_per_process) // batch)
  ds = part.dataset.map(_no_autograph(preprocess),
                        num_parallel_calls=tf.data.AUTOTUNE)
  pad = tf.data.Dataset.from_tensors({
      "image": tf.zeros([image_size, image_size, channels], tf.float32),
      "label": tf.constant(-1, tf.int32),
      "_mask": tf.constant(False)}).repeat()
  ds = ds.concatenate(pad).batch(batch).take(num_batches)
  ds = _options(ds.prefetch(prefetch if prefetch else tf.data.AUTOTUNE))
  out = _NumpyBatches(ds, dataset, num_batches)
  out.num_examples = sum(part.num_examples_per_process)
  return out


# Host batches -> global arrays: one home, mi_ssl_jax/sharding.py.
to_global_arrays = sharding_lib.global_batch
prefetch_to_device = sharding_lib.prefetch_to_device
