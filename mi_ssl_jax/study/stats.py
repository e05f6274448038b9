"""Statistics of the study: mean ± std over seeds and rank correlations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
  """(mean, sample std (ddof 1; 0 for one value), n) of the non-None
  values; (nan, nan, 0) when there are none."""
  values = [float(v) for v in values if v is not None]
  if not values:
    return math.nan, math.nan, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std, len(values)


def _ranks(v: Sequence[float]) -> np.ndarray:
  """Ranks 0..n-1, ties sharing their average rank."""
  v = np.asarray(v, np.float64)
  order = np.argsort(v, kind="mergesort")
  r = np.empty(len(v))
  r[order] = np.arange(len(v))
  for value in np.unique(v):
    tie = v == value
    r[tie] = r[tie].mean()
  return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman rank correlation (average ranks for ties); nan for fewer than
  3 points or a constant input."""
  if len(x) < 3:
    return math.nan
  rx, ry = _ranks(x), _ranks(y)
  if rx.std() == 0 or ry.std() == 0:
    return math.nan
  return float(np.corrcoef(rx, ry)[0, 1])
