"""Few-shot closed-form ridge probe."""

import jax.numpy as jnp
import numpy as np
import pytest

from mi_ssl_jax.evaluators import common, fewshot


def _direct_ridge(x, y, c, lam):
  mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
  xd = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
  t = 2.0 * np.eye(c)[y] - 1.0
  return np.linalg.solve(xd.T @ xd + lam * np.eye(xd.shape[1]), xd.T @ t)


@pytest.mark.parametrize("n,d", [(60, 8), (12, 40)])  # n >= d and d > n
def test_ridge_weights_match_direct_solve(x64, n, d):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d))
  y = rng.integers(0, 3, n)
  cache = fewshot.ridge_cache(jnp.asarray(x), jnp.asarray(y), 3)
  for lam in (0.1, 10.0, 1000.0):
    got = np.asarray(fewshot.ridge_weights(cache, lam))
    np.testing.assert_allclose(got, _direct_ridge(x, y, 3, lam), rtol=1e-6,
                               atol=1e-9)


def _clusters(rng, n_per_class, c, d, spread):
  centers = rng.normal(size=(c, d))
  y = np.repeat(np.arange(c), n_per_class)
  return (centers[y] + spread * rng.normal(size=(len(y), d))).astype(
      np.float32), y.astype(np.int32)


def test_fewshot_clusters_high_and_random_labels_chance():
  rng = np.random.default_rng(1)
  xtr, ytr = _clusters(rng, 40, 5, 16, 0.3)
  xte, yte = _clusters(np.random.default_rng(1), 40, 5, 16, 0.3)
  res = fewshot.fewshot_accuracy(xtr, ytr, xte, yte, num_classes=5,
                                 shots=(5,), seeds=(0, 1))
  assert res["5shot"] == 100.0
  assert res["5shot_l2"] in fewshot.DEFAULT_L2_REGS
  yrand = rng.integers(0, 5, len(ytr)).astype(np.int32)
  xr = rng.normal(size=xtr.shape).astype(np.float32)
  xr_te = rng.normal(size=(1000, 16)).astype(np.float32)
  yr_te = rng.integers(0, 5, 1000).astype(np.int32)
  res = fewshot.fewshot_accuracy(xr, yrand, xr_te, yr_te, num_classes=5,
                                 shots=(10,), seeds=(0, 1, 2))
  assert abs(res["10shot"] - 20.0) < 5.0, res


def test_fewshot_padded_equals_unpadded_and_clear_error():
  rng = np.random.default_rng(2)
  xtr, ytr = _clusters(rng, 30, 4, 8, 1.5)
  xte, yte = _clusters(rng, 13, 4, 8, 1.5)
  want = fewshot.fewshot_accuracy(xtr, ytr, xte, yte, num_classes=4,
                                  shots=(3,), val_per_class=5)
  ev = fewshot.Evaluator(common.identity_predict_fn,
                         train_data=common.array_source(xtr, ytr, 40),
                         test_data=common.array_source(xte, yte, 40),
                         num_classes=4, shots=(3,), val_per_class=5)
  assert dict(ev.run(None)) == want
  with pytest.raises(ValueError, match="per class"):
    fewshot.fewshot_accuracy(xtr, ytr, xte, yte, num_classes=4, shots=(30,))
