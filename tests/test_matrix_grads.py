"""Gradients at degenerate spectra: finite, and equal to float64 finite
differences (identity, repeated eigenvalues, rank-1 / collapsed features)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_ssl_jax import matrix


def _fd_check(f, x, seed=0, h=1e-6, rtol=1e-6, atol=1e-8):
  """<∇f(x), v> vs the central difference along a random direction v."""
  x = jnp.asarray(x, jnp.float64)
  f = jax.jit(f)  # one compile instead of one per eager op
  g = jax.jit(jax.grad(f))(x)
  assert np.all(np.isfinite(g)), g
  v = jnp.asarray(np.random.default_rng(seed).normal(size=x.shape))
  fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=rtol, atol=atol)
  return g


COLLAPSED = np.tile([[1.0, 2.0, -1.0, 0.5]], (6, 1))  # rank-1 Gram
ORTHONORMAL = np.eye(4)  # Gram = I: every eigenvalue repeated
ROTATION = np.linalg.qr(np.random.default_rng(7).normal(size=(4, 4)))[0]


@pytest.mark.parametrize("z", [COLLAPSED, ORTHONORMAL], ids=["rank1", "eye"])
@pytest.mark.parametrize("kw", [
    dict(), dict(alpha=2.0), dict(alpha=3.0),
    dict(method="chebyshev", order=16),
], ids=["vn", "renyi2", "renyi3", "cheb"])
def test_entropy_grad_at_degenerate_features(z, kw, x64):
  del x64
  _fd_check(lambda z: matrix.matrix_entropy(matrix.gram(z), **kw), z)


def test_entropy_grad_on_matrix_with_repeated_eigenvalues(x64):
  del x64
  a = (ROTATION * np.array([1.0, 1.0, 1.0, 3.0])) @ ROTATION.T
  g = _fd_check(matrix.matrix_entropy, a)
  # Analytic: ∂S/∂A = (−log ρ − S·I)/tr A, symmetric.
  rho = a / np.trace(a)
  w, v = np.linalg.eigh(rho)
  s = -np.sum(w * np.log(w))
  ref = (v * (-np.log(w) - s)) @ v.T / np.trace(a)
  np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)


def test_mutual_information_grad_collapsed_view(x64):
  del x64
  z2 = np.random.default_rng(1).normal(size=(6, 4))
  f = lambda z: matrix.matrix_mutual_information(
      matrix.gram(z), matrix.gram(jnp.asarray(z2)), alpha=1.0)
  _fd_check(f, COLLAPSED)
  f2 = lambda z: matrix.matrix_joint_entropy(
      matrix.gram(z), matrix.gram(z), alpha=2.0)
  _fd_check(f2, COLLAPSED + 0.0)


@pytest.mark.parametrize("spectrum", [[1, 1, 1, 1], [1, 1, 2, 2],
                                      [0.5, 1, 1 + 1e-9, 3]])
def test_matrix_log_grad_repeated_eigenvalues(spectrum, x64):
  del x64
  a = (ROTATION * np.asarray(spectrum, float)) @ ROTATION.T
  w = jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)))
  _fd_check(lambda a: jnp.sum(w * matrix.matrix_log(a)), a)
  # Forward mode agrees with reverse mode (the JVP is the primitive rule).
  t = jnp.asarray(np.random.default_rng(4).normal(size=(4, 4)))
  _, jvp = jax.jvp(lambda a: jnp.sum(w * matrix.matrix_log(a)),
                   (jnp.asarray(a),), (t,))
  g = jax.grad(lambda a: jnp.sum(w * matrix.matrix_log(a)))(jnp.asarray(a))
  np.testing.assert_allclose(jvp, jnp.vdot(g, t), rtol=1e-10)


def test_kl_and_ce_grads(x64):
  del x64
  rho = np.eye(3) / 3
  g = jax.grad(lambda q: matrix.matrix_kl(jnp.asarray(rho), q))(
      jnp.asarray(rho))
  np.testing.assert_allclose(g, 0.0, atol=1e-12)  # minimum at Q = P
  p = np.random.default_rng(5).normal(size=(4, 6))
  p = p @ p.T / 6
  q = (ROTATION * np.array([0.5, 0.5, 0.5, 2.0])) @ ROTATION.T
  _fd_check(lambda q: matrix.matrix_kl(jnp.asarray(p), q), q)
  _fd_check(lambda p: matrix.matrix_kl(p, jnp.asarray(q)), p)
  _fd_check(lambda q: matrix.matrix_cross_entropy(jnp.asarray(p), q), q)


def test_grads_finite_at_singular_matrices():
  # Rank-1 PSD matrices (zero eigenvalues) in float32: every gradient finite.
  u = jnp.asarray([[1.0, 2.0, 2.0]]) / 3
  r1 = u.T @ u
  fns = [
      lambda a: matrix.matrix_entropy(a),
      lambda a: matrix.matrix_entropy(a, alpha=0.5),
      lambda a: matrix.matrix_kl(a, a),
      lambda a: matrix.matrix_cross_entropy(a, a),
      lambda a: jnp.sum(matrix.matrix_log(a)),
      lambda a: matrix.effective_rank(a),
      lambda a: matrix.rankme(a),
      lambda a: matrix.matrix_entropy(a, method="chebyshev"),
  ]
  grads = jax.jit(lambda a: [jax.grad(f)(a) for f in fns])(r1)
  for i, g in enumerate(grads):
    assert np.all(np.isfinite(g)), i
  assert np.all(np.isfinite(jax.grad(
      lambda z: matrix.total_coding_rate(z))(jnp.asarray(COLLAPSED))))


def test_feature_rank_grads_at_repeated_singular_values(x64):
  del x64
  _fd_check(matrix.effective_rank, ORTHONORMAL * 2.0)
  _fd_check(matrix.rankme, COLLAPSED + np.eye(6, 4))
  _fd_check(lambda z: matrix.total_coding_rate(z, 0.5), COLLAPSED)
  _fd_check(lambda z: matrix.total_coding_rate(z, 0.5), np.ones((3, 8)))


def test_log_divided_differences_are_exact_near_ties():
  w64 = np.array([1.0, 1.0 + 1e-6, 2.0, 1e-13, 0.0])
  eps = 1e-12
  wc = np.maximum(w64, eps)
  ref = np.empty((5, 5))
  for i in range(5):
    for j in range(5):
      ci, cj = w64[i] <= eps, w64[j] <= eps
      if ci and cj:
        ref[i, j] = 0.0
      elif ci != cj:
        ref[i, j] = (np.log(wc[i]) - np.log(wc[j])) / (w64[i] - w64[j])
      elif wc[i] == wc[j]:
        ref[i, j] = 1 / wc[i]
      else:
        hi, lo = max(wc[i], wc[j]), min(wc[i], wc[j])
        ref[i, j] = np.log1p((hi - lo) / lo) / (hi - lo)
  out = matrix.log_divided_differences(jnp.asarray(w64, jnp.float32), eps)
  np.testing.assert_allclose(out[:3, :3], ref[:3, :3], rtol=1e-6)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[3:, 3:], 0.0)
