"""Dataset sources by name: offline Fashion-MNIST, TFDS, ImageNet-100, folders.

A source turns a dataset name into the examples of ONE process's share of a
split, as a `tf.data.Dataset` of raw elements plus a `decode` function that
maps a raw element to `{"image": uint8 [H, W, C], "label": int32 []}`. Decoding
is separate so that shuffling happens on compact raw elements (file paths or
encoded bytes) before the expensive image decode.

Names (see `dataset_info` for what each one provides):
  * `fashion_mnist`: offline default. IDX files from `data_dir`, then
    `$MI_SSL_DATA_DIR` (or `$MI_SSL_DATA_DIR/fashion-mnist`), then
    `/usr/share/datasets/fashion-mnist/` (Debian `dataset-fashion-mnist`), then
    the download cache `~/.cache/mi_ssl_jax/fashion-mnist` (when
    `MI_SSL_DATA_DIR` is unset), then a prepared TFDS `fashion_mnist` in
    `data_dir`; found nowhere, the files are downloaded into the cache
    (`mi_ssl_jax.data.download`; `MI_SSL_DOWNLOAD=0` turns that off).
  * `tfds:<builder>`: any prepared TFDS builder (cifar10, cifar100, stl10,
    imagenet2012, ...), optionally with a version (`tfds:cifar10:3.0.2`).
  * `imagenet100`: the 100-class ImageNet subset of CMC (Tian et al. 2019),
    also used by solo-learn, read from TFDS `imagenet2012`; labels are the
    positions of the classes in sorted WordNet-id order (torchvision
    ImageFolder order over the subset, as in solo-learn).
  * `folder:<path>`: image files (JPEG, PNG, GIF, BMP) under `<path>/<split>`
    if that folder exists, else (for split "train" only) under `<path>`.
    First-level sub-folders are classes (sorted names -> labels 0..K-1);
    images directly in the root get label -1 (unlabelled). `<path>` is
    local or remote (`folder:gs://bucket/dir`): listed through the path
    layer (`mi_ssl_jax.paths`), read by `tf.io.read_file`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from importlib import resources

import numpy as np
import tensorflow as tf

from mi_ssl_jax import paths
from mi_ssl_jax.data import download, fashion_mnist
from mi_ssl_jax.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-dataset pixel statistics in [0, 1] (solo-learn / torchvision values).
_STATS = {
    fashion_mnist.NAME: fashion_mnist.STATS,
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}
# Example counts of the CMC ImageNet-100 subset of ImageNet-2012.
_IMAGENET100_COUNTS = {"train": 126689, "validation": 5000}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset provides.

  Attributes:
    name: the name as given (`fashion_mnist`, `tfds:cifar10`, ...).
    num_examples: examples per split name (all processes together).
    num_classes: number of labelled classes (0 for unlabelled folders).
    image_shape: static (H, W, C) of every image, or None if sizes vary.
    mean: per-channel pixel mean in [0, 1] (of the source's channels).
    std: per-channel pixel standard deviation in [0, 1].
    train_split: name of the training split.
    eval_split: name of the usual evaluation split.
  """
  name: str
  num_examples: dict[str, int]
  num_classes: int
  image_shape: tuple[int, int, int] | None
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str = "train"
  eval_split: str = "test"


@dataclasses.dataclass(frozen=True)
class ProcessSplit:
  """One process's share of a split, not yet decoded.

  Attributes:
    dataset: finite `tf.data.Dataset` of raw elements, in a fixed order.
    decode: raw element -> {"image": uint8 [H, W, C], "label": int32 []}.
    num_examples: number of elements in `dataset`.
    num_examples_per_process: element counts of every process (for padding).
    shuffle_buffer: buffer size that shuffles this split fully if cheap.
    indexed: True when the raw elements are the indices 0..n-1 (in-memory
      and folder sources): training can then shuffle each epoch by a
      stateless permutation and resume at any step exactly.
  """
  dataset: tf.data.Dataset
  decode: Callable[[dict], dict]
  num_examples: int
  num_examples_per_process: tuple[int, ...]
  shuffle_buffer: int
  indexed: bool = False


