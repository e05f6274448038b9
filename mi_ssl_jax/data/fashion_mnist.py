"""Fashion-MNIST IDX files with numpy only (no TensorFlow).

The format (LeCun et al., "THE MNIST DATABASE", yann.lecun.com/exdb/mnist;
Fashion-MNIST uses it unchanged, github.com/zalandoresearch/fashion-mnist
README): a 4-byte magic `0 0 <type> <ndim>` (type 8: uint8), `ndim`
big-endian uint32 sizes, then the row-major data; files may be gzipped.

Where the files are looked for (`fashion_mnist_dir`): `data_dir` (or its
`fashion-mnist/`), `$MI_SSL_DATA_DIR` (or its `fashion-mnist/`), the Debian
package's `/usr/share/datasets/fashion-mnist/`, then the download cache
(`mi_ssl_jax.data.download`) when `MI_SSL_DATA_DIR` is unset. Used by
`mi_ssl_jax.data.sources` (the TensorFlow pipelines) and by the GPU study
(`mi_ssl_jax.study.gpu`), which runs where TensorFlow is not installed.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from mi_ssl_jax import paths
from mi_ssl_jax.data import download
from mi_ssl_jax.errors import DatasetError

NAME = "fashion_mnist"
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
# Split -> (images, labels) file stems.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Pixel mean and std in [0, 1] (solo-learn / torchvision values).
STATS = ((0.2860,), (0.3530,))
NUM_CLASSES = 10


def find_idx_file(folder: str, stem: str) -> str | None:
  """`<folder>/<stem>.gz` or `<folder>/<stem>`, whichever exists first."""
  for name in (stem + ".gz", stem):
    path = os.path.join(folder, name)  # also gs://bucket/dir/name
    if paths.isfile(path):
      return path
  return None


def fashion_mnist_dir(data_dir: str | None = None) -> str | None:
  """First folder holding the Fashion-MNIST IDX files, or None."""
  candidates = []
  if data_dir:
    candidates += [data_dir, os.path.join(data_dir, "fashion-mnist")]
  env = os.environ.get("MI_SSL_DATA_DIR")
  if env:
    candidates += [env, os.path.join(env, "fashion-mnist")]
  candidates.append(SYSTEM_DIR)
  if not env:  # (with MI_SSL_DATA_DIR, its fashion-mnist/ is the cache)
    candidates.append(download.cache_dir())
  for folder in candidates:
    if all(find_idx_file(folder, stem) for pair in FILES.values()
           for stem in pair):
      return folder
  return None


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped; local or gs://) into uint8."""
  try:
    data = paths.read_bytes(path)
    if path.endswith(".gz"):
      data = gzip.decompress(data)
  except (OSError, EOFError) as e:
    raise DatasetError(
        f"cannot read IDX file {path} ({e}); reinstall it "
        "(apt-get install --reinstall dataset-fashion-mnist)") from None
  if len(data) < 4 or data[2] != 8:
    raise DatasetError(f"{path} is not a uint8 IDX file; reinstall it")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)):
    raise DatasetError(f"{path} is truncated: expected shape {shape}; "
                       "reinstall it")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


@functools.lru_cache(maxsize=4)
def load(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28, 1], labels int32 [N]) of `split` in `folder`.

  Raises:
    DatasetError: a file is missing, unreadable or inconsistent (one line).
  """
  image_stem, label_stem = FILES[split]
  found = [find_idx_file(folder, s) for s in (image_stem, label_stem)]
  if None in found:
    raise DatasetError(
        f"Fashion-MNIST {split} IDX files are not in {folder}; give the "
        "folder of train-images-idx3-ubyte.gz, ... or set MI_SSL_DATA_DIR")
  images = read_idx(found[0])[..., None]
  labels = read_idx(found[1]).astype(np.int32)
  if images.shape[0] != labels.shape[0]:
    raise DatasetError(f"Fashion-MNIST {split} in {folder}: "
                       f"{images.shape[0]} images but {labels.shape[0]} labels")
  return images, labels  # [N, 28, 28, 1] uint8, [N] int32
