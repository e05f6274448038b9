"""Tests of mi_ssl_jax.data: sources, per-process splits, pipelines, errors."""

import gzip
import inspect
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import data
from mi_ssl_jax.data import fashion_mnist, sources

ONE = dict(process_index=0, process_count=1, num_devices=8)


def _write_png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_png(image))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """train/{a,b}: 5 + 4 RGB PNGs of varied sizes; val/{a,b}: 2 + 1."""
  root = str(tmp_path_factory.mktemp("images"))
  rng = np.random.default_rng(0)
  for split, counts in (("train", (5, 4)), ("val", (2, 1))):
    for cls, n in zip("ab", counts, strict=True):
      for i in range(n):
        h, w = rng.integers(16, 40, size=2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        _write_png(f"{root}/{split}/{cls}/{i}.png", image)
  return root


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
  """6 unlabelled 16x16 PNGs directly in the folder."""
  root = str(tmp_path_factory.mktemp("flat"))
  rng = np.random.default_rng(1)
  for i in range(6):
    _write_png(f"{root}/{i}.png",
               rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  return root


def _idx_bytes(array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_fmnist(tmp_path, monkeypatch):
  """Fake Fashion-MNIST IDX files (12 train, 5 test) in $MI_SSL_DATA_DIR."""
  rng = np.random.default_rng(2)
  for prefix, n in (("train", 12), ("t10k", 5)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
      with gzip.open(tmp_path / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(arr))
  monkeypatch.setenv("MI_SSL_DATA_DIR", str(tmp_path))
  sources._load_fashion_mnist.cache_clear()
  yield tmp_path
  sources._load_fashion_mnist.cache_clear()


def test_unknown_dataset_is_one_line_error():
  with pytest.raises(data.DatasetError, match="unknown dataset 'cifar'") as e:
    data.dataset_info("cifar")
  assert "\n" not in str(e.value)
  with pytest.raises(data.DatasetError, match="unknown TFDS dataset"):
    data.dataset_info("tfds:no_such_dataset_xyz")


def test_batch_not_divisible_by_devices(folder):
  with pytest.raises(data.DatasetError, match="not divisible by the 8 devices"):
    data.make_train_iterator(f"folder:{folder}", global_batch_size=12,
                             image_size=16, **ONE)
  with pytest.raises(data.DatasetError, match="3 processes"):
    data.local_batch_size(8, process_count=3, num_devices=8)
  assert data.local_batch_size(16, process_count=2, num_devices=8) == 8
  with pytest.raises(data.DatasetError, match="needs two-view"):
    data.make_train_iterator(f"folder:{folder}", global_batch_size=8,
                             image_size=16, **ONE,
                             augment=data.Augmentation(num_local_crops=2))
  with pytest.raises(data.DatasetError, match="unknown augmentation recipe"):
    data.make_train_iterator(f"folder:{folder}", global_batch_size=8,
                             image_size=16, **ONE,
                             augment=data.Augmentation(recipe="simclr"))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setenv("MI_SSL_DATA_DIR", str(tmp_path))
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path))
  with pytest.raises(data.DatasetError,
                     match="apt-get install dataset-fashion-mnist") as e:
    data.make_train_iterator("fashion_mnist", global_batch_size=8,
                             image_size=28, data_dir=str(tmp_path), **ONE)
  assert "MI_SSL_DATA_DIR" in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_and_split(folder, tmp_path):
  with pytest.raises(data.DatasetError, match="does not exist"):
    data.dataset_info(f"folder:{tmp_path}/nope")
  with pytest.raises(data.DatasetError, match="no 'test' sub-folder"):
    data.make_eval_iterator(f"folder:{folder}", global_batch_size=8,
                            image_size=16, split="test", **ONE)


def test_fashion_mnist_from_env_dir(tiny_fmnist):
  info = data.dataset_info("fashion_mnist")
  assert info.num_examples == {"train": 12, "test": 5}
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  batch = next(iter(data.make_train_iterator(
      "fashion_mnist", global_batch_size=8, image_size=28, channels=1,
      **ONE)))
  assert batch["image"].shape == (8, 28, 28, 1)
  assert batch["image"].dtype == np.uint8  # pixels; normalised on device
  assert batch["label"].dtype == np.int32
  # Grayscale expanded to 3 channels when the model wants 3.
  batch = next(iter(data.make_train_iterator(
      "fashion_mnist", global_batch_size=8, image_size=28, channels=3,
      **ONE)))
  assert batch["image"].shape == (8, 28, 28, 3)
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 1])


