"""Every matrix function jits, vmaps, and gives the same value and gradient on
a batch-sharded input over 8 simulated devices as on one device; plus
hypothesis property tests (kept small via max_examples)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import matrix

B, D = 16, 6  # B divisible by the 8 devices


def _pair(z):  # two "views" from one [B, 2D] array
  return z[:, :D], z[:, D:]


def _ridge(c):
  return c + 0.1 * jnp.eye(c.shape[-1], dtype=c.dtype)


# Each case maps features [B, 2D] to a scalar through one public function.
CASES = {
    "entropy_eigh": lambda z: matrix.matrix_entropy(matrix.gram(z)),
    "entropy_renyi2": lambda z: matrix.matrix_entropy(matrix.gram(z), 2.0),
    "entropy_chebyshev": lambda z: matrix.matrix_entropy(
        matrix.covariance(z), method="chebyshev", order=12),
    "feature_entropy": lambda z: matrix.feature_entropy(z, center=True),
    "joint_entropy": lambda z: matrix.matrix_joint_entropy(
        *map(matrix.gram, _pair(z)), alpha=2.0),
    "mutual_information": lambda z: matrix.matrix_mutual_information(
        *map(matrix.gram, _pair(z))),
    "matrix_kl": lambda z: matrix.matrix_kl(
        *[_ridge(matrix.covariance(x)) for x in _pair(z)]),
    "cross_entropy_taylor": lambda z: matrix.matrix_cross_entropy(
        _ridge(matrix.covariance(_pair(z)[0])),
        matrix.cross_covariance(*_pair(z), center=True) + jnp.eye(D),
        include_trace=False, method="taylor"),
    "matrix_log": lambda z: jnp.sum(matrix.matrix_log(
        _ridge(matrix.covariance(z, center=True)))),
    "logdet": lambda z: matrix.logdet_psd(_ridge(matrix.covariance(z))),
    "total_coding_rate": lambda z: matrix.total_coding_rate(z),
    "effective_rank": lambda z: matrix.effective_rank(z),
    "rankme": lambda z: matrix.rankme(z),
}


def _features(seed=0):
  z = np.random.default_rng(seed).normal(size=(B, 2 * D))
  return jnp.asarray(z, jnp.float32)


def _all_values_and_grads(z):
  # One program for all cases: one compile instead of one per case.
  return {name: jax.value_and_grad(f)(z) for name, f in CASES.items()}


def test_jit_vmap_and_eight_device_sharding():
  mesh = Mesh(np.array(jax.devices()), ("data",),
              axis_types=(AxisType.Auto,))
  z = _features()
  zs = jax.device_put(z, NamedSharding(mesh, P("data")))
  assert len(zs.sharding.device_set) == 8
  vg = jax.jit(_all_values_and_grads)
  one, eight = vg(z), vg(zs)
  other = vg(_features(1))
  zb = jnp.stack([z, _features(1)])  # [2, B, 2D]
  batched = jax.jit(jax.vmap(
      lambda z: {n: f(z) for n, f in CASES.items()}))(zb)
  for name in CASES:
    (v1, g1), (v8, g8) = one[name], eight[name]
    assert np.isfinite(v1) and np.all(np.isfinite(g1)), name
    np.testing.assert_allclose(v8, v1, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(batched[name], [v1, other[name][0]],
                               rtol=1e-5, atol=1e-6, err_msg=name)


def test_float64_under_x64(x64):
  del x64
  z = jnp.asarray(np.random.default_rng(0).normal(size=(B, 2 * D)))
  for name, f in CASES.items():  # traced only (no compile)
    assert jax.eval_shape(f, z).dtype == jnp.float64, name
  bf16 = jax.ShapeDtypeStruct((3, 3), jnp.bfloat16)
  assert jax.eval_shape(matrix.matrix_entropy, bf16).dtype == jnp.float32


# ------------------------------------------------------------ hypothesis

_rows = hnp.arrays(np.float64, (6, 3),
                   elements=st.floats(-2, 2, allow_nan=False, width=64))


def _nondegenerate(z):
  return np.all(np.linalg.norm(z, axis=1) > 1e-2)


@settings(max_examples=10, deadline=None)
@given(z=_rows.filter(_nondegenerate), perm_seed=st.integers(0, 100))
def test_entropy_properties(z, perm_seed):
  with jax.enable_x64(True):
    k = matrix.gram(jnp.asarray(z))
    s = float(matrix.matrix_entropy(k))
    rank = np.linalg.matrix_rank(np.asarray(k), tol=1e-9)
    assert -1e-9 <= s <= np.log(rank) + 1e-9
    # Rényi entropies are non-increasing in α.
    h05, h2 = (float(matrix.matrix_entropy(k, a)) for a in (0.5, 2.0))
    assert h05 >= s - 1e-9 and s >= h2 - 1e-9
    # Invariant to permuting examples and to scaling the matrix.
    perm = np.random.default_rng(perm_seed).permutation(6)
    kp = k[perm][:, perm]
    np.testing.assert_allclose(matrix.matrix_entropy(3.0 * kp), s,
                               rtol=1e-9, atol=1e-12)
    # Sylvester: same entropy from the 3 × 3 covariance side.
    np.testing.assert_allclose(
        matrix.matrix_entropy(matrix.covariance(jnp.asarray(z))), s,
        rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(matrix.effective_rank(k / jnp.trace(k)),
                               np.exp(s), rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(z1=_rows.filter(_nondegenerate), z2=_rows.filter(_nondegenerate))
def test_kl_and_mutual_information_properties(z1, z2):
  with jax.enable_x64(True):
    c1 = _ridge(matrix.covariance(jnp.asarray(z1)))
    c2 = _ridge(matrix.covariance(jnp.asarray(z2)))
    assert float(matrix.matrix_kl(c1, c2)) >= -1e-9
    assert abs(float(matrix.matrix_kl(c1, c1))) <= 1e-9
    k1, k2 = matrix.gram(jnp.asarray(z1)), matrix.gram(jnp.asarray(z2))
    h1, h2 = float(matrix.matrix_entropy(k1)), float(matrix.matrix_entropy(k2))
    mi = float(matrix.matrix_mutual_information(k1, k2))
    # Giraldo et al. 2014: max(H1, H2) <= H(K1 ⊙ K2) <= H1 + H2.
    assert -1e-9 <= mi <= min(h1, h2) + 1e-9
