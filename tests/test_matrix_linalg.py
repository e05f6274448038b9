"""Tests of the basic matrix building blocks against NumPy.

Reference values: docs/methods.md §9.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_ssl_jax import matrix

# Test inputs of docs/methods.md §9 (B = 4, d = 3).
P = np.array([[1, 0, 0.5], [0, 1, 0.2], [0.3, 0.3, 1], [1, -1, 0]])
Z = np.array([[0.9, 0.1, 0.4], [0.1, 1.2, 0.1], [0.2, 0.5, 0.8],
              [1, -0.7, 0.3]])


def _np_normalize(z):
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def test_normalize_rows_matches_numpy_and_zero_row_is_finite():
  z = np.concatenate([Z, np.zeros((1, 3))])
  out = matrix.normalize_rows(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(out, _np_normalize(z), rtol=1e-6, atol=1e-7)
  g = jax.grad(lambda x: jnp.sum(matrix.normalize_rows(x)[:, 0]))(
      jnp.asarray(z, jnp.float32))
  assert np.all(np.isfinite(g))


def test_covariance_and_gram_shapes_and_traces():
  z = jnp.asarray(Z, jnp.float32)
  c = matrix.covariance(z)
  k = matrix.gram(z)
  assert c.shape == (3, 3) and k.shape == (4, 4)
  np.testing.assert_allclose(jnp.trace(c), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.diag(k), np.ones(4), rtol=1e-6)
  zc = _np_normalize(Z)
  zc = zc - zc.mean(0)
  np.testing.assert_allclose(matrix.covariance(z, center=True), zc.T @ zc / 4,
                             rtol=1e-5, atol=1e-7)


def test_logdet_sylvester_and_test_vector(x64):
  del x64
  zh = matrix.normalize_rows(jnp.asarray(Z))
  small = matrix.logdet_psd(jnp.eye(3) + zh.T @ zh)
  big = matrix.logdet_psd(jnp.eye(4) + zh @ zh.T)
  # docs/methods.md §9: M-MAE R, μ = 3, no centering = −2.340747244.
  np.testing.assert_allclose(-small, -2.340747244, rtol=1e-9)
  np.testing.assert_allclose(small, big, rtol=1e-12)


def test_taylor_log_test_vector_and_radius(x64):
  del x64
  c = matrix.covariance(jnp.asarray(Z), center=True)  # ẐᵀHẐ/4
  a = c + jnp.eye(3)
  # docs/methods.md §9: tr log_T(C + I) = 0.454493 (order 4).
  np.testing.assert_allclose(jnp.trace(matrix.taylor_log(a)), 0.454493,
                             atol=1e-6)
  evals = np.linalg.eigvalsh(np.asarray(c))
  np.testing.assert_allclose(matrix.taylor_log_radius(a), evals.max(),
                             rtol=1e-6)


def test_taylor_log_rejects_bad_order():
  with pytest.raises(ValueError, match="order"):
    matrix.taylor_log(jnp.eye(2), order=0)


def test_logdet_gradient_is_inverse(x64):
  del x64
  rng = np.random.default_rng(0)
  f = rng.normal(size=(6, 4))
  a = np.eye(4) + f.T @ f
  for method in ("cholesky", "lu"):
    fn = lambda x, m=method: matrix.logdet_psd(x, method=m)
    np.testing.assert_allclose(fn(jnp.asarray(a)), np.linalg.slogdet(a)[1],
                               rtol=1e-12)
    g = jax.grad(fn)(jnp.asarray(a))
    np.testing.assert_allclose(g, np.linalg.inv(a), rtol=1e-9)
  # Not positive definite: NaN (Cholesky) / not a finite wrong number (LU).
  bad = jnp.diag(jnp.array([1.0, -1.0, -2.0, 3.0]))
  assert np.isnan(matrix.logdet_psd(bad, method="cholesky"))
  assert np.isnan(matrix.logdet_psd(-jnp.eye(3), method="lu"))
  # Batched and under jit: value matches slogdet.
  batch = jnp.stack([jnp.asarray(a), 2 * jnp.asarray(a)])
  np.testing.assert_allclose(jax.jit(matrix.logdet_psd)(batch),
                             np.linalg.slogdet(np.asarray(batch))[1],
                             rtol=1e-12)


def test_spectral_radius_sees_top_eigenvalue_of_centred_gram(x64):
  del x64
  # A batch-centred Gram matrix has the all-ones vector in its null space; a
  # power iteration started there would return 0.
  z = np.random.default_rng(1).normal(size=(16, 3))
  z = z - z.mean(0)
  g = z @ z.T
  np.testing.assert_allclose(matrix.spectral_radius(jnp.asarray(g), iters=100),
                             np.linalg.eigvalsh(g).max(), rtol=1e-6)