def test_image_smaller_than_crop(tiny_fmnist):
  with pytest.raises(data.DatasetError, match="smaller than the crop 32"):
    data.make_train_iterator("fashion_mnist", global_batch_size=8,
                             image_size=32, **ONE)
  batch = next(iter(data.make_train_iterator(
      "fashion_mnist", global_batch_size=8, image_size=32, allow_upscale=True,
      **ONE)))
  assert batch["image"].shape == (8, 32, 32, 3)


def test_eval_pad_and_mask_covers_split(tiny_fmnist):
  """3 processes, 5 test examples: equal batch counts, every example once."""
  labels = []
  lengths = []
  for index in range(3):
    it = data.make_eval_iterator("fashion_mnist", global_batch_size=24,
                                 image_size=28, channels=1, process_index=index,
                                 process_count=3, num_devices=8)
    batches = list(it)
    lengths.append((len(it), len(batches)))
    for b in batches:
      assert b["image"].shape == (8, 28, 28, 1) and b["_mask"].dtype == bool
      assert np.all(b["label"][~b["_mask"]] == -1)
      assert np.all(b["image"][~b["_mask"]] == 0)
      labels.extend(b["label"][b["_mask"]])
  assert lengths == [(1, 1)] * 3
  assert labels == [0, 1, 2, 3, 4]  # process order == split order


def test_folder_info_and_process_splits(folder):
  name = f"folder:{folder}"
  info = data.dataset_info(name)
  assert info.num_examples == {"train": 9, "val": 3}
  assert info.num_classes == 2 and info.eval_split == "val"
  paths = []
  for index in range(4):
    part = data.process_split(name, "train", process_index=index,
                              process_count=4)
    assert part.indexed  # raw elements are indices: exact resume
    got = [part.decode(x)["image"].numpy().tobytes()  # distinct images
           for x in part.dataset.as_numpy_iterator()]
    assert len(got) == part.num_examples == part.num_examples_per_process[index]
    paths.extend(got)
  assert len(paths) == len(set(paths)) == 9  # disjoint and covering


def test_folder_pipelines_shapes_labels(folder):
  name = f"folder:{folder}"
  batch = next(iter(data.make_train_iterator(
      name, global_batch_size=8, image_size=16, **ONE,
      augment=data.Augmentation(recipe="siamese", num_local_crops=1,
                                local_crop_size=8))))
  assert batch["view1"].shape == batch["view2"].shape == (8, 16, 16, 3)
  assert batch["local_views"].shape == (8, 1, 8, 8, 3)
  assert set(batch) == {"view1", "view2", "local_views", "label"}
  assert batch["view1"].dtype == batch["local_views"].dtype == np.uint8
  assert set(batch["label"]) <= {0, 1}
  assert not np.allclose(batch["view1"], batch["view2"])
  it = data.make_eval_iterator(name, global_batch_size=8, image_size=16,
                               **ONE)
  batches = list(it)
  assert len(it) == len(batches) == 1 and it.num_examples == 3
  assert sorted(batches[0]["label"][batches[0]["_mask"]]) == [0, 0, 1]


def test_unlabelled_folder(flat_folder):
  info = data.dataset_info(f"folder:{flat_folder}")
  assert info.num_classes == 0 and info.num_examples == {"train": 6}
  batch = next(iter(data.make_train_iterator(
      f"folder:{flat_folder}", global_batch_size=8, image_size=16, **ONE)))
  assert np.all(batch["label"] == -1) and batch["image"].shape == (8, 16, 16, 3)


def test_corrupt_image_names_the_file(tmp_path):
  _write_png(str(tmp_path / "good.png"), np.zeros((8, 8, 3), np.uint8))
  (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
  it = data.make_eval_iterator(f"folder:{tmp_path}", global_batch_size=8,
                               image_size=8, split="train", **ONE)
  with pytest.raises(data.DatasetError, match="corrupt image file .*bad.jpg"):
    list(it)


def test_determinism_and_resume(folder):
  def first(seed, start_step=0, recipe="siamese"):
    it = data.make_train_iterator(
        f"folder:{folder}", global_batch_size=8, image_size=16,
        augment=data.Augmentation(recipe=recipe), seed=seed,
        start_step=start_step, **ONE)
    batches = iter(it)
    return [next(batches) for _ in range(3)]

  a, b = first(0), first(0)
  for x, y in zip(a, b, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # (MAE recipe below: same seeding code, cheaper to build.)
  mae = first(0, recipe="mae")[0]["image"]
  assert not np.allclose(mae, first(1, recipe="mae")[0]["image"])
  assert not np.allclose(mae, first(0, 1, recipe="mae")[0]["image"])


def test_global_batches_do_not_depend_on_the_process_count(tiny_fmnist):
  """In-memory sources: 2 processes' local batches are halves of 1's batches.

  Images, augmentations and labels, bit for bit, over an epoch boundary (12
  examples, global batch 8) and after a resume at step 2; within each global
  batch the two processes read disjoint examples.
  """
  def batches(count, index, start_step=0, steps=3):
    it = iter(data.make_train_iterator(
        "fashion_mnist", global_batch_size=8, image_size=28, channels=1,
        augment=data.Augmentation(recipe="siamese"), seed=5,
        start_step=start_step, process_index=index, process_count=count,
        num_devices=8))
    return [next(it) for _ in range(steps)]

  one = batches(1, 0)
  halves = [batches(2, i) for i in range(2)]
  for step, full in enumerate(one):
    for key in full:
      np.testing.assert_array_equal(
          np.concatenate([h[step][key] for h in halves]), full[key])
    flat = [h[step]["view1"].reshape(4, -1) for h in halves]
    assert not any((a == b).all() for a in flat[0] for b in flat[1])
  resumed = batches(2, 1, start_step=2, steps=1)[0]
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], halves[1][2][key])


