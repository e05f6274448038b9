"""FroSSL, I-VNE and MMCR against float64 NumPy written from the papers'
formulas; LiDAR, α-ReQ, token entropy and DiME against closed forms and
float64 NumPy references. (1-vs-8-device equality and degenerate spectra of
the three losses: tests/test_losses_sharding.py, tests/test_losses.py.)"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_ssl_jax import losses, matrix


def _rand(seed, shape):
  return np.random.RandomState(seed).randn(*shape)


def _np_entropy(lam, alpha):
  lam = lam[lam > 1e-12]
  lam = lam / lam.sum()
  if alpha == 1.0:
    return float(-np.sum(lam * np.log(lam)))
  return float(np.log(np.sum(lam ** alpha)) / (1.0 - alpha))


def _np_nuclear(a):
  return float(np.linalg.svd(a, compute_uv=False).sum())


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("n_views,shape", [(2, (16, 6)), (3, (8, 12))])
def test_frossl_matches_numpy(x64, n_views, shape):
  views = [_rand(i, shape) for i in range(n_views)]
  zs = [v / np.linalg.norm(v, axis=0, keepdims=True) for v in views]
  mean = sum(zs) / n_views
  d = shape[1]
  want = 0.0
  for z in zs:
    cov = z.T @ z
    rho = cov / np.trace(cov)
    want += np.log(np.sum(rho ** 2))  # log ‖ρ‖²_F
    want += n_views * d * 0.5 * np.mean((z - mean) ** 2)
  got = losses.frossl_terms(*map(jnp.asarray, views), invariance_weight=0.5)
  np.testing.assert_allclose(got["loss"], want, rtol=1e-10)
  # the entropy term is the Rényi-2 entropy −log ‖ρ‖²_F
  np.testing.assert_allclose(
      got["entropy"], np.mean([-np.log(np.sum((z.T @ z / d) ** 2))
                               for z in zs]), rtol=1e-10)


def test_ivne_matches_numpy(x64):
  z1, z2 = _rand(3, (16, 6)), _rand(4, (16, 6))
  a = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
  b = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
  cos = np.mean(np.sum(a * b, axis=1))
  ent = [_np_entropy(np.linalg.eigvalsh(x.T @ x / x.shape[0]), 1.0)
         for x in (a, b)]
  want = -(0.7 * cos + 1.3 * 0.5 * sum(ent))
  got = losses.ivne_terms(jnp.asarray(z1), jnp.asarray(z2), alpha_cos=0.7,
                          alpha_vne=1.3)
  np.testing.assert_allclose(got["loss"], want, rtol=1e-10)
  np.testing.assert_allclose(got["cosine"], cos, rtol=1e-10)


@pytest.mark.parametrize("local_weight", [0.0, 0.25])
def test_mmcr_matches_numpy(x64, local_weight):
  views = [_rand(10 + i, (12, 5)) for i in range(3)]
  zs = np.stack([v / np.linalg.norm(v, axis=1, keepdims=True)
                 for v in views])  # [V, B, d]
  centroid = _np_nuclear(zs.mean(0))
  local = np.mean([_np_nuclear(zs[:, b]) for b in range(zs.shape[1])])
  got = losses.mmcr_terms(*map(jnp.asarray, views),
                          local_weight=local_weight)
  np.testing.assert_allclose(got["loss"], local_weight * local - centroid,
                             rtol=1e-10)
  np.testing.assert_allclose(got["centroid_nuclear_norm"], centroid,
                             rtol=1e-10)


def test_spectrum_losses_reward_spread_over_collapse():
  """The entropy / capacity terms prefer spread embeddings to collapsed ones
  (same invariance: both views identical)."""
  spread = jnp.asarray(_rand(20, (32, 8)), jnp.float32)
  collapsed = jnp.asarray(np.repeat(_rand(21, (1, 8)), 32, 0) +
                          1e-3 * _rand(22, (32, 8)), jnp.float32)
  for fn in (losses.frossl_loss, losses.ivne_loss, losses.mmcr_loss):
    assert float(fn(spread, spread)) < float(fn(collapsed, collapsed)), fn


# ------------------------------------------------------------- diagnostics


def _np_lidar(e, delta=1e-4, eps=1e-7):
  n, q, d = e.shape
  mu_i = e.mean(1)
  mu = mu_i.mean(0)
  sb = (mu_i - mu).T @ (mu_i - mu) / (n - 1)
  cw = (e - mu_i[:, None]).reshape(n * q, d)
  sw = cw.T @ cw / (n * (q - 1)) + delta * np.eye(d)
  lam = np.real(np.linalg.eigvals(np.linalg.solve(sw, sb)))  # Σ_w⁻¹Σ_b
  lam = np.clip(lam, 0, None)
  p = lam / lam.sum() + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def test_lidar_matches_numpy_and_closed_forms(x64):
  e = _rand(30, (40, 3, 6)) + 2.0 * _rand(31, (40, 1, 6))
  np.testing.assert_allclose(matrix.lidar(jnp.asarray(e)), _np_lidar(e),
                             rtol=1e-8)
  # Class means spread isotropically in d dims with isotropic within-class
  # noise: Σ_w⁻¹Σ_b ≈ c·I, LiDAR ≈ d. Means on one line: LiDAR ≈ 1.
  d = 5
  noise = 0.1 * _rand(32, (2000, 4, d))
  iso = matrix.lidar(jnp.asarray(_rand(33, (2000, 1, d)) + noise))
  line = matrix.lidar(jnp.asarray(
      _rand(34, (2000, 1, 1)) * np.ones((1, 1, d)) + 1e-4 * noise))
  assert abs(float(iso) - d) < 0.1, iso
  assert float(line) < 1.1, line
  with pytest.raises(ValueError, match="q >= 2"):
    matrix.lidar(jnp.zeros((4, 1, 3)))


def test_alpha_req_recovers_an_exact_power_law(x64):
  n, d, alpha = 64, 16, 1.3
  q, _ = np.linalg.qr(_rand(40, (n, d)))  # orthonormal columns
  k = np.arange(1, d + 1)
  z = q * np.sqrt(n * k ** -alpha)  # covariance zᵀz/n = diag(k^-α)
  np.testing.assert_allclose(matrix.alpha_req(jnp.asarray(z), center=False),
                             alpha, rtol=1e-8)
  # Wide z (D > N) goes through the N×N side.
  v, _ = np.linalg.qr(_rand(42, (4 * d, d)))  # [4d, d] orthonormal columns
  wide = np.sqrt(d * k ** -alpha)[:, None] * v.T  # [d, 4d]
  np.testing.assert_allclose(
      matrix.alpha_req(jnp.asarray(wide), center=False), alpha, rtol=1e-8)
  # A fit over ranks 2..8 only.
  np.testing.assert_allclose(
      matrix.alpha_req(jnp.asarray(z), k_min=2, k_max=8, center=False),
      alpha, rtol=1e-8)
  with pytest.raises(ValueError, match="k_min < k_max"):
    matrix.alpha_req(jnp.asarray(z), k_min=5, k_max=5)


def test_alpha_req_matches_numpy_fit(x64):
  z = _rand(41, (50, 10)) * np.linspace(3, 0.2, 10)
  zc = z - z.mean(0)
  lam = np.sort(np.linalg.eigvalsh(zc.T @ zc / 50))[::-1][:9]
  slope = np.polyfit(np.log(np.arange(1, 10)), np.log(lam), 1)[0]
  np.testing.assert_allclose(matrix.alpha_req(jnp.asarray(z)), -slope,
                             rtol=1e-8)


def test_token_entropy_closed_forms_and_numpy(x64):
  t, d = 4, 8
  q, _ = np.linalg.qr(_rand(50, (d, t)))
  orthonormal = np.stack([q.T, q.T])  # [2, T, D]: K = I → log T
  np.testing.assert_allclose(matrix.token_entropy(jnp.asarray(orthonormal)),
                             np.log(t), rtol=1e-10)
  same = np.repeat(_rand(51, (2, 1, d)), t, axis=1)  # collapsed: rank 1 → 0
  np.testing.assert_allclose(matrix.token_entropy(jnp.asarray(same)), 0.0,
                             atol=1e-6)
  x = _rand(52, (3, 5, 7))
  xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
  want = np.mean([_np_entropy(np.linalg.eigvalsh(xb @ xb.T), 2.0)
                  for xb in xn])
  np.testing.assert_allclose(
      matrix.token_entropy(jnp.asarray(x), alpha=2.0), want, rtol=1e-8)
  # More tokens than channels (a ResNet stage): the D×D side, same value.
  x = _rand(53, (2, 30, 4))
  xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
  want = np.mean([_np_entropy(np.linalg.eigvalsh(xb @ xb.T), 1.0)
                  for xb in xn])
  np.testing.assert_allclose(matrix.token_entropy(jnp.asarray(x)), want,
                             rtol=1e-8)


@pytest.mark.usefixtures("fast_compile")
def test_token_entropy_chebyshev_matches_eigh():
  """The eigh-free path the trainer's diagnostics log (float32)."""
  te = jax.jit(matrix.token_entropy, static_argnames=("alpha", "method"))
  x = jnp.asarray(_rand(54, (6, 16, 24)), jnp.float32)  # T < D: T×T side
  np.testing.assert_allclose(te(x, method="chebyshev"), te(x), rtol=1e-3)
  y = jnp.asarray(_rand(55, (3, 40, 8)), jnp.float32)  # T > D: D×D side
  np.testing.assert_allclose(te(y, method="chebyshev"), te(y), rtol=1e-3)
  # Rényi-2 is a polynomial: exact up to rounding.
  np.testing.assert_allclose(te(x, alpha=2.0, method="chebyshev"),
                             te(x, alpha=2.0), rtol=1e-5)
  same = jnp.repeat(jnp.asarray(_rand(56, (2, 1, 8)), jnp.float32), 5, 1)
  assert abs(float(te(same, method="chebyshev"))) < 1e-3
  with pytest.raises(ValueError, match="entropy method"):
    matrix.token_entropy(x, method="svd")