def imagenet100_classes() -> list[str]:
  """The 100 WordNet ids of the CMC ImageNet-100 subset, in CMC's order."""
  text = resources.files("mi_ssl_jax.data").joinpath("imagenet100.txt")
  return text.read_text().split()


_SLICE = re.compile(r"^(\w+)\[(-?\d*%?):(-?\d*%?)\]$")


def parse_split_slice(split: str) -> tuple[str, str | None, str | None]:
  """``"train[:50000]"`` -> ``("train", None, "50000")`` (TFDS slice syntax).

  Bounds are integers or percentages (``"train[90%:]"``); a split without
  brackets has no bounds.
  """
  m = _SLICE.match(split)
  if not m:
    if "[" in split:
      raise DatasetError(
          f"split {split!r}: write a slice as name[start:end] with integers "
          "or percentages, e.g. 'train[:50000]' or 'train[90%:]'")
    return split, None, None
  return m.group(1), m.group(2) or None, m.group(3) or None


def slice_bounds(split: str, n: int) -> tuple[str, int, int]:
  """``(base, start, end)`` of ``split`` over a split of ``n`` examples."""
  base, lo, hi = parse_split_slice(split)

  def bound(text, default):
    if text is None:
      return default
    value = (int(round(n * int(text[:-1]) / 100)) if text.endswith("%")
             else int(text))
    return min(max(value + n if value < 0 else value, 0), n)

  start, end = bound(lo, 0), bound(hi, n)
  if end <= start:
    raise DatasetError(f"split {split!r} of {n} examples is empty")
  return base, start, end


def _even_slice(n: int, index: int, count: int) -> tuple[int, int]:
  """[start, end) of part `index` of `count` near-equal parts of range(n)."""
  return n * index // count, n * (index + 1) // count


def _even_counts(n: int, count: int) -> tuple[int, ...]:
  return tuple(
      _even_slice(n, i, count)[1] - _even_slice(n, i, count)[0]
      for i in range(count))


# --------------------------------------------------------------------------- #
# Fashion-MNIST (IDX files).
# --------------------------------------------------------------------------- #

_FMNIST_FILES = fashion_mnist.FILES
fashion_mnist_dir = fashion_mnist.fashion_mnist_dir
_load_fashion_mnist = fashion_mnist.load


def _fashion_mnist_missing(why: str = "") -> DatasetError:
  return DatasetError(
      f"Fashion-MNIST not found{why}: run `sudo apt-get install "
      "dataset-fashion-mnist` or set MI_SSL_DATA_DIR to a folder with its "
      "IDX files (train-images-idx3-ubyte.gz, ...)")


def _tfds_fashion_mnist_prepared(data_dir: str | None) -> bool:
  try:
    return _tfds_builder("fashion_mnist", data_dir).is_prepared()
  except DatasetError:
    return False


def _download_fashion_mnist(target: str) -> str:
  """Downloads into `target` (then on `fashion_mnist_dir`'s path);
  DatasetError if it cannot."""
  try:
    return download.fetch_fashion_mnist(target)
  except download.DownloadError as e:
    raise _fashion_mnist_missing(f" and not downloaded ({e})") from None
  except OSError as e:  # the cache folder cannot be written
    raise _fashion_mnist_missing(
        f" and not downloaded ({download.cache_dir()}: "
        f"{e.strerror or e})") from None


def _fashion_mnist_folder(data_dir: str | None) -> str | None:
  """The folder of the IDX files, downloading them if they are found
  nowhere and no TFDS copy is prepared; None: read the TFDS copy.

  Raises:
    DatasetError: not found and not downloadable (one line: what to do).
  """
  folder = fashion_mnist_dir(data_dir)
  if folder is not None or _tfds_fashion_mnist_prepared(data_dir):
    return folder
  return _download_fashion_mnist(download.cache_dir())


# --------------------------------------------------------------------------- #
# TFDS.
# --------------------------------------------------------------------------- #


