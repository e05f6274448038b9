"""The one path layer: every file the library reads or writes goes through it.

Paths are `etils.epath.Path`s, so a local path and a remote one
(`gs://bucket/run`, or any scheme epath knows) work the same everywhere: the
workdir, checkpoints (orbax takes epath paths), `metrics.jsonl`,
`config.json`, evaluation results and figures, `init_from`, `data_dir`.

* `as_path(p)`: an epath Path; local paths are made absolute, remote ones are
  kept as written (never `os.path.abspath` a URL).
* `is_remote(p)`: True for `scheme://` paths.
* `write_text(p, text)`: atomic for local files (temporary file + rename);
  object stores write whole objects, which is atomic by nature.
* `JsonlAppender`: `metrics.jsonl` rows; local files are appended to,
  remote ones (no append on object stores) rewritten whole at each flush.

For `gs://`, epath uses `tf.io.gfile` (TensorFlow is a dependency) and orbax
writes the arrays through TensorStore's `gcs` driver; orbax 0.12 also needs
`google-cloud-storage` for gs:// checkpoint directories (`require_remote`).
tests/test_remote_workdir.py runs all of it against a local GCS emulator.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from typing import Any

from etils import epath

from mi_ssl_jax.errors import UserError

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """True for URLs such as gs://bucket/dir (anything with `://`)."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an epath Path (absolute if local)."""
  text = os.fspath(path)
  if not text:
    raise ValueError("empty path")
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def join(path: PathLike, *parts: str) -> epath.Path:
  return as_path(path).joinpath(*parts)


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def isdir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def isfile(path: PathLike) -> bool:
  return as_path(path).is_file()


def listdir(path: PathLike) -> list[str]:
  """Names in the directory `path` (empty if it is not one)."""
  p = as_path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def to_str(path: PathLike) -> str:
  """`path` as a string: absolute if local, the URL as written if remote."""
  return os.fspath(as_path(path))


def makedirs(path: PathLike) -> epath.Path:
  p = as_path(path)
  p.mkdir(parents=True, exist_ok=True)
  return p


def write_text(path: PathLike, text: str) -> epath.Path:
  """Writes `text` to `path` (parents created); atomic for local files."""
  p = as_path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    p.write_text(text)
    return p
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_text(text)
  os.replace(os.fspath(tmp), os.fspath(p))
  return p


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
  """Binary `write_text` (figures)."""
  p = as_path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    p.write_bytes(data)
    return p
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(os.fspath(tmp), os.fspath(p))
  return p


def write_json(path: PathLike, obj: Any) -> epath.Path:
  """`obj` as indented, key-sorted JSON (one trailing newline)."""
  return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: PathLike) -> Any:
  return json.loads(as_path(path).read_text())


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


class MissingRemotePackage(UserError, ImportError):
  """A package that remote (gs://) checkpoints need is not installed."""


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ImportError:  # a parent package (google.cloud) is missing
    return False


def require_remote(path: PathLike) -> None:
  """Raises MissingRemotePackage if `path` is gs:// and orbax cannot use it.

  orbax-checkpoint 0.12 asks `google-cloud-storage` whether a gs:// bucket
  has a hierarchical namespace whenever it lists or deletes steps; without
  the package a gs:// run would stop with a bare ImportError traceback.
  """
  if os.fspath(path).startswith("gs://") and not _installed(
      "google.cloud.storage"):
    raise MissingRemotePackage(
        f"{os.fspath(path)}: gs:// checkpoints need the google-cloud-storage "
        "package (orbax uses it to list and delete steps); pip install "
        "'mi_ssl_jax[gcs]' (or google-cloud-storage)")


def read_lines(path: PathLike) -> list[str]:
  p = as_path(path)
  return p.read_text().splitlines() if p.exists() else []


class JsonlAppender:
  """Appends lines to a file; see the module docstring for remote paths."""

  def __init__(self, path: PathLike, keep: Iterable[str] | None = None):
    """Opens `path`; `keep` (if given) replaces its current lines first."""
    self.path = as_path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._remote = is_remote(self.path)
    if keep is not None:
      write_text(self.path, "".join(line + "\n" for line in keep))
    self._lines = read_lines(self.path) if self._remote else None
    self._file = None if self._remote else open(os.fspath(self.path), "a")

  def write(self, line: str) -> None:
    if self._remote:
      self._lines.append(line)
      write_text(self.path, "".join(x + "\n" for x in self._lines))
    else:
      self._file.write(line + "\n")
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
