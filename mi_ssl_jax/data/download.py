"""Downloads the Fashion-MNIST IDX files when no local copy exists.

The one downloader of the package: the data layer
(`mi_ssl_jax.data.sources`, so every job of `python -m mi_ssl_jax.main`)
calls `fetch_fashion_mnist` when `fashion_mnist` is named and its IDX files
are found nowhere (`data_dir`, `$MI_SSL_DATA_DIR`, the Debian package's
`/usr/share/datasets/fashion-mnist`, this cache) and no prepared TFDS copy
exists; the Colab notebooks call it through `notebook_utils.fashion_mnist`.
Standard library only.

* Files: the four `.gz` files of Xiao et al., "Fashion-MNIST: a Novel Image
  Dataset for Benchmarking Machine Learning Algorithms" (arXiv 1708.07747;
  github.com/zalandoresearch/fashion-mnist, README "Get the Data"), ~30 MB.
* Mirrors (`MIRRORS`): the Keras copy (the URL of
  `keras.datasets.fashion_mnist.load_data`) first, then the dataset's own
  bucket. `$MI_SSL_FASHION_MNIST_MIRRORS` (URLs separated by spaces or
  commas) replaces them.
* Where: `cache_dir()`, i.e. `$MI_SSL_DATA_DIR/fashion-mnist` when
  `MI_SSL_DATA_DIR` is set, else `$XDG_CACHE_HOME/mi_ssl_jax/fashion-mnist`
  (default `~/.cache/mi_ssl_jax/fashion-mnist`). Both are on the data
  layer's search path, so the next run finds the files without network.
* Checks: each file is gunzipped and its IDX header (uint8, rank, example
  count) and the SHA-256 of its decompressed bytes must match `FILES`. The
  hashes are of the decompressed contents because the gzip files of the
  Debian package `dataset-fashion-mnist` (where the hashes were computed)
  are recompressed copies: their gzip bytes differ from upstream's, their
  contents do not.
* Off switch: `MI_SSL_DOWNLOAD=0` turns the download from the default or
  configured mirrors off (the test suite sets it, so no test reaches the
  internet); an explicit `mirrors=` argument is always used.
* Multi-host jobs: every process that misses the files downloads them into
  its own `cache_dir()` (hosts rarely share a disk, and the data layer runs
  before any collective, so no process could wait for process 0's copy).
  Processes that do share the folder (an NFS home) are safe: each writes a
  temporary file of its own and renames it into place atomically, so a
  reader sees either no file or a complete, checked one.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence

MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
MIRRORS_ENV = "MI_SSL_FASHION_MNIST_MIRRORS"
DOWNLOAD_ENV = "MI_SSL_DOWNLOAD"
# file -> (IDX rank, number of examples, SHA-256 of the gunzipped bytes).
# Hashes: `gunzip -c /usr/share/datasets/fashion-mnist/<file> | sha256sum`
# (Debian package dataset-fashion-mnist).
FILES = {
    "train-images-idx3-ubyte.gz": (
        3, 60000,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": (
        1, 60000,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": (
        3, 10000,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": (
        1, 10000,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


class DownloadError(OSError):
  """No mirror gave a valid copy of a file (or downloads are off)."""


def enabled() -> bool:
  """False when `$MI_SSL_DOWNLOAD` is 0 / false / no / off."""
  value = os.environ.get(DOWNLOAD_ENV, "").strip().lower()
  return value not in ("0", "false", "no", "off")


def configured_mirrors() -> tuple[str, ...]:
  """`$MI_SSL_FASHION_MNIST_MIRRORS` (space / comma separated) or
  `MIRRORS`."""
  text = os.environ.get(MIRRORS_ENV, "").replace(",", " ").split()
  return tuple(text) or MIRRORS


def cache_dir() -> str:
  """Where downloads go: `$MI_SSL_DATA_DIR/fashion-mnist` if set, else
  `${XDG_CACHE_HOME:-~/.cache}/mi_ssl_jax/fashion-mnist`."""
  data = os.environ.get("MI_SSL_DATA_DIR")
  if data:
    return os.path.join(data, "fashion-mnist")
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "mi_ssl_jax", "fashion-mnist")


def check(data: bytes, name: str) -> str | None:
  """None if `data` (gzip bytes) is a valid copy of `name`, else why not."""
  rank, count, sha256 = FILES[name]
  try:
    raw = gzip.decompress(data)
  except (OSError, EOFError, zlib.error):
    return "not a gzip file"
  if (len(raw) < 8 or raw[:2] != b"\0\0" or raw[2] != 8 or raw[3] != rank
      or int.from_bytes(raw[4:8], "big") != count):
    return "not a Fashion-MNIST IDX file"
  if hashlib.sha256(raw).hexdigest() != sha256:
    return "contents differ from Fashion-MNIST (SHA-256 mismatch)"
  return None


def _valid_file(path: str, name: str) -> bool:
  try:
    with open(path, "rb") as f:
      return check(f.read(), name) is None
  except OSError:
    return False


def _get(url: str, timeout: float) -> bytes:
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return response.read()


def fetch_fashion_mnist(folder: str | None = None, *,
                        mirrors: Sequence[str] | None = None,
                        timeout: float = 30.0) -> str:
  """Makes `folder` hold the four checked Fashion-MNIST files; returns it.

  Files already there and valid are kept; the others are fetched from the
  first mirror that serves a valid copy and renamed into place atomically.

  Args:
    folder: destination (default `cache_dir()`); created if missing.
    mirrors: base URLs (`http(s)://` or `file://`), each followed by the
      file name. Default: `configured_mirrors()`, and only when
      `enabled()`.
    timeout: seconds to wait on each connection / read.

  Raises:
    DownloadError: downloads are off, or no mirror gave a valid file; the
      message is one line naming each mirror's failure.
  """
  if mirrors is None:
    if not enabled():
      raise DownloadError(f"downloads are off: {DOWNLOAD_ENV}=0")
    mirrors = configured_mirrors()
  folder = os.path.abspath(os.path.expanduser(folder or cache_dir()))
  todo = [n for n in FILES if not _valid_file(os.path.join(folder, n), n)]
  if todo:
    os.makedirs(folder, exist_ok=True)
  for name in todo:
    errors = []
    for base in mirrors:
      url = base.rstrip("/") + "/" + name
      try:
        data = _get(url, timeout)
      except (OSError, ValueError) as e:  # URLError, timeouts, bad URLs
        reason = getattr(e, "reason", None) or e
        errors.append(f"{base}: {' '.join(str(reason).split())}")
        continue
      problem = check(data, name)
      if problem:
        errors.append(f"{base}: {problem}")
        continue
      fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part",
                                 dir=folder)
      try:
        with os.fdopen(fd, "wb") as f:
          f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(folder, name))
      except BaseException:
        if os.path.exists(tmp):
          os.remove(tmp)
        raise
      break
    else:
      raise DownloadError(f"cannot download Fashion-MNIST {name}: "
                          + "; ".join(errors or ["no mirrors given"]))
  return folder