def test_map_matrices_is_one_call_per_matrix_and_equals_vmap():
  a = jnp.asarray(_rand(57, (2, 3, 5, 5)), jnp.float32)
  a = a @ jnp.swapaxes(a, -1, -2)
  fn = lambda m: jnp.sum(matrix.eigvalsh(m) ** 2)  # noqa: E731
  got = matrix.map_matrices(fn, a)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, jax.vmap(jax.vmap(fn))(a), rtol=1e-5)
  lowered = lambda f, *args: jax.jit(f).lower(*args).as_text()  # noqa: E731
  for text in (lowered(lambda a: matrix.map_matrices(fn, a), a),
               lowered(matrix.token_entropy, a[0]),
               lowered(lambda z: matrix.dime(z, z, jax.random.key(0)),
                       a[0, 0])):
    # Every eigh is unbatched: the deadlock of docs/known_issues.md needs a
    # batched one.
    assert 'num_batch_dims = "0"' in text, text[-500:]
    assert not re.search(r'num_batch_dims = "[1-9]', text)


def test_dime_matches_numpy_and_vanishes_without_information(x64):
  z1, z2 = _rand(60, (12, 4)), _rand(61, (12, 4))
  key = jax.random.key(3)
  got = matrix.dime(jnp.asarray(z1), jnp.asarray(z2), key, alpha=2.0,
                    num_permutations=3)
  perms = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 12))(
      jax.random.split(key, 3)))

  def gram(z):
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    return zn @ zn.T

  k1, k2 = gram(z1), gram(z2)
  h = lambda k: _np_entropy(np.linalg.eigvalsh(k), 2.0)  # noqa: E731
  want = np.mean([h(k1 * k2[p][:, p]) for p in perms]) - h(k1 * k2)
  np.testing.assert_allclose(got, want, rtol=1e-8)
  # A constant second view carries no information: every pairing is alike.
  const = np.repeat(_rand(62, (1, 4)), 12, axis=0)
  np.testing.assert_allclose(
      matrix.dime(jnp.asarray(z1), jnp.asarray(const), key), 0.0, atol=1e-8)
  # Identical views carry the most: DiME > 0.
  assert float(matrix.dime(jnp.asarray(z1), jnp.asarray(z1), key)) > 0.1
