"""Matrix-information core vs an independent float64 NumPy/SciPy reference.

Reference: `scipy.linalg.eigh` / `logm` in float64 (never our code). Tolerances
of issue 2: relative error <= 1e-10 in float64, <= 1e-4 in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sla

from mi_ssl_jax import matrix

# docs/methods.md §9 inputs (B = 4, d = 3).
Z9 = np.array([[0.9, 0.1, 0.4], [0.1, 1.2, 0.1], [0.2, 0.5, 0.8],
               [1, -0.7, 0.3]])


def _unit_rows(z):
  return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _features(b, d, seed=0, rank=None):
  rng = np.random.default_rng(seed)
  if rank is None:
    return rng.normal(size=(b, d))
  return rng.normal(size=(b, rank)) @ rng.normal(size=(rank, d))


def _ref_spectrum(a):
  a = np.asarray(a, np.float64)
  w = sla.eigh(a / np.trace(a), eigvals_only=True)
  return np.clip(w, 0.0, None)


def ref_entropy(a, alpha=1.0):
  w = _ref_spectrum(a)
  w = w[w > 1e-14]
  if alpha == 1:
    return float(-np.sum(w * np.log(w)))
  return float(np.log(np.sum(w**alpha)) / (1 - alpha))


def ref_logm(a):
  w, v = sla.eigh(np.asarray(a, np.float64))
  return (v * np.log(w)) @ v.T


def ref_kl(p, q):
  return float(np.trace(p @ ref_logm(p) - p @ ref_logm(q) - p + q))


def _rel(x, ref):
  return abs(float(x) - ref) / max(abs(ref), 1e-300)


def _spd(n, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 2 * n))
  return x @ x.T / (2 * n) + 0.1 * np.eye(n)


# ----------------------------------------------------------------- entropies


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5, 3.0])
@pytest.mark.parametrize("rank", [None, 5])
def test_entropy_matches_scipy(alpha, rank, x64):
  del x64
  k = _unit_rows(_features(12, 8 if rank else 16, seed=1, rank=rank))
  k = k @ k.T  # [12, 12] Gram, rank 8 / 5 / full
  ref = ref_entropy(k, alpha)
  assert _rel(matrix.matrix_entropy(jnp.asarray(k), alpha), ref) <= 1e-10
  with jax.enable_x64(False):
    k32 = jnp.asarray(k, jnp.float32)
    out = matrix.matrix_entropy(k32, alpha)
    assert out.dtype == jnp.float32
    assert _rel(out, ref) <= 1e-4


def test_entropy_keeps_small_genuine_eigenvalues_float32():
  # 4 large + 60 eigenvalues at 1.5e-6: accurately resolved by float32 eigh
  # (abs. error ~1e-7·λ_max) and worth ~1e-3 of the entropy: they must count.
  w = np.concatenate([np.full(4, 0.25), np.full(60, 1.5e-6)])
  v = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))[0]
  rho = (v * w) @ v.T
  ref = ref_entropy(rho)
  assert _rel(matrix.matrix_entropy(jnp.asarray(rho, jnp.float32)), ref) < 1e-4


def test_closed_forms():
  n = 6
  eye = jnp.eye(n)
  # Chebyshev (order 32) carries its interpolation error (~1e-3) for α = 1.
  for method, rtol in (("eigh", 1e-6), ("chebyshev", 2e-3)):
    np.testing.assert_allclose(
        matrix.matrix_entropy(eye, method=method), np.log(n), rtol=rtol)
    np.testing.assert_allclose(
        matrix.matrix_entropy(eye, 2.0, method=method), np.log(n), rtol=1e-5)
  u = jnp.ones((n, 1)) / np.sqrt(n)
  assert abs(float(matrix.matrix_entropy(u @ u.T))) < 1e-6  # rank 1 -> 0
  k = jnp.asarray(_unit_rows(_features(8, 5)), jnp.float32)
  k = k @ k.T
  rho = k / jnp.trace(k)
  np.testing.assert_allclose(matrix.matrix_entropy(k, 2.0),
                             -np.log(np.sum(np.asarray(rho)**2)), rtol=1e-5)


def test_erank_identity_and_test_vector(x64):
  del x64
  c = matrix.covariance(jnp.asarray(Z9), center=True)
  rho = c / jnp.trace(c)
  d = 3
  s = matrix.matrix_entropy(rho)
  erank = matrix.effective_rank(rho)
  # docs/methods.md §9: exp S(ρ) = d·exp(−MKL(ρ‖I/d)) = 1.849256.
  np.testing.assert_allclose(erank, 1.849256, atol=1e-6)
  np.testing.assert_allclose(erank, np.exp(float(s)), rtol=1e-12)
  mkl = matrix.matrix_kl(rho, jnp.eye(d) / d)
  np.testing.assert_allclose(d * np.exp(-float(mkl)), 1.849256, atol=1e-6)


def test_sylvester_gram_vs_covariance_side(x64):
  del x64
  z = jnp.asarray(_features(20, 6, seed=3))
  h_gram = matrix.matrix_entropy(matrix.gram(z))
  h_cov = matrix.matrix_entropy(matrix.covariance(z))
  np.testing.assert_allclose(h_gram, h_cov, rtol=1e-10)
  np.testing.assert_allclose(matrix.feature_entropy(z), h_cov, rtol=1e-10)
  for b, d in [(20, 6), (6, 20)]:
    z = jnp.asarray(_features(b, d, seed=4))
    zc = _unit_rows(np.asarray(z))
    zc = zc - zc.mean(0)
    assert _rel(matrix.feature_entropy(z, 2.0, center=True),
                ref_entropy(zc.T @ zc, 2.0)) <= 1e-10
    zh = _unit_rows(np.asarray(z))
    c = d / (b * 0.5**2)
    ref_small = 0.5 * np.linalg.slogdet(np.eye(d) + c * zh.T @ zh)[1]
    ref_big = 0.5 * np.linalg.slogdet(np.eye(b) + c * zh @ zh.T)[1]
    np.testing.assert_allclose(ref_small, ref_big, rtol=1e-12)
    assert _rel(matrix.total_coding_rate(z, 0.5), ref_small) <= 1e-10


def test_chebyshev_error_shrinks_with_order(x64):
  del x64
  k = _unit_rows(_features(32, 12, seed=5))
  k = k @ k.T
  ref = ref_entropy(k)
  errs = [abs(float(matrix.matrix_entropy(jnp.asarray(k), method="chebyshev",
                                          order=m)) - ref)
          for m in (8, 32, 128)]
  assert errs[0] > errs[1] > errs[2]
  assert errs[1] / ref < 2e-4 and errs[2] / ref < 2e-5
  # The free Richardson step beats the plain degree-32 interpolant.
  rho = jnp.asarray(k / np.trace(k))
  plain = abs(float(matrix.chebyshev_trace(rho, 1.0, 32, False)) - ref)
  assert plain > 3 * errs[1]
  # Integer alpha <= order / 2 is exact.
  assert _rel(matrix.matrix_entropy(jnp.asarray(k), 2.0, "chebyshev", 4),
              ref_entropy(k, 2.0)) < 1e-10


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="method"):
    matrix.matrix_entropy(jnp.eye(2), method="svd")
  with pytest.raises(ValueError, match="alpha"):
    matrix.matrix_entropy(jnp.eye(2), alpha=0.0)
  with pytest.raises(ValueError, match="method"):
    matrix.matrix_log(jnp.eye(2), method="pade")
  with pytest.raises(ValueError, match="order"):
    matrix.matrix_entropy(jnp.eye(2), method="chebyshev", order=1)
  with pytest.raises(ValueError, match="eps"):
    matrix.total_coding_rate(jnp.ones((2, 2)), eps=0.0)


# ------------------------------------------------------ log, KL, CE, MI


def test_matrix_log_matches_logm(x64):
  del x64
  a = _spd(7, 6)
  ref = sla.logm(a).real
  out = matrix.matrix_log(jnp.asarray(a))
  assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) <= 1e-10
  with jax.enable_x64(False):
    out32 = matrix.matrix_log(jnp.asarray(a, jnp.float32))
    assert np.max(np.abs(out32 - ref)) / np.max(np.abs(ref)) <= 1e-4
  # §9: tr log_T(C + I) = 0.454493 (order 4) vs exact tr logm = 0.456533.
  c = matrix.covariance(jnp.asarray(Z9), center=True) + jnp.eye(3)
  np.testing.assert_allclose(jnp.trace(matrix.matrix_log(c)), 0.456533,
                             atol=1e-6)
  np.testing.assert_allclose(
      jnp.trace(matrix.matrix_log(c, "taylor", order=4)), 0.454493, atol=1e-6)


def test_taylor_convergence_check():
  good = jnp.eye(3) * 1.5
  bad = jnp.eye(3) * 2.5  # ρ(A − I) = 1.5 > 1: the series diverges
  assert np.all(np.isfinite(
      matrix.matrix_log(good, "taylor", 8, check_convergence=True)))
  assert np.all(np.isnan(
      matrix.matrix_log(bad, "taylor", 8, check_convergence=True)))
  both = matrix.matrix_log(jnp.stack([good, bad]), "taylor",
                           check_convergence=True)
  assert np.all(np.isfinite(both[0])) and np.all(np.isnan(both[1]))


def test_kl_and_cross_entropy_match_scipy(x64):
  del x64
  p, q = _spd(6, 7), _spd(6, 8)
  assert _rel(matrix.matrix_kl(jnp.asarray(p), jnp.asarray(q)),
              ref_kl(p, q)) <= 1e-10
  ref_ce = float(np.trace(-p @ ref_logm(q) + q))
  assert _rel(matrix.matrix_cross_entropy(jnp.asarray(p), jnp.asarray(q)),
              ref_ce) <= 1e-10
  no_tr = matrix.matrix_cross_entropy(jnp.asarray(p), jnp.asarray(q),
                                      include_trace=False)
  assert _rel(no_tr, ref_ce - np.trace(q)) <= 1e-10
  # MCE = MKL − tr P log P + tr P (the identity of docs/methods.md §1.2).
  ent = -float(np.trace(p @ ref_logm(p)))
  np.testing.assert_allclose(ref_ce, ref_kl(p, q) + ent + np.trace(p),
                             rtol=1e-12)
  with jax.enable_x64(False):
    kl32 = matrix.matrix_kl(jnp.asarray(p, jnp.float32),
                            jnp.asarray(q, jnp.float32))
    assert _rel(kl32, ref_kl(p, q)) <= 1e-4


def test_kl_zero_at_equal_and_nonnegative():
  for seed in range(3):
    p = jnp.asarray(_spd(5, seed), jnp.float32)
    q = jnp.asarray(_spd(5, seed + 10), jnp.float32)
    assert abs(float(matrix.matrix_kl(p, p))) < 1e-5
    assert float(matrix.matrix_kl(p, q)) > 0
  rho = jnp.eye(4) / 4
  assert abs(float(matrix.matrix_kl(rho, rho))) < 1e-6


def test_taylor_kl_and_ce_follow_official_series(x64):
  del x64
  def near_identity(seed):  # spectrum in [0.6, 1.4]: the series converges
    v = np.linalg.qr(_features(4, 4, seed))[0]
    return (v * np.linspace(0.6, 1.4, 4)) @ v.T
  p, q = near_identity(1), near_identity(2)
  pj, qj = jnp.asarray(p), jnp.asarray(q)
  ce = matrix.matrix_cross_entropy(pj, qj, False, "taylor", order=4)
  np.testing.assert_allclose(
      ce, -np.trace(p @ np.asarray(matrix.taylor_log(qj, 4))), rtol=1e-12)
  kl_t = matrix.matrix_kl(pj, qj, "taylor", order=40)
  assert _rel(kl_t, ref_kl(p, q)) < 1e-6  # converged series = exact


def test_mutual_information_matches_reference(x64):
  del x64
  z1, z2 = _unit_rows(_features(10, 4, 1)), _unit_rows(_features(10, 4, 2))
  k1, k2 = z1 @ z1.T, z2 @ z2.T
  for alpha in (1.0, 2.0):
    ref_joint = ref_entropy(k1 * k2, alpha)
    ref_mi = ref_entropy(k1, alpha) + ref_entropy(k2, alpha) - ref_joint
    out = matrix.matrix_joint_entropy(jnp.asarray(k1), jnp.asarray(k2), alpha)
    assert _rel(out, ref_joint) <= 1e-10
    mi = matrix.matrix_mutual_information(jnp.asarray(k1), jnp.asarray(k2),
                                          alpha)
    assert _rel(mi, ref_mi) <= 1e-10
  # Same Gram twice: I(K; K) = 2H(K) − H(K ⊙ K).
  mi_self = matrix.matrix_mutual_information(jnp.asarray(k1), jnp.asarray(k1))
  np.testing.assert_allclose(
      mi_self, 2 * ref_entropy(k1) - ref_entropy(k1 * k1), rtol=1e-10)


def test_effective_rank_and_rankme(x64):
  del x64
  z = _features(16, 6, seed=9)
  s = np.linalg.svd(z, compute_uv=False)
  p = s / s.sum()
  assert _rel(matrix.effective_rank(jnp.asarray(z)),
              np.exp(-np.sum(p * np.log(p)))) <= 1e-10
  pe = p + 1e-7
  assert _rel(matrix.rankme(jnp.asarray(z)),
              np.exp(-np.sum(pe * np.log(pe)))) <= 1e-10
  q = np.linalg.qr(_features(6, 6, 3))[0]  # orthonormal: all σ equal
  np.testing.assert_allclose(matrix.effective_rank(jnp.asarray(q)), 6.0,
                             rtol=1e-12)
  collapsed = np.ones((8, 4))  # rank 1
  np.testing.assert_allclose(matrix.effective_rank(jnp.asarray(collapsed)),
                             1.0, rtol=1e-12)
