"""SIGReg and LeJEPA (`mi_ssl_jax/losses/lejepa.py`).

* float64 reference: an independent NumPy implementation (complex empirical
  characteristic function, SciPy's trapezoid rule on the SYMMETRIC grid
  [−t_max, t_max]) equals `losses.sigreg` on the half-line grid;
  `knots=9, t_max=5` is the paper listing's 17 points on [−5, 5];
* lightly's semantics: lightly 1.6.0 `lightly/loss/lejepa_loss.py` (read
  from its PyPI wheel; lightly is not a dependency, so its formula is
  rewritten here in NumPy: `SIGReg._compute_cf_error_at_each_frequency`,
  `_integrate_via_trapezoidal_rule`, `lejepa_invariance_loss`,
  `LeJEPALoss.forward`) gives our value for the same directions;
* the statistic measures Gaussianity: N(0, 1) embeddings score far lower
  than collapsed or badly scaled ones, and its gradient pushes towards it;
* the directions come from the key: one key, one value.
1-vs-8-device equality of value and gradient: tests/test_losses_sharding.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from mi_ssl_jax import losses


def _np_sigreg_symmetric(z, a, knots, t_max):
  """N·∫_{−t_max}^{t_max} |φ̂(t) − e^{−t²/2}|² e^{−t²/2} dt, mean over
  directions (and views); complex arithmetic, SciPy trapezoid."""
  t = np.linspace(-t_max, t_max, 2 * knots - 1)  # [T]
  x = z @ a  # [..., N, M]
  ecf = np.exp(1j * x[..., None] * t).mean(axis=-3)  # [..., M, T]
  phi = np.exp(-0.5 * t**2)
  integrand = np.abs(ecf - phi) ** 2 * phi
  stat = integrate.trapezoid(integrand, t, axis=-1) * z.shape[-2]
  return stat.mean()


@pytest.mark.parametrize("knots,t_max,shape", [
    (17, 3.0, (64, 12)),     # official code / lightly defaults
    (9, 5.0, (2, 32, 12)),   # the paper listing's grid; a views axis
])
def test_sigreg_matches_float64_scipy_reference(x64, knots, t_max, shape):
  del x64
  rng = np.random.default_rng(0)
  z = rng.standard_normal(shape) * 1.3 + 0.2
  key = jax.random.key(3)
  got = losses.sigreg(jnp.asarray(z), key, num_slices=40, knots=knots,
                      t_max=t_max)
  assert got.dtype == jnp.float64
  a = np.asarray(losses.sigreg_directions(key, shape[-1], 40, jnp.float64))
  np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0, rtol=1e-12)
  want = _np_sigreg_symmetric(z, a, knots, t_max)
  np.testing.assert_allclose(float(got), want, rtol=1e-10)


def _np_lightly_lejepa(global_z, local_z, a, lamb, knots=17, t_max=3.0):
  """lightly 1.6.0 LeJEPALoss.forward, rewritten in NumPy (float64)."""
  all_z = np.concatenate([global_z, local_z], axis=0)  # [V, N, D]
  t = np.linspace(0.0, t_max, knots)
  dt = t_max / (knots - 1)
  weights = np.full(knots, 2 * dt)
  weights[[0, -1]] = dt
  window = np.exp(-t**2 / 2.0)
  weights = weights * window
  x_t = (all_z @ a)[..., None] * t  # [V, N, M, T]
  n = all_z.shape[-2]
  err = ((np.cos(x_t).sum(-3) / n - window) ** 2
         + (np.sin(x_t).sum(-3) / n) ** 2)
  sig = ((err @ weights) * n).mean()
  inv = ((global_z.mean(0) - all_z) ** 2).mean()
  return lamb * sig + (1.0 - lamb) * inv, inv, sig


def test_lejepa_matches_lightly_semantics():
  rng = np.random.default_rng(1)
  global_z = rng.standard_normal((2, 48, 16)).astype(np.float32)
  local_z = (global_z[:1] + 0.3 * rng.standard_normal((1, 48, 16))
             ).astype(np.float32)
  key = jax.random.key(7)
  out = losses.lejepa_terms(jnp.asarray(global_z), key, jnp.asarray(local_z),
                            lamb=0.05, num_slices=64)
  a = np.asarray(losses.sigreg_directions(key, 16, 64), np.float64)
  want, inv, sig = _np_lightly_lejepa(global_z.astype(np.float64),
                                      local_z.astype(np.float64), a, 0.05)
  np.testing.assert_allclose(float(out["invariance"]), inv, rtol=1e-5)
  np.testing.assert_allclose(float(out["sigreg"]), sig, rtol=1e-4)
  np.testing.assert_allclose(float(out["loss"]), want, rtol=1e-4)
  assert float(losses.lejepa_loss(jnp.asarray(global_z), key,
                                  jnp.asarray(local_z), num_slices=64)) == (
      pytest.approx(float(out["loss"])))


def test_sigreg_prefers_the_standard_gaussian_and_pushes_towards_it():
  rng = np.random.default_rng(2)
  key = jax.random.key(0)
  gauss = jnp.asarray(rng.standard_normal((512, 8)), jnp.float32)
  value = {name: float(losses.sigreg(z, key, num_slices=128))
           for name, z in {"gauss": gauss, "wide": 4.0 * gauss,
                           "narrow": 0.1 * gauss,
                           "collapsed": jnp.zeros_like(gauss)}.items()}
  # E[EP] under the null is ∫(1 − φ²)φ dt = O(1); collapse is O(N).
  assert value["gauss"] < 1.0
  assert min(value["wide"], value["narrow"], value["collapsed"]) > 20.0
  # Gradient descent on a collapsed-ish cloud increases its spread.
  z = 0.1 * gauss
  grad = jax.grad(lambda z: losses.sigreg(z, key, num_slices=128))(z)
  z_new = z - 0.05 * grad
  assert float(jnp.std(z_new)) > float(jnp.std(z))
  assert float(losses.sigreg(z_new, key, num_slices=128)) < value["narrow"]


def test_directions_come_from_the_key():
  z = jnp.asarray(np.random.default_rng(3).standard_normal((32, 8)) + 1.0,
                  jnp.float32)
  one = losses.sigreg(z, jax.random.key(0), num_slices=8)
  assert float(losses.sigreg(z, jax.random.key(0), num_slices=8)) == float(
      one)
  assert float(losses.sigreg(z, jax.random.key(1), num_slices=8)) != float(
      one)
  with pytest.raises(ValueError, match="at least two views"):
    losses.lejepa_terms(z[None], jax.random.key(0))