def test_views_match_configured_ops(tmp_path):
  """Full-image crops of 16x16 images, no flip: only the configured ops act."""
  image = np.random.default_rng(3).integers(0, 256, (16, 16, 3), np.uint8)
  for i in range(8):
    _write_png(str(tmp_path / f"{i}.png"), image)
  ops = dict(recipe="siamese", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
             hflip=False, color_jitter_prob=0.0, blur_prob=(0.0, 0.0))

  def views(**kw):
    b = next(iter(data.make_train_iterator(
        f"folder:{tmp_path}", global_batch_size=8, image_size=16,
        augment=data.Augmentation(**{**ops, **kw}), **ONE)))
    return b["view1"] / 255.0, b["view2"] / 255.0  # uint8 pixels

  x = image / 255.0
  v1, v2 = views(grayscale_prob=0.0, solarize_prob=(0.0, 1.0))
  np.testing.assert_allclose(v1, np.broadcast_to(x, v1.shape), atol=2e-3)
  np.testing.assert_allclose(
      v2, np.broadcast_to(np.where(x < 0.5, x, 1 - x), v2.shape), atol=2e-3)
  v1, _ = views(grayscale_prob=1.0, solarize_prob=(0.0, 0.0))
  gray = x @ np.array([0.299, 0.587, 0.114])
  # Rounded to a level after the host colour ops: within half a level.
  np.testing.assert_allclose(v1, np.repeat(gray[None, ..., None], 3, -1) *
                             np.ones((8, 1, 1, 1)), atol=0.5 / 255 + 1e-6)


def test_tfds_mock_data_cifar10():
  with tfds.testing.mock_data(num_examples=12):
    info = data.dataset_info("tfds:cifar10")
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    batch = next(iter(data.make_train_iterator(
        "tfds:cifar10", global_batch_size=8, image_size=32,
        augment=data.Augmentation(recipe="mae"), **ONE)))
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.uint8 and batch["label"].max() < 10
    it = data.make_eval_iterator("tfds:cifar10", global_batch_size=8,
                                 image_size=32, **ONE)
    masks = [b["_mask"].sum() for b in it]
    assert len(it) == 2 and masks == [8, 4]
    with pytest.raises(data.DatasetError, match="smaller than the crop 64"):
      data.make_train_iterator("tfds:cifar10", global_batch_size=8,
                               image_size=64, **ONE)


