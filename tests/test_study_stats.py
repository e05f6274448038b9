"""The study's statistics: intervals of a mean difference (paired and
Welch t, checked against scipy's tests) and the ordering verdicts, on
synthetic numbers and on the per-seed kNN of the recorded Fashion-MNIST
study (docs/figures/study_fmnist.json), where MAE beats U-MAE and M-MAE
with the CLS readout (80.52 vs 79.78 / 79.79)."""

import math

import ml_collections
import numpy as np
import pytest
import scipy.stats

from mi_ssl_jax.study import stats, tables

# Per-seed kNN top-1 (seeds 0, 1, 2) of the CLS readout, as recorded in
# docs/figures/study_fmnist.json.
MAE = [80.78, 80.22, 80.56]  # mean 80.52
UMAE = [79.94, 79.32, 80.08]  # mean 79.78
MMAE = [79.80, 79.50, 80.06]  # mean 79.79


def test_paired_interval_equals_scipy_ttest_rel():
  a, b = np.array(UMAE), np.array(MAE)
  c = stats.compare(a, b, paired=True)
  ref = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
  assert c.test == "paired" and c.n == 3 and c.df == 2
  assert c.diff == pytest.approx(np.mean(a - b))
  assert (c.low, c.high) == pytest.approx((ref.low, ref.high))


def test_welch_interval_equals_scipy_ttest_ind():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 3.0, 8)
  c = stats.compare(a, b, paired=False)
  res = scipy.stats.ttest_ind(a, b, equal_var=False)
  ref = res.confidence_interval(0.95)
  assert c.test == "welch" and c.df == pytest.approx(res.df)
  assert (c.low, c.high) == pytest.approx((ref.low, ref.high))


def test_the_recorded_reversal_is_reversed_and_the_tie_unresolved():
  # Paired by seed (one recipe: seed i is the same data order).
  assert stats.compare(UMAE, MAE, paired=True).verdict == stats.REVERSED
  assert stats.compare(MMAE, MAE, paired=True).verdict == stats.REVERSED
  tie = stats.compare(MMAE, UMAE, paired=True)
  assert tie.diff == pytest.approx(0.0067, abs=1e-3)
  assert tie.verdict == stats.UNRESOLVED
  # Welch (ignoring the pairing): t ≈ −2.6 (df 3.6: not resolved) and
  # −3.2 (df 4.0: reversed); the pairing resolves U-MAE vs MAE too.
  for x, t, verdict in ((UMAE, -2.6, stats.UNRESOLVED),
                        (MMAE, -3.2, stats.REVERSED)):
    w = stats.compare(x, MAE, paired=False)
    assert scipy.stats.ttest_ind(x, MAE, equal_var=False).statistic == (
        pytest.approx(t, abs=0.05))
    assert w.verdict == verdict


def test_verdict_words_and_degenerate_samples():
  assert stats.compare([2.0, 3.0, 4.0], [0.0, 1.0, 2.1],
                       paired=True).verdict == stats.HOLDS
  one = stats.compare([80.0], [79.0], paired=True)
  assert math.isnan(one.low) and one.verdict == stats.UNRESOLVED
  assert stats.compare([80.0], [79.0, 78.0], paired=False).verdict == (
      stats.UNRESOLVED)
  assert stats.claim_verdict([stats.HOLDS, stats.REVERSED]) == stats.REVERSED
  assert stats.claim_verdict([stats.HOLDS, stats.HOLDS]) == stats.HOLDS
  assert stats.claim_verdict([stats.HOLDS, stats.UNRESOLVED]) == (
      stats.UNRESOLVED)
  assert len({stats.HOLDS, stats.REVERSED, stats.UNRESOLVED}) == 3


def _row(family, label, values):
  mean, std, n = stats.mean_std(values)
  return {"family": family, "label": label, "fraction": 1.0,
          "seeds": [0, 1, 2], "knn": values, "linear": values,
          "knn_mean": mean, "knn_std": std, "knn_n": n,
          "linear_mean": mean, "linear_std": std, "linear_n": n}


def test_report_names_the_reversal_per_pair():
  config = ml_collections.ConfigDict(dict(
      knn_k=20, display_names={"mae": "MAE", "umae": "U-MAE",
                               "mmae": "M-MAE"},
      orderings=(dict(claim="M-MAE > U-MAE > MAE", paper="p",
                      order=("mmae", "umae", "mae")),)))
  rows = [_row("mae", "mae", MAE), _row("mae", "umae", UMAE),
          _row("mae", "mmae", MMAE)]
  text = "\n".join(tables.order_verdicts(config, rows))
  assert "M-MAE > U-MAE > MAE" in text
  assert "→ **reversed**" in text, text
  assert "U-MAE − MAE: -0.74" in text and "paired t over 3 seeds" in text
  assert "M-MAE − U-MAE: +0.01" in text
  assert "→ not resolved at this budget" in text
  assert "within one seed std" not in text
