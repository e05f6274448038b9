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
* `JsonlAppender`: `metrics.jsonl` rows; local files are appended to;
  remote ones (no append on object stores) get batches of lines as new
  objects `<file>.parts/*` at a bounded rate, merged into the file every
  few batches and at the end; `read_appended_lines` reads both.

For `gs://`, epath uses `tf.io.gfile` (TensorFlow is a dependency) and orbax
writes the arrays through TensorStore's `gcs` driver; orbax 0.12 also needs
`google-cloud-storage` for gs:// checkpoint directories (`require_remote`).
tests/test_remote_workdir.py runs all of it against a local GCS emulator.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
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


def walk(path: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
  """`os.walk` for local and remote folders, top down: `(folder, dirnames,
  filenames)` with `folder` as `to_str` writes it; sorting or pruning
  `dirnames` in place steers the walk."""
  for folder, dirnames, filenames in as_path(path).walk(top_down=True):
    yield os.fspath(folder), dirnames, filenames


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
  if is_remote(p):  # no folders to create: no "<parent>/" marker objects
    p.write_text(text)
    return p
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_text(text)
  os.replace(os.fspath(tmp), os.fspath(p))
  return p


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
  """Binary `write_text` (figures)."""
  p = as_path(path)
  if is_remote(p):  # no folders to create: no "<parent>/" marker objects
    p.write_bytes(data)
    return p
  p.parent.mkdir(parents=True, exist_ok=True)
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


PARTS_SUFFIX = ".parts"  # `<file>.parts/`: a remote JsonlAppender's batches


def parts_dir(path: PathLike) -> epath.Path:
  """`<path>.parts`, where a remote `JsonlAppender` writes its batches."""
  p = as_path(path)
  return p.parent / (p.name + PARTS_SUFFIX)


def _part_names(path: PathLike) -> list[str]:
  """Names of `path`'s parts, in write order (their names sort so)."""
  folder = parts_dir(path)
  return sorted(c.name for c in folder.iterdir()) if folder.is_dir() else []


def read_appended_lines(path: PathLike) -> list[str]:
  """Every line a `JsonlAppender` wrote to `path`, in write order: the
  file's, then those of its parts (`<path>.parts/`) not yet merged into it.
  A missing file gives []."""
  lines = read_lines(path)
  for name in _part_names(path):
    lines += read_lines(parts_dir(path) / name)
  return lines


class JsonlAppender:
  """Appends lines to `path` in batches; no write rewrites what is there.

  * Local files: each line is appended to the one open file and flushed
    (`tail -f` works).
  * Remote files (object stores have no append): lines are buffered; at
    the first write, then at most once per `flush_seconds`, and at
    `flush()` / `close()`, the buffer becomes one new object
    `<path>.parts/<open time>-<n>.jsonl`. Every `max_parts` parts, and at
    `close()`, the file and its parts are merged into `path` and the parts
    deleted: one upload of the whole file per `max_parts` batches (a
    bounded rate, not one per line), and a closed appender leaves a single
    file. A process killed in between leaves parts behind, and a crash
    while merging may leave a line both in the file and in a part: the
    reader (`read_appended_lines`) reads both; the next appender merges
    them.

  `keep(line) -> bool` (a resumed run): the first line it rejects and every
  line after it are dropped when the appender opens (a local file is
  truncated there; remote lines and leftover parts are merged into one
  file, once).
  """

  def __init__(self, path: PathLike,
               keep: Callable[[str], bool] | None = None,
               flush_seconds: float = 60.0, max_parts: int = 32):
    self.path = as_path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._remote = is_remote(self.path)
    self._flush_seconds = float(flush_seconds)
    self._max_parts = max(int(max_parts), 1)
    self._buffer: list[str] = []
    self._last_flush = -float("inf")
    self._name = f"{time.time_ns():020d}"  # parts sort by open time, then n
    self._parts = 0  # parts written since the last merge
    if _part_names(self.path):
      self._merge(keep)
    elif keep is not None and self.path.exists():
      self._drop_from_first_rejected(keep)
    self._file = None if self._remote else open(os.fspath(self.path), "a")

  def _merge(self, keep: Callable[[str], bool] | None = None) -> None:
    """Writes the file and its parts (the lines before the first one `keep`
    rejects) as the file, then deletes the parts."""
    lines = read_appended_lines(self.path)
    if keep is not None:
      lines = list(itertools.takewhile(keep, lines))
    names = _part_names(self.path)
    write_text(self.path, "".join(line + "\n" for line in lines))
    for name in names:
      (parts_dir(self.path) / name).unlink(missing_ok=True)
    if not is_remote(self.path):  # (object stores have no folders)
      with contextlib.suppress(OSError):
        parts_dir(self.path).rmdir()
    self._parts = 0

  def _drop_from_first_rejected(self, keep: Callable[[str], bool]) -> None:
    if self._remote:
      lines = read_lines(self.path)
      kept = list(itertools.takewhile(keep, lines))
      if len(kept) < len(lines):
        write_text(self.path, "".join(line + "\n" for line in kept))
      return
    with open(os.fspath(self.path), "rb+") as f:
      offset, ended = 0, True
      for raw in f:
        if not keep(raw.decode("utf-8", "replace").rstrip("\n")):
          break
        offset += len(raw)
        ended = raw.endswith(b"\n")
      f.truncate(offset)
      if not ended:  # a kept last line without its newline
        f.seek(offset)
        f.write(b"\n")

  def write(self, line: str) -> None:
    if not self._remote:
      self._file.write(line + "\n")
      self._file.flush()
      return
    self._buffer.append(line)
    if time.monotonic() - self._last_flush >= self._flush_seconds:
      self.flush()

  def flush(self) -> None:
    """Writes the buffered lines now (remote: as one new part)."""
    if self._file is not None:
      self._file.flush()
    if not self._buffer:
      return
    self._parts += 1
    write_text(parts_dir(self.path) / f"{self._name}-{self._parts:06d}.jsonl",
               "".join(line + "\n" for line in self._buffer))
    self._buffer = []
    self._last_flush = time.monotonic()
    if self._parts >= self._max_parts:
      self._merge()

  def close(self) -> None:
    """Flushes; a remote appender merges its parts into the file."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._remote:
      self.flush()
      if self._parts:
        self._merge()