class MiSslTinyImages(tfds.core.GeneratorBasedBuilder):
  """10 labelled 12x12 images, prepared in a temporary data_dir."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(12, 12, 3)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(10)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((12, 12, 3), i * 20, np.uint8), "label": i}


# TFDS looks up package resources of the builder's module; tests/ is not a
# package, so point it at one that is.
MiSslTinyImages.__module__ = "tensorflow_datasets"


def test_tfds_data_dir_process_splits(tmp_path):
  """A prepared TFDS dataset: per-process splits are disjoint and covering."""
  MiSslTinyImages(data_dir=str(tmp_path)).download_and_prepare()
  name = "tfds:mi_ssl_tiny_images"
  info = data.dataset_info(name, data_dir=str(tmp_path))
  assert info.num_examples == {"train": 10}
  labels = []
  for index in range(3):
    it = data.make_eval_iterator(name, global_batch_size=24, image_size=12,
                                 split="train", data_dir=str(tmp_path),
                                 process_index=index, process_count=3,
                                 num_devices=8)
    assert len(it) == 1
    labels.extend(b for batch in it for b in batch["label"][batch["_mask"]])
  assert sorted(labels) == list(range(10))
  with pytest.raises(data.DatasetError, match="not prepared"):
    data.make_train_iterator(name, global_batch_size=8, image_size=12,
                             data_dir=str(tmp_path / "empty"), **ONE)


def test_tfds_reads_split_for_jax_process():
  """Each process asks TFDS for its own even split of the requested split."""
  requested = []

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    requested.append(split)
    return tf.data.Dataset.from_tensors({
        "image": tf.io.encode_png(tf.zeros([32, 32, 3], tf.uint8)),
        "label": tf.constant(1, tf.int64), "id": tf.constant("x")}).repeat(4)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    for index in range(2):
      data.make_train_iterator("tfds:cifar10", global_batch_size=8,
                               image_size=32, process_index=index,
                               process_count=2, num_devices=8)
  assert requested == [
      tfds.split_for_jax_process("train", process_index=i, process_count=2)
      for i in range(2)]


def test_to_global_arrays_and_prefetch():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  batches = [{"image": np.full((8, 4, 4, 3), i, np.float32),
              "label": np.arange(8, dtype=np.int32) + i} for i in range(3)]
  out = list(data.prefetch_to_device(batches, sharding, size=2))
  assert len(out) == 3
  for i, b in enumerate(out):
    assert b["image"].shape == (8, 4, 4, 3)
    assert b["image"].sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_array_equal(np.asarray(b["label"]), np.arange(8) + i)


@pytest.mark.skipif(sources.fashion_mnist_dir() is None,
                    reason="Fashion-MNIST not installed (apt-get install "
                    "dataset-fashion-mnist or set MI_SSL_DATA_DIR)")
def test_real_fashion_mnist():
  sources._load_fashion_mnist.cache_clear()
  info = data.dataset_info("fashion_mnist")
  assert info.num_examples == {"train": 60000, "test": 10000}
  folder = sources.fashion_mnist_dir()
  _, test_labels = sources._load_fashion_mnist(folder, "test")
  assert np.bincount(test_labels).tolist() == [1000] * 10
  got = []
  for index in range(2):
    it = data.make_eval_iterator("fashion_mnist", global_batch_size=2048,
                                 image_size=28, channels=1,
                                 process_index=index, process_count=2,
                                 num_devices=8)
    assert len(it) == 5
    for b in it:
      got.extend(b["label"][b["_mask"]])
  np.testing.assert_array_equal(got, test_labels)
  batch = next(iter(data.make_train_iterator(
      "fashion_mnist", global_batch_size=64, image_size=28,
      augment=data.Augmentation(recipe="siamese"), **ONE)))
  assert batch["view1"].shape == (64, 28, 28, 3)
  assert np.isfinite(batch["view1"]).all()
  assert not np.allclose(batch["view1"], batch["view2"])


def test_imagenet100_class_list_and_relabelling():
  classes = data.imagenet100_classes()
  assert len(classes) == len(set(classes)) == 100
  assert classes[0] == "n02869837" and classes[-1] == "n02090622"
  names = tfds.builder("imagenet2012").info.features["label"].names
  wanted = sorted(classes)
  keep = [names.index(c) for c in wanted]
  # Labels: 3 ImageNet-100 classes, then 2 classes outside the subset.
  raw_labels = [keep[5], keep[0], keep[99], names.index("n01440764"),
                names.index("n15075141")]
  assert raw_labels[3] not in keep and raw_labels[4] not in keep

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    return tf.data.Dataset.from_tensor_slices({
        "image": [b""] * 5, "label": tf.constant(raw_labels, tf.int64),
        "file_name": [b""] * 5})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    part = data.process_split("imagenet100", "validation", exact_counts=True)
    got = [int(x["label"]) for x in part.dataset.as_numpy_iterator()]
  assert got == [5, 0, 99]
  assert part.num_examples_per_process == (5000,)


def test_augmentation_spec_is_one_typed_value():
  spec = data.Augmentation.from_config(
      {"crop_scale": [0.5, 1.0], "augment_on": "device", "mean": None},
      "siamese")
  assert spec.recipe == "siamese" and spec.crop_scale == (0.5, 1.0)
  assert spec.mean is None and hash(spec) == hash(data.Augmentation(
      recipe="siamese", crop_scale=(0.5, 1.0), augment_on="device"))
  with pytest.raises(data.DatasetError, match="no field crop_size; the "
                     "fields are"):
    data.Augmentation.from_config({"crop_size": 3}, "mae")
  with pytest.raises(data.DatasetError, match="crop_scale"):
    data.Augmentation(crop_scale=(0.0, 1.0))
  with pytest.raises(data.DatasetError, match="augment_on"):
    data.Augmentation(augment_on="tpu")
  # The device path takes exactly the spec's colour fields.
  device_args = set(inspect.signature(data.make_device_augment).parameters)
  assert set(spec.photometric()) == device_args - {"mean", "std"}
  assert spec.local_size(224) == 96 and data.Augmentation(
      local_crop_size=40).local_size(224) == 40