def _tfds_builder(builder_name: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(builder_name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names.
    raise DatasetError(
        f"unknown TFDS dataset {builder_name!r} "
        f"({type(e).__name__}); see `tfds.list_builders()`") from None
  return builder


def _not_prepared(builder, builder_name: str) -> DatasetError:
  base = builder_name.split(":")[0]
  manual = ""
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual = (" (it needs a manual download: https://www.tensorflow.org/"
              f"datasets/catalog/{base})")
  return DatasetError(
      f"TFDS dataset {builder_name!r} is not prepared in "
      f"{builder.data_dir!r}; run `tfds build {base} --data_dir=<dir>` and "
      f"pass that data_dir{manual}")


def _as_dataset(builder, builder_name, **kwargs) -> tf.data.Dataset:
  try:
    return builder.as_dataset(**kwargs)
  except Exception as e:
    if not builder.is_prepared():  # (tfds.testing.mock_data needs no files.)
      raise _not_prepared(builder, builder_name) from None
    raise DatasetError(f"cannot read TFDS {builder_name!r}: "
                       f"{str(e).splitlines()[0][:200]}") from None


def _count(ds: tf.data.Dataset) -> int:
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def _tfds_split_name(builder, split: str) -> str:
  if not builder.info.splits:  # Unknown split sizes (mock data).
    return split
  if split in builder.info.splits:
    return split
  base = split.split("[")[0]
  if base not in builder.info.splits:
    raise DatasetError(
        f"split {split!r} not in {builder.name}; available: "
        f"{sorted(builder.info.splits.keys())}")
  return split


def _tfds_decode(image_key: str, label_key: str | None,
                 feature) -> Callable[[dict], dict]:
  def decode(raw):
    image = feature.decode_example(raw[image_key])
    label = (tf.cast(raw[label_key], tf.int32) if label_key
             else tf.constant(-1, tf.int32))
    return {"image": image, "label": label}
  return decode


def _tfds_info(name: str, builder_name: str, data_dir) -> DatasetInfo:
  builder = _tfds_builder(builder_name, data_dir)
  features = builder.info.features
  image_feature = features["image"]
  shape = tuple(image_feature.shape)
  static = shape if None not in shape else None
  num_classes = (features["label"].num_classes if "label" in features else 0)
  base = builder.name
  channels = shape[-1] if shape[-1] else 3
  default = ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3
             else ((0.5,) * channels, (0.5,) * channels))
  mean, std = _STATS.get(base, default)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  names = splits or builder.info.splits.keys() or ()
  eval_split = next((s for s in ("test", "validation", "val") if s in names),
                    "test")
  return DatasetInfo(name, splits, num_classes, static, mean, std,
                     eval_split=eval_split)


def _filter_labels(ds, label_key, label_filter):
  """Keeps examples whose label is in `label_filter`, relabelled 0..K-1."""
  keep = tf.constant(label_filter, tf.int64)
  remap = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          keep, tf.range(len(label_filter), dtype=tf.int64)), -1)
  ds = ds.filter(lambda x: tf.reduce_any(
      tf.equal(tf.cast(x[label_key], tf.int64), keep)))
  return ds.map(lambda x: {
      **x, label_key: remap.lookup(tf.cast(x[label_key], tf.int64))})


def _tfds_split(builder_name, split, data_dir, index, count, seed,
                label_filter: list[int] | None = None,
                exact_counts: bool = True) -> ProcessSplit:
  import tensorflow_datasets as tfds
  builder = _tfds_builder(builder_name, data_dir)
  split = _tfds_split_name(builder, split)
  features = builder.info.features
  label_key = "label" if "label" in features else None
  decoders = {"image": tfds.decode.SkipDecoding()}
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
  if label_filter is None or not exact_counts:
    sub_splits = [tfds.split_for_jax_process(split, process_index=i,
                                             process_count=count)
                  for i in range(count)]
    ds = _as_dataset(builder, builder_name, split=sub_splits[index],
                     decoders=decoders, shuffle_files=seed is not None,
                     read_config=read_config)
    if builder.info.splits:
      counts = tuple(builder.info.splits[s].num_examples for s in sub_splits)
    elif exact_counts:  # Split sizes unknown: count (small mock data only).
      counts = tuple(_count(_as_dataset(builder, builder_name, split=s,
                                        decoders=decoders))
                     for s in sub_splits)
    else:
      counts = (0,) * count
    n = counts[index]
    if label_filter is not None:
      ds = _filter_labels(ds, label_key, label_filter)
      total = _IMAGENET100_COUNTS.get(split, 0)
      counts = _even_counts(total, count)
      n = counts[index]  # approximate: only used for epoch lengths
  else:
    # Filtered sources: read the whole split, keep the classes, then take every
    # count-th example, so per-process counts are known exactly (for padding).
    ds = _as_dataset(builder, builder_name, split=split, decoders=decoders,
                     shuffle_files=False, read_config=read_config)
    ds = _filter_labels(ds, label_key, label_filter)
    ds = ds.shard(count, index)
    total = _IMAGENET100_COUNTS.get(split, 0)
    counts = tuple(len(range(i, total, count)) for i in range(count))
    n = counts[index]
  shuffle_buffer = min(n, 10_000) if n else 10_000
  return ProcessSplit(ds, _tfds_decode("image", label_key, features["image"]),
                      n, counts, shuffle_buffer)


