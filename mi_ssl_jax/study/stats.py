"""Statistics of the study: mean ± std over seeds, rank correlations, and
the mean difference of two methods with its 95 % interval (paired or Welch
t), from which an ordering "holds", is "reversed" or is "not resolved at
this budget"."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import scipy.stats


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


HOLDS, REVERSED, UNRESOLVED = "holds", "reversed", "not resolved at this budget"


@dataclasses.dataclass(frozen=True)
class Comparison:
  """mean(a) − mean(b) with a two-sided confidence interval.

  Attributes:
    diff: the mean difference.
    low, high: the interval (nan when a sample has fewer than 2 values).
    test: "paired" (t over the per-seed differences) or "welch".
    n: seeds (pairs) for "paired"; (n_a, n_b) summed for "welch".
    df: degrees of freedom of the t distribution.
  """
  diff: float
  low: float
  high: float
  test: str
  n: int
  df: float

  @property
  def verdict(self) -> str:
    """"holds" (interval above 0), "reversed" (below 0), else
    "not resolved at this budget"."""
    if self.low > 0:
      return HOLDS
    if self.high < 0:
      return REVERSED
    return UNRESOLVED


def _interval(diff: float, se: float, df: float, level: float
              ) -> tuple[float, float]:
  if not (df > 0 and math.isfinite(se)):
    return math.nan, math.nan
  half = float(scipy.stats.t.ppf(0.5 + level / 2, df)) * se
  return diff - half, diff + half


def compare(a: Sequence[float], b: Sequence[float], *, paired: bool,
            level: float = 0.95) -> Comparison:
  """mean(a) − mean(b) and its `level` interval.

  Paired (`a[i]` and `b[i]` share seed i, hence the training data order and
  the probe's seed): Student's t over the differences, n − 1 degrees of
  freedom. Otherwise Welch's t (unequal variances) with the
  Welch–Satterthwaite degrees of freedom (Welch 1947, Biometrika 34:28).
  scipy.stats.ttest_rel / ttest_ind(equal_var=False) give the same
  intervals (tests/test_study_stats.py).
  """
  a = np.asarray(a, np.float64)  # [n_a]
  b = np.asarray(b, np.float64)  # [n_b]
  diff = float(a.mean() - b.mean())
  if paired:
    if a.shape != b.shape:
      raise ValueError(f"paired samples differ in size: {a.size} vs {b.size}")
    d = a - b  # [n]
    n = d.size
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Comparison(diff, *_interval(diff, se, n - 1, level), "paired", n,
                      float(n - 1))
  if a.size < 2 or b.size < 2:
    return Comparison(diff, math.nan, math.nan, "welch", a.size + b.size, 0.0)
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  se = math.sqrt(va + vb)
  df = ((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
        if va + vb > 0 else float(a.size + b.size - 2))
  return Comparison(diff, *_interval(diff, se, df, level), "welch",
                    a.size + b.size, float(df))


def claim_verdict(verdicts: Sequence[str]) -> str:
  """An ordering's verdict from its pairs': "reversed" if any pair is,
  "holds" if every pair does, else "not resolved at this budget"."""
  if REVERSED in verdicts:
    return REVERSED
  if verdicts and all(v == HOLDS for v in verdicts):
    return HOLDS
  return UNRESOLVED
