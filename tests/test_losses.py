"""Tests of mi_ssl_jax.losses: docs/methods.md §9 vectors, NumPy references,
invariances, stop-gradients, finite gradients and Taylor-vs-exact paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_ssl_jax import losses, matrix
from mi_ssl_jax.losses._common import log_series_coeffs, trace_series

# Test inputs of docs/methods.md §9 (B = 4, d = 3): P = teacher rows,
# Z = student.
P = np.array([[1, 0, 0.5], [0, 1, 0.2], [0.3, 0.3, 1], [1, -1, 0]])
Z = np.array([[0.9, 0.1, 0.4], [0.1, 1.2, 0.1], [0.2, 0.5, 0.8],
              [1, -0.7, 0.3]])


def _nrm(z):
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _rand(seed, shape, dtype=np.float32):
  return np.random.RandomState(seed).randn(*shape).astype(dtype)


# ---------------------------------------------------------------- §9 vectors


def test_methods_section9_vectors(x64):
  del x64
  from mi_ssl_jax.losses import matrix_ssl, mec
  c4 = log_series_coeffs(4)

  @jax.jit
  def values(p, z):
    return {
        "u11": matrix_ssl._uniformity(p, z, 1.0, 1.0, c4, "taylor"),
        "a1": matrix_ssl._alignment(p, z, 1.0, c4, "taylor"),
        "u55": matrix_ssl._uniformity(p, z, 0.5, 0.5, c4, "taylor"),
        "mec": trace_series(mec._scaled_cross_gram(p, z, 1 / 32), c4),
        "mmae": losses.mmae_regularizer(z, mu=3.0),
        "mmae_c": losses.mmae_regularizer(z, mu=3.0, centering=True),
        "umae": losses.umae_uniformity(z),
        # T1 = T2 = P, S1 = S2 = Z: ½[2U + 2γA] = U + γA.
        "full": losses.matrix_ssl_loss(p, z, p, z),
        "grad_t": jax.grad(lambda t: losses.matrix_ssl_loss(t, z, t, z))(p),
    }

  v = values(jnp.asarray(P), jnp.asarray(Z))
  expected = {"u11": -0.475006727, "a1": -0.624035067, "u55": 0.608460258,
              "mec": 0.118933810, "mmae": -2.340747244,
              "mmae_c": -1.370059050, "umae": 0.442920839,
              "full": -0.475006727 - 0.624035067}
  for key, value in expected.items():
    np.testing.assert_allclose(v[key], value, atol=1e-6, err_msg=key)
  # Gradient w.r.t. the teacher is exactly zero.
  assert np.all(np.asarray(v["grad_t"]) == 0.0)


def test_trace_series_equals_explicit_polynomial(x64):
  del x64
  x = jnp.asarray(_rand(0, (5, 5), np.float64)) * 0.3  # non-symmetric
  w = jnp.asarray(_rand(1, (5, 5), np.float64))
  for order in (1, 2, 3, 4, 5, 8):
    ref = matrix.taylor_log(x + jnp.eye(5), order=order)
    np.testing.assert_allclose(trace_series(x, log_series_coeffs(order)),
                               jnp.trace(ref), rtol=1e-12)
    np.testing.assert_allclose(
        trace_series(x, log_series_coeffs(order), weight=w),
        jnp.trace(w @ ref), rtol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (5, 9)])  # d < B and B < d
def test_matrix_ssl_matches_literal_official_formula(x64, shape):
  del x64
  b, d = shape
  t1, s1, t2, s2 = (jnp.asarray(_rand(i, shape, np.float64))
                    for i in range(4))

  def lit(t, s, lamb, mu, gamma, order):  # literal transcription, §2.2
    th, sh = _nrm(np.asarray(t)), _nrm(np.asarray(s))
    h = np.eye(b) - np.ones((b, b)) / b
    eye = np.eye(d)
    log_t = lambda q: np.asarray(matrix.taylor_log(jnp.asarray(q), order))
    u = -lamb * np.trace(log_t(th.T @ h @ sh / b + mu * eye))
    a = -np.trace((th.T @ h @ th / b + mu * eye)
                  @ log_t(sh.T @ h @ sh / b + mu * eye))
    return u + gamma * a, np.abs(np.linalg.eigvals(th.T @ h @ sh / b
                                                   + (mu - 1) * eye)).max()

  terms = jax.jit(lambda *x, lamb, mu, gamma: losses.matrix_ssl_terms(
      *x, lamb=lamb, mu=mu, gamma=gamma, order=5))
  for lamb, mu, gamma in ((1.0, 1.0, 1.0), (0.5, 0.5, 1.0), (1.0, 1.3, 0.3)):
    (l21, r21), (l12, r12) = (lit(t2, s1, lamb, mu, gamma, 5),
                              lit(t1, s2, lamb, mu, gamma, 5))
    got = terms(t1, s1, t2, s2, lamb=lamb, mu=mu, gamma=gamma)
    np.testing.assert_allclose(got["loss"], 0.5 * (l21 + l12), rtol=1e-12)
    # Power iteration on a non-symmetric matrix: an estimate, within 10 %.
    assert float(got["taylor_radius"]) >= 0.9 * max(r21, r12)


# ------------------------------------------------------- NumPy references


def test_mae_loss_matches_numpy():
  pred = _rand(0, (3, 5, 12))
  target = _rand(1, (3, 5, 12)) * 2 + 1
  mask = (np.random.RandomState(2).rand(3, 5) > 0.4).astype(np.float32)
  t = (target - target.mean(-1, keepdims=True)) / np.sqrt(
      target.var(-1, ddof=1, keepdims=True) + 1e-6)
  ref = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
  np.testing.assert_allclose(losses.mae_loss(pred, target, mask), ref,
                             rtol=1e-5)
  ref_raw = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
  np.testing.assert_allclose(
      losses.mae_loss(pred, target, mask, norm_pix=False), ref_raw, rtol=1e-5)
  assert float(losses.mae_loss(pred, target, np.zeros((3, 5)))) == 0.0
  with pytest.raises(ValueError, match="mask"):
    losses.mae_loss(pred, target, mask[:, :3])


def test_mmae_tcr_form_and_sides(x64):
  del x64
  for shape in ((10, 4), (4, 10)):
    f = _rand(3, shape, np.float64)
    fh = _nrm(f)
    b, d = shape
    ref = -0.5 * np.linalg.slogdet(np.eye(d) + d / (b * 2.0) * fh.T @ fh)[1]
    np.testing.assert_allclose(
        losses.mmae_regularizer(f, mu=2.0, form="tcr"), ref, rtol=1e-10)
    ref_code = -np.linalg.slogdet(np.eye(d) + 2.0 / d * fh.T @ fh)[1]
    np.testing.assert_allclose(losses.mmae_regularizer(f, mu=2.0), ref_code,
                               rtol=1e-10)
    k = fh @ fh.T
    np.testing.assert_allclose(losses.umae_uniformity(f),
                               (k ** 2).sum() / b ** 2, rtol=1e-10)
  with pytest.raises(ValueError, match="form"):
    losses.mmae_regularizer(f, form="paper")


def test_official_world_size_scales_gradient_only():
  f = _rand(4, (16, 6))
  for fn in (losses.mmae_regularizer, losses.umae_uniformity):
    v, g = jax.jit(jax.value_and_grad(fn))(f)
    v8, g8 = jax.jit(jax.value_and_grad(
        lambda x, fn=fn: fn(x, official_world_size=8)))(f)
    np.testing.assert_allclose(v8, v, rtol=1e-6)
    np.testing.assert_allclose(g8, g / 8, rtol=1e-5, atol=1e-9)


def test_baselines_match_numpy(x64):
  del x64
  z1, z2 = _rand(5, (12, 5), np.float64), _rand(6, (12, 5), np.float64)
  b, d = z1.shape

  def bn(z):
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

  c = bn(z1).T @ bn(z2) / b
  off = c - np.diag(np.diag(c))
  bt = ((1 - np.diag(c)) ** 2).sum() + 0.0051 * (off ** 2).sum()
  np.testing.assert_allclose(jax.jit(losses.barlow_twins_loss)(z1, z2), bt,
                             rtol=1e-10)

  x, y = z1 - z1.mean(0), z2 - z2.mean(0)
  std = lambda v: np.sqrt(v.var(0, ddof=1) + 1e-4)
  cov = lambda v: v.T @ v / (b - 1)
  offsq = lambda m: ((m - np.diag(np.diag(m))) ** 2).sum() / d
  vic = (25 * ((z1 - z2) ** 2).mean()
         + 25 * (np.maximum(0, 1 - std(x)).mean() / 2
                 + np.maximum(0, 1 - std(y)).mean() / 2)
         + offsq(cov(x)) + offsq(cov(y)))
  np.testing.assert_allclose(jax.jit(losses.vicreg_loss)(z1, z2), vic,
                             rtol=1e-10)

  for mu, shape in ((1.0, (12, 5)), (10.0, (6, 9))):
    a = _rand(7, shape, np.float64) * 2
    e = _rand(8, shape, np.float64) * 2
    clamp = lambda v, mu=mu: np.where(
        np.linalg.norm(v, axis=1, keepdims=True) < np.sqrt(mu), v,
        _nrm(v) * np.sqrt(mu))
    a, e = clamp(a), clamp(e)
    n = shape[0]
    sq = (a @ e.T) ** 2
    ref = (-2 * (a * e).mean() * shape[1]
           + (sq * (1 - np.eye(n))).mean() * n / (n - 1)) / mu
    got = jax.jit(lambda a, b, mu=mu: losses.spectral_contrastive_loss(
        a, b, mu=mu))(_rand(7, shape, np.float64) * 2,
                      _rand(8, shape, np.float64) * 2)
    np.testing.assert_allclose(got, ref, rtol=1e-10)

  zz = _nrm(np.concatenate([z1, z2]))
  logits = zz @ zz.T / 0.2
  np.fill_diagonal(logits, -np.inf)
  pos = np.concatenate([np.arange(b, 2 * b), np.arange(b)])
  lse = np.log(np.exp(logits).sum(1))
  ref = (lse - logits[np.arange(2 * b), pos]).mean()
  np.testing.assert_allclose(
      jax.jit(lambda a, b: losses.info_nce_loss(a, b, temperature=0.2))(z1, z2),
      ref, rtol=1e-10)
  np.testing.assert_allclose(jax.jit(losses.negative_cosine_loss)(z1, z2),
                             -(_nrm(z1) * _nrm(z2)).sum(1).mean(), rtol=1e-10)


# Shapes cover every side choice: 2d ≤ B, d ≤ B < 2d, B < d.
@pytest.mark.parametrize(("shape", "normalize"), [
    ((12, 3), "batch"), ((12, 5), "l2"), ((6, 8), "none"), ((6, 8), "batch")])
def test_emi_cholesky_matches_numpy(x64, shape, normalize):
  del x64
  z1 = _rand(9, shape, np.float64)
  z2 = z1 + _rand(10, shape, np.float64)
  b, d = shape

  def prep(z):
    if normalize == "l2":
      z = _nrm(z)
    z = z - z.mean(0)
    if normalize == "batch":
      z = z / np.sqrt((z * z).mean(0) + 1e-5)
    return z

  y = np.concatenate([prep(z1), prep(z2)], axis=1)
  cj = y.T @ y / b + 1e-2 * np.eye(2 * d)
  ld = lambda m: np.linalg.slogdet(m)[1]
  mi = 0.5 * (ld(cj[:d, :d]) + ld(cj[d:, d:]) - ld(cj))
  out = jax.jit(lambda a, b: losses.emi_loss(
      a, b, ridge=1e-2, normalize=normalize))(z1, z2)
  np.testing.assert_allclose(out.loss, -mi, rtol=1e-9)
  np.testing.assert_allclose(out.metrics["mutual_information"], mi, rtol=1e-9)


# ------------------------------------------------- Taylor vs exact paths


def test_mec_taylor_matches_exact_and_check_fires(x64):
  del x64
  t1, s1, t2, s2 = (jnp.asarray(_rand(i, (8, 5), np.float64))
                    for i in range(4))
  kw = dict(lamb=0.2)
  exact = jax.jit(lambda *x: losses.mec_terms(
      *x, log_method="slogdet", **kw))(t1, s1, t2, s2)
  taylor = jax.jit(lambda *x, lamb: losses.mec_terms(*x, lamb=lamb, order=40))
  ok = taylor(t1, s1, t2, s2, lamb=0.2)
  assert float(ok["taylor_radius"]) < 0.5
  np.testing.assert_allclose(ok["loss"], exact["loss"], rtol=1e-10)
  # λ so large that ‖λP̂Ẑᵀ‖ > 1: the series diverges and the check says so.
  bad = taylor(t1, s1, t2, s2, lamb=3.0)
  assert float(bad["taylor_radius"]) > 1.0


def test_emi_taylor_matches_exact_and_check_fires(x64):
  del x64
  z1 = _rand(11, (256, 4), np.float64)
  z2 = 0.3 * z1 + _rand(12, (256, 4), np.float64)
  exact = jax.jit(lambda a, b: losses.emi_loss(a, b, ridge=0.1))(z1, z2)
  taylor = jax.jit(lambda a, b, st, safety: losses.emi_loss(
      a, b, st, ridge=0.1, method="taylor", order=30, ema=0.5, safety=safety),
      static_argnums=3)
  state = losses.emi_init_state(4, 256)
  out = taylor(z1, z2, state, 1.1)
  assert float(out.metrics["taylor_radius"]) < 1.0
  np.testing.assert_allclose(out.loss, exact.loss, rtol=1e-6)
  # State threading: the count advances; the tracked λ_max of C_joint is a
  # lower estimate that the warm-started power iteration improves (2·z1 has
  # the same BatchNorm-ed covariance); the loss is scale-free.
  assert int(out.state["count"]) == 1
  out2 = taylor(2 * z1, z2, out.state, 1.1)
  assert int(out2.state["count"]) == 2
  y = np.concatenate([z1, z2], axis=1)
  y = (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-5)
  top = np.linalg.eigvalsh(y.T @ y / 256 + 0.1 * np.eye(8))[-1]
  eig1, eig2 = out.state["eig_max"][2], out2.state["eig_max"][2]
  assert 0.9 * top < eig1 <= eig2 <= top * (1 + 1e-6)
  np.testing.assert_allclose(out2.loss, exact.loss, rtol=1e-6)
  # A scale below λ_max/2 makes the series diverge: the check fires.
  bad = taylor(z1, z2, state, 0.3)
  assert float(bad.metrics["taylor_radius"]) > 1.0
  with pytest.raises(ValueError, match="emi_init_state"):
    losses.emi_loss(z1, z2, losses.emi_init_state(5, 256), method="taylor")


def test_emi_tracked_state_rescales_wide_features(x64):
  del x64
  # d > B: the log-dets run on the B side; Taylor still matches exact.
  z1 = _rand(13, (16, 40), np.float64)
  z2 = 0.5 * z1 + _rand(14, (16, 40), np.float64)
  exact = jax.jit(lambda a, b: losses.emi_loss(a, b, ridge=20.0))(z1, z2)
  state = losses.emi_init_state(40, 16)
  assert state["vec_joint"].shape == (16,)
  out = jax.jit(lambda a, b, st: losses.emi_loss(
      a, b, st, ridge=20.0, method="taylor", order=20))(z1, z2, state)
  assert float(out.metrics["taylor_radius"]) < 0.6
  np.testing.assert_allclose(out.loss, exact.loss, rtol=1e-6)


def test_matrix_ssl_taylor_matches_eigh_where_series_converges(x64):
  del x64
  t1, s1, t2, s2 = (jnp.asarray(_rand(60 + i, (64, 5), np.float64))
                    for i in range(4))

  def value_and_grad(method, order):
    fn = lambda *x: losses.matrix_ssl_loss(*x, log_method=method, order=order)
    return jax.jit(jax.value_and_grad(fn, argnums=(1, 3)))(t1, s1, t2, s2)

  (v_t, g_t), (v_e, g_e) = value_and_grad("taylor", 20), value_and_grad(
      "eigh", 4)
  np.testing.assert_allclose(v_t, v_e, rtol=1e-10)
  for a, b in zip(g_t, g_e, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
  # The official order 4 is only an approximation of the exact value.
  v4, _ = value_and_grad("taylor", 4)
  assert 1e-8 < abs(float(v4) - float(v_e)) < 1e-2


def test_view_diagnostics_match_closed_form_and_have_no_gradient(x64):
  del x64
  z1 = _rand(70, (32, 6), np.float64)
  z2 = z1 + _rand(71, (32, 6), np.float64)
  k1, k2 = _nrm(z1) @ _nrm(z1).T, _nrm(z2) @ _nrm(z2).T
  h2 = lambda k: -np.log((k ** 2).sum() / k.shape[0] ** 2)  # Rényi-2
  out = jax.jit(losses.view_diagnostics)(z1, z2)
  np.testing.assert_allclose(out["matrix_joint_entropy"], h2(k1 * k2),
                             rtol=1e-10)
  np.testing.assert_allclose(out["matrix_mutual_information"],
                             h2(k1) + h2(k2) - h2(k1 * k2), rtol=1e-10)
  grad = jax.jit(jax.grad(lambda a, b: sum(
      losses.view_diagnostics(a, b).values()), argnums=(0, 1)))(z1, z2)
  assert all(np.all(np.asarray(g) == 0) for g in grad)
  # α = 3 through matrix_entropy (Chebyshev, exact for integer α).
  h3 = lambda k: np.log(np.trace(np.linalg.matrix_power(
      k / k.shape[0], 3))) / (1 - 3)
  out3 = jax.jit(lambda a, b: losses.view_diagnostics(a, b, alpha=3.0))(
      z1, z2)
  np.testing.assert_allclose(out3["matrix_mutual_information"],
                             h3(k1) + h3(k2) - h3(k1 * k2), rtol=1e-6)
  # Von Neumann (α = 1) via eigh, against NumPy's eigvalsh.
  def vn_np(k):
    lam = np.clip(np.linalg.eigvalsh(k / k.shape[0]), 1e-300, None)
    return -(lam * np.log(lam)).sum()

  vn = jax.jit(lambda a, b: losses.view_diagnostics(
      a, b, alpha=1.0, method="eigh"))(z1, z2)
  np.testing.assert_allclose(vn["matrix_mutual_information"],
                             vn_np(k1) + vn_np(k2) - vn_np(k1 * k2),
                             rtol=1e-6)


def test_matrix_ssl_check_fires_for_large_mu(x64):
  del x64
  t1, s1, t2, s2 = (jnp.asarray(_rand(i, (8, 5), np.float64))
                    for i in range(4))
  terms = jax.jit(lambda *x, mu: losses.matrix_ssl_terms(*x, mu=mu))
  ok = terms(t1, s1, t2, s2, mu=1.0)
  assert float(ok["taylor_radius"]) < 1.0
  bad = terms(t1, s1, t2, s2, mu=3.0)
  assert float(bad["taylor_radius"]) > 1.0


# ------------------------------------------------------ MEC λ schedule


def test_mec_lambda_schedule_matches_official_linspace():
  lamb0 = losses.mec_lambda(1024, 2048)
  assert lamb0 == 1 / 32
  warm = 50
  ref_inv = np.concatenate([np.linspace(8 / lamb0, 1 / lamb0, warm),
                            np.full(20, 1 / lamb0)])
  sched = jax.jit(lambda s: losses.mec_lambda_schedule(
      s, batch_size=1024, dim=2048, warmup_steps=warm))
  got = np.array([sched(s) for s in range(70)])
  np.testing.assert_allclose(1 / got, ref_inv, rtol=1e-6)


# -------------------------------------------- invariances and gradients

TWO_VIEW = {
    "barlow_twins": losses.barlow_twins_loss,
    "vicreg": losses.vicreg_loss,
    "spectral_contrastive": losses.spectral_contrastive_loss,
    "info_nce": losses.info_nce_loss,
    "emi": lambda a, b: losses.emi_loss(a, b).loss,
    "emi_taylor": lambda a, b: losses.emi_loss(a, b, method="taylor").loss,
    "frossl": losses.frossl_loss,
    "ivne": losses.ivne_loss,
    "mmcr": losses.mmcr_loss,
}
FOUR_INPUT = {
    "matrix_ssl": losses.matrix_ssl_loss,
    "mec": lambda *x: losses.mec_loss(*x, lamb=0.1),
    "emi_momentum": lambda *x: losses.emi_momentum_loss(*x).loss,
}


@pytest.mark.parametrize("name", sorted(TWO_VIEW))
def test_two_view_losses_symmetric_under_view_swap(name):
  z1, z2 = _rand(20, (16, 6)), _rand(21, (16, 6))
  fn = jax.jit(TWO_VIEW[name])
  np.testing.assert_allclose(fn(z1, z2), fn(z2, z1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FOUR_INPUT))
def test_teacher_student_losses_symmetric_and_stop_gradient(name):
  t1, s1, t2, s2 = (_rand(30 + i, (16, 6)) for i in range(4))
  fn = FOUR_INPUT[name]
  value_and_grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
  v, (gt1, gs1, gt2, gs2) = value_and_grad(t1, s1, t2, s2)
  v_swapped, _ = value_and_grad(t2, s2, t1, s1)
  np.testing.assert_allclose(v, v_swapped, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(gt1) == 0) and np.all(np.asarray(gt2) == 0)
  assert np.abs(gs1).max() > 0 and np.abs(gs2).max() > 0


def test_negative_cosine_stops_target_gradient():
  p, z = _rand(40, (8, 4)), _rand(41, (8, 4))
  gp, gz = jax.jit(jax.grad(losses.negative_cosine_loss, argnums=(0, 1)))(
      p, z)
  assert np.all(np.asarray(gz) == 0) and np.abs(gp).max() > 0


def _degenerate_inputs():
  b, d = 16, 6
  row = _rand(50, (1, d))
  return {
      "collapsed": np.repeat(row, b, axis=0),
      "zero": np.zeros((b, d), np.float32),
      "rank1": (_rand(51, (b, 1)) @ row).astype(np.float32),
  }


ALL_FEATURE_LOSSES = {
    **{k: (lambda fn: lambda z: fn(z, z + 0.0))(v)
       for k, v in TWO_VIEW.items()},
    **{k: (lambda fn: lambda z: fn(z, z, z, z))(v)
       for k, v in FOUR_INPUT.items()},
    "negative_cosine": lambda z: losses.negative_cosine_loss(z, z),
    "mmae": losses.mmae_regularizer,
    "mmae_centered": lambda z: losses.mmae_regularizer(z, centering=True),
    "umae": losses.umae_uniformity,
    "mae": lambda z: losses.mae_loss(z[:, None], z[:, None] * 0 + 1.0,
                                     jnp.ones((z.shape[0], 1))),
}


def test_finite_gradients_for_degenerate_embeddings():
  cases = _degenerate_inputs()
  kinds = sorted(cases)
  zs = jnp.stack([jnp.asarray(cases[k]) for k in kinds])  # [3, B, d]

  @jax.jit
  def all_values_and_grads(zs):  # one compilation for every loss
    return {name: jax.vmap(jax.value_and_grad(fn))(zs)
            for name, fn in ALL_FEATURE_LOSSES.items()}

  for name, (values, grads) in all_values_and_grads(zs).items():
    for i, kind in enumerate(kinds):
      assert np.isfinite(values[i]), (name, kind, values[i])
      assert np.all(np.isfinite(grads[i])), (name, kind)


def test_shape_errors_are_clear():
  a, b = np.zeros((8, 4)), np.zeros((8, 5))
  for fn in (losses.barlow_twins_loss, losses.vicreg_loss,
             losses.info_nce_loss, losses.spectral_contrastive_loss,
             losses.negative_cosine_loss):
    with pytest.raises(ValueError, match=r"\[B, d\]"):
      fn(a, b)
  with pytest.raises(ValueError, match="four"):
    losses.matrix_ssl_loss(a, a, a, b)
  with pytest.raises(ValueError, match="log_method"):
    losses.matrix_ssl_loss(a, a, a, a, log_method="logm")
  with pytest.raises(ValueError, match="safety"):
    losses.emi_loss(a, a, method="taylor", safety=0.0)