# --------------------------------------------------------------------------- #
# Image folders.
# --------------------------------------------------------------------------- #


def _folder_root(path: str, split: str) -> str:
  """The folder of `split`'s images (local or gs://, via the path layer)."""
  if not paths.isdir(path):
    raise DatasetError(f"image folder {path!r} does not exist")
  split_dir = paths.join(path, split)
  if split_dir.is_dir():
    return paths.to_str(split_dir)
  if split == "train":
    return paths.to_str(path)
  raise DatasetError(
      f"image folder {path!r} has no {split!r} sub-folder; create "
      f"{paths.to_str(split_dir)} or evaluate on split 'train'")


_SPLIT_FOLDERS = ("train", "val", "validation", "test")


def _class_names(path: str) -> list[str]:
  """Class folder names: those of <path>/train if it exists, else of <path>."""
  root = paths.join(path, "train")
  root = root if root.is_dir() else paths.as_path(path)
  _, dirnames, _ = next(paths.walk(root))  # one listing, local or remote
  return sorted(d.rstrip("/") for d in dirnames
                if d.rstrip("/") not in _SPLIT_FOLDERS)


@functools.lru_cache(maxsize=8)
def _folder_files(path: str, split: str):
  """(image files, labels [N] int32, class names) of `split` of `path`,
  files in sorted order (local or gs://)."""
  root = _folder_root(path, split)
  classes = _class_names(path)
  class_index = {c: i for i, c in enumerate(classes)}
  files, labels = [], []
  top_level = root == paths.to_str(path)
  for dirpath, dirnames, filenames in paths.walk(root):
    rel = dirpath[len(root):].strip("/")
    dirnames[:] = sorted(d for d in dirnames if not (
        not rel and top_level and d.rstrip("/") in _SPLIT_FOLDERS))
    top = rel.split("/")[0] if rel else None
    for name in sorted(filenames):
      if name.lower().endswith(IMAGE_EXTENSIONS):
        if top is not None and top not in class_index:
          raise DatasetError(
              f"class folder {top!r} of split {split!r} is not a class of "
              f"{path!r} (classes come from {path}/train or {path})")
        files.append(f"{dirpath.rstrip('/')}/{name}")
        labels.append(class_index[top] if top is not None else -1)
  if not files:
    raise DatasetError(
        f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}")
  return tuple(files), np.asarray(labels, np.int32), tuple(classes)


def _check_image_bytes(data, path):
  """Asserts that `data` starts like a JPEG, PNG, GIF or BMP file."""
  ok = tf.reduce_any(tf.stack([
      tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"),
      tf.equal(tf.strings.substr(data, 0, 4), b"\x89PNG"),
      tf.equal(tf.strings.substr(data, 0, 3), b"GIF"),
      tf.equal(tf.strings.substr(data, 0, 2), b"BM"),
  ]))
  return tf.debugging.Assert(ok, ["corrupt image file:", path])


def _folder_decode(raw):
  data = tf.io.read_file(raw["path"])
  with tf.control_dependencies([_check_image_bytes(data, raw["path"])]):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return {"image": image, "label": raw["label"]}


