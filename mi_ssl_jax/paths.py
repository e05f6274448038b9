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
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from etils import epath

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
