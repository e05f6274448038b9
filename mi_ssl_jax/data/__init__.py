"""Input pipelines for mi_ssl_jax: sources, SSL augmentations, global arrays.

Datasets by name (`dataset_info(name)`, `process_split(name, split)`):
  * "fashion_mnist": offline default; IDX files from `data_dir`,
    $MI_SSL_DATA_DIR, /usr/share/datasets/fashion-mnist/ (Debian package
    `dataset-fashion-mnist`), the download cache, else a prepared TFDS
    fashion_mnist; found nowhere, downloaded once (`download.py`).
  * "tfds:<builder>": any prepared TFDS builder (cifar10, cifar100, stl10,
    imagenet2012, ...) in `data_dir`.
  * "imagenet100": CMC / solo-learn 100-class subset of TFDS imagenet2012
    (class list: `imagenet100_classes()`, shipped as imagenet100.txt).
  * "folder:<path>": JPEG/PNG/GIF/BMP files under <path>/<split> (or <path>
    for "train"); first-level sub-folders are classes, loose files label -1.

Training (infinite, shuffled, host-local numpy batches, b = global // procs):

    it = make_train_iterator("fashion_mnist", global_batch_size=256,
                             image_size=28, augment=Augmentation("mae"),
                             seed=0, start_step=step)
    for batch in prefetch_to_device(it, NamedSharding(mesh, P("data"))):
      ...  # batch: global jax.Arrays sharded on "data"

  recipe "mae":     {"image": f32 [b,S,S,C], "label": i32 [b]}
  recipe "siamese": {"view1": f32 [b,S,S,C], "view2": f32 [b,S,S,C],
                     "label": i32 [b]} (+ "local_views" f32 [b,K,s,s,C] with
                     num_local_crops=K)

Evaluation (finite, pad-and-mask so every process runs len(it) batches):

    it = make_eval_iterator("fashion_mnist", global_batch_size=256,
                            image_size=28)
    for batch in it: ...  # {"image", "label", "_mask": bool [b]}

Where augmentation runs. `augment_on="host"` (default) runs the whole recipe
in tf.data. `augment_on="device"` makes the host crop + flip only (views in
[0, 1], not normalised); the trainer then applies, inside its jitted step,

    mean, std = channel_stats("fashion_mnist", channels=3)
    augment = make_device_augment(mean=mean, std=std, ...)
    batch = augment(batch, jax.random.fold_in(aug_key, step))

a pure JAX function with per-example keys (DeepMind BYOL design) that does
colour jitter, grayscale, blur, solarize and normalisation. Use "device" on
GPU/TPU hosts whose CPUs cannot keep up (see docs/benchmarks.md, "Data
pipelines", for measured host throughput); both paths read one
`Augmentation` (`augmentation.py`; the trainer builds it from
`config.augment`): `make_device_augment(**spec.photometric(), ...)` and
`channel_stats(...)` for mean/std.

Determinism: identical arguments give identical batches. In-memory and
folder sources follow one global order per (seed, epoch) whatever the
process count, and `start_step` skips to the exact position (bit-exact
resume); TFDS sources fold `start_step` into their shuffle seed.

Errors are `DatasetError` (a ValueError) with a one-line message: unknown
dataset, missing files, corrupt image (raised while iterating), global batch
not divisible by the devices/processes, crop larger than fixed-size images.
TF is kept off GPUs/TPUs when a pipeline is built.
"""

import importlib

from mi_ssl_jax.data.augment_jax import make_device_augment
from mi_ssl_jax.data.augmentation import Augmentation
from mi_ssl_jax.errors import DatasetError

# The pipeline and sources import TensorFlow; they load on first use, so
# `mi_ssl_jax.data.augment_jax` (pure JAX) works where TensorFlow is absent
# (the accelerator script's machine).
_LAZY = {
    "channel_stats": "pipeline", "hide_gpus_from_tf": "pipeline",
    "local_batch_size": "pipeline", "make_eval_iterator": "pipeline",
    "make_train_iterator": "pipeline", "prefetch_to_device": "pipeline",
    "to_global_arrays": "pipeline",
    "DatasetInfo": "sources", "ProcessSplit": "sources",
    "dataset_info": "sources", "imagenet100_classes": "sources",
    "process_split": "sources", "split_num_examples": "sources",
}


def __getattr__(name):
  if name in _LAZY:
    module = importlib.import_module(f"mi_ssl_jax.data.{_LAZY[name]}")
    return getattr(module, name)
  raise AttributeError(f"module 'mi_ssl_jax.data' has no attribute {name!r}")


__all__ = [
    "Augmentation",
    "DatasetError",
    "DatasetInfo",
    "ProcessSplit",
    "channel_stats",
    "dataset_info",
    "hide_gpus_from_tf",
    "imagenet100_classes",
    "local_batch_size",
    "make_device_augment",
    "make_eval_iterator",
    "make_train_iterator",
    "prefetch_to_device",
    "process_split",
    "split_num_examples",
    "to_global_arrays",
]