def _folder_split(path, split, index, count) -> ProcessSplit:
  base, _, _ = parse_split_slice(split)
  files, labels, _ = _folder_files(path, base)
  _, first, last = slice_bounds(split, len(files))
  files, labels = files[first:last], labels[first:last]
  n = len(files)
  # A fixed permutation before slicing, so every process sees all classes.
  order = np.random.default_rng(0).permutation(n)
  start, end = _even_slice(n, index, count)
  mine = np.sort(order[start:end])
  paths = tf.constant([files[i] for i in mine], tf.string)
  local_labels = tf.constant(labels[mine], tf.int32)
  # Raw elements are indices (see ProcessSplit.indexed).
  ds = tf.data.Dataset.range(len(mine))

  def decode(i):
    return _folder_decode({"path": tf.gather(paths, i),
                           "label": tf.gather(local_labels, i)})

  return ProcessSplit(ds, decode, len(mine), _even_counts(n, count),
                      max(len(mine), 1), indexed=True)


# --------------------------------------------------------------------------- #
# Public entry points.
# --------------------------------------------------------------------------- #

_FORMS = ("fashion_mnist, tfds:<builder> (e.g. tfds:cifar10), imagenet100, "
          "folder:<path>")


def _parse(name: str) -> tuple[str, str]:
  if not isinstance(name, str) or not name:
    raise DatasetError(f"dataset name must be a non-empty string; use one of "
                       f"{_FORMS}")
  if name == "fashion_mnist":
    return "fashion_mnist", ""
  if name == "imagenet100":
    return "imagenet100", ""
  for prefix in ("tfds:", "folder:"):
    if name.startswith(prefix) and len(name) > len(prefix):
      return prefix[:-1], name[len(prefix):]
  raise DatasetError(f"unknown dataset {name!r}; use one of {_FORMS}")


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
  """Returns split sizes, classes, image shape and pixel statistics of `name`.

  Args:
    name: `fashion_mnist`, `tfds:<builder>`, `imagenet100` or `folder:<path>`.
    data_dir: TFDS data dir (also searched for Fashion-MNIST IDX files).

  Raises:
    DatasetError: unknown name, or the data is not where it should be.
  """
  kind, arg = _parse(name)
  if kind == "fashion_mnist":
    folder = _fashion_mnist_folder(data_dir)
    if folder is None:  # a prepared TFDS fashion_mnist
      info = _tfds_info(name, "fashion_mnist", data_dir)
      return dataclasses.replace(info, name=name)
    counts = {s: _load_fashion_mnist(folder, s)[1].shape[0]
              for s in _FMNIST_FILES}
    mean, std = _STATS["fashion_mnist"]
    return DatasetInfo(name, counts, 10, (28, 28, 1), mean, std)
  if kind == "tfds":
    return _tfds_info(name, arg, data_dir)
  if kind == "imagenet100":
    builder = _tfds_builder("imagenet2012", data_dir)
    if not builder.is_prepared():
      raise _not_prepared(builder, "imagenet2012")
    return DatasetInfo(name, dict(_IMAGENET100_COUNTS), 100, None,
                       IMAGENET_MEAN, IMAGENET_STD, eval_split="validation")
  # folder
  counts = {}
  for split in ("train", "val", "validation", "test"):
    if split == "train" or paths.isdir(paths.join(arg, split)):
      counts[split] = len(_folder_files(arg, split)[0])
  classes = _class_names(arg)
  eval_split = next((s for s in ("val", "validation", "test") if s in counts),
                    "train")
  return DatasetInfo(name, counts, len(classes), None, IMAGENET_MEAN,
                     IMAGENET_STD, eval_split=eval_split)


