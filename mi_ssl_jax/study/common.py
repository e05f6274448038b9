"""Helpers shared by the study's modules (plan, run, results, report)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


class StudyError(ValueError):
  """A user-facing study problem (printed as one `error:` line, exit 2)."""


def as_dict(value: Any) -> dict[str, Any]:
  """A ConfigDict, mapping or None as a plain dict (one level)."""
  if value is None:
    return {}
  return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; an empty mapping stays a leaf (it
  clears a field, e.g. evals={})."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def safe(text: str) -> str:
  """`text` with every character but [A-Za-z0-9._-] replaced by `_`."""
  return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def fmt_duration(seconds: float) -> str:
  """3725 -> "1h02m", 125 -> "2m05s", 5 -> "5s"."""
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def now() -> str:
  """The current UTC time, ISO 8601 to the second."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