def split_num_examples(name: str, split: str,
                       data_dir: str | None = None) -> int:
  """Number of examples of ``split`` (slices such as ``"train[:50000]"``)."""
  info = dataset_info(name, data_dir)
  base, lo, hi = parse_split_slice(split)
  kind, arg = _parse(name)
  if kind == "tfds" and (lo or hi) and info.num_examples:
    try:  # TFDS resolves its own slice syntax.
      return int(_tfds_builder(arg, data_dir).info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
      raise DatasetError(f"split {split!r} of {name}: {e}") from None
  if base not in info.num_examples:
    if not info.num_examples:
      if kind == "tfds":  # No split sizes: say why if it is not prepared.
        builder = _tfds_builder(arg, data_dir)
        if not builder.is_prepared():
          raise _not_prepared(builder, arg)
      return 0
    raise DatasetError(f"split {split!r} not in {name}; available: "
                       f"{sorted(info.num_examples)} (and slices such as "
                       "'train[:90%]')")
  if lo is None and hi is None:
    return info.num_examples[base]
  _, start, end = slice_bounds(split, info.num_examples[base])
  return end - start


def has_random_access(name: str, data_dir: str | None = None) -> bool:
  """True if `process_split` of `name` gives an indexed split.

  (Fashion-MNIST IDX files and `folder:` sources: `ProcessSplit.indexed`;
  TFDS records are read sequentially.)
  """
  kind, _ = _parse(name)
  return kind == "folder" or (kind == "fashion_mnist" and
                              _fashion_mnist_folder(data_dir) is not None)


def process_split(name: str, split: str, *, data_dir: str | None = None,
                  process_index: int = 0, process_count: int = 1,
                  file_shuffle_seed: int | None = None,
                  exact_counts: bool = True) -> ProcessSplit:
  """Returns process `process_index`'s disjoint share of `split` of `name`.

  The shares of all `process_count` processes are disjoint and together cover
  the split (TFDS: `tfds.split_for_jax_process`; in-memory and folder sources:
  even contiguous slices of a fixed order).

  Args:
    name: dataset name (see module docstring).
    split: split name, e.g. "train", "test", "validation" (TFDS slicing such as
      "train[:90%]" works for TFDS sources).
    data_dir: TFDS data dir (also searched for Fashion-MNIST IDX files).
    process_index: this process's index.
    process_count: number of processes.
    file_shuffle_seed: seed for TFDS file-order shuffling (None: fixed order).
    exact_counts: for class-filtered sources (imagenet100), True reads the
      whole split on every process and shards after filtering, so per-process
      counts are exact (evaluation padding needs them); False splits first
      and filters after (training: cheaper, counts approximate).
  """
  kind, arg = _parse(name)
  if not 0 <= process_index < process_count:
    raise DatasetError(f"process_index {process_index} not in "
                       f"[0, {process_count})")
  if kind == "fashion_mnist":
    folder = _fashion_mnist_folder(data_dir)
    if folder is None:  # a prepared TFDS fashion_mnist
      try:
        return _tfds_split("fashion_mnist", split, data_dir, process_index,
                           process_count, file_shuffle_seed,
                           exact_counts=exact_counts)
      except DatasetError:
        raise _fashion_mnist_missing() from None
    base, lo, hi = parse_split_slice(split)
    if base not in _FMNIST_FILES:
      raise DatasetError(f"Fashion-MNIST has splits 'train' and 'test' (and "
                         f"slices such as 'train[:50000]'), not {split!r}")
    images, labels = _load_fashion_mnist(folder, base)
    _, first, last = slice_bounds(split, len(labels))
    images, labels = images[first:last], labels[first:last]
    start, end = _even_slice(len(labels), process_index, process_count)
    # Raw elements are indices (cheap to shuffle); decode gathers the image.
    local_images = tf.constant(images[start:end])  # [n, 28, 28, 1] uint8
    local_labels = tf.constant(labels[start:end])  # [n] int32
    ds = tf.data.Dataset.range(end - start)

    def decode(i):
      return {"image": tf.gather(local_images, i),
              "label": tf.gather(local_labels, i)}

    return ProcessSplit(ds, decode, end - start,
                        _even_counts(len(labels), process_count),
                        max(end - start, 1), indexed=True)
  if kind == "tfds":
    return _tfds_split(arg, split, data_dir, process_index, process_count,
                       file_shuffle_seed, exact_counts=exact_counts)
  if kind == "imagenet100":
    builder = _tfds_builder("imagenet2012", data_dir)
    names = builder.info.features["label"].names
    wanted = sorted(imagenet100_classes())
    missing = [c for c in wanted if c not in names]
    if missing:
      raise DatasetError(f"imagenet2012 labels lack ImageNet-100 classes "
                         f"{missing[:3]}...; is this ImageNet-1k?")
    return _tfds_split("imagenet2012", split, data_dir, process_index,
                       process_count, file_shuffle_seed,
                       label_filter=[names.index(c) for c in wanted],
                       exact_counts=exact_counts)
  return _folder_split(arg, split, process_index, process_count)
